"""Two clients (as two processes would) share one breaker and one retry budget through Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import requests
from test_outbound import FlakyServer, flaky_server  # noqa: F401 - the `server` fixture

import fintech_resilience as fr
from fintech_resilience import RedisBackend
from fintech_resilience.breaker.circuit import CircuitBreaker, CountWindow
from fintech_resilience.httpx import AsyncResilientTransport
from fintech_resilience.requests import ResilientAdapter
from fintech_resilience.retries.budget import RetryBudget
from fintech_resilience.testing import ManualClock


@pytest.fixture
async def red(redis_url: str) -> AsyncIterator[RedisBackend]:
    backend = RedisBackend.from_url(redis_url, timeout=2.0)
    yield backend
    await backend.aclose()


def policy(backend: RedisBackend, clock: ManualClock) -> fr.Policy:
    """What each process builds: its own objects, the same names, the same Redis."""
    breaker = CircuitBreaker("psp-shared", backend=backend, clock=clock, minimum_calls=2,
                             failure_rate=0.5, window=CountWindow(10), break_duration=30.0,
                             ask_every_call=True)  # so the very next call obeys a trip
    budget = RetryBudget("psp-shared", backend=backend, ratio=0.5, min_per_second=0,
                         clock=clock)
    return fr.Policy(name="psp", breaker=breaker,
                     retry=fr.retry(attempts=3, wait=0, budget=budget))


async def test_breaker_and_retry_budget_are_shared_through_redis(
        red: RedisBackend, server: FlakyServer) -> None:
    clock = ManualClock()
    ok, flaky, down = server.script("/ok", 200), server.script("/flaky", 503), server.script(
        "/down", 503)
    with requests.Session() as first:
        first.mount("http://", ResilientAdapter(policy=policy(red, clock)))
        # two calls deposit 2 x 0.5 = one whole retry token into the shared budget
        assert [first.get(ok, timeout=5).status_code for _ in range(2)] == [200, 200]
        async with httpx.AsyncClient(
                transport=AsyncResilientTransport(policy=policy(red, clock))) as second:
            # its own deposit (0.5) + the first client's token pays for exactly one retry
            with pytest.raises(fr.RetryBudgetExhausted):
                await second.get(flaky)
            assert len(server.hits("/flaky")) == 2  # alone, its budget would allow no retry
            # 2 failures in the 4 calls of the shared window trip the breaker: the first
            # client is refused too
            with pytest.raises(fr.CircuitOpen):
                first.get(down, timeout=5)
    assert server.hits("/down") == []
