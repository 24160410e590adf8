"""fr.retry: the fast path, the retry loop, hooks, test mode, telemetry and configuration."""

from __future__ import annotations

import asyncio
import importlib
from typing import Any

import pytest
import tenacity
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from fintech_resilience.core import telemetry
from fintech_resilience.errors import (
    CircuitOpen,
    ConfigurationError,
    RetryBudgetExhausted,
    RetryError,
)
from fintech_resilience.retries.core import RetryDetails, current_attempt, retry
from fintech_resilience.testing import ManualClock, test_mode

retry_module = importlib.import_module("fintech_resilience.retries.core")


class Flaky:
    """Fails ``failures`` times with ``exc``, then returns ``result``."""

    def __init__(self, failures: int, exc: BaseException | type[BaseException] = ValueError,
                 result: Any = "ok") -> None:
        self.failures = failures
        self.exc = exc
        self.result = result
        self.calls = 0
        self.attempts: list[int] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        attempt = current_attempt()
        self.attempts.append(attempt.number if attempt else 0)
        if self.calls <= self.failures:
            raise self.exc if isinstance(self.exc, BaseException) else self.exc(self.calls)
        return self.result

    async def acall(self, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0)
        return self(*args, **kwargs)


@pytest.fixture
def no_tenacity(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts RetryCallState objects built by fr.retry (the fast path must build none)."""
    built: list[int] = []
    real = retry_module.RetryCallState

    def spy(*args: Any, **kwargs: Any) -> Any:
        built.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(retry_module, "RetryCallState", spy)
    return built


def test_first_attempt_success_touches_no_tenacity_machinery(no_tenacity: list[int]) -> None:
    fn = Flaky(0)
    assert retry(on=ValueError)(fn)() == "ok"
    assert fn.calls == 1
    assert no_tenacity == []


async def test_async_first_attempt_success_touches_no_tenacity_machinery(
        no_tenacity: list[int]) -> None:
    fn = Flaky(0)

    @retry(on=ValueError)
    async def call() -> Any:
        return await fn.acall()

    assert await call() == "ok"
    assert no_tenacity == []


def test_failure_enters_the_tenacity_loop_and_retries_until_success(
        no_tenacity: list[int], clock: ManualClock) -> None:
    fn = Flaky(2)
    assert retry(on=ValueError, attempts=3, clock=clock)(fn)() == "ok"
    assert fn.attempts == [1, 2, 3]
    assert no_tenacity == [1]


async def test_async_retries_until_success(clock: ManualClock) -> None:
    fn = Flaky(2)

    @retry(on=ValueError, attempts=3, clock=clock)
    async def call() -> Any:
        return await fn.acall()

    assert await call() == "ok"
    assert fn.attempts == [1, 2, 3]


def test_gives_up_after_attempts_and_reraises_the_last_exception(clock: ManualClock) -> None:
    fn = Flaky(10)
    with pytest.raises(ValueError, match=r"^3$"):
        retry(on=ValueError, attempts=3, clock=clock)(fn)()
    assert fn.calls == 3


async def test_async_gives_up_after_attempts(clock: ManualClock) -> None:
    fn = Flaky(10)
    with pytest.raises(ValueError, match=r"^4$"):
        await retry(on=ValueError, attempts=4, clock=clock).acall(fn.acall)
    assert fn.calls == 4


def test_exception_not_in_on_is_raised_at_once(clock: ManualClock) -> None:
    fn = Flaky(5, KeyError)
    with pytest.raises(KeyError):
        retry(on=ValueError, attempts=5, clock=clock)(fn)()
    assert fn.calls == 1


def test_on_accepts_a_tuple_and_a_predicate(clock: ManualClock) -> None:
    fn = Flaky(2, KeyError)
    assert retry(on=(ValueError, KeyError), clock=clock)(fn)() == "ok"
    fn = Flaky(2, ValueError("transient"))
    assert retry(on=lambda exc: "transient" in str(exc), clock=clock)(fn)() == "ok"
    fn = Flaky(2, ValueError("fatal"))
    with pytest.raises(ValueError, match="fatal"):
        retry(on=lambda exc: "transient" in str(exc), clock=clock)(fn)()
    assert fn.calls == 1


@pytest.mark.parametrize("exc", [CircuitOpen("psp", 5.0), RetryBudgetExhausted("psp")])
def test_circuit_open_and_budget_exhaustion_are_never_retried(
        exc: BaseException, clock: ManualClock) -> None:
    fn = Flaky(5, exc)
    with pytest.raises(type(exc)):
        retry(on=Exception, attempts=5, clock=clock)(fn)()
    assert fn.calls == 1


async def test_cancellation_is_never_retried(clock: ManualClock) -> None:
    fn = Flaky(5, asyncio.CancelledError)
    with pytest.raises(asyncio.CancelledError):
        await retry(on=BaseException, attempts=5, clock=clock).acall(fn.acall)
    assert fn.calls == 1


def test_retry_on_result_then_retry_error_holds_the_last_result(clock: ManualClock) -> None:
    results = iter([503, 503, 200])
    assert retry(on_result=lambda status: status >= 500, clock=clock)(lambda: next(results))() \
        == 200
    with pytest.raises(RetryError) as info:
        retry(on_result=lambda status: status >= 500, attempts=2, clock=clock)(lambda: 503)()
    assert info.value.last == 503
    assert info.value.attempts == 2


def test_before_sleep_hook_sees_each_retry(clock: ManualClock) -> None:
    seen: list[RetryDetails] = []
    fn = Flaky(2)
    retry(on=ValueError, wait=1.5, clock=clock, before_sleep=seen.append, name="psp")(fn)()
    assert [(d.attempt, d.wait, d.name) for d in seen] == [(1, 1.5, "psp"), (2, 1.5, "psp")]
    assert isinstance(seen[0].outcome.exception, ValueError)
    assert clock.time() == 1_700_000_003.0  # slept 1.5 s twice on the manual clock


def test_test_mode_turns_waits_off(clock: ManualClock) -> None:
    fn = Flaky(2)
    with test_mode():
        retry(on=ValueError, wait=30.0, clock=clock)(fn)()
    assert fn.calls == 3
    assert clock.time() == 1_700_000_000.0


def test_tenacity_waits_stops_and_plain_callables_are_accepted(clock: ManualClock) -> None:
    fn = Flaky(2)
    retry(on=ValueError, wait=tenacity.wait_fixed(2), clock=clock)(fn)()
    assert clock.time() == 1_700_000_004.0
    fn = Flaky(2)
    retry(on=ValueError, wait=lambda state: state.attempt_number * 10.0, deadline=None,
          clock=clock)(fn)()
    assert clock.time() == 1_700_000_034.0  # 10 + 20
    fn = Flaky(10)
    with pytest.raises(ValueError):
        retry(on=ValueError, attempts=10, wait=4.0, stop=tenacity.stop_after_delay(10),
              deadline=None, clock=clock)(fn)()
    assert fn.calls == 4  # t=0, 4, 8, 12 -> the stop (12 >= 10) ends it


def test_current_attempt_is_none_outside_and_restored_after(clock: ManualClock) -> None:
    assert current_attempt() is None
    retry(on=ValueError, clock=clock)(Flaky(1))()
    assert current_attempt() is None


def test_nested_retries_see_their_own_attempt(clock: ManualClock) -> None:
    seen: list[tuple[str, int, str | None]] = []

    @retry(on=ValueError, clock=clock)
    def inner() -> None:
        a = current_attempt()
        assert a is not None
        seen.append(("inner", a.number, a.idempotency_key))

    outer_fn = Flaky(1)

    @retry(on=ValueError, clock=clock, idempotency_key=lambda: "outer-key")
    def outer() -> None:
        a = current_attempt()
        assert a is not None
        seen.append(("outer", a.number, a.idempotency_key))
        inner()
        outer_fn()

    outer()
    assert seen == [("outer", 1, "outer-key"), ("inner", 1, None),
                    ("outer", 2, "outer-key"), ("inner", 1, None)]


def test_one_span_per_attempt_with_number_wait_and_outcome(
        monkeypatch: pytest.MonkeyPatch, clock: ManualClock) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(telemetry, "active", lambda: True)
    monkeypatch.setattr(telemetry, "tracer", provider.get_tracer("test"))
    retry(on=ValueError, wait=0.5, clock=clock, name="psp")(Flaky(2))()
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == [retry_module.SPAN_NAME] * 3
    attrs = [dict(s.attributes or {}) for s in spans]
    assert [a[telemetry.Attr.ATTEMPT] for a in attrs] == [1, 2, 3]
    assert [a[telemetry.Attr.WAIT] for a in attrs] == [0.0, 0.5, 0.5]
    assert [a[telemetry.Attr.OUTCOME] for a in attrs] == ["failure", "failure", "success"]
    assert attrs[0][telemetry.Attr.ERROR_TYPE] == "ValueError"


def test_no_span_without_telemetry(clock: ManualClock) -> None:
    assert not telemetry.active()
    retry(on=ValueError, clock=clock)(Flaky(1))()  # would fail if it touched a missing SDK


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"attempts": 0}, "attempts must be an int >= 1"),
    ({"attempts": 2.5}, "attempts must be an int"),
    ({"deadline": 0}, "deadline must be a positive number"),
    ({"deadline": float("inf")}, "deadline must be a positive number"),
    ({"wait": "fast"}, "wait must be a wait strategy"),
    ({"wait": -1}, "wait must be a wait strategy"),
    ({"on": "ValueError"}, "on must be an exception type"),
    ({"on": ()}, "on must be an exception type"),
    ({"max_retry_after": -1}, "max_retry_after must be"),
    ({"idempotency_key": 5}, "idempotency_key must be None, 'auto'"),
    ({"key_argument": "1-key"}, "key_argument must be a keyword argument name"),
    ({"before_sleep": 3}, "before_sleep must be callable"),
    ({"budget": object()}, "budget must be a fr.RetryBudget"),
])
def test_bad_configuration_says_what_to_write(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        retry(**kwargs)


def test_wrapper_keeps_the_function_metadata() -> None:
    @retry()
    def charge(amount_minor: int) -> int:
        """Charge a card."""
        return amount_minor

    assert charge.__name__ == "charge"
    assert charge.__doc__ == "Charge a card."
    assert charge(100) == 100
    assert "attempts=3" in repr(retry())


def test_replace_keeps_every_other_option_and_validates_the_change(clock: ManualClock) -> None:
    seen: list[int] = []
    base = retry(on=ValueError, attempts=4, wait=0.0, name="psp", clock=clock,
                 before_sleep=lambda details: seen.append(details.attempt))
    fewer = base.replace(attempts=2)
    assert (fewer.attempts, fewer.name, fewer.clock, base.attempts) == (2, "psp", clock, 4)
    with pytest.raises(ValueError):  # the last attempt's error, after two attempts
        fewer.call(Flaky(5, ValueError))
    assert seen == [1]  # the hook and the exception rule came along; only attempts changed
    assert fewer.is_retryable(ValueError()) and not fewer.is_retryable(KeyError())
    with pytest.raises(ConfigurationError, match="no option"):
        base.replace(retries=2)
    with pytest.raises(ConfigurationError, match="attempts"):
        base.replace(attempts=0)
