"""The Django rate-limit middleware, configured from ``settings.FINTECH_RESILIENCE``."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse  # type: ignore[import-untyped]

from ..edges.ratelimit_http import RateLimitCore, Rule, Verdict
from ..errors import ConfigurationError
from ..ratelimit.limiter import RateLimiter
from .settings import _backend, _config, _key, drf_rate

__all__ = ["RateLimitMiddleware", "core_from_settings"]

def core_from_settings() -> RateLimitCore:
    """Build the middleware's :class:`RateLimitCore` from ``settings.FINTECH_RESILIENCE``."""
    config = _config()
    section = config.get("RATE_LIMIT") or {}
    backend = _backend(config)
    common = {"backend": backend, "on_backend_error": section.get("ON_BACKEND_ERROR", "local"),
              "algorithm": section.get("ALGORITHM", "gcra")}
    rules = []
    for spec in section.get("RULES", ()):
        rule_limiter = RateLimiter(drf_rate(spec["LIMITS"]), name=spec.get("NAME", "default"),
                                   **common)
        path = spec.get("PATH")  # a prefix, or a regular expression when it starts with "^"
        rules.append(Rule(rule_limiter, methods=spec.get("METHODS"),
                          path=re.compile(path) if isinstance(path, str)
                          and path.startswith("^") else path,
                          key=_key(spec["KEY"], config) if spec.get("KEY") else None,
                          cost=spec.get("COST", 1)))
    limits = section.get("LIMITS")
    limiter = (RateLimiter(drf_rate(limits), name=section.get("NAME", "django"), **common)
               if limits else None)
    if limiter is None and not rules:
        raise ConfigurationError(
            "fintech_resilience.django.RateLimitMiddleware needs FINTECH_RESILIENCE = "
            "{'RATE_LIMIT': {'LIMITS': '100/minute'}} (or 'RULES') in settings"
        )
    return RateLimitCore(limiter, rules=rules, key=_key(section.get("KEY"), config),
                         exempt_paths=section.get("EXEMPT_PATHS", ()),
                         headers=section.get("HEADERS", True),
                         headers_on_allowed=section.get("HEADERS_ON_ALLOWED", True),
                         shadow=section.get("SHADOW", False))

def _refusal(verdict: Verdict) -> HttpResponse:
    response = HttpResponse(verdict.body, status=verdict.status)
    for name, value in verdict.headers:
        response[name] = value
    return response

class RateLimitMiddleware:
    """Django middleware limiting every request by ``settings.FINTECH_RESILIENCE['RATE_LIMIT']``.

    Place it after ``AuthenticationMiddleware`` so ``request.user`` keys authenticated callers.
    Works under WSGI and ASGI (async: decisions use the async backend path).
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.core = core_from_settings()
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self._async:
            return self._acall(request)
        verdict = self.core.check(request.method or "GET", request.path, request)
        if not verdict.allowed:
            return _refusal(verdict)
        response = self.get_response(request)
        for name, value in verdict.headers:
            response[name] = value
        return response

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        auser = getattr(request, "auser", None)
        if auser is not None:  # resolve the lazy user here: no sync DB query on the loop
            request.user = await auser()
        verdict = await self.core.acheck(request.method or "GET", request.path, request)
        if not verdict.allowed:
            return _refusal(verdict)
        get_response: Callable[[HttpRequest], Awaitable[HttpResponse]] = self.get_response
        response = await get_response(request)
        for name, value in verdict.headers:
            response[name] = value
        return response
