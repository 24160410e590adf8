"""Priority load shedding for ASGI apps: keep capacity for payments when reporting piles up.

Every HTTP request is put in a class (``"critical"`` for payment traffic, ``"default"``,
``"reporting"``, ...) by route rules or a callable. Each class may fill the server only up to its
share of ``max_in_flight``: by default the critical class up to 100 %, every other class up to
``1 - reserved`` (80 %). When in-flight work reaches a class's share, that class's new requests
are shed with ``503`` + ``Retry-After`` (RFC 9457 problem+json) while the critical class still
gets in - the others are shed first.

The counter is **local to the process** (one per middleware instance, shared by the event loop's
tasks and by threads): it measures this worker's load, which is what shedding protects. Set
``max_in_flight`` per worker; N workers admit up to N times as much.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping, Sequence

from . import telemetry
from ._asgi_types import ASGIApp, Receive, Scope, Send
from ._ratelimit_http import TEMPORARY_REDUCED_CAPACITY, problem
from .errors import ConfigurationError

__all__ = ["LoadSheddingMiddleware"]

Route = tuple["str | re.Pattern[str]", str]


class LoadSheddingMiddleware:
    """Sheds lower-priority HTTP requests first when in-flight work nears ``max_in_flight``.

    >>> app.add_middleware(LoadSheddingMiddleware, max_in_flight=200,    # doctest: +SKIP
    ...     routes=[("/v1/payments", "critical"), ("/v1/reports", "reporting")],
    ...     shares={"reporting": 0.5})

    :param max_in_flight: requests this process serves at once (all classes together).
    :param routes: ``(path prefix or compiled regex, class)`` pairs; the first match wins.
    :param classify: ``callable(scope) -> class | None``, asked when no route matched.
    :param critical: the class that may use all of ``max_in_flight`` (default ``"critical"``).
    :param reserved: share of capacity only the critical class may use (default 0.2).
    :param shares: per-class share of ``max_in_flight`` (0 < share <= 1) overriding
        ``1 - reserved``, e.g. ``{"reporting": 0.5}`` to shed reporting at half load.
    :param default_class: class of requests no rule classified (default ``"default"``).
    :param retry_after: seconds sent in ``Retry-After`` when shedding (default 1).

    Non-HTTP scopes (websocket, lifespan) pass untouched and are not counted. A request counts as
    in flight until the app returns, so a streaming response holds its slot while it streams.
    """

    __slots__ = ("_limits", "_lock", "_others", "_response", "app", "classify", "default_class",
                 "in_flight", "max_in_flight", "routes", "shed")

    def __init__(self, app: ASGIApp, *, max_in_flight: int, routes: Sequence[Route] = (),
                 classify: Callable[[Scope], str | None] | None = None,
                 critical: str = "critical", reserved: float = 0.2,
                 shares: Mapping[str, float] | None = None, default_class: str = "default",
                 retry_after: float = 1.0) -> None:
        if type(max_in_flight) is not int or max_in_flight < 1:
            raise ConfigurationError(f"max_in_flight must be a positive int; got {max_in_flight!r}")
        if not isinstance(reserved, int | float) or not 0 <= reserved < 1:
            raise ConfigurationError(f"reserved is a share between 0 and 1; got {reserved!r}")
        if classify is not None and not callable(classify):
            raise ConfigurationError("classify must be a callable(scope) -> class name | None")
        if not isinstance(retry_after, int | float) or retry_after <= 0:
            raise ConfigurationError(f"retry_after must be > 0 seconds; got {retry_after!r}")
        checked: list[tuple[str | re.Pattern[str], str]] = []
        for route in routes:
            if (not isinstance(route, tuple) or len(route) != 2
                    or not isinstance(route[0], str | re.Pattern)):
                raise ConfigurationError(
                    "routes are (path prefix or re.Pattern, class) pairs, e.g."
                    " [('/v1/payments', 'critical')]"
                )
            prefix = route[0].rstrip("/") if isinstance(route[0], str) else route[0]
            checked.append((prefix, route[1]))
        self.app = app
        self.max_in_flight = max_in_flight
        self.routes = tuple(checked)
        self.classify = classify
        self.default_class = default_class
        others = 1.0 - float(reserved)
        limits: dict[str, int] = {critical: max_in_flight}
        for name, share in (shares or {}).items():
            if not isinstance(share, int | float) or not 0 < share <= 1:
                raise ConfigurationError(f"shares are between 0 (excluded) and 1; {name}={share!r}")
            limits[name] = max(1, int(max_in_flight * share))
        self._limits = limits
        self._others = max(1, int(max_in_flight * others))
        self.in_flight = 0
        self.shed: dict[str, int] = {}
        self._lock = threading.Lock()
        status, headers, body = problem(
            503, type_=TEMPORARY_REDUCED_CAPACITY, retry_after=retry_after,
            detail="The server is busy; retry later.")
        self._response = (status, [(k.lower().encode("latin-1"), v.encode("latin-1"))
                                   for k, v in headers], body)

    def limit_of(self, klass: str) -> int:
        """How many in-flight requests (all classes) still admit a request of ``klass``."""
        return self._limits.get(klass, self._others)

    def class_of(self, scope: Scope) -> str:
        """The priority class of an HTTP request (route rules, then ``classify``, then default)."""
        path = scope["path"]
        for rule, klass in self.routes:
            if isinstance(rule, str):
                if path == rule or path.startswith(rule + "/") or not rule:
                    return klass
            elif rule.search(path):
                return klass
        if self.classify is not None:
            found = self.classify(scope)
            if found:
                return found
        return self.default_class

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        klass = self.class_of(scope)
        with self._lock:
            admitted = self.in_flight < self.limit_of(klass)
            if admitted:
                self.in_flight += 1
            else:
                self.shed[klass] = self.shed.get(klass, 0) + 1
        if telemetry.active():
            telemetry.emit_decision("shedding", klass, "allow" if admitted else "deny")
        if not admitted:
            status, headers, body = self._response
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        try:
            await self.app(scope, receive, send)
        finally:
            with self._lock:
                self.in_flight -= 1

    def __repr__(self) -> str:
        return (f"LoadSheddingMiddleware(max_in_flight={self.max_in_flight},"
                f" in_flight={self.in_flight}, shed={self.shed})")
