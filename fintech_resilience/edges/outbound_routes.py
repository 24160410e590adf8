"""Which :class:`~fintech_resilience.Policy` an outbound request runs under.

In this order, the first that answers decides:

1. **per request**: ``request.extensions["fintech_resilience.policy"]`` (httpx), then the
   innermost ``with using_policy(policy):`` block around the call (httpx and requests alike) -
   a :class:`~fintech_resilience.Policy`, or None to send the request unprotected;
2. **routes**: ``routes={"POST /v1/charges": p, "GET /v1/payments/*": q,
   "* api.psp.example/v1/refunds/**": r}`` - a method (or ``*``) and a path pattern, optionally
   behind a host pattern; the first matching route, in the order written, wins. In a path,
   ``*`` or ``{name}`` matches one segment and a final ``**`` the rest (also nothing);
   everything else matches literally;
3. **hosts**: ``policy=`` for every host, or ``policies={"host:port": p, "host": q,
   "*.domain": r, "*": default}`` (``host:port``, then ``host``, then the longest ``*.suffix``,
   then ``"*"``);
4. nothing matched: the request is sent unprotected.

Decisions are pure (no I/O); host decisions are cached per (host, port).
"""

from __future__ import annotations

import contextlib
import contextvars
import re
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from ..errors import ConfigurationError
from ..policy.compose import Policy
from ..retries.core import Retry

__all__ = ["POLICY_EXTENSION", "UNSET", "Routes", "Target", "using_policy"]

#: The httpx request extension that chooses the request's policy.
POLICY_EXTENSION: Final = "fintech_resilience.policy"
#: "No per-request choice was made" (None is a choice: send unprotected).
UNSET: Final = object()
_CACHE_SIZE: Final = 1024
_CHOSEN: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "fintech_resilience.outbound_policy", default=UNSET)
_METHOD: Final = re.compile(r"^(\*|[A-Za-z]+)$")


@contextlib.contextmanager
def using_policy(policy: Policy | None) -> Iterator[None]:
    """Send the requests made inside the block under ``policy`` (None: unprotected), whatever
    the transport's routes and host policies say::

        with using_policy(refunds):
            session.post("https://api.psp.example/v1/refunds", json=body)

    Works for the httpx transports and the requests adapter; an httpx request's
    ``extensions={"fintech_resilience.policy": ...}`` still takes precedence. The choice is a
    context variable: asyncio tasks created inside the block inherit it, other threads do not.
    """
    if policy is not None and not isinstance(policy, Policy):
        raise ConfigurationError(f"using_policy takes a fr.Policy or None; got {policy!r}")
    token = _CHOSEN.set(policy)
    try:
        yield
    finally:
        _CHOSEN.reset(token)


@dataclass(slots=True)
class Target:
    """A policy with the retries derived from it for outbound HTTP."""

    policy: Policy
    retry: Retry | None
    """For idempotent requests."""
    retry_keyed: Retry | None
    """For the others: retried only when they carry a key."""


def _host_pattern(pattern: object, where: str) -> str:
    if not isinstance(pattern, str) or not pattern or pattern != pattern.strip() or (
            "*" in pattern and pattern != "*" and not (
                pattern.startswith("*.") and pattern[2:] and "*" not in pattern[2:])):
        raise ConfigurationError(
            f"{where} keys are 'host', 'host:port', '*.domain' or '*'; got {pattern!r}")
    return pattern.lower()


def _host_matches(pattern: str, host: str, port: int | None) -> bool:
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return pattern in (host, f"{host}:{port}")


def _path_regex(path: str, key: str) -> re.Pattern[str]:
    if not path.startswith("/") or any(c.isspace() for c in path):
        raise ConfigurationError(
            f"routes keys are 'METHOD /path' or 'METHOD host/path' (path segments: literal,"
            f" '*' or '{{name}}' for one segment, a final '**' for the rest); got {key!r}")
    parts = path[1:].split("/")
    out = []
    for i, segment in enumerate(parts):
        if segment == "**":
            if i != len(parts) - 1:
                raise ConfigurationError(f"'**' must be the last segment of a route; got {key!r}")
            out.append("(?:/.*)?")
            continue
        if segment == "*" or (segment.startswith("{") and segment.endswith("}")
                              and len(segment) > 2):
            out.append("/[^/]+")
        elif "*" in segment or "{" in segment or "}" in segment:
            raise ConfigurationError(
                f"a route segment is literal, '*', '{{name}}' or a final '**'; got {key!r}")
        else:
            out.append("/" + re.escape(segment))
    return re.compile(f"^{''.join(out)}$")


@dataclass(frozen=True, slots=True)
class _Route:
    method: str  # "*" or upper case
    host: str | None  # a host pattern, or None for any host
    path: re.Pattern[str]
    target: Target | None  # None: send unprotected

    def matches(self, method: str, host: str, port: int | None, path: str) -> bool:
        return ((self.method == "*" or self.method == method)
                and (self.host is None or _host_matches(self.host, host, port))
                and self.path.match(path) is not None)


class Routes:
    """The policy choice of one transport or adapter, built once from its options.

    :param derive: builds the :class:`Target` of a policy (the transport's HTTP rules).
    """

    def __init__(self, *, policy: Policy | None, policies: Mapping[str, Policy] | None,
                 routes: Mapping[str, Policy | None] | None,
                 derive: Callable[[Policy], Target]) -> None:
        if policy is not None and policies is not None:
            raise ConfigurationError(
                "pass policy=fr.Policy(...) for every host, or policies={'api.psp.example':"
                " policy, '*': default} per host (not both)")
        if policy is None and policies is None and routes is None:
            raise ConfigurationError(
                "pass policy=fr.Policy(...) for every host, policies={'api.psp.example':"
                " policy, '*': default} per host, or routes={'POST /v1/charges': policy}")
        if policies is not None and (not isinstance(policies, Mapping) or not policies):
            raise ConfigurationError("policies must be a non-empty dict {host pattern: Policy}")
        if routes is not None and (not isinstance(routes, Mapping) or not routes):
            raise ConfigurationError(
                "routes must be a non-empty dict {'METHOD /path': Policy or None}")
        self._derive = derive
        self._derived: weakref.WeakKeyDictionary[Policy, Target] = weakref.WeakKeyDictionary()
        self._exact: dict[str, Target] = {}
        self._suffixes: list[tuple[str, Target]] = []
        self._default: Target | None = None
        for pattern, chosen in ({"*": policy} if policy is not None else policies or {}).items():
            if not isinstance(chosen, Policy):
                raise ConfigurationError(
                    f"policies[{pattern!r}] must be a fr.Policy(...); got {chosen!r}")
            target = self.target(chosen)
            key = _host_pattern(pattern, "policies")
            if key == "*":
                self._default = target
            elif key.startswith("*."):
                self._suffixes.append((key[1:], target))
            else:
                self._exact[key] = target
        self._suffixes.sort(key=lambda item: -len(item[0]))
        self._routes = tuple(self._route(key, chosen) for key, chosen in (routes or {}).items())
        self._cache: dict[tuple[str, int | None], Target | None] = {}

    def target(self, policy: Policy) -> Target:
        """The :class:`Target` of ``policy`` (derived once per policy object)."""
        target = self._derived.get(policy)
        if target is None:
            target = self._derived[policy] = self._derive(policy)
        return target

    def _route(self, key: object, chosen: object) -> _Route:
        if chosen is not None and not isinstance(chosen, Policy):
            raise ConfigurationError(
                f"routes[{key!r}] must be a fr.Policy(...) or None; got {chosen!r}")
        method, _, target = key.strip().partition(" ") if isinstance(key, str) else ("", "", "")
        target = target.strip()
        if not _METHOD.match(method) or not target or any(c.isspace() for c in target):
            raise ConfigurationError(
                f"routes keys are 'METHOD /path' or 'METHOD host/path' ('*' for any method);"
                f" got {key!r}")
        host = None
        if not target.startswith("/"):
            host, slash, rest = target.partition("/")
            host = _host_pattern(host, "routes host")
            target = slash + rest
        return _Route(method.upper(), host, _path_regex(target, str(key)),
                      None if chosen is None else self.target(chosen))

    def for_host(self, host: str, port: int | None) -> Target | None:
        """The host policies' choice (``policy=`` / ``policies=``), or None."""
        cached = self._cache.get((host, port), UNSET)
        if cached is not UNSET:
            return cached  # type: ignore[return-value]
        name = host.lower()
        target = self._exact.get(f"{name}:{port}") if port is not None else None
        if target is None:
            target = self._exact.get(name)
        if target is None:
            target = next((t for suffix, t in self._suffixes if name.endswith(suffix)),
                          self._default)
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.clear()
        self._cache[(host, port)] = target
        return target

    def select(self, method: str, host: str, port: int | None, path: str,
               chosen: Any = UNSET) -> Target | None:
        """The target of a request (None: send it unprotected). ``chosen`` is the request's own
        choice (a Policy, None, or :data:`UNSET`), e.g. its httpx extension."""
        if chosen is UNSET:
            chosen = _CHOSEN.get()
        if chosen is not UNSET:
            if chosen is None:
                return None
            if not isinstance(chosen, Policy):
                raise ConfigurationError(
                    f"the request's {POLICY_EXTENSION!r} must be a fr.Policy or None;"
                    f" got {chosen!r}")
            return self.target(chosen)
        if self._routes:
            name = host.lower()
            for route in self._routes:
                if route.matches(method, name, port, path):
                    return route.target
        return self.for_host(host, port)
