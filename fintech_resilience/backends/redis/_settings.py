"""Settings: what the backend was configured with, and how it connects to one node.

A node's connection settings are redis-py's own: the connection class and arguments a client's
connection pool holds (address, credentials, database, client name, TLS files, keepalive), read
from the client the backend was given or built. The backend then opens its own connections with
them - a redis-py connection per thread, a pipelined asyncio connection per event loop (the
``Lane``) - with its timeouts, no redis-py retries, RESP2 and byte replies.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.connection
import redis.sentinel
from redis.backoff import NoBackoff
from redis.retry import Retry

from ...errors import ConfigurationError

__all__ = ["ConnectionSettings", "LaneSettings", "Settings"]


@dataclass(frozen=True, slots=True)
class Settings:
    """How a :class:`~fintech_resilience.RedisBackend` treats Redis (seconds are floats).

    :param timeout: the longest wait for a reply, per call (the command timeout).
    :param connect_timeout: the longest wait for a new connection: TCP connect, TLS handshake
        and the setup commands (``AUTH``, ``SELECT``, ...).
    :param failure_threshold: consecutive failures of one node that open its health breaker.
    :param cooldown: seconds a node's health breaker stays open before one probe; also how
        long a thread or event loop waits before it asks a full server (``maxclients``) for a
        connection again.
    :param probe_timeout: how long one probe may take before another caller probes.
    """

    timeout: float = 0.05
    connect_timeout: float = 1.0
    failure_threshold: int = 3
    cooldown: float = 1.0
    probe_timeout: float = field(default=-1.0)

    def __post_init__(self) -> None:
        if not self.timeout > 0 or not self.connect_timeout > 0:
            raise ConfigurationError(
                f"timeout and connect_timeout must be > 0 seconds; got {self.timeout!r} and"
                f" {self.connect_timeout!r}")
        if type(self.failure_threshold) is not int or self.failure_threshold < 1:
            raise ConfigurationError(
                f"failure_threshold must be an int >= 1; got {self.failure_threshold!r}")
        if not self.cooldown >= 0:
            raise ConfigurationError(f"cooldown must be >= 0 seconds; got {self.cooldown!r}")
        if self.probe_timeout < 0:  # default: a probe may need a new connection
            object.__setattr__(self, "probe_timeout", self.connect_timeout + self.timeout)


@dataclass(frozen=True, slots=True)
class LaneSettings:
    """What the asyncio connection (``Lane``) needs to connect to one node."""

    host: str
    port: int
    path: str | None
    db: int
    username: str | None
    password: str | None
    credential_provider: Any
    client_name: str | None
    timeout: float
    connect_timeout: float
    ssl: ssl.SSLContext | None = None
    keepalive: bool = False
    keepalive_options: tuple[tuple[int, Any], ...] = ()


#: redis-py classes whose connections a plain one replaces: the Sentinel-managed ones (the
#: backend follows the primary itself) and the asyncio ones (a sync twin for threads)
_PLAIN = {
    redis.sentinel.SentinelManagedConnection: redis.connection.Connection,
    redis.sentinel.SentinelManagedSSLConnection: redis.connection.SSLConnection,
    redis.asyncio.sentinel.SentinelManagedConnection: redis.connection.Connection,
    redis.asyncio.sentinel.SentinelManagedSSLConnection: redis.connection.SSLConnection,
    redis.asyncio.Connection: redis.connection.Connection,
    redis.asyncio.SSLConnection: redis.connection.SSLConnection,
    redis.asyncio.UnixDomainSocketConnection: redis.connection.UnixDomainSocketConnection,
}
#: arguments the backend sets itself, or that belong to a pool or client, not a connection
_OURS = ("connection_pool", "retry", "cache", "cache_config", "decode_responses", "protocol",
         "socket_timeout", "socket_connect_timeout", "redis_connect_func", "encoding_errors",
         "encoding")


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    """How to connect to one node: a redis-py connection class and its arguments, plus the
    backend's timeouts."""

    connection_class: type[redis.connection.AbstractConnection]
    kwargs: Mapping[str, Any]
    timeout: float
    connect_timeout: float

    @classmethod
    def from_pool(cls, connection_class: Any, kwargs: Mapping[str, Any],
                  settings: Settings) -> ConnectionSettings:
        """From a redis-py connection pool's ``connection_class`` and ``connection_kwargs``
        (sync or asyncio, plain or Sentinel-managed)."""
        plain = _PLAIN.get(connection_class, connection_class)
        if not (isinstance(plain, type)
                and issubclass(plain, redis.connection.AbstractConnection)):
            raise ConfigurationError(
                f"RedisBackend cannot connect like {connection_class!r}: use a client with"
                " redis-py's Connection, SSLConnection or UnixDomainSocketConnection")
        if kwargs.get("ssl_validate_ocsp") or kwargs.get("ssl_validate_ocsp_stapled"):
            raise ConfigurationError("RedisBackend does not support OCSP validation of TLS"
                                     " certificates (ssl_validate_ocsp*)")
        kept = {k: v for k, v in kwargs.items() if k not in _OURS}
        return cls(plain, kept, settings.timeout, settings.connect_timeout)

    def at(self, host: str, port: int) -> ConnectionSettings:
        """The same settings for another node."""
        return replace(self, kwargs={**self.kwargs, "host": host, "port": int(port)})

    @property
    def address(self) -> str:
        path = self.kwargs.get("path")
        if path is not None:
            return f"unix:{path}"
        return f"{self.kwargs.get('host', 'localhost')}:{self.kwargs.get('port', 6379)}"

    @property
    def tls(self) -> bool:
        return issubclass(self.connection_class, redis.connection.SSLConnection)

    def connect(self) -> Any:
        """A new, connected redis-py connection: TCP connect and TLS handshake within the
        connect timeout, then every command - the setup ones (``AUTH``, ``SELECT``, ...)
        included - within the command timeout."""
        timeout = self.timeout

        def set_up(conn: Any) -> None:  # between the handshake and the setup commands
            conn.socket_timeout = timeout
            read_timeout(conn, timeout)
            conn.on_connect()

        setup: Any = set_up  # redis-py calls it with the connection (its annotation says not)
        conn: Any = self.connection_class(
            **self.kwargs, socket_timeout=self.connect_timeout,
            socket_connect_timeout=self.connect_timeout, redis_connect_func=setup,
            retry=Retry(NoBackoff(), 0), protocol=2)
        try:
            conn.connect()
        except BaseException:
            conn.disconnect()
            raise
        return conn

    def lane(self) -> LaneSettings:
        """The asyncio connection's settings (redis-py's defaults read from an unconnected
        connection of the same class)."""
        probe: Any = self.connection_class(**self.kwargs)
        options = getattr(probe, "socket_keepalive_options", None)
        unix = isinstance(probe, redis.connection.UnixDomainSocketConnection)
        return LaneSettings(
            host="" if unix else probe.host, port=0 if unix else int(probe.port),
            path=probe.path if unix else None, db=int(probe.db or 0), username=probe.username,
            password=probe.password,
            credential_provider=getattr(probe, "credential_provider", None),
            client_name=probe.client_name, timeout=self.timeout,
            connect_timeout=self.connect_timeout,
            ssl=_ssl_context(probe) if isinstance(probe, redis.connection.SSLConnection) else None,
            keepalive=bool(getattr(probe, "socket_keepalive", False)) and not unix,
            keepalive_options=tuple(options.items()) if isinstance(options, Mapping) else ())


def read_timeout(conn: Any, seconds: float | None) -> None:
    """How long the connected redis-py ``conn`` waits for a reply from now on (None: for ever);
    its ``socket_timeout`` setting stays as it was made."""
    update = getattr(conn, "update_current_socket_timeout", None)
    if update is not None:
        update(seconds)
    else:  # pragma: no cover - redis-py before 6.4
        conn._sock.settimeout(seconds)


def _ssl_context(conn: Any) -> ssl.SSLContext:
    """An SSLContext made as redis-py's SSLConnection makes one, from its settings."""
    context = ssl.create_default_context()
    context.check_hostname = bool(conn.check_hostname)
    context.verify_mode = conn.cert_reqs
    for flag in getattr(conn, "ssl_include_verify_flags", None) or ():
        context.verify_flags |= flag
    for flag in getattr(conn, "ssl_exclude_verify_flags", None) or ():
        context.verify_flags &= ~flag
    if conn.certfile or conn.keyfile:
        context.load_cert_chain(certfile=conn.certfile, keyfile=conn.keyfile,
                                password=conn.certificate_password)
    if conn.ca_certs is not None or conn.ca_path is not None or conn.ca_data is not None:
        context.load_verify_locations(cafile=conn.ca_certs, capath=conn.ca_path,
                                      cadata=conn.ca_data)
    if conn.ssl_min_version is not None:
        context.minimum_version = conn.ssl_min_version
    if conn.ssl_ciphers:
        context.set_ciphers(conn.ssl_ciphers)
    return context
