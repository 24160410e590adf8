"""A backend from what users write: a :class:`Backend`, a URL, or nothing.

Every ``backend=`` of the library goes through :func:`resolve_backend`, so ``"redis://..."`` is
accepted wherever a backend is, and a URL is checked when the pattern is built: a bad scheme,
host, port or database number raises :class:`~fintech_resilience.ConfigurationError` there, not
at the first decision. One :class:`RedisBackend` (one connection pool) serves every pattern given
the same URL in a process. ``"memory://"`` means the default in-memory backend of the place it is
given (the process-wide one for a pattern).

Whether the server answers is a different question, asked by
:func:`fintech_resilience.check_config` (or ``fintech-resilience check``), never implicitly.
"""

from __future__ import annotations

import ipaddress
import re
import threading
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from ..core.resets import on_reset
from ..errors import ConfigurationError
from .base import Backend
from .memory import default_backend

__all__ = ["BackendSpec", "backend_from_url", "check_url", "forget_url_backends", "redact_url",
           "resolve_backend"]

#: What a ``backend=`` option takes.
BackendSpec = Backend | str | None

REDIS_SCHEMES: Final = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel",
                        "redis+cluster", "rediss+cluster")
MEMORY_URL: Final = "memory://"
_HOSTNAME = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]{0,251}[A-Za-z0-9_])?$")

_lock = threading.Lock()
_by_url: dict[tuple[str, tuple[tuple[str, Any], ...]], Backend] = {}


def redact_url(url: str) -> str:
    """The URL without its password (safe to print and log)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable URL>"
    if password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit((parts.scheme, user + netloc, parts.path, parts.query, parts.fragment))


def _refuse(url: str, why: str) -> ConfigurationError:
    return ConfigurationError(f"invalid backend URL {redact_url(url)!r}: {why}")


def _check_host(url: str, host_port: str) -> None:
    """Refuse a ``host[:port]`` part whose host cannot be a name or address, or whose port is
    not a number from 1 to 65535."""
    try:
        parts = urlsplit("//" + host_port)
        port = parts.port
    except ValueError:
        raise _refuse(url, f"the port in {host_port!r} must be a number from 1 to 65535"
                      ) from None
    if port is not None and not 1 <= port <= 65535:
        raise _refuse(url, f"the port in {host_port!r} must be a number from 1 to 65535")
    host = parts.hostname or ""
    if not host:
        if host_port and not host_port.startswith(":"):
            raise _refuse(url, f"{host_port!r} names no host")
        return  # "redis://:6379/0" and "redis://" mean localhost, as in redis-py
    if host_port.startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _refuse(url, f"{host!r} is not an IPv6 address") from None
    elif not _HOSTNAME.match(host):
        raise _refuse(url, f"{host!r} is not a host name or address")


def _netloc_hosts(netloc: str) -> list[str]:
    return [part.strip() for part in netloc.rsplit("@", 1)[-1].split(",")]


def check_url(url: object) -> str:
    """``url`` if it is a backend URL this library can use, else :class:`ConfigurationError`
    saying what is wrong (the password, if any, masked).

    Schemes: ``redis://``, ``rediss://``, ``unix://``, ``redis+sentinel://``,
    ``redis+cluster://`` (and their ``rediss+`` twins), and ``memory://``. Nothing is connected.
    """
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(
            f"a backend URL looks like 'redis://host:6379/0' (or 'memory://'); got {url!r}")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise _refuse(url, str(exc)) from None
    scheme = parts.scheme.lower()
    if scheme == "memory":
        if url.lower().rstrip("/") != "memory:":
            raise _refuse(url, "write exactly 'memory://' (it takes no host or options)")
        return url
    if scheme not in REDIS_SCHEMES:
        raise _refuse(url, f"unsupported scheme {scheme!r}; use one of"
                      f" {', '.join(REDIS_SCHEMES)} or memory")
    if scheme == "unix":
        if not parts.path or parts.path == "/":
            raise _refuse(url, "a unix URL names the socket: unix:///run/redis.sock")
        return url
    hosts = _netloc_hosts(parts.netloc)
    if len(hosts) > 1 and not scheme.endswith(("+sentinel", "+cluster")):
        raise _refuse(url, "several hosts need redis+sentinel:// or redis+cluster://")
    for host_port in hosts:
        _check_host(url, host_port)
    path = [p for p in parts.path.split("/") if p]
    if scheme.endswith("+sentinel"):
        if not path:
            raise _refuse(url, "a Sentinel URL names the service:"
                          " redis+sentinel://host:26379/mymaster/0")
        path = path[1:]
    if len(path) > 1 or (path and not (path[0].isascii() and path[0].isdigit())):
        raise _refuse(url, f"the database is a number ('/0'); got {parts.path!r}")
    return url


def backend_from_url(url: str, **options: Any) -> Backend:
    """The backend of ``url``: one :class:`RedisBackend` per URL (and options) in this process,
    shared by every pattern given it. ``options`` go to :meth:`RedisBackend.from_url`
    (``timeout``, ``connect_timeout``, ...). ``"memory://"`` is the process-wide memory backend.
    """
    check_url(url)
    if url.lower().startswith("memory:"):
        if options:
            raise ConfigurationError("'memory://' takes no backend options")
        return default_backend()
    cache_key = (url, tuple(sorted(options.items())))
    backend = _by_url.get(cache_key)
    if backend is None:
        from .redis import RedisBackend

        with _lock:
            backend = _by_url.get(cache_key)
            if backend is None:
                backend = _by_url[cache_key] = RedisBackend.from_url(url, **options)
    return backend


def resolve_backend(backend: object, default: Callable[[], Backend] = default_backend
                    ) -> Backend:
    """What a ``backend=`` option means: a :class:`Backend` as it is, a URL through
    :func:`backend_from_url` (``"memory://"``: ``default()``), None: ``default()``."""
    if isinstance(backend, Backend):
        return backend
    if backend is None:
        return default()
    if isinstance(backend, str):
        if check_url(backend).lower().startswith("memory:"):
            return default()
        return backend_from_url(backend)
    raise ConfigurationError(
        f"backend is a Backend (fr.MemoryBackend(), fr.RedisBackend.from_url(...)), a URL"
        f" ('redis://host:6379/0', 'memory://') or None; got {type(backend).__name__}")


@on_reset
def forget_url_backends() -> None:
    """Drop the backends made from URLs (tests: the next pattern given a URL connects anew).
    Patterns built before keep theirs."""
    with _lock:
        _by_url.clear()
