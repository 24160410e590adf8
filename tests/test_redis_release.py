"""What a finished event loop or thread held is released when it ends, not at the next gc.

An event loop driven by ``run_until_complete`` and ``close()`` (no ``asyncio.run``: no task is
cancelled for us) and a thread that returns must close the Redis connections the backend opened
for them, and the backend must not keep the loop alive. Counted on real servers (``CLIENT
LIST``), on standalone Redis and on a Cluster.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref

import pytest
import redis

from fintech_resilience import RateLimiter, RedisBackend

pytestmark = pytest.mark.redis


def _named(url: str, name: str) -> int:
    """Connections named ``name`` on the server(s) of ``url`` (every node of a Cluster)."""
    hosts = url.split("//", 1)[1].split("/", 1)[0].split(",")
    total = 0
    for host in hosts:
        h, p = host.rsplit(":", 1)
        admin = redis.Redis(host=h, port=int(p))
        try:
            total += sum(1 for c in admin.client_list() if c.get("name") == name)
        finally:
            admin.close()
    return total


def _until(predicate, timeout: float = 5.0) -> bool:
    """Poll: the server learns of a close on its own time."""
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


@pytest.mark.parametrize("topology", ["standalone", "cluster"])
def test_a_loop_closed_without_asyncio_run_releases_its_connections_and_itself(
        topology: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("redis_url" if topology == "standalone" else "cluster_url")
    backend = RedisBackend.from_url(url, timeout=1.0, client_name="loop-release")
    limiter = RateLimiter("1000/second", backend=backend, name="loops",
                          on_backend_error="raise")
    refs: list[weakref.ref[asyncio.AbstractEventLoop]] = []
    try:
        for job in range(3):
            loop = asyncio.new_event_loop()
            refs.append(weakref.ref(loop))
            keys = [f"job{job}-{i}" for i in range(30)]  # spread over the Cluster's primaries

            async def decide(keys: list[str] = keys) -> list:
                return await asyncio.gather(*(limiter.aacquire(k) for k in keys))

            decisions = loop.run_until_complete(decide())
            assert all(d.allowed and d.fallback is None for d in decisions)
            assert _named(url, "loop-release") >= 1  # the loop's connection(s) are open
            loop.close()
            del loop
            assert _until(lambda: _named(url, "loop-release") == 0), (
                "the closed loop's connections are still open")
        gc.collect()
        assert [ref() for ref in refs] == [None, None, None]  # no loop kept alive
    finally:
        backend.close()


def test_a_loop_closed_by_asyncio_run_releases_its_connections(redis_url: str) -> None:
    backend = RedisBackend.from_url(redis_url, timeout=1.0, client_name="run-release")
    limiter = RateLimiter("1000/second", backend=backend, name="runs", on_backend_error="raise")

    async def job() -> bool:
        return (await limiter.aacquire("k")).allowed

    try:
        for _ in range(3):
            assert asyncio.run(job())
            assert _until(lambda: _named(redis_url, "run-release") == 0)
    finally:
        backend.close()


def test_threads_that_finish_release_their_connection_without_gc(redis_url: str) -> None:
    """Threads come and go, at most 100 alive at once: the server never holds many more than
    100 of the backend's connections, and none once they are all gone - gc or not."""
    backend = RedisBackend.from_url(redis_url, timeout=2.0, client_name="churn")
    limiter = RateLimiter("1000000/second", backend=backend, name="churn",
                          on_backend_error="raise")
    live = threading.BoundedSemaphore(100)
    peak = [0]
    stop = threading.Event()
    failures: list[BaseException] = []

    def watch() -> None:
        admin = redis.Redis.from_url(redis_url)
        try:
            while not stop.is_set():
                count = sum(1 for c in admin.client_list() if c.get("name") == "churn")
                peak[0] = max(peak[0], count)
        finally:
            admin.close()

    def work(i: int) -> None:
        try:
            for j in range(3):
                limiter.acquire(f"t{i}-{j}")
        except BaseException as exc:  # reported by the test below
            failures.append(exc)
        finally:
            live.release()

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = []
    try:
        for i in range(600):
            live.acquire()
            t = threading.Thread(target=work, args=(i,))
            t.start()
            threads.append(t)
        for t in threads:
            t.join()
    finally:
        stop.set()
        watcher.join()
    assert failures == []
    # a thread's connection closes as the thread ends; the server sees it a moment later
    assert peak[0] <= 105, f"peak of {peak[0]} open connections with at most 100 live threads"
    assert _until(lambda: _named(redis_url, "churn") == 0)
    backend.close()
