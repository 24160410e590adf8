"""Health per node: a dead primary takes only its own slots to ``on_backend_error``; a refused
connection (``maxclients``) is not a dead server; connecting has its own timeout.

Real servers: a 3-primary Cluster with one primary SIGKILLed, a standalone Redis with
``maxclients 20`` and 200 threads, a TLS server behind a latency proxy.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
import servers

from fintech_resilience import BackendUnavailable, RateLimiter, RedisBackend

pytestmark = [pytest.mark.redis]


@pytest.fixture
def small_cluster() -> Iterator[servers.RedisClusterServers]:
    """A 3-primary Cluster owned by the test; healthy shards keep serving when one dies."""
    if not servers.REAL_REDIS:
        pytest.skip(servers.FAKEREDIS_FALLBACK)
    cluster = servers.RedisClusterServers(
        3, extra_args=["--cluster-require-full-coverage", "no"])
    yield cluster
    cluster.stop()


def _keys_by_node(cluster: servers.RedisClusterServers, limiter: RateLimiter,
                  count: int = 60) -> dict[int, list[str]]:
    """User keys of ``limiter`` grouped by the index of the primary serving them."""
    out: dict[int, list[str]] = {}
    for i in range(count):
        key = f"merchant-{i}"
        stored = limiter.storage_keys(key)[0]
        out.setdefault(cluster.primary_index(stored), []).append(key)
    assert sorted(out) == [0, 1, 2]
    return out


async def test_a_dead_primary_sends_only_its_own_slots_to_the_fallback(
        small_cluster: servers.RedisClusterServers, caplog: pytest.LogCaptureFixture) -> None:
    backend = RedisBackend.from_url(small_cluster.url, timeout=0.1, cooldown=0.2)
    limiter = RateLimiter("100/hour", backend=backend, name="isolated", on_backend_error="local")
    by_node = _keys_by_node(small_cluster, limiter)

    def logged(what: str) -> int:
        return sum(what in r.getMessage() for r in caplog.records)

    try:
        for keys in by_node.values():
            for key in keys:
                assert limiter.acquire(key).fallback is None
        small_cluster.nodes[0].kill()
        with caplog.at_level("WARNING", logger="fintech_resilience"):
            for attempt in range(1, 6):  # enough calls to open any health breaker
                for index, keys in by_node.items():
                    for key in keys:
                        decisions = [limiter.acquire(key), await limiter.aacquire(key)]
                        if index == 0:
                            assert [d.fallback for d in decisions] == ["local", "local"]
                        else:  # shared and exact: two units per attempt, one before the kill
                            assert [d.fallback for d in decisions] == [None, None], (index, key)
                            assert [d.remaining for d in decisions] == [
                                100 - 2 * attempt, 99 - 2 * attempt]
            # shared and local decisions alternate, and the log says so once, without flapping
            assert (logged("backend unavailable"), logged("backend recovered")) == (1, 0)
            small_cluster.nodes[0].restart()  # it comes back with its slots (and no data)
            small_cluster.wait_ready()
            dead_key = by_node[0][0]
            for _ in range(200):
                if limiter.acquire(dead_key).fallback is None:
                    break
                await asyncio.sleep(0.05)
            for keys in by_node.values():
                for key in keys:
                    assert limiter.acquire(key).fallback is None
            assert (logged("backend unavailable"), logged("backend recovered")) == (1, 1)
    finally:
        await backend.aclose()


def test_a_refused_connection_is_not_a_dead_server(fresh_redis: servers.RedisServer) -> None:
    """maxclients 20 and 200 threads: the threads that got a connection decide on Redis all
    along; the refused ones follow on_backend_error without opening the health breaker."""
    fresh_redis.command("CONFIG", "SET", "maxclients", "20")
    backend = RedisBackend.from_url(fresh_redis.url, timeout=1.0, cooldown=5.0)
    limiter = RateLimiter("1000000/second", backend=backend, name="crowd",
                          on_backend_error="local")
    start, end = threading.Barrier(200), threading.Barrier(200)
    fallbacks: dict[int, list[str | None]] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            start.wait()
            fallbacks[i] = [limiter.acquire(f"k{i}").fallback for _ in range(50)]
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            end.wait()  # nobody lets go of a connection before all have decided

    threads = [threading.Thread(target=work, args=(i,)) for i in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        connected = [seen for seen in fallbacks.values() if seen[0] is None]
        refused = [seen for seen in fallbacks.values() if seen[0] == "local"]
        assert len(connected) + len(refused) == 200
        assert 10 <= len(connected) <= 20
        # a thread with a connection kept deciding on Redis: nobody opened the breaker on it
        assert all(seen == [None] * 50 for seen in connected)
        assert sum(seen.count(None) for seen in fallbacks.values()) >= 10 * 50
        assert limiter.acquire("after").fallback is None  # the main thread gets a connection
    finally:
        backend.close()


async def test_the_first_tls_connection_gets_the_connect_timeout(
        tcp_proxy, request: pytest.FixtureRequest) -> None:
    """Each reply comes 150 ms late, well within the 250 ms command timeout; the TLS 1.2
    handshake needs two such round trips. Connecting is bounded by the connect timeout, so
    the first decisions are shared, sync and asyncio."""
    if not servers.REAL_REDIS:
        pytest.skip(servers.FAKEREDIS_FALLBACK)
    server = servers.TlsRedisServer(["--tls-protocols", "TLSv1.2"])
    request.addfinalizer(server.stop)
    proxy = tcp_proxy((servers.LOCALHOST, server.tls_port))
    proxy.set_latency(0.15)
    url = f"rediss://{servers.LOCALHOST}:{proxy.port}/0"
    backend = RedisBackend.from_url(url, timeout=0.25, **server.client_options())
    limiter = RateLimiter("10/minute", backend=backend, name="handshake",
                          on_backend_error="raise")
    try:
        assert (await asyncio.to_thread(limiter.acquire, "sync")).remaining == 9
        assert (await limiter.aacquire("async")).remaining == 9
    finally:
        await backend.aclose()


def test_connect_timeout_defaults_to_one_second_apart_from_the_command_timeout() -> None:
    import redis

    from fintech_resilience import ConfigurationError

    backend = RedisBackend.from_url("redis://127.0.0.1:1/0")
    assert (backend.settings.timeout, backend.settings.connect_timeout) == (0.05, 1.0)
    backend = RedisBackend.from_url("redis://127.0.0.1:1/0", timeout=0.2, connect_timeout=3)
    assert (backend.settings.timeout, backend.settings.connect_timeout) == (0.2, 3)
    # a client passed in keeps its timeouts (redis-py's defaults are 5 s), unless told
    given = RedisBackend(redis.Redis(port=1, socket_timeout=0.3, socket_connect_timeout=2))
    assert (given.settings.timeout, given.settings.connect_timeout) == (0.3, 2)
    told = RedisBackend(redis.Redis(port=1), timeout=0.05, connect_timeout=1.0)
    assert (told.settings.timeout, told.settings.connect_timeout) == (0.05, 1.0)
    for bad in ({"timeout": 0}, {"connect_timeout": 0}, {"connect_timeout": -1}):
        with pytest.raises(ConfigurationError):
            RedisBackend.from_url("redis://127.0.0.1:1/0", **bad)
        with pytest.raises(ConfigurationError):
            RedisBackend(redis.Redis(port=1), **bad)


def test_a_refusing_server_still_answers_with_the_policy(fresh_redis: servers.RedisServer) -> None:
    """maxclients reached for every connection: each call gets on_backend_error's answer
    (here "raise": BackendUnavailable), never another exception."""
    fresh_redis.command("CONFIG", "SET", "maxclients", "1")
    holder = fresh_redis.client()
    holder.ping()  # takes the only slot
    backend = RedisBackend.from_url(fresh_redis.url, timeout=1.0)
    limiter = RateLimiter("10/minute", backend=backend, name="full", on_backend_error="raise")
    try:
        for _ in range(3):
            with pytest.raises(BackendUnavailable, match="max number of clients"):
                limiter.acquire("k")
    finally:
        holder.close()
        backend.close()
