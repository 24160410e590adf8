"""Which requests a rate limiter applies to at an HTTP edge: :class:`Rule`, and the callables
an edge takes (key, limits and count_when functions)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigurationError
from ..ratelimit.limiter import RateLimiter
from ..ratelimit.specs import LimitsArg

__all__ = ["CountWhen", "Counted", "KeyFunc", "LimitsFunc", "Rule", "limits_from_requests"]

KeyFunc = Callable[[Any], "str | bytes | int | None"]
#: ``callable(request) -> rate string | None``: the limits of one request (None: not limited)
LimitsFunc = Callable[[Any], "LimitsArg | None"]
#: ``callable(status) -> bool``: whether a response with this status counts against the limit
CountWhen = Callable[[int], bool]


def limits_from_requests(key: object) -> LimitsArg:
    """The limits of a limiter an edge made for a ``limits=callable(request)``: each request
    passes its own (``acquire(key, limits=...)``), so these are never used."""
    raise ConfigurationError(
        "this limiter's limits come from each request (limits=callable(request)); pass them with"
        " acquire(key, limits=...)"
    )


class Rule:
    """Which requests a limiter applies to, and how each is keyed and costed.

    :param limiter: the :class:`~fintech_resilience.RateLimiter` (its name labels the policy).
    :param methods: e.g. ``("POST", "PATCH")``; default every method.
    :param path: a path prefix (``"/payments"`` matches ``/payments`` and ``/payments/...``) or a
        compiled regular expression (``re.compile(r"^/v1/payments/[^/]+/capture$")``).
    :param key: ``callable(request) -> key | None`` overriding the middleware's key; ``None``
        from it means "not limited by this rule".
    :param cost: units per request, or ``callable(request) -> int``.
    :param limits: ``callable(request) -> rate string | None``: this request's limits (per plan,
        per tenant) instead of the limiter's; ``None`` from it means "not limited by this rule".
    :param count_when: ``callable(status) -> bool``: count only the responses it is true for
        (e.g. ``lambda status: status == 402`` counts card declines); the others get their unit
        back once the status is known.
    """

    __slots__ = ("_sync", "cost", "count_when", "key", "limiter", "limits", "methods", "path")

    def __init__(self, limiter: RateLimiter, *, methods: Iterable[str] | None = None,
                 path: str | re.Pattern[str] | None = None, key: KeyFunc | None = None,
                 cost: int | Callable[[Any], int] = 1, limits: LimitsFunc | None = None,
                 count_when: CountWhen | None = None) -> None:
        if not isinstance(limiter, RateLimiter):
            raise ConfigurationError(
                "Rule needs a RateLimiter: Rule(RateLimiter('10/second', name='payments'), ...)"
            )
        if isinstance(methods, str):
            raise ConfigurationError(f"methods is a list; write methods=[{methods!r}]")
        if path is not None and not isinstance(path, str | re.Pattern):
            raise ConfigurationError("path is a prefix string or a compiled re.Pattern")
        if key is not None and not callable(key):
            raise ConfigurationError("key must be a callable(request) -> str | None")
        if not callable(cost) and (type(cost) is not int or cost < 1):
            raise ConfigurationError(f"cost must be a positive int or a callable; got {cost!r}")
        if limits is not None and not callable(limits):
            raise ConfigurationError(
                "a Rule's limits is a callable(request) -> rate string | None; for fixed limits,"
                " give the RateLimiter its own: RateLimiter('10/second', name=...)"
            )
        if count_when is not None and not callable(count_when):
            raise ConfigurationError("count_when must be a callable(status) -> bool")
        self.limiter = limiter
        self.limits = limits
        self.count_when = count_when
        self.methods = frozenset(m.upper() for m in methods) if methods is not None else None
        self.path = path.rstrip("/") if isinstance(path, str) else path
        self.key = key
        self.cost = cost
        # an in-process backend never waits on I/O: its sync path serves asyncio callers too
        self._sync = not limiter.backend.can_fail

    def matches(self, method: str, path: str) -> bool:
        """True if the rule applies to this method and path."""
        if self.methods is not None and method not in self.methods:
            return False
        p = self.path
        if p is None:
            return True
        if isinstance(p, str):
            return path == p or path.startswith(p + "/") or not p
        return p.search(path) is not None

    def __repr__(self) -> str:
        return f"Rule({self.limiter!r}, methods={self.methods}, path={self.path!r})"


@dataclass(frozen=True, slots=True)
class Counted:
    """An acquisition whose count depends on the response: ``decisions[index]`` of its verdict,
    taken for ``key`` by ``rule`` (which has a ``count_when``)."""

    index: int
    rule: Rule
    key: Any
    cost: int
    limits: LimitsArg | None
