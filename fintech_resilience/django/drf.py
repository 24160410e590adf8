"""A DRF throttle class backed by a :class:`~fintech_resilience.RateLimiter`."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from rest_framework.throttling import BaseThrottle  # type: ignore[import-untyped]

from ..core.resets import on_reset
from ..ratelimit.limiter import Decision, RateLimiter
from .settings import _backend, _config, _default_key, drf_rate

__all__ = ["RateThrottle", "drf_rate"]

#: limiters the throttle keeps (per scope, rate and backend); forgotten all at once beyond
_MAX_THROTTLE_LIMITERS = 256


@on_reset
def _forget_limiters() -> None:
    with RateThrottle._limiters_lock:
        RateThrottle._limiters.clear()


class RateThrottle(BaseThrottle):  # type: ignore[misc]
    """A DRF throttle on fintech_resilience limiters (shared through Redis, GCRA, no races).

    Configured the DRF way: the rate comes from ``REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]``
    under the view's ``throttle_scope`` (else the class's ``scope``, default ``"default"``), or
    from a subclass's ``rate``. DRF rate notation (``"10/s"``, ``"100/min"``) and ``limits``
    notation (``"10/second; 1000/day"``) both work. The backend and trusted proxies come from
    ``settings.FINTECH_RESILIENCE`` (``"ENABLED": False`` there admits every request). Override
    :meth:`get_key` to key differently, and :meth:`get_limits` for limits per request (per
    plan).
    """

    scope: str | None = None
    rate: str | None = None
    _limiters: dict[tuple[str, str, int], RateLimiter] = {}
    _limiters_lock = threading.Lock()

    def __init__(self) -> None:
        self.decision: Decision | None = None

    def get_scope(self, view: Any) -> str:
        """The throttle scope: the view's ``throttle_scope``, else ``scope``, else default."""
        return getattr(view, "throttle_scope", None) or self.scope or "default"

    def get_rate(self, scope: str) -> str | None:
        """The rate for ``scope`` (``None``: this scope is not throttled)."""
        if self.rate is not None:
            return self.rate
        from rest_framework.settings import api_settings  # type: ignore[import-untyped]

        rates: Mapping[str, str] = api_settings.DEFAULT_THROTTLE_RATES or {}
        return rates.get(scope)

    def get_limits(self, request: Any, view: Any) -> str | None:
        """This request's rate (``None``: not throttled). Default: :meth:`get_rate` of the
        view's scope; override it for per-plan limits, e.g. ``return PLANS[request.user.plan]``
        (DRF or ``limits`` notation)."""
        return self.get_rate(self.get_scope(view))

    def get_key(self, request: Any, view: Any) -> Any:
        """The key: ``request.user`` first, else the client IP behind trusted proxies."""
        return _default_key(_config())(request)

    def limiter(self, scope: str, rate: str) -> RateLimiter:
        """The (cached) limiter of one scope and rate."""
        backend = _backend(_config())
        cache_key = (scope, rate, id(backend))
        limiter = self._limiters.get(cache_key)
        if limiter is None:
            with self._limiters_lock:
                limiter = self._limiters.get(cache_key)
                if limiter is None:
                    limiter = RateLimiter(rate, name=f"drf.{scope}"[:64], backend=backend)
                    if len(self._limiters) >= _MAX_THROTTLE_LIMITERS:  # rates per request
                        self._limiters.clear()
                    self._limiters[cache_key] = limiter
        return limiter

    def allow_request(self, request: Any, view: Any) -> bool:
        if not _config().enabled:
            return True
        scope = self.get_scope(view)
        rate = self.get_limits(request, view)
        if rate is None:
            return True
        key = self.get_key(request, view)
        if key is None:
            return True
        self.decision = self.limiter(scope, rate).acquire(key)
        return self.decision.allowed

    def wait(self) -> float | None:
        """Seconds until the refused request would be admitted (DRF's ``Retry-After``)."""
        if self.decision is None or self.decision.allowed:
            return None
        wait = self.decision.retry_after
        return None if wait == float("inf") else wait
