"""Backend fixtures: every backend-dependent test runs on memory, Redis and Redis Cluster."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from fintech_resilience import MemoryBackend, RedisBackend
from fintech_resilience.backends.base import Backend
from fintech_resilience.testing import ManualClock

BACKENDS = ("memory", "redis", "cluster")
# generous: tests that are not about timeouts must not fail on a loaded 2-core machine
TEST_TIMEOUT = 2.0


@pytest.fixture
def clock() -> ManualClock:
    """A manual clock at a fixed instant (2023-11-14T22:13:20Z)."""
    return ManualClock(1_700_000_000.0)


def make_backend(kind: str, request: pytest.FixtureRequest) -> Backend:
    if kind == "memory":
        return MemoryBackend()
    url = request.getfixturevalue("redis_url" if kind == "redis" else "cluster_url")
    return RedisBackend.from_url(url, timeout=TEST_TIMEOUT)


# The fixtures are async so that their teardown runs on the test's event loop and closes the
# asyncio connections the test opened there (sync tests get a loop of their own; harmless).


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    """A fresh backend of each kind: memory, Redis standalone, Redis Cluster (all flushed)."""
    b = make_backend(request.param, request)
    yield b
    await b.aclose()


@pytest.fixture(params=("redis", "cluster"))
async def redis_backend(request: pytest.FixtureRequest) -> AsyncIterator[RedisBackend]:
    """A RedisBackend on standalone Redis and on a 3-primary Cluster."""
    b = make_backend(request.param, request)
    assert isinstance(b, RedisBackend)
    yield b
    await b.aclose()


@pytest.fixture
async def backend_pair(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Backend, Backend]]:
    """A MemoryBackend and a RedisBackend, for differential tests."""
    red = make_backend("redis", request)
    yield MemoryBackend(), red
    await red.aclose()


def run_async(coro: object) -> object:
    """Run a coroutine to completion from sync test code (helper for subprocesses)."""
    return asyncio.run(coro)  # type: ignore[arg-type]
