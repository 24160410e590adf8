"""Priority load shedding, once for ASGI and WSGI: classes, shares, the in-flight counter.

Every HTTP request is put in a class (``"critical"`` for payment traffic, ``"default"``,
``"reporting"``, ...) by route rules or a callable. Each class may fill the server only up to its
share of ``max_in_flight``: by default the critical class up to 100 %, every other class up to
``1 - reserved`` (80 %). When in-flight work reaches a class's share, that class's new requests
are shed with ``503`` + ``Retry-After`` (RFC 9457 problem+json) while the critical class still
gets in - the others are shed first.

The counter is **local to the process** (one per middleware instance, shared by the event loop's
tasks and by threads): it measures this worker's load, which is what shedding protects. Set
``max_in_flight`` per worker; N workers admit up to N times as much.

The ASGI and WSGI middlewares (``edges.asgi.shedding``, ``edges.wsgi.shedding``) only say where
a request's path is and when it has finished.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from ..core import telemetry
from ..errors import ConfigurationError

__all__ = ["LoadShedder", "Route"]

Route = tuple["str | re.Pattern[str]", str]
AppT = TypeVar("AppT")


class LoadShedder(Generic[AppT]):
    """What the ASGI and WSGI ``LoadSheddingMiddleware`` share (see the ASGI one's options).

    ``in_flight`` (requests being served) and ``shed`` (refusals per class) are readable for
    metrics.
    """

    __slots__ = ("_limits", "_lock", "_others", "app", "classify", "default_class", "in_flight",
                 "max_in_flight", "retry_after", "routes", "shed")

    def __init__(self, app: AppT, *, max_in_flight: int, routes: Sequence[Route] = (),
                 classify: Callable[[Any], str | None] | None = None,
                 critical: str = "critical", reserved: float = 0.2,
                 shares: Mapping[str, float] | None = None, default_class: str = "default",
                 retry_after: float = 1.0) -> None:
        if type(max_in_flight) is not int or max_in_flight < 1:
            raise ConfigurationError(f"max_in_flight must be a positive int; got {max_in_flight!r}")
        if not isinstance(reserved, int | float) or not 0 <= reserved < 1:
            raise ConfigurationError(f"reserved is a share between 0 and 1; got {reserved!r}")
        if classify is not None and not callable(classify):
            raise ConfigurationError("classify must be a callable(request) -> class name | None")
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
        limits: dict[str, int] = {critical: max_in_flight}
        for name, share in (shares or {}).items():
            if not isinstance(share, int | float) or not 0 < share <= 1:
                raise ConfigurationError(f"shares are between 0 (excluded) and 1; {name}={share!r}")
            limits[name] = max(1, int(max_in_flight * share))
        self._limits = limits
        self._others = max(1, int(max_in_flight * (1.0 - float(reserved))))
        self.in_flight = 0
        self.shed: dict[str, int] = {}
        self._lock = threading.Lock()
        #: seconds a shed request is told to wait (``Retry-After``)
        self.retry_after = float(retry_after)

    def limit_of(self, klass: str) -> int:
        """How many in-flight requests (all classes) still admit a request of ``klass``."""
        return self._limits.get(klass, self._others)

    def class_for(self, path: str, request: Any) -> str:
        """The priority class of a request to ``path`` (route rules, then ``classify(request)``,
        then ``default_class``)."""
        for rule, klass in self.routes:
            if isinstance(rule, str):
                if path == rule or path.startswith(rule + "/") or not rule:
                    return klass
            elif rule.search(path):
                return klass
        if self.classify is not None:
            found = self.classify(request)
            if found:
                return found
        return self.default_class

    def enter(self, klass: str) -> bool:
        """Admit a request of ``klass`` (it holds a slot until :meth:`leave`) or count it shed."""
        with self._lock:
            admitted = self.in_flight < self.limit_of(klass)
            if admitted:
                self.in_flight += 1
            else:
                self.shed[klass] = self.shed.get(klass, 0) + 1
        if telemetry.active():
            telemetry.emit_decision("shedding", klass, "allow" if admitted else "deny")
        return admitted

    def leave(self) -> None:
        """An admitted request has finished: its slot is free again."""
        with self._lock:
            self.in_flight -= 1

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(max_in_flight={self.max_in_flight},"
                f" in_flight={self.in_flight}, shed={self.shed})")
