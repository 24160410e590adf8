"""Policy(fallback=...): Polly's Fallback as the outermost stage, sync and async."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import fintech_resilience as fr
from fintech_resilience.testing import ManualClock


class PspDown(ConnectionError):
    pass


def queued(error: BaseException, *args: Any, **kwargs: Any) -> tuple[str, str, Any, Any]:
    return ("queued", type(error).__name__, args, kwargs)


def always(exc: BaseException) -> Any:
    def fail(*_args: Any, **_kwargs: Any) -> Any:
        raise exc

    return fail


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def call(mode: str, policy: fr.Policy, fn: Any, *args: Any, **kwargs: Any) -> Any:
    if mode == "sync":
        return policy.call(fn, *args, **kwargs)

    async def afn(*a: Any, **k: Any) -> Any:
        await asyncio.sleep(0)
        return fn(*a, **k)

    return await policy.acall(afn, *args, **kwargs)


async def test_the_fallback_answers_once_the_retries_ran_out(mode: str,
                                                            clock: ManualClock) -> None:
    calls: list[int] = []

    def psp(order: str, amount: int) -> str:
        calls.append(amount)
        raise PspDown("unreachable")

    policy = fr.Policy(name="psp", retry=fr.retry(on=ConnectionError, attempts=3, wait=0,
                                                  clock=clock), fallback=queued)
    got = await call(mode, policy, psp, "order-7", amount=1999)
    assert got == ("queued", "PspDown", ("order-7",), {"amount": 1999})
    assert len(calls) == 3  # the fallback is outside the retry loop: it runs after it


async def test_refusals_of_every_stage_reach_the_fallback(mode: str, clock: ManualClock) -> None:
    limiter = fr.RateLimiter("1/minute", backend=fr.MemoryBackend(), clock=clock, name="psp")
    policy = fr.Policy(name="psp", rate_limit=limiter, fallback=queued,
                       fallback_on=(fr.RateLimited, fr.CircuitOpen))
    assert await call(mode, policy, lambda: "charged") == "charged"
    assert (await call(mode, policy, lambda: "charged"))[:2] == ("queued", "RateLimited")

    breaker = fr.CircuitBreaker("psp-fb", backend=fr.MemoryBackend(), clock=clock)
    breaker.force_open()
    opened = fr.Policy(name="psp", breaker=breaker, fallback=queued,
                       fallback_on=(fr.RateLimited, fr.CircuitOpen))
    assert (await call(mode, opened, lambda: "charged"))[:2] == ("queued", "CircuitOpen")


async def test_fallback_on_decides_which_failures_are_replaced(mode: str) -> None:
    policy = fr.Policy(name="psp", fallback=queued, fallback_on=fr.CircuitOpen)
    with pytest.raises(PspDown):  # not matched: the caller gets the error itself
        await call(mode, policy, always(PspDown()))
    only_5xx = fr.Policy(name="psp", fallback=queued,
                         fallback_on=lambda exc: getattr(exc, "status", 0) >= 500)
    error = PspDown()
    error.status = 503  # type: ignore[attr-defined]
    assert (await call(mode, only_5xx, always(error)))[0] == "queued"


async def test_results_reach_the_fallback_through_the_retry_on_result(
        mode: str, clock: ManualClock) -> None:
    seen: list[Any] = []

    def fallback(error: BaseException) -> str:
        seen.append(error)
        return "stale-rates"

    policy = fr.Policy(name="fx", retry=fr.retry(on_result=lambda status: status >= 500,
                                                 attempts=2, wait=0, clock=clock),
                       fallback=fallback, fallback_on=fr.RetryError)
    assert await call(mode, policy, lambda: 503) == "stale-rates"
    (error,) = seen
    assert isinstance(error, fr.RetryError) and error.last == 503 and error.attempts == 2


async def test_an_async_call_may_have_an_async_fallback() -> None:
    async def fallback(error: BaseException, order: str) -> str:
        await asyncio.sleep(0)
        return f"queued {order}"

    async def psp(order: str) -> str:
        raise PspDown

    policy = fr.Policy(name="psp", fallback=fallback)
    assert await policy.acall(psp, "order-7") == "queued order-7"

    @policy
    async def charge(order: str) -> str:
        raise PspDown

    assert await charge("order-8") == "queued order-8"


async def test_cancellation_never_reaches_the_fallback() -> None:
    policy = fr.Policy(name="psp", fallback=queued, fallback_on=BaseException)

    async def cancelled() -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await policy.acall(cancelled)


async def test_what_the_fallback_raises_is_what_the_caller_gets(mode: str) -> None:
    def refuse(error: BaseException) -> None:
        raise fr.ConfigurationError("no fallback for this merchant") from error

    policy = fr.Policy(name="psp", fallback=refuse)
    with pytest.raises(fr.ConfigurationError) as info:
        await call(mode, policy, always(PspDown()))
    assert isinstance(info.value.__cause__, PspDown)


def test_a_successful_call_never_touches_the_fallback() -> None:
    calls: list[int] = []
    policy = fr.Policy(name="psp", fallback=lambda e: calls.append(1))
    assert policy.call(lambda: "ok") == "ok"
    assert calls == [] and "fallback=Fallback" in repr(policy)


def test_bad_fallbacks_are_configuration_errors() -> None:
    with pytest.raises(fr.ConfigurationError, match="fallback must be a callable"):
        fr.Policy(fallback="cached")  # type: ignore[arg-type]
    with pytest.raises(fr.ConfigurationError, match="fallback_on must be an exception type"):
        fr.Policy(fallback=queued, fallback_on="ConnectionError")  # type: ignore[arg-type]
