"""redis-py clients for a backend: built from URLs with safe defaults, or the caller's own.

The backend decides on connections of its own (see ``_threads`` and ``_lane``); redis-py's
clients give it the topology (Sentinel's primary, the Cluster's slots), the connection
settings, and serve :attr:`RedisBackend.client` / :meth:`RedisBackend.async_client` for other
commands. redis-py's defaults are wrong for the request path - 5 s timeouts and automatic
retries (a retried EVALSHA after a timeout can consume a rate limit twice, redis-py #261) - so
every client built here has short timeouts and no retries.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.sentinel
import redis.cluster
import redis.sentinel
from redis.backoff import NoBackoff

from ...errors import ConfigurationError
from ._settings import Settings

__all__ = ["ClientFactory", "client_timeouts", "factory_from_client", "factory_from_url"]

SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel", "redis+cluster",
           "rediss+cluster")
#: settings a client twin carries over (what says where and how to connect)
_CARRIED = ("username", "password", "credential_provider", "client_name", "db",
            "socket_timeout", "socket_connect_timeout", "socket_keepalive",
            "socket_keepalive_options", "ssl_keyfile", "ssl_certfile", "ssl_cert_reqs",
            "ssl_ca_certs", "ssl_ca_data", "ssl_ca_path", "ssl_check_hostname", "ssl_password",
            "ssl_min_version", "ssl_ciphers")


@dataclass(frozen=True, slots=True)
class ClientFactory:
    """Makes the sync client once and an asyncio client per event loop."""

    sync: Callable[[], Any]
    asyncio: Callable[[], Any] | None
    topology: str  # "standalone", "sentinel" or "cluster"
    #: ``asyncio()`` makes a new client per loop (ours to close), not the caller's own client
    owns_async: bool = True


def _no_retry_sync() -> redis.retry.Retry:
    return redis.retry.Retry(NoBackoff(), 0)


def _no_retry_async() -> redis.asyncio.retry.Retry:
    return redis.asyncio.retry.Retry(NoBackoff(), 0)


def _hosts(netloc: str, default_port: int) -> list[tuple[str, int]]:
    hosts = []
    for part in netloc.rsplit("@", 1)[-1].split(","):
        host, _, port = part.rpartition(":") if ":" in part else (part, "", "")
        hosts.append((host.strip("[]") or "localhost", int(port or default_port)))
    return hosts


def _credentials(netloc: str) -> dict[str, Any]:
    if "@" not in netloc:
        return {}
    userinfo = netloc.rsplit("@", 1)[0]
    user, _, password = userinfo.partition(":")
    out: dict[str, Any] = {}
    if user:
        out["username"] = unquote(user)
    if password:
        out["password"] = unquote(password)
    return out


def factory_from_url(url: str, settings: Settings, **options: Any) -> ClientFactory:
    """Clients for ``redis://``, ``rediss://``, ``unix://``, ``redis+sentinel://`` or
    ``redis+cluster://`` URLs. ``options`` are passed to redis-py's client constructors."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(f"a Redis URL looks like redis://host:6379/0; got {url!r}")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ConfigurationError(
            f"unsupported Redis URL scheme {scheme!r}; use one of {', '.join(SCHEMES)}"
        )
    common: dict[str, Any] = {
        "socket_timeout": settings.timeout,
        "socket_connect_timeout": settings.connect_timeout,
        **options,
    }
    tls = scheme.startswith("rediss")
    try:
        if scheme.endswith("+cluster"):
            nodes = _hosts(parts.netloc, 6379)
            kw = {**common, **_credentials(parts.netloc), **({"ssl": True} if tls else {})}
            return ClientFactory(functools.partial(_sync_cluster, nodes, kw),
                                 functools.partial(_async_cluster, nodes, kw), "cluster")
        if scheme.endswith("+sentinel"):
            sentinels = _hosts(parts.netloc, 26379)
            path = [p for p in parts.path.split("/") if p]
            if not path:
                raise ConfigurationError(
                    "a Sentinel URL names the service: redis+sentinel://host:26379/mymaster/0"
                )
            service, db = path[0], int(path[1]) if len(path) > 1 else 0
            query = parse_qs(parts.query)
            sentinel_kw: dict[str, Any] = {"socket_timeout": settings.timeout,
                                           "socket_connect_timeout": settings.connect_timeout}
            if "sentinel_password" in query:
                sentinel_kw["password"] = query["sentinel_password"][0]
            kw = {**common, **_credentials(parts.netloc), "db": db,
                  **({"ssl": True} if tls else {})}
            return ClientFactory(
                functools.partial(_sync_sentinel, sentinels, sentinel_kw, service, kw),
                functools.partial(_async_sentinel, sentinels, sentinel_kw, service, kw),
                "sentinel")
        sync = redis.Redis.from_url(url, retry=_no_retry_sync(), **common)  # no I/O yet
        return ClientFactory(
            functools.partial(_same, sync),
            functools.partial(redis.asyncio.Redis.from_url, url, retry=_no_retry_async(),
                              **common),
            "standalone")
    except ValueError as exc:
        raise ConfigurationError(f"invalid Redis URL {url!r}: {exc}") from exc


def _sync_cluster(nodes: list[tuple[str, int]], kw: dict[str, Any]) -> Any:
    return redis.cluster.RedisCluster(
        startup_nodes=[redis.cluster.ClusterNode(h, p) for h, p in nodes],
        retry=_no_retry_sync(), **kw)


def _async_cluster(nodes: list[tuple[str, int]], kw: dict[str, Any]) -> Any:
    return redis.asyncio.cluster.RedisCluster(
        startup_nodes=[redis.asyncio.cluster.ClusterNode(h, p) for h, p in nodes],
        retry=_no_retry_async(), **kw)


def _sync_sentinel(sentinels: list[tuple[str, int]], sentinel_kw: dict[str, Any], service: str,
                   kw: dict[str, Any]) -> Any:
    watcher = redis.sentinel.Sentinel(sentinels, sentinel_kwargs=sentinel_kw)
    return watcher.master_for(service, retry=_no_retry_sync(), **kw)


def _async_sentinel(sentinels: list[tuple[str, int]], sentinel_kw: dict[str, Any], service: str,
                    kw: dict[str, Any]) -> Any:
    watcher = redis.asyncio.sentinel.Sentinel(sentinels, sentinel_kwargs=sentinel_kw)
    return watcher.master_for(service, retry=_no_retry_async(), **kw)


def _same(client: Any) -> Any:
    return client


def factory_from_client(client: Any, async_client: Any | None) -> ClientFactory:
    """Use the caller's clients; make the missing twin from the other one's settings."""
    sync: Callable[[], Any] | None = None
    make_async: Callable[[], Any] | None = None
    topology = "standalone"
    owns_async = True
    for c in (client, async_client):
        if c is None:
            continue
        if isinstance(c, redis.asyncio.cluster.RedisCluster | redis.asyncio.Redis):
            make_async = functools.partial(_same, c)
            owns_async = False
        elif isinstance(c, redis.cluster.RedisCluster | redis.Redis):
            sync = functools.partial(_same, c)
        else:
            raise ConfigurationError(
                f"expected a redis.Redis, redis.cluster.RedisCluster or their asyncio twins; got"
                f" {type(c).__name__}"
            )
        if isinstance(c, redis.cluster.RedisCluster | redis.asyncio.cluster.RedisCluster):
            topology = "cluster"
        pool = getattr(c, "connection_pool", None)
        if isinstance(pool, redis.sentinel.SentinelConnectionPool
                      | redis.asyncio.sentinel.SentinelConnectionPool):
            topology = "sentinel"
    if sync is None:
        sync = functools.partial(_sync_twin, async_client)
    return ClientFactory(sync, make_async, topology, owns_async)


def _carried(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if k in _CARRIED}


def _is_tls(connection_class: Any) -> bool:
    return "SSL" in getattr(connection_class, "__name__", "")


def _sync_twin(client: Any) -> Any:
    """A sync client to the same Redis as an asyncio ``client`` (its topology and settings)."""
    if isinstance(client, redis.asyncio.cluster.RedisCluster):
        kw = _carried(client.connection_kwargs)
        if _is_tls(client.connection_kwargs.get("connection_class")):
            kw["ssl"] = True
        nodes = [(str(n.host), int(n.port)) for n in client.nodes_manager.startup_nodes.values()]
        return _sync_cluster(nodes, kw)
    pool = client.connection_pool
    kw = _carried(pool.connection_kwargs)
    if _is_tls(pool.connection_class):
        kw["ssl"] = True
    if isinstance(pool, redis.asyncio.sentinel.SentinelConnectionPool):
        manager = pool.sentinel_manager
        sentinels = [(str(s.connection_pool.connection_kwargs["host"]),
                      int(s.connection_pool.connection_kwargs["port"])) for s in manager.sentinels]
        return _sync_sentinel(sentinels, dict(manager.sentinel_kwargs), pool.service_name, kw)
    path = pool.connection_kwargs.get("path")
    if path is not None:
        return redis.Redis(unix_socket_path=path, retry=_no_retry_sync(), **kw)
    return redis.Redis(host=pool.connection_kwargs.get("host", "localhost"),
                       port=pool.connection_kwargs.get("port", 6379), retry=_no_retry_sync(),
                       **kw)


def client_timeouts(client: Any) -> tuple[float | None, float | None]:
    """``socket_timeout`` and ``socket_connect_timeout`` a caller's client was made with."""
    kwargs = getattr(client, "connection_kwargs", None)  # asyncio RedisCluster
    if kwargs is None and hasattr(client, "nodes_manager"):
        kwargs = client.nodes_manager.connection_kwargs
    if kwargs is None:
        kwargs = client.connection_pool.connection_kwargs
    return kwargs.get("socket_timeout"), kwargs.get("socket_connect_timeout")
