"""Sync decisions on a standalone Redis use one connection per thread, outside the pool.

The checks here are the pool's own guarantees, kept without the pool: a connection the server
closed is replaced before use, a connection that failed mid-command is never reused, a forked
child never shares its parent's socket, and ``close()`` closes them all.
"""

from __future__ import annotations

import multiprocessing
import threading
import time

import pytest
import redis
import servers

from fintech_resilience import BackendUnavailable, RateLimiter, RedisBackend

pytestmark = pytest.mark.redis


def _limiter(url: str) -> RateLimiter:
    # 1000/hour: nothing refills during a test, so each decision's remaining is exact
    backend = RedisBackend.from_url(url, timeout=1.0, client_name="direct")
    return RateLimiter("1000/hour", backend=backend, name="direct", on_backend_error="raise")


def test_each_thread_decides_on_its_own_connection_not_the_pool(redis_url: str) -> None:
    rl = _limiter(redis_url)
    seen: list[int] = []
    barrier = threading.Barrier(4)
    decided, checked = threading.Barrier(5), threading.Event()

    def work() -> None:
        barrier.wait()
        for _ in range(50):
            seen.append(rl.acquire("k").remaining)
        decided.wait()
        checked.wait()  # alive (with its connection) until the test has counted

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    decided.wait()
    try:
        assert sorted(seen) == list(range(800, 1000))  # each decision consumed exactly one unit
        assert len(servers.connections_named(redis_url, "direct")) == 4
        assert rl.backend.client.connection_pool._created_connections == 0  # pool untouched
        rl.backend.close()
        assert servers.all_closed(redis_url, "direct")  # close() closed every thread's one
    finally:
        checked.set()
        for t in threads:
            t.join()
        rl.backend.close()


def test_a_connection_the_server_closed_is_replaced_before_use(redis_url: str) -> None:
    rl = _limiter(redis_url)
    try:
        assert rl.acquire("k").allowed
        (before,) = servers.connections_named(redis_url, "direct")
        admin = redis.Redis.from_url(redis_url)
        admin.client_kill_filter(_id=before["id"])
        admin.close()
        decision = rl.acquire("k")  # on_backend_error="raise": a failure would raise here
        assert decision.allowed and decision.fallback is None
        (after,) = servers.connections_named(redis_url, "direct")
        assert after["id"] != before["id"]
    finally:
        rl.backend.close()


def test_a_timed_out_connection_is_dropped_and_never_reused(redis_url: str) -> None:
    backend = RedisBackend.from_url(redis_url, timeout=0.2, client_name="slow")
    rl = RateLimiter("1000/hour", backend=backend, name="direct", on_backend_error="raise")
    admin = redis.Redis.from_url(redis_url)
    try:
        assert rl.acquire("a").remaining == 999
        admin.execute_command("CLIENT", "PAUSE", 600, "ALL")  # the reply comes after the timeout
        with pytest.raises(BackendUnavailable):
            rl.acquire("a")
        backend.health.success()  # let the next call through at once
        admin.execute_command("CLIENT", "UNPAUSE")
        # a late reply to the timed-out call would say 998 (key "a"); key "b" answers 999
        assert rl.acquire("b").remaining == 999
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
        admin.close()
        backend.close()


def _child(url: str, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    rl = _CHILD_LIMITER[0]
    try:
        out.put([rl.acquire("k").remaining for _ in range(5)])
    except Exception as exc:  # reported to the parent, which fails the test
        out.put(repr(exc))


_CHILD_LIMITER: list[RateLimiter] = []


def test_a_forked_child_never_uses_its_parents_connection(redis_url: str) -> None:
    rl = _limiter(redis_url)
    _CHILD_LIMITER[:] = [rl]
    try:
        assert rl.acquire("k").remaining == 999  # the parent's thread connection exists
        ctx = multiprocessing.get_context("fork")
        out = ctx.Queue()
        child = ctx.Process(target=_child, args=(redis_url, out))
        child.start()
        got = out.get(timeout=20)
        child.join(20)
        assert got == [998, 997, 996, 995, 994]
        assert rl.acquire("k").remaining == 993  # the parent's connection is still in step
        deadline = time.monotonic() + 5  # the server notices the child's exit on its own time
        while (len(servers.connections_named(redis_url, "direct")) > 1
               and time.monotonic() < deadline):
            time.sleep(0.01)
        # the child's connection closed when it exited; the parent's is the one left
        assert len(servers.connections_named(redis_url, "direct")) == 1
    finally:
        _CHILD_LIMITER.clear()
        rl.backend.close()
