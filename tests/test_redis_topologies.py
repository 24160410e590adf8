"""One transport on every topology: TLS, Sentinel and Cluster decide over the backend's own
connections - one per thread and node, one pipelined per event loop and node - exactly, in one
round trip each, following MOVED and ASK and reloading scripts.

Real servers: TLS with certificates generated for the session (and a server requiring client
certificates), a Sentinel group, a 3-primary Cluster owned by this module (slots are migrated).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import servers

from fintech_resilience import BackendUnavailable, RateLimiter, RedisBackend

pytestmark = pytest.mark.redis


def _require_real_redis() -> None:
    if not servers.REAL_REDIS:
        pytest.skip(servers.FAKEREDIS_FALLBACK)


@pytest.fixture(scope="module")
def tls_server() -> Iterator[servers.TlsRedisServer]:
    _require_real_redis()
    server = servers.TlsRedisServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def own_cluster() -> Iterator[servers.RedisClusterServers]:
    """A 3-primary Cluster for this module: its slots are moved around here."""
    _require_real_redis()
    cluster = servers.RedisClusterServers(3)
    yield cluster
    cluster.stop()


def _named(node: Any, name: str) -> int:
    """Connections called ``name`` on a server (``command`` over its plain port)."""
    listing = node.command("CLIENT", "LIST").decode()
    return sum(1 for line in listing.splitlines() if f" name={name} " in f" {line} ")


def _scripts_run(nodes: list[Any]) -> int:
    """EVALSHA + EVAL calls the servers ran since their stats were reset."""
    total = 0
    for node in nodes:
        for name, value in node.info("commandstats").items():
            if name in ("cmdstat_evalsha", "cmdstat_eval"):
                total += int(value.split(",")[0].split("=")[1])
    return total


class _Crowd:
    """Threads and event loops that decide, then wait (holding their connections) until
    released, so the test can count connections."""

    def __init__(self, limiter: RateLimiter, keys: list[str], threads: int, loops: int) -> None:
        self.limiter, self.keys = limiter, keys
        self.remaining: list[int] = []
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._decided = threading.Barrier(threads + loops + 1)
        self._release = threading.Event()
        self._workers = [threading.Thread(target=self._sync) for _ in range(threads)]
        self._workers += [threading.Thread(target=self._async) for _ in range(loops)]
        for worker in self._workers:
            worker.start()
        self._decided.wait()

    def _record(self, remaining: list[int]) -> None:
        with self._lock:
            self.remaining += remaining

    def _sync(self) -> None:
        try:
            self._record([self.limiter.acquire(k).remaining for k in self.keys])
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)
        self._decided.wait()
        self._release.wait()

    def _async(self) -> None:
        async def decide() -> None:
            try:
                decisions = await asyncio.gather(*(self.limiter.aacquire(k) for k in self.keys))
                self._record([d.remaining for d in decisions])
            except BaseException as exc:  # reported by the test
                self.errors.append(exc)
            await asyncio.to_thread(self._decided.wait)
            await asyncio.to_thread(self._release.wait)

        asyncio.run(decide())

    def done(self) -> None:
        self._release.set()
        for worker in self._workers:
            worker.join()


# -- TLS ------------------------------------------------------------------------------------------

def test_tls_decisions_are_exact_on_one_connection_per_thread_and_loop(
        tls_server: servers.TlsRedisServer) -> None:
    backend = RedisBackend.from_url(tls_server.tls_url, timeout=1.0, client_name="tls-crowd",
                                    **tls_server.client_options())
    limiter = RateLimiter("1000/hour", backend=backend, name="tls", on_backend_error="raise")
    keys = [f"k{i}" for i in range(10)]
    crowd = _Crowd(limiter, keys, threads=3, loops=2)
    try:
        assert crowd.errors == []
        # 5 decisions per key (3 threads, 2 loops), each its own: 999 down to 995, per key
        assert sorted(crowd.remaining) == sorted(r for _ in keys for r in range(995, 1000))
        assert _named(tls_server, "tls-crowd") == 5
    finally:
        crowd.done()
        backend.close()


def test_tls_with_a_client_certificate_and_refusals_follow_the_policy() -> None:
    _require_real_redis()
    strict = servers.TlsRedisServer(auth_clients=True)
    try:
        backend = RedisBackend.from_url(strict.tls_url, timeout=1.0, **strict.client_options())
        limiter = RateLimiter("10/hour", backend=backend, name="cert", on_backend_error="raise")
        assert limiter.acquire("k").remaining == 9
        assert asyncio.run(limiter.aacquire("k")).remaining == 8
        backend.close()
        # no client certificate, or a CA that does not sign the server's: the handshake fails,
        # and the caller sees the policy's answer (here "raise": BackendUnavailable), nothing else
        for options in (strict.files.client_options(client_cert=False),
                        {"ssl_cert_reqs": "required"}):
            backend = RedisBackend.from_url(strict.tls_url, timeout=1.0, **options)
            limiter = RateLimiter("10/hour", backend=backend, name="cert",
                                  on_backend_error="raise")
            with pytest.raises(BackendUnavailable):
                limiter.acquire("k")
            with pytest.raises(BackendUnavailable):
                asyncio.run(limiter.aacquire("k"))
            backend.close()
    finally:
        strict.stop()


# -- Sentinel -------------------------------------------------------------------------------------

async def test_sentinel_decisions_go_to_the_primary_on_the_backends_connections(
        sentinel: servers.SentinelServers) -> None:
    backend = RedisBackend.from_url(sentinel.url, timeout=1.0, client_name="via-sentinel")
    limiter = RateLimiter("1000/hour", backend=backend, name="sentinel",
                          on_backend_error="raise")
    try:
        decisions = await asyncio.gather(*(limiter.aacquire("k") for _ in range(30)))
        assert sorted(d.remaining for d in decisions) == list(range(970, 1000))
        assert (await asyncio.to_thread(limiter.acquire, "k")).remaining == 969
        assert _named(sentinel.primary, "via-sentinel") == 2  # the loop's and the thread's
        assert _named(sentinel.replica, "via-sentinel") == 0
    finally:
        await backend.aclose()


# -- Cluster --------------------------------------------------------------------------------------

def _cluster_keys(cluster: servers.RedisClusterServers, limiter: RateLimiter,
                  per_node: int = 4) -> list[str]:
    """User keys whose records land on every primary, ``per_node`` each."""
    found: dict[int, list[str]] = {0: [], 1: [], 2: []}
    i = 0
    while min(len(v) for v in found.values()) < per_node:
        key = f"user-{i}"
        owner = found[cluster.primary_index(limiter.storage_keys(key)[0])]
        if len(owner) < per_node:
            owner.append(key)
        i += 1
    return [k for keys in found.values() for k in keys]


def test_cluster_one_connection_per_primary_per_thread_and_loop(
        own_cluster: servers.RedisClusterServers) -> None:
    own_cluster.flushall()
    backend = RedisBackend.from_url(own_cluster.url, timeout=1.0, client_name="cluster-crowd")
    limiter = RateLimiter("1000/hour", backend=backend, name="crowd", on_backend_error="raise")
    keys = _cluster_keys(own_cluster, limiter)
    crowd = _Crowd(limiter, keys, threads=3, loops=2)
    try:
        assert crowd.errors == []
        assert sorted(crowd.remaining) == sorted(r for _ in keys for r in range(995, 1000))
        # every thread and every loop holds one connection to each primary: 5 per primary
        assert [_named(node, "cluster-crowd") for node in own_cluster.nodes] == [5, 5, 5]
    finally:
        crowd.done()
        backend.close()


def test_one_decision_is_one_evalsha_on_every_topology(
        tls_server: servers.TlsRedisServer, own_cluster: servers.RedisClusterServers,
        sentinel: servers.SentinelServers) -> None:
    cases = [(tls_server.tls_url, [tls_server], tls_server.client_options()),
             (sentinel.url, [sentinel.primary], {}),
             (own_cluster.url, own_cluster.nodes, {})]
    for url, nodes, options in cases:
        backend = RedisBackend.from_url(url, timeout=1.0, **options)
        limiter = RateLimiter("1000000/hour", backend=backend, name="trips",
                              on_backend_error="raise")
        keys = [f"t{i}" for i in range(60)]
        for key in keys:  # scripts loaded, connections open
            limiter.acquire(key)

        async def decide(limiter: RateLimiter = limiter, keys: list[str] = keys) -> None:
            await asyncio.gather(*(limiter.aacquire(k) for k in keys))
            await asyncio.gather(*(limiter.aacquire(k) for k in keys))

        asyncio.run(decide())  # its first round loads nothing: scripts are cached
        for node in nodes:
            node.command("CONFIG", "RESETSTAT")
        for key in keys:
            limiter.acquire(key)

        asyncio.run(decide())
        assert _scripts_run(nodes) == 3 * len(keys), url
        backend.close()


def _ids(cluster: servers.RedisClusterServers) -> list[str]:
    return [node.command("CLUSTER", "MYID").decode() for node in cluster.nodes]


def _move_slot(cluster: servers.RedisClusterServers, key: str, to: int, *,
               finish: bool = True) -> int:
    """Migrate ``key``'s slot (and its keys) to primary ``to``; with ``finish=False`` stop
    half-way (source MIGRATING, target IMPORTING, keys moved): the source then answers ASK."""
    slot = redis.crc.key_slot(key.encode())
    source = cluster.primary_index(key)
    ids = _ids(cluster)
    src, dst = cluster.nodes[source], cluster.nodes[to]
    dst.command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source])
    src.command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[to])
    for stored in src.command("CLUSTER", "GETKEYSINSLOT", slot, 1000):
        src.command("MIGRATE", dst.host, dst.port, stored, 0, 5000)
    if finish:
        for node in cluster.nodes:
            node.command("CLUSTER", "SETSLOT", slot, "NODE", ids[to])
    return source


def _finish(cluster: servers.RedisClusterServers, key: str, owner: int) -> None:
    slot = redis.crc.key_slot(key.encode())
    ids = _ids(cluster)
    for node in cluster.nodes:
        node.command("CLUSTER", "SETSLOT", slot, "NODE", ids[owner])


@pytest.mark.parametrize("mode", ["sync", "asyncio"])
def test_moved_reroutes_the_slot_and_the_decision_is_exact(
        own_cluster: servers.RedisClusterServers, mode: str) -> None:
    own_cluster.flushall()
    backend = RedisBackend.from_url(own_cluster.url, timeout=1.0)
    limiter = RateLimiter("100/hour", backend=backend, name=f"moved-{mode}",
                          on_backend_error="raise")
    stored = limiter.storage_keys("payer")[0]

    def decide() -> int:
        if mode == "sync":
            return limiter.acquire("payer").remaining
        return asyncio.run(limiter.aacquire("payer")).remaining

    try:
        assert decide() == 99
        before = backend._topology.node_for(stored)
        target = (own_cluster.primary_index(stored) + 1) % 3
        _move_slot(own_cluster, stored, target)
        assert decide() == 98  # MOVED, followed: the same state, on its new primary
        after = backend._topology.node_for(stored)
        assert after is not before and after.address.endswith(f":{own_cluster.nodes[target].port}")
        assert decide() == 97
    finally:
        backend.close()


@pytest.mark.parametrize("mode", ["sync", "asyncio"])
def test_ask_during_a_migration_is_followed(own_cluster: servers.RedisClusterServers,
                                            mode: str) -> None:
    own_cluster.flushall()
    backend = RedisBackend.from_url(own_cluster.url, timeout=1.0)
    limiter = RateLimiter("100/hour", backend=backend, name=f"ask-{mode}",
                          on_backend_error="raise")
    stored = limiter.storage_keys("payee")[0]

    def decide() -> int:
        if mode == "sync":
            return limiter.acquire("payee").remaining
        return asyncio.run(limiter.aacquire("payee")).remaining

    source = own_cluster.primary_index(stored)
    target = (source + 1) % 3
    try:
        assert decide() == 99
        _move_slot(own_cluster, stored, target, finish=False)  # the key is on the target now
        assert decide() == 98  # ASK, then ASKING + EVALSHA on the importing node
        assert decide() == 97
        # an ASK does not re-route the slot: the source still serves it as far as we know
        assert backend._topology.node_for(stored).address.endswith(
            f":{own_cluster.nodes[source].port}")
    finally:
        _finish(own_cluster, stored, target)
        backend.close()


def test_scripts_reload_after_a_flush_on_every_primary(
        own_cluster: servers.RedisClusterServers) -> None:
    own_cluster.flushall()
    backend = RedisBackend.from_url(own_cluster.url, timeout=1.0)
    limiter = RateLimiter("100/hour", backend=backend, name="reload", on_backend_error="raise")
    keys = _cluster_keys(own_cluster, limiter, per_node=2)
    try:
        assert [limiter.acquire(k).remaining for k in keys] == [99] * len(keys)
        for node in own_cluster.nodes:
            node.command("SCRIPT", "FLUSH")
        assert [limiter.acquire(k).remaining for k in keys] == [98] * len(keys)
        for node in own_cluster.nodes:
            node.command("SCRIPT", "FLUSH")

        async def both() -> list[int]:
            first = await asyncio.gather(*(limiter.aacquire(k) for k in keys))
            return [d.remaining for d in first]

        assert asyncio.run(both()) == [97] * len(keys)
    finally:
        backend.close()
