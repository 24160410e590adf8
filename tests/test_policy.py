"""Policy: rate limit -> bulkhead -> retry -> (per attempt) breaker -> timeout -> call."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from fintech_resilience.backends.base import Backend
from fintech_resilience.breaker.circuit import CircuitBreaker, CountWindow
from fintech_resilience.errors import (
    BulkheadFull,
    CircuitOpen,
    ConfigurationError,
    RateLimited,
    Timeout,
)
from fintech_resilience.policy.bulkhead import Bulkhead
from fintech_resilience.policy.compose import Policy
from fintech_resilience.policy.deadline import TimeLimit
from fintech_resilience.ratelimit.limiter import RateLimiter
from fintech_resilience.retries.core import RetryDetails, current_attempt, retry
from fintech_resilience.testing import ManualClock

Events = list[str]


def recorded(events: Events, backend: Backend, clock: ManualClock) -> dict[str, Any]:
    """Real components, subclassed only to log when each one is entered and left."""

    class Limiter(RateLimiter):
        def acquire(self, key: Any, cost: int = 1) -> Any:
            events.append("ratelimit")
            return super().acquire(key, cost)

        async def aacquire(self, key: Any, cost: int = 1) -> Any:
            events.append("ratelimit")
            return await super().aacquire(key, cost)

    class Heads(Bulkhead):
        @contextlib.contextmanager
        def hold(self) -> Iterator[None]:
            with super().hold():
                events.append("bulkhead>")
                yield
                events.append("<bulkhead")

        @contextlib.asynccontextmanager
        async def ahold(self) -> AsyncIterator[None]:
            async with super().ahold():
                events.append("bulkhead>")
                yield
                events.append("<bulkhead")

    class Breaker(CircuitBreaker):
        def __enter__(self) -> CircuitBreaker:
            events.append("breaker>")
            return super().__enter__()

        def __exit__(self, *exc: Any) -> None:
            events.append("<breaker")
            super().__exit__(*exc)

        async def __aenter__(self) -> CircuitBreaker:
            events.append("breaker>")
            return await super().__aenter__()

        async def __aexit__(self, *exc: Any) -> None:
            events.append("<breaker")
            await super().__aexit__(*exc)

    class Limit(TimeLimit):
        @contextlib.contextmanager
        def limit(self, seconds: float | None = None) -> Iterator[None]:
            with super().limit(seconds):
                events.append("timeout>")
                yield
                events.append("<timeout")

        @contextlib.asynccontextmanager
        async def alimit(self, seconds: float | None = None) -> AsyncIterator[None]:
            async with super().alimit(seconds):
                events.append("timeout>")
                yield
                events.append("<timeout")

    def before_sleep(details: RetryDetails) -> None:
        events.append(f"retry wait after attempt {details.attempt}")

    return {
        "rate_limit": Limiter("100/second", backend=backend, name="psp", clock=clock),
        "bulkhead": Heads(2, name="psp"),
        "retry": retry(on=ConnectionError, attempts=3, wait=0.5, before_sleep=before_sleep,
                       clock=clock),
        "breaker": Breaker("psp", backend=backend, clock=clock, minimum_calls=10),
        "timeout": Limit(5.0, clock=clock),
    }


def test_the_order_is_rate_limit_bulkhead_retry_breaker_timeout_call(
        backend: Backend, clock: ManualClock) -> None:
    events: Events = []
    policy = Policy(name="psp", **recorded(events, backend, clock))
    calls = [0]

    @policy
    def charge() -> str:
        calls[0] += 1
        events.append("call")
        assert current_attempt() is not None
        if calls[0] == 1:
            raise ConnectionError("reset by peer")
        return "ok"

    assert charge() == "ok"
    # "<timeout" is logged only when the block ends normally; the failed attempt skips it
    assert events == [
        "ratelimit", "bulkhead>",
        "breaker>", "timeout>", "call", "<breaker",
        "retry wait after attempt 1",
        "breaker>", "timeout>", "call", "<timeout", "<breaker",
        "<bulkhead",
    ]


async def test_async_order_is_the_same(backend: Backend, clock: ManualClock) -> None:
    events: Events = []
    policy = Policy(name="psp", **recorded(events, backend, clock))
    calls = [0]

    @policy
    async def charge() -> str:
        calls[0] += 1
        events.append("call")
        if calls[0] == 1:
            raise ConnectionError("reset by peer")
        return "ok"

    assert await charge() == "ok"
    assert events == [
        "ratelimit", "bulkhead>",
        "breaker>", "timeout>", "call", "<breaker",
        "retry wait after attempt 1",
        "breaker>", "timeout>", "call", "<timeout", "<breaker",
        "<bulkhead",
    ]


def test_an_open_breaker_ends_the_retry_loop_with_circuit_open(
        backend: Backend, clock: ManualClock) -> None:
    breaker = CircuitBreaker("psp", backend=backend, clock=clock, minimum_calls=2,
                             failure_rate=0.5, window=CountWindow(10))
    calls = [0]
    policy = Policy(name="psp", breaker=breaker,
                    retry=retry(on=ConnectionError, attempts=10, wait=0.1, clock=clock))

    @policy
    def charge() -> None:
        calls[0] += 1
        raise ConnectionError("PSP down")

    with pytest.raises(CircuitOpen):
        charge()
    assert calls[0] == 2  # two failures tripped the breaker; attempt 3 was refused, no more


async def test_a_forced_open_breaker_stops_before_any_attempt(
        backend: Backend, clock: ManualClock) -> None:
    breaker = CircuitBreaker("psp", backend=backend, clock=clock)
    breaker.force_open()
    calls = [0]

    @Policy(name="psp", breaker=breaker, retry=retry(on=Exception, attempts=5, clock=clock))
    async def charge() -> None:
        calls[0] += 1

    with pytest.raises(CircuitOpen):
        await charge()
    assert calls[0] == 0


def test_rate_limit_is_checked_once_per_call_not_per_attempt(
        backend: Backend, clock: ManualClock) -> None:
    limiter = RateLimiter("2/minute", backend=backend, name="psp", clock=clock)
    flaky = iter([ConnectionError(), ConnectionError(), "ok", "ok"])

    def fn() -> str:
        item = next(flaky)
        if isinstance(item, Exception):
            raise item
        return item

    policy = Policy(name="psp", rate_limit=limiter,
                    retry=retry(on=ConnectionError, attempts=3, wait=0.0, clock=clock))
    assert policy.call(fn) == "ok"  # three attempts, one rate-limit unit
    assert policy.call(fn) == "ok"
    with pytest.raises(RateLimited):
        policy.call(fn)


def test_per_attempt_timeout_is_capped_by_the_retry_deadline(clock: ManualClock) -> None:
    seen: list[float] = []

    class Limit(TimeLimit):
        @contextlib.contextmanager
        def limit(self, seconds: float | None = None) -> Iterator[None]:
            seen.append(seconds or 0.0)
            with super().limit(seconds):
                yield

    policy = Policy(name="psp", timeout=Limit(5.0, clock=clock),
                    retry=retry(on=TimeoutError, attempts=3, wait=1.0, deadline=7, clock=clock))

    def slow() -> None:
        clock.advance(5.5)  # overruns the 5 s limit: fr.Timeout after it returns

    with pytest.raises(Timeout):
        policy.call(slow)
    # attempt 1: min(5, 7) = 5; then 5.5 s + 1 s wait = 6.5 s spent: attempt 2 gets 0.5 s
    assert seen == [5.0, pytest.approx(0.5)]


def test_bulkhead_full_is_raised_before_any_attempt(clock: ManualClock) -> None:
    bulkhead = Bulkhead(1, name="psp")
    policy = Policy(name="psp", bulkhead=bulkhead, retry=retry(on=Exception, clock=clock))
    with bulkhead, pytest.raises(BulkheadFull):
        policy.call(lambda: "never")


async def test_policy_as_a_context_manager(backend: Backend, clock: ManualClock) -> None:
    events: Events = []
    parts = recorded(events, backend, clock)
    del parts["retry"]
    policy = Policy(name="psp", **parts)
    with policy:
        events.append("block")
    async with policy:
        events.append("block")
    once = ["ratelimit", "bulkhead>", "breaker>", "timeout>", "block", "<timeout", "<breaker",
            "<bulkhead"]
    assert events == once + once


def test_the_test_double_protocol_is_enough(clock: ManualClock) -> None:
    class Double:
        """A minimal breaker: only the context-manager protocol."""

        def __init__(self) -> None:
            self.log: Events = []

        def __enter__(self) -> Double:
            self.log.append("enter")
            return self

        def __exit__(self, *exc: Any) -> None:
            self.log.append("exit")

        async def __aenter__(self) -> Double:
            return self

        async def __aexit__(self, *exc: Any) -> None:
            return None

    double = Double()
    assert Policy(name="psp", breaker=double).call(lambda: 42) == 42
    assert double.log == ["enter", "exit"]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"bulkhead": 20}, "bulkhead must be a fr.Bulkhead"),
    ({"retry": 3}, "retry must be built with fr.retry"),
    ({"breaker": "psp"}, "breaker must be a fr.CircuitBreaker"),
    ({"timeout": -2}, "timeout must be a positive"),
    ({"rate_limit": "10/second"}, "rate_limit must be a fr.RateLimiter"),
    ({"name": "psp acme"}, "name must be"),
])
def test_bad_policy_configuration(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Policy(**kwargs)
