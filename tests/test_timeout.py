"""timeout: async calls are cancelled; sync calls are checked when they return."""

from __future__ import annotations

import asyncio

import pytest

from fintech_resilience.errors import ConfigurationError, Timeout
from fintech_resilience.policy.deadline import time_remaining, timeout
from fintech_resilience.retries.core import retry
from fintech_resilience.testing import ManualClock


async def test_async_call_is_cancelled_at_the_limit() -> None:
    cancelled: list[bool] = []

    @timeout(0.01, name="psp")
    async def slow() -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return "late"

    with pytest.raises(Timeout, match=r"psp: no answer within 0\.010s") as info:
        await slow()
    assert cancelled == [True]
    assert isinstance(info.value, TimeoutError)  # also catchable as the builtin


async def test_async_call_within_the_limit_returns_its_result() -> None:
    @timeout(5)
    async def fast() -> str:
        await asyncio.sleep(0)
        return "ok"

    assert await fast() == "ok"
    async with timeout(5):
        assert time_remaining() is not None


async def test_a_timeout_error_of_the_call_itself_is_not_relabelled() -> None:
    with pytest.raises(TimeoutError) as info:
        async with timeout(5):
            raise TimeoutError("socket")
    assert not isinstance(info.value, Timeout)
    assert str(info.value) == "socket"


def test_sync_call_that_overran_raises_timeout_after_it_returns(clock: ManualClock) -> None:
    ran: list[str] = []

    @timeout(2.0, clock=clock)
    def slow() -> str:
        clock.advance(3.0)  # the call takes 3 s on the manual clock
        ran.append("done")
        return "late result"

    with pytest.raises(Timeout):
        slow()
    assert ran == ["done"]  # the call ran to its end: it was not interrupted


def test_sync_call_within_the_limit_and_its_own_errors_pass_through(clock: ManualClock) -> None:
    limit = timeout(2.0, clock=clock)
    with limit:
        clock.advance(1.0)
        assert time_remaining() == pytest.approx(1.0)
    assert time_remaining() is None
    def overran_and_failed() -> None:
        clock.advance(5.0)
        raise KeyError("own error wins")

    with pytest.raises(KeyError):
        limit(overran_and_failed)()


def test_time_remaining_is_the_tighter_of_timeout_and_retry_deadline(clock: ManualClock) -> None:
    seen: list[float | None] = []

    @retry(deadline=1.5, clock=clock)
    @timeout(10, clock=clock)
    def call() -> None:
        seen.append(time_remaining())

    call()
    assert seen == [pytest.approx(1.5)]


def test_bad_timeout() -> None:
    for bad in (0, -1, float("inf"), "2s", True):
        with pytest.raises(ConfigurationError, match="timeout must be a positive"):
            timeout(bad)  # type: ignore[arg-type]


def test_a_standalone_timeout_reports_its_expiry(monkeypatch):
    from fintech_resilience.core import telemetry
    from fintech_resilience.errors import Timeout as TimeoutError_
    from fintech_resilience.policy.deadline import timeout as make_timeout
    from fintech_resilience.testing import ManualClock

    seen = []
    monkeypatch.setattr(telemetry, "active", lambda: True)
    monkeypatch.setattr(telemetry, "emit_decision",
                        lambda pattern, name, decision, attrs=None: seen.append(
                            (pattern, name, decision)))
    clock = ManualClock()
    limit = make_timeout(1.0, name="capture", clock=clock)
    with limit:
        pass
    try:
        with limit:
            clock.advance(2.0)
    except TimeoutError_:
        pass
    assert seen == [("timeout", "capture", "expired")]
