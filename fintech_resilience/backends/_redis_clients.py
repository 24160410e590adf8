"""Building redis-py clients (sync and asyncio) from URLs, with safe defaults.

redis-py's defaults are wrong for a decision on the request path: 5 s timeouts and automatic
retries (a retried EVALSHA after a timeout can consume a rate limit twice, redis-py #261). Every
client built here has short timeouts and no retries; the backend's health breaker decides when to
try again.
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

from ..errors import ConfigurationError

__all__ = ["ClientFactory", "factory_from_client", "factory_from_url"]

SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel", "redis+cluster",
           "rediss+cluster")


@dataclass(frozen=True, slots=True)
class ClientFactory:
    """Makes the sync client once and an asyncio client per event loop."""

    sync: Callable[[], Any] | None
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


def factory_from_url(url: str, timeout: float, connect_timeout: float,
                     **options: Any) -> ClientFactory:
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
        "socket_timeout": timeout,
        "socket_connect_timeout": connect_timeout,
        **options,
    }
    tls = scheme.startswith("rediss")
    try:
        if scheme.endswith("+cluster"):
            nodes = _hosts(parts.netloc, 6379)
            kw = {**common, **_credentials(parts.netloc)}
            if tls:
                kw["ssl"] = True

            def sync_cluster() -> Any:
                return redis.cluster.RedisCluster(
                    startup_nodes=[redis.cluster.ClusterNode(h, p) for h, p in nodes],
                    retry=_no_retry_sync(), **kw)

            def async_cluster() -> Any:
                return redis.asyncio.cluster.RedisCluster(
                    startup_nodes=[redis.asyncio.cluster.ClusterNode(h, p) for h, p in nodes],
                    retry=_no_retry_async(), **kw)

            return ClientFactory(sync_cluster, async_cluster, "cluster")
        if scheme.endswith("+sentinel"):
            sentinels = _hosts(parts.netloc, 26379)
            path = [p for p in parts.path.split("/") if p]
            if not path:
                raise ConfigurationError(
                    "a Sentinel URL names the service: redis+sentinel://host:26379/mymaster/0"
                )
            service, db = path[0], int(path[1]) if len(path) > 1 else 0
            query = parse_qs(parts.query)
            sentinel_kw: dict[str, Any] = {
                "socket_timeout": timeout, "socket_connect_timeout": connect_timeout
            }
            kw = {**common, **_credentials(parts.netloc), "db": db}
            if tls:
                kw["ssl"] = True
            if "sentinel_password" in query:
                sentinel_kw["password"] = query["sentinel_password"][0]

            def sync_sentinel() -> Any:
                s = redis.sentinel.Sentinel(sentinels, sentinel_kwargs=sentinel_kw)
                return s.master_for(service, retry=_no_retry_sync(), **kw)

            def async_sentinel() -> Any:
                s = redis.asyncio.sentinel.Sentinel(sentinels, sentinel_kwargs=sentinel_kw)
                return s.master_for(service, retry=_no_retry_async(), **kw)

            return ClientFactory(sync_sentinel, async_sentinel, "sentinel")

        def sync_standalone() -> Any:
            return redis.Redis.from_url(url, retry=_no_retry_sync(), **common)

        def async_standalone() -> Any:
            return redis.asyncio.Redis.from_url(url, retry=_no_retry_async(), **common)

        return ClientFactory(sync_standalone, async_standalone, "standalone")
    except ValueError as exc:
        raise ConfigurationError(f"invalid Redis URL {url!r}: {exc}") from exc


def _same(client: Any) -> Any:
    return client


def factory_from_client(client: Any, async_client: Any | None) -> ClientFactory:
    """Use an existing client; derive the missing sync/asyncio twin where redis-py allows it."""
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
    if make_async is None and isinstance(client, redis.cluster.RedisCluster):
        kwargs = dict(client.get_default_node().redis_connection.connection_pool.connection_kwargs)
        nodes = [(n.host, n.port) for n in client.get_nodes()]
        make_async = _async_cluster_like(nodes, kwargs)
    elif make_async is None and isinstance(client, redis.Redis):
        pool = client.connection_pool
        kwargs = dict(pool.connection_kwargs)
        kwargs.pop("retry", None)
        if isinstance(pool, redis.sentinel.SentinelConnectionPool):
            make_async = None  # cannot be derived: pass async_client as well
        else:
            make_async = _async_like(pool.connection_class, kwargs)
    return ClientFactory(sync, make_async, topology, owns_async)


def _async_like(connection_class: type, kwargs: dict[str, Any]) -> Callable[[], Any]:
    keep = {k: v for k, v in kwargs.items() if k in {
        "host", "port", "db", "username", "password", "socket_timeout", "socket_connect_timeout",
        "path", "client_name", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs",
    }}
    unix = "path" in keep
    tls = connection_class.__name__ == "SSLConnection"

    def make() -> Any:
        if unix:
            path = keep.pop("path")
            return redis.asyncio.Redis(unix_socket_path=path, retry=_no_retry_async(), **keep)
        return redis.asyncio.Redis(ssl=tls, retry=_no_retry_async(), **keep)

    return make


def _async_cluster_like(nodes: list[tuple[str, int]], kwargs: dict[str, Any]) -> Callable[[], Any]:
    keep = {k: v for k, v in kwargs.items() if k in {
        "username", "password", "socket_timeout", "socket_connect_timeout",
    }}

    def make() -> Any:
        return redis.asyncio.cluster.RedisCluster(
            startup_nodes=[redis.asyncio.cluster.ClusterNode(h, p) for h, p in nodes],
            retry=_no_retry_async(), **keep)

    return make
