"""The real-Redis harness itself works: processes, faults, cluster, sentinel, proxy."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import pytest
import redis
import servers
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry
from redis.sentinel import Sentinel

pytestmark = pytest.mark.redis

ProxyFactory = Callable[[servers.Endpoint], servers.TcpProxy]


def no_retry() -> Retry:
    return Retry(NoBackoff(), 0)


def master_client(watcher: Sentinel, service_name: str) -> redis.Redis:
    client: redis.Redis = watcher.master_for(  # type: ignore[no-untyped-call]
        service_name, socket_timeout=5.0  # longer than the WAIT below (2 s) may block
    )
    return client


def test_redis_url_is_flushed_and_usable(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.dbsize() == 0
        client.set(b"k", b"v")
        assert client.get(b"k") == b"v"
    finally:
        client.close()


def test_standalone_kill_and_restart(fresh_redis: servers.RedisServer) -> None:
    port = fresh_redis.port
    with fresh_redis.client(retry=no_retry(), socket_timeout=1.0) as client:
        client.set(b"k", b"v")
        assert client.get(b"k") == b"v"

        fresh_redis.kill()
        assert not fresh_redis.running
        with pytest.raises(redis.ConnectionError):
            client.ping()

        fresh_redis.restart()
        assert fresh_redis.running
        assert fresh_redis.port == port
        assert client.ping() is True
        assert client.get(b"k") is None  # no persistence: a crash loses everything


def test_pause_and_resume(fresh_redis: servers.RedisServer) -> None:
    with fresh_redis.client(socket_timeout=0.2, retry=no_retry()) as client:
        assert client.ping() is True
        fresh_redis.pause()
        assert fresh_redis.paused
        started = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            client.ping()
        assert time.monotonic() - started < 1.0
        fresh_redis.resume()
        assert client.ping() is True


def test_stop_is_safe_after_death_and_while_paused() -> None:
    if not servers.REAL_REDIS:
        pytest.skip(servers.FAKEREDIS_FALLBACK)
    dead = servers.RedisServer()
    dead.kill()
    dead.stop()
    dead.stop()
    assert not dead.dir.exists()

    paused = servers.RedisServer()
    paused.pause()
    started = time.monotonic()
    paused.stop()
    assert time.monotonic() - started < 5.0
    assert not paused.running
    assert paused not in servers.live_servers()


def test_cluster_keys_across_slots(
    redis_cluster: servers.RedisClusterServers, cluster_url: str
) -> None:
    assert cluster_url == redis_cluster.url
    assert cluster_url.startswith("redis+cluster://127.0.0.1:")
    for index in range(len(redis_cluster.nodes)):
        info = redis_cluster.cluster_info(index)
        assert info["cluster_state"] == "ok"
        assert info["cluster_slots_assigned"] == "16384"

    keys = [f"key:{i}".encode() for i in range(10)]
    assert len({key_slot(key) for key in keys}) == 10
    with redis_cluster.client() as client:
        for key in keys:
            client.set(key, key + b":value")
        for key in keys:
            assert client.get(key) == key + b":value"
    per_node = [node.command("DBSIZE") for node in redis_cluster.nodes]
    assert sum(per_node) == 10
    assert all(count > 0 for count in per_node)


def test_cluster_url_flushes_every_primary(
    redis_cluster: servers.RedisClusterServers, cluster_url: str
) -> None:
    assert all(node.command("DBSIZE") == 0 for node in redis_cluster.nodes)


def test_sentinel_failover(sentinel: servers.SentinelServers) -> None:
    assert sentinel.url == f"redis+sentinel://127.0.0.1:{sentinel.sentinel.port}/mymaster/0"
    assert sentinel.master_address() == ("127.0.0.1", sentinel.primary.port)
    watcher = Sentinel(sentinel.sentinel_addresses, socket_timeout=1.0)  # type: ignore[no-untyped-call]
    master = master_client(watcher, sentinel.service_name)
    try:
        master.set(b"before", b"1")
        assert master.wait(1, 2000) == 1  # replication is async: make sure the replica has it

        sentinel.kill_primary()
        took = sentinel.wait_for_failover(timeout=15)
        assert took < 15
        assert sentinel.master_address() == ("127.0.0.1", sentinel.replica.port)

        promoted = master_client(watcher, sentinel.service_name)
        try:
            promoted.set(b"after", b"2")
            assert promoted.get(b"after") == b"2"
            assert promoted.get(b"before") == b"1"  # replicated before the crash
        finally:
            promoted.close()
    finally:
        master.close()
        for sentinel_client in watcher.sentinels:
            sentinel_client.close()


def test_tls_server_speaks_tls_with_the_generated_certificates() -> None:
    if not servers.REAL_REDIS:
        pytest.skip(servers.FAKEREDIS_FALLBACK)
    plain = servers.TlsRedisServer()
    strict = servers.TlsRedisServer(auth_clients=True)
    try:
        with redis.Redis.from_url(plain.tls_url, **plain.client_options()) as client:
            assert client.ping() is True
            assert client.connection_pool.connection_class is redis.SSLConnection
        with redis.Redis.from_url(strict.tls_url, **strict.client_options()) as client:
            assert client.ping() is True  # the client certificate is presented
        no_cert = strict.files.client_options(client_cert=False)
        with redis.Redis.from_url(strict.tls_url, retry=no_retry(), **no_cert) as client, \
                pytest.raises(redis.ConnectionError):
            client.ping()
        untrusted = {"ssl_cert_reqs": "required"}  # the system CAs do not know ours
        with redis.Redis.from_url(plain.tls_url, retry=no_retry(), **untrusted) as client, \
                pytest.raises(redis.ConnectionError):
            client.ping()
        assert plain.command("PING") == b"PONG"  # the harness's plain port
    finally:
        plain.stop()
        strict.stop()


@pytest.mark.slow
def test_cluster_with_replicas_fails_over_a_killed_primary() -> None:
    if not servers.REAL_REDIS:
        pytest.skip(servers.FAKEREDIS_FALLBACK)
    cluster = servers.RedisClusterServers(3, replicas=1, node_timeout_ms=1000)
    try:
        assert len(cluster.nodes) == 6
        roles = [node.command("ROLE")[0] for node in cluster.nodes]
        assert roles == [b"master"] * 3 + [b"slave"] * 3
        owner = cluster.primary_index("{payments}k")
        assert owner < 3
        with cluster.client() as client:
            client.set("{payments}k", "v")
            assert client.wait(1, 2000) == 1
        cluster.nodes[owner].kill()
        took = cluster.wait_for_failover(owner)
        assert took < 30
        promoted = cluster.primary_index("{payments}k")
        assert promoted == owner + 3  # its own replica took over
        assert cluster.nodes[promoted].command("GET", "{payments}k") == b"v"
    finally:
        cluster.stop()


def test_proxy_latency(redis_server: servers.StandaloneServer, tcp_proxy: ProxyFactory) -> None:
    proxy = tcp_proxy(redis_server)
    with redis.Redis.from_url(proxy.url, retry=no_retry(), socket_timeout=2.0) as client:
        assert client.ping() is True
        proxy.set_latency(0.3)
        started = time.monotonic()
        assert client.ping() is True
        assert 0.3 <= time.monotonic() - started < 1.5

    with proxy.client(retry=no_retry(), socket_timeout=0.1) as impatient:
        with pytest.raises(redis.TimeoutError):
            impatient.ping()
        proxy.set_latency(0)
        assert impatient.ping() is True


def test_proxy_blackhole(redis_server: servers.StandaloneServer, tcp_proxy: ProxyFactory) -> None:
    proxy = tcp_proxy(redis_server)
    with proxy.client(retry=no_retry(), socket_timeout=0.2) as client:
        assert client.ping() is True
        proxy.blackhole(True)
        with pytest.raises(redis.TimeoutError):
            client.ping()
        # new connections are accepted, then nothing comes back
        with (
            proxy.client(retry=no_retry(), socket_timeout=0.2) as newcomer,
            pytest.raises(redis.TimeoutError),
        ):
            newcomer.ping()
        proxy.blackhole(False)
        assert client.ping() is True


def test_proxy_reset_all(redis_server: servers.StandaloneServer, tcp_proxy: ProxyFactory) -> None:
    proxy = tcp_proxy(redis_server)
    with socket.create_connection((proxy.host, proxy.port), timeout=2.0) as raw:
        raw.sendall(b"*1\r\n$4\r\nPING\r\n")
        assert raw.recv(64) == b"+PONG\r\n"
        proxy.reset_all()
        assert proxy.connection_count == 0
        with pytest.raises(ConnectionResetError):
            raw.recv(64)
    with proxy.client(retry=no_retry()) as client:
        assert client.ping() is True


def test_fakeredis_fallback_server() -> None:
    with servers.FakeRedisServer() as fake, fake.client() as client:
        client.set(b"k", b"v")
        assert client.get(b"k") == b"v"
        fake.flushall()
        assert client.dbsize() == 0
