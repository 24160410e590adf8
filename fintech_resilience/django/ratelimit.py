"""The Django rate-limit middleware, configured from ``settings.FINTECH_RESILIENCE``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.core.exceptions import MiddlewareNotUsed  # type: ignore[import-untyped]
from django.http import HttpRequest, HttpResponse  # type: ignore[import-untyped]

from ..config.build import rate_limit_core
from ..edges.ratelimit_http import RateLimitCore, Verdict
from ..errors import ConfigurationError
from .settings import _backend, _config

__all__ = ["RateLimitMiddleware", "core_from_settings"]


def core_from_settings() -> RateLimitCore:
    """Build the middleware's :class:`RateLimitCore` from ``settings.FINTECH_RESILIENCE``."""
    config = _config()
    core = None
    if config.rate_limit is not None:
        core = rate_limit_core(config, config.rate_limit, backend=_backend(config),
                               default_name="django")
    if core is None:
        raise ConfigurationError(
            "fintech_resilience.django.RateLimitMiddleware needs FINTECH_RESILIENCE = "
            "{'RATE_LIMIT': {'LIMITS': '100/minute'}} (or 'RULES') in settings"
        )
    return core


def _refusal(verdict: Verdict) -> HttpResponse:
    response = HttpResponse(verdict.body, status=verdict.status)
    for name, value in verdict.headers:
        response[name] = value
    return response


class RateLimitMiddleware:
    """Django middleware limiting every request by ``settings.FINTECH_RESILIENCE['RATE_LIMIT']``.

    Place it after ``AuthenticationMiddleware`` so ``request.user`` keys authenticated callers.
    Works under WSGI and ASGI (async: decisions use the async backend path). With
    ``"ENABLED": False`` in ``settings.FINTECH_RESILIENCE`` Django leaves it out.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        if not _config().enabled:
            raise MiddlewareNotUsed("FINTECH_RESILIENCE['ENABLED'] is False")
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
        fields = (self.core.settle(verdict, response.status_code) if verdict.counted
                  else verdict.headers)
        for name, value in fields:
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
        fields = (await self.core.asettle(verdict, response.status_code) if verdict.counted
                  else verdict.headers)
        for name, value in fields:
            response[name] = value
        return response
