"""Backoff waits, the overall deadline and Retry-After (seconds and HTTP-date, capped)."""

from __future__ import annotations

import random
import statistics
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import pytest
import tenacity

from fintech_resilience.errors import ConfigurationError, RateLimited
from fintech_resilience.retries import backoff
from fintech_resilience.retries.core import Outcome, current_attempt, retry
from fintech_resilience.retries.retry_after import parse_retry_after
from fintech_resilience.testing import ManualClock


def state(attempt: int, previous_sleep: float = 0.0) -> tenacity.RetryCallState:
    s = tenacity.RetryCallState(None, None, (), {})  # type: ignore[arg-type]
    s.attempt_number = attempt
    s.upcoming_sleep = previous_sleep
    return s


STRATEGIES = [
    backoff.exponential(initial=0.1, maximum=5.0),
    backoff.full_jitter(initial=0.1, maximum=5.0),
    backoff.equal_jitter(initial=0.1, maximum=5.0),
    backoff.decorrelated_jitter(initial=0.1, maximum=5.0),
]


@pytest.mark.parametrize("strategy", STRATEGIES, ids=repr)
def test_every_wait_stays_within_its_bounds_for_every_attempt(strategy: backoff.Backoff) -> None:
    rng = random.Random(7)
    strategy._random = rng.random
    for attempt in range(1, 200):
        ceiling = min(5.0, 0.1 * 2 ** min(attempt - 1, 64))
        previous = 0.0
        for _ in range(50):
            wait = strategy(state(attempt, previous))
            assert 0.0 <= wait <= 5.0
            if isinstance(strategy, backoff.full_jitter):
                assert wait <= ceiling
            elif isinstance(strategy, backoff.equal_jitter):
                assert ceiling / 2 <= wait <= ceiling
            elif isinstance(strategy, backoff.exponential):
                assert wait == ceiling
            else:  # decorrelated: [initial, 3 * previous], capped
                assert 0.1 <= wait <= max(0.1, min(5.0, 3 * previous))
            previous = wait


def test_exponential_doubles_from_initial_up_to_the_maximum() -> None:
    waits = [backoff.exponential(initial=0.5, maximum=6)(state(n)) for n in range(1, 7)]
    assert waits == [0.5, 1.0, 2.0, 4.0, 6.0, 6.0]
    assert backoff.exponential(0.5, 60, multiplier=3)(state(3)) == 4.5


@pytest.mark.parametrize("attempt", [1, 3, 8])
def test_full_jitter_mean_is_half_the_ceiling_over_10000_samples(attempt: int) -> None:
    strategy = backoff.full_jitter(initial=0.1, maximum=5.0, rng=random.Random(attempt))
    samples = [strategy(state(attempt)) for _ in range(10_000)]
    ceiling = min(5.0, 0.1 * 2 ** (attempt - 1))
    # uniform(0, c): mean c/2, standard deviation c/sqrt(12); the standard error of a mean of
    # 10,000 samples is c/sqrt(12 * 10,000) = 0.0029c. Allow 4 standard errors.
    tolerance = 4 * ceiling / (12 * 10_000) ** 0.5
    assert abs(statistics.fmean(samples) - ceiling / 2) < tolerance
    assert min(samples) < 0.01 * ceiling and max(samples) > 0.99 * ceiling  # spread over [0, c]


def test_strategies_compose_with_tenacity_waits_and_plain_callables() -> None:
    combined = backoff.full_jitter(0.1, 1.0) + tenacity.wait_fixed(2) + (lambda s: 0.5)
    for attempt in range(1, 10):
        assert 2.5 <= combined(state(attempt)) <= 3.5
    assert backoff.constant(0.25)(state(4)) == 0.25
    assert sum([backoff.constant(1), backoff.constant(2)])(state(1)) == 3  # type: ignore[operator]


@pytest.mark.parametrize(("factory", "message"), [
    (lambda: backoff.full_jitter(initial=-1), "initial must be a finite number"),
    (lambda: backoff.full_jitter(initial=2, maximum=1), "maximum .* must be >= initial"),
    (lambda: backoff.exponential(multiplier=0.5), "multiplier must be a number >= 1"),
    (lambda: backoff.constant(float("nan")), "seconds must be a number"),
    (lambda: backoff.decorrelated_jitter(maximum=float("inf")), "maximum must be a finite"),
])
def test_bad_backoff_configuration(factory: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        factory()


# --- the overall deadline ------------------------------------------------------------------


class RecordingClock(ManualClock):
    """A manual clock that records every sleep."""

    def __init__(self, start: float) -> None:
        super().__init__(start)
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        super().sleep(seconds)


@pytest.mark.parametrize("seed", range(25))
def test_deadline_is_never_exceeded(seed: int, clock: ManualClock) -> None:
    clock = RecordingClock(clock.time())
    rng = random.Random(seed)
    started = clock.monotonic()
    deadline = rng.uniform(1, 20)
    starts: list[float] = []
    sleeps = clock.sleeps

    def always_fails() -> None:
        starts.append(clock.monotonic())
        attempt = current_attempt()
        assert attempt is not None and attempt.remaining() == pytest.approx(
            max(0.0, started + deadline - clock.monotonic()))
        clock.advance(rng.uniform(0, 2))  # the attempt itself takes time
        raise ConnectionError

    wait = backoff.full_jitter(initial=0.5, maximum=8, rng=rng)
    with pytest.raises(ConnectionError):
        retry(attempts=1000, deadline=deadline, wait=wait, clock=clock)(always_fails)()
    assert len(starts) >= 1
    # no attempt starts, and no sleep ends, at or after the deadline
    assert all(t < started + deadline for t in starts)
    assert clock.monotonic() < started + deadline + 2  # only the last attempt may run past it
    assert all(s >= 0 for s in sleeps)


def test_a_wait_longer_than_the_deadline_gives_up_without_sleeping(clock: ManualClock) -> None:
    calls: list[float] = []

    def fails() -> None:
        calls.append(clock.time())
        raise TimeoutError

    with pytest.raises(TimeoutError):
        retry(deadline=5, wait=6.0, clock=clock)(fails)()
    assert calls == [1_700_000_000.0]
    assert clock.time() == 1_700_000_000.0  # gave up at once, no sleep


# --- Retry-After -----------------------------------------------------------------------------


class HttpError(Exception):
    """An HTTP client error with a response carrying headers (as httpx/requests have)."""

    def __init__(self, headers: dict[str, str]) -> None:
        super().__init__("503")
        self.response = type("Response", (), {"headers": headers})()


def run_failing_once(exc: BaseException, clock: ManualClock, **kwargs: Any) -> float:
    """Fail once with ``exc``, then succeed; return the seconds waited between attempts."""
    raised: list[bool] = []

    def fn() -> str:
        if not raised:
            raised.append(True)
            raise exc
        return "ok"

    before = clock.time()
    options: dict[str, Any] = {"on": Exception, "wait": 0.1, "clock": clock}
    options.update(kwargs)
    assert retry(**options)(fn)() == "ok"
    return clock.time() - before


def test_retry_after_seconds_from_an_exception_attribute_is_honoured(clock: ManualClock) -> None:
    exc = ConnectionError()
    exc.retry_after = 7  # type: ignore[attr-defined]
    assert run_failing_once(exc, clock) == 7


def test_retry_after_from_a_rate_limited_decision(clock: ManualClock) -> None:
    from fintech_resilience.ratelimit.limiter import RateLimiter

    limiter = RateLimiter("1/minute", name="rl-test", clock=clock)
    limiter.acquire("k")
    decision = limiter.acquire("k")
    assert not decision.allowed
    waited = run_failing_once(RateLimited(decision), clock, deadline=120)
    assert waited == pytest.approx(60, abs=1e-3)


def test_retry_after_http_date_header_is_honoured(clock: ManualClock) -> None:
    when = datetime.fromtimestamp(clock.time() + 30, tz=UTC)
    exc = HttpError({"Retry-After": format_datetime(when, usegmt=True)})
    assert run_failing_once(exc, clock, deadline=60) == 30


def test_retry_after_seconds_header_is_honoured(clock: ManualClock) -> None:
    assert run_failing_once(HttpError({"Retry-After": "12"}), clock) == 12


def test_retry_after_is_capped_by_max_retry_after(clock: ManualClock) -> None:
    assert run_failing_once(HttpError({"Retry-After": "500"}), clock, max_retry_after=10) == 10


def test_retry_after_never_shortens_the_backoff(clock: ManualClock) -> None:
    assert run_failing_once(HttpError({"Retry-After": "1"}), clock, wait=4.0) == 4


def test_retry_after_can_be_ignored(clock: ManualClock) -> None:
    waited = run_failing_once(HttpError({"Retry-After": "30"}), clock,
                              respect_retry_after=False)
    assert waited == pytest.approx(0.1)


def test_retry_after_past_the_deadline_gives_up(clock: ManualClock) -> None:
    with pytest.raises(HttpError):
        run_failing_once(HttpError({"Retry-After": "40"}), clock, deadline=30)
    assert clock.time() == 1_700_000_000.0


def test_retry_after_hook_reads_results(clock: ManualClock) -> None:
    responses = iter([{"status": 429, "wait": "3"}, {"status": 200, "wait": None}])
    seen: list[Outcome] = []

    def hook(outcome: Outcome) -> Any:
        seen.append(outcome)
        return outcome.result["wait"]

    result = retry(on_result=lambda r: r["status"] == 429, retry_after=hook, wait=0.0,
                   clock=clock)(lambda: next(responses))()
    assert result["status"] == 200
    assert clock.time() == 1_700_000_003.0
    assert seen[0].attempt == 1 and not seen[0].failed


@pytest.mark.parametrize(("value", "expected"), [
    (5, 5.0), (2.5, 2.5), ("120", 120.0), (b" 3 ", 3.0), (-4, 0.0),
    ("Tue, 14 Nov 2023 22:14:00 GMT", 40.0),     # 40 s after the reference instant
    ("Tue, 14 Nov 2023 22:00:00 GMT", 0.0),      # in the past
    ("soon", None), ("", None), ("1" * 100, None), (None, None), (True, None),
    (float("nan"), None), (float("inf"), None), ("Tue, 14 Nov 2023 22:14:00", None),
    (object(), None),
    ("\u00b2", None), ("\u0663", None), (b"\xc2\xb2", None),  # digits only in ASCII
])
def test_parse_retry_after(value: Any, expected: float | None) -> None:
    assert parse_retry_after(value, 1_700_000_000.0) == expected
