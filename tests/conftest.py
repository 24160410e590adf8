"""Shared fixtures for the fintech_resilience test suite."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import servers

pytest_plugins = ["backend_fixtures"]

# --- real Redis servers ---
#
# Every test that needs Redis gets a server this session started itself (``tests/servers.py``),
# on a free 127.0.0.1 port; nothing ever connects to a server someone else started.
#
# * session-scoped, started lazily on first use: ``redis_server``, ``redis_cluster``
# * function-scoped views that flush first: ``redis_url``, ``cluster_url``
# * function-scoped, private to one test (for destructive fault tests): ``fresh_redis``,
#   ``replicated`` (a primary and its replica), ``sentinel``, ``tcp_proxy`` (a factory:
#   ``tcp_proxy(server) -> TcpProxy``)
#
# Without a redis-server binary, ``redis_server``/``redis_url``/``tcp_proxy`` use fakeredis served
# over TCP, and the fixtures that need real processes (``redis_cluster``, ``cluster_url``,
# ``fresh_redis``, ``replicated``, ``sentinel``) skip with the reason below; that is the only skip
# allowed.

FAKEREDIS_FALLBACK = servers.FAKEREDIS_FALLBACK


def pytest_report_header(config: pytest.Config) -> list[str]:
    if not servers.REAL_REDIS or servers.REDIS_SERVER is None:
        return [FAKEREDIS_FALLBACK]
    version = servers.redis_server_version(servers.REDIS_SERVER)
    shown = ".".join(map(str, version)) if version else "unknown version"
    return [f"redis-server: {servers.REDIS_SERVER} ({shown})"]


def _require_real_redis() -> None:
    if not servers.REAL_REDIS:
        pytest.skip(FAKEREDIS_FALLBACK)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[servers.StandaloneServer]:
    """One standalone server for the whole session (fakeredis over TCP without a binary)."""
    server: servers.StandaloneServer = (
        servers.RedisServer() if servers.REAL_REDIS else servers.FakeRedisServer()
    )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[servers.RedisClusterServers]:
    """A three-primary Redis Cluster for the whole session."""
    _require_real_redis()
    cluster = servers.RedisClusterServers()
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_url(redis_server: servers.StandaloneServer) -> str:
    """URL of the session server, flushed (and revived if a test broke it) before the test."""
    if isinstance(redis_server, servers.RedisServer):
        redis_server.ensure_running()
    redis_server.flushall()
    return redis_server.url


@pytest.fixture
def cluster_url(redis_cluster: servers.RedisClusterServers) -> str:
    """``redis+cluster://...`` URL of the session cluster, every primary flushed first."""
    redis_cluster.ensure_healthy()
    redis_cluster.flushall()
    return redis_cluster.url


@pytest.fixture
def fresh_redis() -> Iterator[servers.RedisServer]:
    """A brand-new server owned by this test: kill it, pause it, restart it."""
    _require_real_redis()
    server = servers.RedisServer()
    yield server
    server.stop()


@dataclass
class Replicated:
    primary: servers.RedisServer
    replica: servers.RedisServer


@pytest.fixture
def replicated() -> Iterator[Replicated]:
    """A primary and a synced replica, owned by this test: pause or kill either."""
    _require_real_redis()
    primary = servers.RedisServer(["--repl-diskless-sync-delay", "0"])
    replica = servers.RedisServer(["--replicaof", primary.host, str(primary.port)])
    try:
        # up on both sides: the primary counts the replica (ROLE, WAIT) once it is online
        servers._wait_until(
            lambda: replica.info("replication").get("master_link_status") == "up"
            and "state=online" in primary.info("replication").get("slave0", ""), 15.0,
            "the replica to sync")
        yield Replicated(primary, replica)
    finally:
        replica.stop()
        primary.stop()


@pytest.fixture
def sentinel() -> Iterator[servers.SentinelServers]:
    """A new primary + replica + sentinel (service ``mymaster``) owned by this test."""
    _require_real_redis()
    group = servers.SentinelServers()
    yield group
    group.stop()


@pytest.fixture
def tcp_proxy() -> Iterator[Callable[[servers.Endpoint], servers.TcpProxy]]:
    """Factory: ``tcp_proxy(server)`` puts a fault-injecting proxy in front of ``server``."""
    proxies: list[servers.TcpProxy] = []

    def make(target: servers.Endpoint) -> servers.TcpProxy:
        proxy = servers.TcpProxy(target)
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.stop()


# --- end of real Redis servers ---
