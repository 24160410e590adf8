"""Circuit breaker semantics on a manual clock, on memory, Redis and Redis Cluster."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import pytest

from fintech_resilience.backends.base import Arg, Backend
from fintech_resilience.backends.memory import MemoryBackend
from fintech_resilience.backends.redis import RedisBackend
from fintech_resilience.breaker.circuit import (
    BreakerState,
    CircuitBreaker,
    CountWindow,
    TimeWindow,
    Transition,
)
from fintech_resilience.core.outcomes import on_exceptions, on_status
from fintech_resilience.errors import CircuitOpen, ConfigurationError
from fintech_resilience.testing import ManualClock


class Counting(Backend):
    """Counts round trips per script."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.calls: list[str] = []

    def run(self, script: str, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        self.calls.append(script)
        return self.inner.run(script, keys, args)

    async def arun(self, script: str, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        self.calls.append(script)
        return await self.inner.arun(script, keys, args)


class Boom(Exception):
    pass


def ok() -> str:
    return "ok"


def boom() -> None:
    raise Boom


def attempt(breaker: CircuitBreaker, fn: Any = ok) -> str:
    """'ran', 'failed' or 'rejected'."""
    try:
        breaker.call(fn)
    except CircuitOpen:
        return "rejected"
    except Boom:
        return "failed"
    return "ran"


def make(backend: Backend, clock: ManualClock, **kw: Any) -> CircuitBreaker:
    kw.setdefault("minimum_calls", 4)
    kw.setdefault("window", CountWindow(10))
    kw.setdefault("break_duration", 10.0)
    kw.setdefault("half_open_calls", 2)
    return CircuitBreaker("psp", backend=backend, clock=clock, **kw)


def trip(breaker: CircuitBreaker) -> None:
    for _ in range(20):
        if breaker.known_state is BreakerState.OPEN:
            return
        attempt(breaker, boom)
    raise AssertionError("did not trip")


@pytest.mark.parametrize(("rate", "pattern", "trips_after"), [
    (0.5, "FSFS", 4),         # 2/4 = 0.5 reached exactly at minimum_calls
    (0.5, "SSSF", None),      # 1/4 stays below
    (0.5, "SSSFF", None),     # 2/5 stays below
    (0.5, "SSSFFF", 6),       # 3/6 = 0.5
    (1.0, "FFFF", 4),
    (0.3, "SSSSSSSFFF", 10),  # 3/10 = 0.3 exactly
])
def test_trips_at_exactly_the_failure_rate_and_minimum_calls_count_window(
        backend: Backend, clock: ManualClock, rate: float, pattern: str,
        trips_after: int | None) -> None:
    breaker = make(backend, clock, failure_rate=rate)
    for i, kind in enumerate(pattern, 1):
        assert attempt(breaker, boom if kind == "F" else ok) != "rejected"
        expected = BreakerState.OPEN if trips_after == i else BreakerState.CLOSED
        assert breaker.known_state is expected, (i, breaker._view)
        if expected is BreakerState.OPEN:
            break


def test_count_window_forgets_outcomes_older_than_its_size(backend: Backend,
                                                           clock: ManualClock) -> None:
    breaker = make(backend, clock, window=CountWindow(4), minimum_calls=4, failure_rate=0.75)
    for fn in (boom, boom, ok, ok, ok, boom, boom):  # window now: ok ok boom boom... no: 2 F of 4
        attempt(breaker, fn)
    assert breaker.known_state is BreakerState.CLOSED
    attempt(breaker, boom)  # last four: ok boom boom boom = 0.75
    assert breaker.known_state is BreakerState.OPEN


def test_time_window_trips_at_rate_and_forgets_old_seconds(backend: Backend,
                                                           clock: ManualClock) -> None:
    breaker = make(backend, clock, window=TimeWindow(seconds=5), minimum_calls=3,
                   failure_rate=1.0)
    attempt(breaker, boom)
    attempt(breaker, boom)
    clock.advance(5.0)  # both failures leave the 5-second window
    attempt(breaker, boom)
    assert breaker._view is not None
    assert breaker._view.calls == 1
    clock.advance(4.0)  # still inside
    attempt(breaker, boom)
    assert breaker.known_state is BreakerState.CLOSED
    attempt(breaker, boom)  # 3 failures within 5 s, minimum 3, rate 1.0
    assert breaker.known_state is BreakerState.OPEN


def test_slow_calls_trip_by_duration(backend: Backend, clock: ManualClock) -> None:
    breaker = make(backend, clock, slow_call_duration=2.0, slow_call_rate=0.5)

    def slow() -> str:
        clock.advance(2.0)
        return "ok"

    def almost() -> str:
        clock.advance(1.999)
        return "ok"

    for fn in (almost, almost, slow):
        attempt(breaker, fn)
    assert breaker.known_state is BreakerState.CLOSED
    attempt(breaker, slow)  # 2 slow of 4
    assert breaker.known_state is BreakerState.OPEN


def test_open_lasts_exactly_the_break_duration(backend: Backend, clock: ManualClock) -> None:
    breaker = make(backend, clock, refresh_interval=0)
    trip(breaker)
    clock.advance(9.999)
    with pytest.raises(CircuitOpen) as info:
        breaker.call(ok)
    assert info.value.retry_after == pytest.approx(0.001, abs=2e-6)
    clock.advance(0.001)
    assert attempt(breaker) == "ran"
    assert breaker.known_state is BreakerState.HALF_OPEN


def test_half_open_closes_after_successful_probes(backend: Backend, clock: ManualClock) -> None:
    seen: list[Transition] = []
    breaker = make(backend, clock, half_open_calls=2, listeners=[seen.append])
    trip(breaker)
    clock.advance(10)
    assert attempt(breaker) == "ran"
    assert breaker.known_state is BreakerState.HALF_OPEN
    assert attempt(breaker) == "ran"
    assert breaker.known_state is BreakerState.CLOSED
    assert [(t.previous, t.state) for t in seen] == [
        (BreakerState.CLOSED, BreakerState.OPEN), (BreakerState.OPEN, BreakerState.HALF_OPEN),
        (BreakerState.HALF_OPEN, BreakerState.CLOSED)]
    assert all(t.caused_here for t in seen)


def test_half_open_reopens_when_probe_failures_reach_the_rate(backend: Backend,
                                                              clock: ManualClock) -> None:
    breaker = make(backend, clock, half_open_calls=4, failure_rate=0.5)
    trip(breaker)
    clock.advance(10)
    assert attempt(breaker, boom) == "failed"      # 1/4 < 0.5: still probing
    assert breaker.known_state is BreakerState.HALF_OPEN
    assert attempt(breaker, boom) == "failed"      # 2/4: reopen at once
    assert breaker.known_state is BreakerState.OPEN
    assert attempt(breaker) == "rejected"


def test_half_open_admits_exactly_half_open_calls_probes(backend: Backend,
                                                         clock: ManualClock) -> None:
    breaker = make(backend, clock, half_open_calls=2)
    trip(breaker)
    clock.advance(10)
    breaker.__enter__()
    breaker.__enter__()
    assert attempt(breaker) == "rejected"
    breaker.__exit__(None, None, None)
    breaker.__exit__(None, None, None)
    assert breaker.known_state is BreakerState.CLOSED


def test_neutral_probe_gives_its_permit_back(backend: Backend, clock: ManualClock) -> None:
    class Declined(Exception):
        pass

    breaker = make(backend, clock, half_open_calls=1, neutral=on_exceptions(Declined))

    def decline() -> None:
        raise Declined

    trip(breaker)
    clock.advance(10)
    with pytest.raises(Declined):
        breaker.call(decline)
    assert breaker.known_state is BreakerState.HALF_OPEN
    assert attempt(breaker) == "ran"
    assert breaker.known_state is BreakerState.CLOSED


def test_break_duration_grows_and_is_capped(backend: Backend, clock: ManualClock) -> None:
    breaker = make(backend, clock, half_open_calls=1, break_duration_multiplier=2.0,
                   max_break_duration=30.0, refresh_interval=0)
    trip(breaker)
    for expected in (20.0, 30.0, 30.0):
        clock.advance(breaker._view.retry_after)  # type: ignore[union-attr]
        assert attempt(breaker, boom) == "failed"  # the probe fails: reopen, longer
        assert breaker.known_state is BreakerState.OPEN
        assert breaker._view is not None
        assert breaker._view.retry_after == expected
    clock.advance(30)
    assert attempt(breaker) == "ran"  # closes: growth starts over
    trip(breaker)
    assert breaker._view is not None
    assert breaker._view.retry_after == 10.0


def test_outcome_classification_neutral_ignored_and_result_predicates(
        backend: Backend, clock: ManualClock) -> None:
    class Declined(Exception):
        pass

    class Resp:
        def __init__(self, status_code: int) -> None:
            self.status_code = status_code

    breaker = make(backend, clock, failure=on_exceptions(Boom) | on_status(range(500, 600)),
                   neutral=on_exceptions(Declined), ignore=[KeyError], failure_rate=1.0)
    for _ in range(5):
        with pytest.raises(Declined):
            breaker.call(lambda: (_ for _ in ()).throw(Declined()))
        with pytest.raises(KeyError):
            breaker.call(lambda: {}["x"])
    assert breaker._view is None or breaker._view.calls == 0
    with pytest.raises(ValueError, match="x"):
        breaker.call(lambda: (_ for _ in ()).throw(ValueError("x")))  # not a failure: success
    assert breaker._view is not None
    assert breaker._view.failures == 0
    for _ in range(3):
        breaker.call(lambda: Resp(503))
    assert breaker.known_state is BreakerState.CLOSED  # 3 failures of 4 < 1.0
    clock.advance(0)


def test_closed_steady_state_costs_one_round_trip_and_open_rejects_without_any(
        backend: Backend, clock: ManualClock) -> None:
    counting = Counting(backend)
    breaker = make(counting, clock, minimum_calls=10)
    breaker.refresh()  # learn the state once
    counting.calls.clear()
    for _ in range(5):
        assert attempt(breaker) == "ran"
    assert counting.calls == ["breaker_record"] * 5
    trip(breaker)
    counting.calls.clear()
    for _ in range(100):
        assert attempt(breaker) == "rejected"
    assert counting.calls == []


def test_first_call_of_a_process_asks_once(backend: Backend, clock: ManualClock) -> None:
    counting = Counting(backend)
    breaker = make(counting, clock)
    attempt(breaker)
    attempt(breaker)
    assert counting.calls == ["breaker_acquire", "breaker_record", "breaker_record"]


def test_operator_override_is_obeyed_by_other_processes_on_their_next_call(
        backend: Backend, clock: ManualClock) -> None:
    operator = make(backend, clock)
    worker = make(backend, clock, refresh_interval=1.0)
    strict = make(backend, clock, ask_every_call=True)
    assert attempt(worker) == "ran"
    assert attempt(strict) == "ran"
    assert operator.force_open() is BreakerState.FORCED_OPEN
    # the worker believed CLOSED: this call had already started when it learns of the override
    assert attempt(worker) == "ran"
    assert worker.known_state is BreakerState.FORCED_OPEN
    assert attempt(worker) == "rejected"
    assert attempt(strict) == "rejected"  # ask_every_call: obeyed by the very next call
    # forced open survives the break duration; reset is seen within refresh_interval
    clock.advance(100)
    assert attempt(worker) == "rejected"
    operator.reset()
    assert attempt(worker) == "rejected"  # known FORCED_OPEN, not asked again yet
    clock.advance(1.0)
    assert attempt(worker) == "ran"
    assert worker.known_state is BreakerState.CLOSED


DAY = 86_400.0


def _expires_in_ms(backend: Backend, key: str, clock: ManualClock) -> int:
    """The breaker hash's time to live as Redis's PTTL says it (-1: never expires)."""
    if isinstance(backend, MemoryBackend):
        ttl_us = backend.store.ttl_us(key, round(clock.time() * 1_000_000))
        return -1 if ttl_us > 100 * 365 * DAY * 1_000_000 else ttl_us // 1000
    assert isinstance(backend, RedisBackend)
    return int(backend.client.pttl(key))


@pytest.mark.parametrize("override", ["force_open", "disable", "metrics_only"])
def test_an_override_never_expires_until_reset(backend: Backend, clock: ManualClock,
                                               override: str) -> None:
    """An operator's override holds until reset, also when nobody writes to the breaker for
    days: its hash has no TTL (the window's state expires after a day; the override must not)."""
    operator = make(backend, clock)
    worker = make(backend, clock, refresh_interval=1.0)
    assert attempt(worker) == "ran"
    assert _expires_in_ms(backend, operator._keys[0], clock) > 0  # plain state: a TTL
    state = getattr(operator, override)()
    for _ in range(3):  # METRICS_ONLY counts these calls: counting keeps it without TTL
        attempt(worker)
    assert _expires_in_ms(backend, operator._keys[0], clock) == -1
    clock.advance(3 * DAY)  # the memory backend's time: days without a write
    assert operator.state is state
    assert attempt(worker) == ("rejected" if state is BreakerState.FORCED_OPEN else "ran")
    assert operator.reset() is BreakerState.CLOSED
    assert _expires_in_ms(backend, operator._keys[0], clock) > 0


def test_disabled_and_metrics_only_let_every_call_through(backend: Backend,
                                                          clock: ManualClock) -> None:
    breaker = make(backend, clock)
    other = make(backend, clock)
    assert other.disable() is BreakerState.DISABLED
    for _ in range(10):
        assert attempt(breaker, boom) == "failed"
    assert breaker.known_state is BreakerState.DISABLED
    assert breaker.refresh().calls == 0
    other.metrics_only()
    for _ in range(10):
        assert attempt(breaker, boom) == "failed"
    view = breaker.refresh()
    # the first of the ten started before this process knew of the new generation: not counted
    assert view.state is BreakerState.METRICS_ONLY
    assert view.failures == 9
    other.reset()
    assert breaker.state is BreakerState.CLOSED
    trip(breaker)


def test_reset_closes_an_open_breaker_everywhere(backend: Backend, clock: ManualClock) -> None:
    a = make(backend, clock, refresh_interval=0)
    b = make(backend, clock)
    trip(a)
    assert b.state is BreakerState.OPEN
    b.reset()
    assert attempt(a) == "ran"


def test_fallback_replaces_circuit_open(backend: Backend, clock: ManualClock) -> None:
    calls: list[Any] = []
    breaker = make(backend, clock,
                   fallback=lambda exc, x: calls.append((type(exc), x)) or "cached")

    @breaker
    def charge(x: int) -> str:
        raise Boom

    for _ in range(4):
        with pytest.raises(Boom):
            charge(1)
    assert charge(7) == "cached"
    assert calls == [(CircuitOpen, 7)]


async def test_async_decorator_context_manager_and_fallback(backend: Backend,
                                                            clock: ManualClock) -> None:
    try:
        await _async_scenario(backend, clock)
    finally:
        await backend.aclose()


async def _async_scenario(backend: Backend, clock: ManualClock) -> None:
    async def afallback(exc: CircuitOpen, x: int) -> str:
        return f"fallback {x}"

    breaker = make(backend, clock, fallback=afallback)

    @breaker
    async def charge(x: int) -> int:
        await asyncio.sleep(0)
        if x < 0:
            raise Boom
        return x

    assert await charge(3) == 3
    for _ in range(3):
        with pytest.raises(Boom):
            await charge(-1)
    assert breaker.known_state is BreakerState.OPEN
    assert await charge(5) == "fallback 5"
    with pytest.raises(CircuitOpen):
        async with breaker:
            pass
    clock.advance(10)
    async with breaker:
        pass
    assert breaker.known_state is BreakerState.HALF_OPEN
    assert await breaker.astate() is BreakerState.HALF_OPEN
    await breaker.aforce_open()
    assert (await breaker.arefresh()).state is BreakerState.FORCED_OPEN
    await breaker.adisable()
    await breaker.ametrics_only()
    assert await breaker.areset() is BreakerState.CLOSED


def test_sync_context_manager_counts_exceptions(backend: Backend, clock: ManualClock) -> None:
    breaker = make(backend, clock)
    for _ in range(4):
        with pytest.raises(Boom), breaker:
            raise Boom
    with pytest.raises(CircuitOpen), breaker:
        pass


def test_each_transition_is_logged_once_and_listeners_see_observed_ones(
        backend: Backend, clock: ManualClock, caplog: pytest.LogCaptureFixture) -> None:
    seen_a: list[Transition] = []
    seen_b: list[Transition] = []
    a = make(backend, clock, listeners=[seen_a.append])
    b = make(backend, clock, listeners=[seen_b.append])
    attempt(b)
    with caplog.at_level(logging.INFO, logger="fintech_resilience"):
        trip(a)
        attempt(b)
    lines = [r for r in caplog.records if "CLOSED -> OPEN" in r.getMessage()]
    assert len(lines) == 1
    assert [(t.state, t.caused_here) for t in seen_a] == [(BreakerState.OPEN, True)]
    assert [(t.state, t.caused_here) for t in seen_b] == [(BreakerState.OPEN, False)]


def test_a_failing_listener_does_not_break_the_call(backend: Backend, clock: ManualClock) -> None:
    def bad(_t: Transition) -> None:
        raise RuntimeError("listener")

    breaker = make(backend, clock, listeners=[bad])
    trip(breaker)
    assert breaker.known_state is BreakerState.OPEN


def test_outcome_of_a_call_started_before_a_transition_is_not_counted(
        backend: Backend, clock: ManualClock) -> None:
    a = make(backend, clock, minimum_calls=1, failure_rate=1.0)
    b = make(backend, clock)
    attempt(a)
    a.__enter__()            # a call starts in CLOSED generation g
    b.reset()                # generation g + 1
    a.__exit__(Boom, Boom(), None)   # a failure from generation g: not counted
    assert a.known_state is BreakerState.CLOSED
    assert a.refresh().calls == 0


@pytest.mark.parametrize("kwargs", [
    {"failure_rate": 0}, {"failure_rate": 1.5}, {"failure_rate": -0.1},
    {"slow_call_rate": 0}, {"slow_call_rate": 2}, {"failure_rate": float("nan")},
    {"minimum_calls": 0}, {"minimum_calls": 200}, {"break_duration": 0},
    {"break_duration": -1}, {"slow_call_duration": -1}, {"probe_lease": 0},
    {"half_open_calls": 0}, {"break_duration_multiplier": 0.5},
    {"max_break_duration": 1, "break_duration": 5}, {"refresh_interval": -1},
    {"window": 100}, {"on_backend_error": "ignore"}, {"failure": 3}, {"fallback": "x"},
    {"ignore": [int]}, {"name": "has space"},
])
def test_bad_configuration_raises_configuration_error(kwargs: dict[str, Any]) -> None:
    kwargs.setdefault("name", "psp")
    with pytest.raises(ConfigurationError):
        CircuitBreaker(**kwargs)


@pytest.mark.parametrize("make_window", [
    lambda: CountWindow(0), lambda: CountWindow(-1), lambda: TimeWindow(0),
    lambda: TimeWindow(-5), lambda: TimeWindow(10, buckets=0), lambda: CountWindow(1.5),
])
def test_bad_windows_raise_configuration_error(make_window: Any) -> None:
    with pytest.raises(ConfigurationError):
        make_window()
