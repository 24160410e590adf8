"""RedisBackend: URLs, clients, Cluster slots, the script cache, keys and TTLs."""

from __future__ import annotations

import asyncio

import pytest
import redis
import redis.asyncio

from fintech_resilience import ConfigurationError, RateLimiter, RedisBackend
from fintech_resilience.testing import ManualClock


async def test_ten_thousand_tenants_spread_over_the_cluster(cluster_url):
    backend = RedisBackend.from_url(cluster_url, timeout=2.0)
    rl = RateLimiter("5/minute; 100/day", backend=backend, name="tenants",
                     on_backend_error="raise", clock=ManualClock())
    tenants = [f"tenant-{i}" for i in range(10_000)]
    for chunk in range(0, len(tenants), 500):  # asyncio, 500 in flight at a time
        decisions = await asyncio.gather(*(rl.aacquire(t) for t in tenants[chunk:chunk + 500]))
        assert all(d.allowed and d.remaining == 4 for d in decisions)
    for t in tenants[:200]:  # and the sync client
        assert rl.acquire(t).remaining == 3
    client = backend.client
    slots = {client.keyslot(rl.storage_keys(t)[0]) for t in tenants}
    assert len(slots) > 5_000  # tenants are spread, not piled in one slot
    per_node = [n.redis_connection.dbsize() for n in client.get_primaries()]
    assert sum(per_node) == 2 * 10_000  # two limits per tenant, nothing else
    assert min(per_node) > 5_000  # every primary holds its share
    await backend.aclose()


def test_every_key_has_a_ttl(redis_url):
    backend = RedisBackend.from_url(redis_url, timeout=2.0)
    for algorithm in ("gcra", "sliding_window", "fixed_window"):
        RateLimiter("3/second; 10/hour", backend=backend, algorithm=algorithm,
                    name=f"ttl-{algorithm}").acquire("m")
    from fintech_resilience import ConcurrencyLimiter

    ConcurrencyLimiter(3, backend=backend, name="ttl").try_acquire("psp")
    client = backend.client
    keys = client.keys("*")
    assert len(keys) == 7
    # at most three windows of the longest limit (the sliding window keeps two, plus one)
    assert all(0 < client.pttl(k) <= 3 * 3600 * 1000 + 1000 for k in keys)
    backend.close()


def test_script_cache_flush_is_transparent(redis_url):
    backend = RedisBackend.from_url(redis_url, timeout=2.0)
    rl = RateLimiter("10/minute", backend=backend, name="flush", on_backend_error="raise")
    assert rl.acquire("m").remaining == 9
    backend.client.script_flush()
    d = rl.acquire("m")
    assert d.fallback is None and d.remaining == 8  # reloaded with EVAL, same state
    backend.close()


async def test_async_script_cache_flush_is_transparent(redis_url):
    backend = RedisBackend.from_url(redis_url, timeout=2.0)
    rl = RateLimiter("100/minute", backend=backend, name="aflush", on_backend_error="raise")
    await rl.aacquire("m")
    await backend.async_client().script_flush()
    decisions = await asyncio.gather(*(rl.aacquire("m") for _ in range(10)))  # pipelined
    assert sorted(d.remaining for d in decisions) == list(range(89, 99))
    await backend.aclose()


async def test_existing_clients_are_accepted(redis_url):
    sync_client = redis.Redis.from_url(redis_url)
    backend = RedisBackend(sync_client)  # the asyncio twin is derived from its pool
    rl = RateLimiter("10/minute", backend=backend, name="given", on_backend_error="raise")
    assert rl.acquire("m").remaining == 9
    assert (await rl.aacquire("m")).remaining == 8
    await backend.aclose()
    async_only = RedisBackend(async_client=redis.asyncio.Redis.from_url(redis_url))
    rl2 = RateLimiter("10/minute", backend=async_only, name="given", on_backend_error="raise")
    assert (await rl2.aacquire("m")).remaining == 7
    # the backend connects with the client's settings: sync decisions work too
    assert (await asyncio.to_thread(rl2.acquire, "m")).remaining == 6
    await async_only.aclose()
    await async_only.async_client().aclose()  # the caller's client is the caller's to close
    sync_only = RedisBackend(redis.Redis.from_url(redis_url))
    with pytest.raises(ConfigurationError, match="no asyncio client"):
        sync_only.async_client()
    sync_only.close()


def test_unix_socket_url(tmp_path):
    import servers

    path = tmp_path / "redis.sock"
    server = servers.RedisServer(["--unixsocket", str(path), "--unixsocketperm", "700"])
    try:
        backend = RedisBackend.from_url(f"unix://{path}?db=0", timeout=2.0)
        rl = RateLimiter("2/minute", backend=backend, name="unix", on_backend_error="raise")
        assert rl.acquire("m").remaining == 1
        backend.close()
    finally:
        server.stop()


@pytest.mark.parametrize("url", [
    "http://localhost", "localhost:6379", "", "redis+sentinel://localhost:26379",
])
def test_bad_urls_are_configuration_errors(url):
    with pytest.raises(ConfigurationError):
        RedisBackend.from_url(url)


def test_bad_backend_options():
    with pytest.raises(ConfigurationError):
        RedisBackend.from_url("redis://localhost", timeout=0)
    with pytest.raises(ConfigurationError):
        RedisBackend()
    with pytest.raises(ConfigurationError):
        RedisBackend(object())


def test_eviction_policy_warning(fresh_redis, caplog):
    from fintech_resilience import IdempotencyStore

    backend = RedisBackend.from_url(fresh_redis.url, timeout=2.0)
    fresh_redis.command("CONFIG", "SET", "maxmemory-policy", "noeviction")
    with caplog.at_level("WARNING", logger="fintech_resilience"):
        IdempotencyStore(backend, secret=b"s" * 32)
    assert not [r for r in caplog.records if "maxmemory-policy" in r.getMessage()]
    fresh_redis.command("CONFIG", "SET", "maxmemory-policy", "allkeys-lru")
    with caplog.at_level("WARNING", logger="fintech_resilience"):
        IdempotencyStore(backend, secret=b"s" * 32)
    warned = [r.getMessage() for r in caplog.records if "maxmemory-policy" in r.getMessage()]
    assert len(warned) == 1 and "allkeys-lru" in warned[0]
    assert backend.eviction_policies() == ["allkeys-lru"]
    fresh_redis.kill()
    IdempotencyStore(backend, secret=b"s" * 32)  # construction never fails on a dead Redis
    backend.close()


def test_eviction_policies_on_every_cluster_primary(cluster_url):
    backend = RedisBackend.from_url(cluster_url, timeout=2.0)
    assert backend.eviction_policies() == ["noeviction"] * 3
    assert backend.warn_if_evicting("records") is False
    backend.close()


def _node_connections(url: str) -> int:
    """Connections the server(s) of ``url`` hold, not counting the one asking."""
    hosts = url.split("//", 1)[1].split("/", 1)[0].split(",")
    total = 0
    for host in hosts:
        h, p = host.rsplit(":", 1)
        admin = redis.Redis(host=h, port=int(p))
        try:
            total += len(admin.client_list()) - 1
        finally:
            admin.close()
    return total


@pytest.mark.parametrize("topology", ["standalone", "cluster"])
def test_a_worker_running_one_loop_per_job_keeps_nothing_of_finished_loops(
        topology: str, request: pytest.FixtureRequest) -> None:
    import gc
    import time
    import weakref

    url = request.getfixturevalue("redis_url" if topology == "standalone" else "cluster_url")
    backend = RedisBackend.from_url(url, timeout=1.0)
    limiter = RateLimiter("1000/second", backend=backend, name="jobs")
    limiter.acquire("warm")  # the sync connection stays: it is not the asyncio side's
    baseline = _node_connections(url)
    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def job() -> bool:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        return (await limiter.aacquire("k")).allowed

    for _ in range(5):  # no aclose(): each loop's shutdown closes what it opened
        assert asyncio.run(job())
    gc.collect()
    assert [ref() for ref in loops] == [None] * 5
    deadline = time.monotonic() + 5
    while _node_connections(url) > baseline and time.monotonic() < deadline:
        time.sleep(0.02)  # the server learns of a close on its own time
    assert _node_connections(url) == baseline
    backend.close()
