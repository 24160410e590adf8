"""Django edge: rate-limit and idempotency middlewares configured from settings, and a DRF
throttle class.

Middleware (sync and async capable)::

    MIDDLEWARE = [..., "django.contrib.auth.middleware.AuthenticationMiddleware",
                  "fintech_resilience.django.RateLimitMiddleware", ...]
    FINTECH_RESILIENCE = {
        "BACKEND": "redis://redis:6379/0",        # or a Backend object; default: memory
        "TRUSTED_PROXIES": ["10.0.0.0/8"],         # for the default key function
        "RATE_LIMIT": {
            "LIMITS": "100/minute",                # every request (optional when RULES given);
                                                   # or "myapp.plans.limits" (per request)
            "RULES": [{"LIMITS": "5/second", "NAME": "payments", "PATH": "/payments",
                       "METHODS": ["POST"], "COUNT_WHEN": "myapp.limits.declined"}],
            "EXEMPT_PATHS": ["/healthz"],
            "KEY": "myapp.keys.merchant",          # dotted path or callable(request); optional
            "HEADERS": True, "HEADERS_ON_ALLOWED": True, "SHADOW": False,
        },
    }

DRF, configured the DRF way::

    REST_FRAMEWORK = {
        "DEFAULT_THROTTLE_CLASSES": ["fintech_resilience.django.RateThrottle"],
        "DEFAULT_THROTTLE_RATES": {"payments": "10/second", "default": "100/minute"},
    }
    class PaymentView(APIView):
        throttle_scope = "payments"

The key is the authenticated ``request.user`` (its ``pk``) first, else the client IP through
``TRUSTED_PROXIES`` (see :mod:`fintech_resilience.keys`). DRF answers a throttled request with
its own 429 and ``Retry-After``; the middleware answers with RFC 9457 problem+json and the IETF
``RateLimit``/``RateLimit-Policy`` fields.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings  # type: ignore[import-untyped]
from django.http import HttpRequest, HttpResponse  # type: ignore[import-untyped]
from django.utils.module_loading import import_string  # type: ignore[import-untyped]
from rest_framework.throttling import BaseThrottle  # type: ignore[import-untyped]

from .backends.base import Backend
from .edges.http import PROBLEM_BASE, SAFE_REPLAY_HEADERS, HttpAnswer
from .edges.ratelimit_http import (
    CountWhen,
    LimitsFunc,
    RateLimitCore,
    Rule,
    Verdict,
    limits_from_requests,
)
from .edges.wsgi.idempotency import finish_claim, open_claim
from .errors import ConfigurationError
from .keys import ClientKey, principal_or_ip
from .ratelimit.limiter import Decision, RateLimiter

__all__ = ["IdempotencyMiddleware", "RateLimitMiddleware", "RateThrottle", "drf_rate"]

_lock = threading.Lock()
_backends: dict[str, Backend] = {}
_DRF_UNITS = {"s": "second", "m": "minute", "h": "hour", "d": "day"}
_DRF_RATE = re.compile(r"^\s*(\d+)\s*/\s*([smhd])[a-z]*\s*$")
#: a dotted path to a callable ("myapp.plans.limits"); a rate never looks like one
_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")
#: limiters the DRF throttle keeps (per scope, rate and backend); forgotten all at once beyond
_MAX_THROTTLE_LIMITERS = 256


def _config() -> Mapping[str, Any]:
    value = getattr(settings, "FINTECH_RESILIENCE", {}) or {}
    if not isinstance(value, Mapping):
        raise ConfigurationError("settings.FINTECH_RESILIENCE must be a dict")
    return value


def _backend(config: Mapping[str, Any]) -> Backend | None:
    value = config.get("BACKEND")
    if value is None or isinstance(value, Backend):
        return value
    if not isinstance(value, str):
        raise ConfigurationError(
            "FINTECH_RESILIENCE['BACKEND'] is a Redis URL ('redis://host:6379/0') or a Backend"
        )
    with _lock:  # one connection pool per URL, shared by the middleware and the throttles
        if value not in _backends:
            from .backends.redis import RedisBackend

            _backends[value] = RedisBackend.from_url(value)
        return _backends[value]


def _key(value: Any, config: Mapping[str, Any]) -> Callable[[Any], Any]:
    if value is None:
        return _default_key(config)
    found = import_string(value) if isinstance(value, str) else value
    if not callable(found):
        raise ConfigurationError("KEY is a dotted path to, or a callable(request) -> key")
    return found  # type: ignore[no-any-return]


_default_keys: dict[tuple[Any, ...], ClientKey] = {}


def _default_key(config: Mapping[str, Any]) -> ClientKey:
    options = (tuple(config.get("TRUSTED_PROXIES", ())),
               config.get("FORWARDED_HEADER", "X-Forwarded-For"), config.get("PRINCIPAL_HEADER"))
    key = _default_keys.get(options)
    if key is None:
        key = principal_or_ip(trusted_proxies=options[0], header=options[1],
                              principal_header=options[2])
        _default_keys[options] = key
    return key


def _callable(value: Any, what: str) -> Callable[..., Any]:
    found = import_string(value) if isinstance(value, str) else value
    if not callable(found):
        raise ConfigurationError(f"{what} is a dotted path to, or a callable")
    return found  # type: ignore[no-any-return]


def _limits(value: Any, name: str, common: Mapping[str, Any]
            ) -> tuple[RateLimiter, LimitsFunc | None]:
    """A rule's limiter: ``LIMITS`` is a rate (``"10/second"``, ``"10/s"``), or a dotted path
    to (or a) ``callable(request) -> rate | None`` resolved per request."""
    if callable(value) or (isinstance(value, str) and _DOTTED.match(value)):
        per_request = _callable(value, "LIMITS")
        return RateLimiter(limits_from_requests, name=name, **common), (
            lambda request: _drf_limits(per_request(request)))
    return RateLimiter(drf_rate(value), name=name, **common), None


def _drf_limits(value: Any) -> Any:
    return drf_rate(value) if isinstance(value, str) else value


def _count_when(value: Any) -> CountWhen | None:
    return None if value is None else _callable(value, "COUNT_WHEN")


def drf_rate(rate: str) -> str:
    """A DRF rate (``"10/s"``, ``"100/min"``, ``"5/hour"``) in ``limits`` notation."""
    match = _DRF_RATE.match(rate)
    if match is None:
        return rate  # already limits notation ("10/second; 1000/day", "10 per minute")
    return f"{match.group(1)}/{_DRF_UNITS[match.group(2)]}"


def core_from_settings() -> RateLimitCore:
    """Build the middleware's :class:`RateLimitCore` from ``settings.FINTECH_RESILIENCE``."""
    config = _config()
    section = config.get("RATE_LIMIT") or {}
    backend = _backend(config)
    common = {"backend": backend, "on_backend_error": section.get("ON_BACKEND_ERROR", "local"),
              "algorithm": section.get("ALGORITHM", "gcra")}
    rules = []
    for spec in section.get("RULES", ()):
        rule_limiter, per_request = _limits(spec["LIMITS"], spec.get("NAME", "default"), common)
        path = spec.get("PATH")  # a prefix, or a regular expression when it starts with "^"
        rules.append(Rule(rule_limiter, methods=spec.get("METHODS"),
                          path=re.compile(path) if isinstance(path, str)
                          and path.startswith("^") else path,
                          key=_key(spec["KEY"], config) if spec.get("KEY") else None,
                          cost=spec.get("COST", 1), limits=per_request,
                          count_when=_count_when(spec.get("COUNT_WHEN"))))
    limits = section.get("LIMITS")
    limiter, per_request = (_limits(limits, section.get("NAME", "django"), common) if limits
                            else (None, None))
    if limiter is None and not rules:
        raise ConfigurationError(
            "fintech_resilience.django.RateLimitMiddleware needs FINTECH_RESILIENCE = "
            "{'RATE_LIMIT': {'LIMITS': '100/minute'}} (or 'RULES') in settings"
        )
    return RateLimitCore(limiter, rules=rules, key=_key(section.get("KEY"), config),
                         limits=per_request,
                         count_when=_count_when(section.get("COUNT_WHEN")) if limiter else None,
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


class IdempotencyMiddleware:
    """Django middleware: each request with an ``Idempotency-Key`` runs once; duplicates get the
    stored response (the same answers as :class:`fintech_resilience.asgi.IdempotencyMiddleware`).

    Configured from ``settings.FINTECH_RESILIENCE["IDEMPOTENCY"]``::

        "IDEMPOTENCY": {
            "STORE": "myapp.resilience.store",     # dotted path to (or an) IdempotencyStore
            "SCOPE": "myapp.resilience.principal", # callable(request) -> principal; default:
                                                   # the authenticated request.user's pk
            "METHODS": ["POST", "PATCH"], "REQUIRED": False,
            "MAX_BODY_BYTES": 1048576, "MAX_RESPONSE_BYTES": 1048576,
        }

    Place it after ``AuthenticationMiddleware``. A keyed request from an anonymous user has no
    principal and is refused (500, ``scope-missing``) rather than sharing one record space; set
    ``"GLOBAL_SCOPE": True`` only if keys are unique across all clients. Under ASGI, Django runs
    it in a thread (it is sync only). Streaming responses are not replayable: the key is
    completed as such and later duplicates get 409.
    """

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        from .edges.asgi.idempotency import DEFAULT_MAX_BODY, check_options
        from .idempotency.record import default_store_status

        config = _config().get("IDEMPOTENCY")
        if not isinstance(config, Mapping) or "STORE" not in config:
            raise ConfigurationError(
                "settings.FINTECH_RESILIENCE['IDEMPOTENCY'] must be a dict with 'STORE' (a dotted"
                " path to an IdempotencyStore)"
            )
        store = config["STORE"]
        self.store = import_string(store) if isinstance(store, str) else store
        scope = config.get("SCOPE", _authenticated_pk)
        self.scope_of = import_string(scope) if isinstance(scope, str) else scope
        if config.get("GLOBAL_SCOPE"):
            self.scope_of = _global_scope
        self.max_body_bytes = config.get("MAX_BODY_BYTES", DEFAULT_MAX_BODY)
        self.max_response_bytes = config.get("MAX_RESPONSE_BYTES", DEFAULT_MAX_BODY)
        self.methods = check_options(self.store, self.scope_of, bool(config.get("GLOBAL_SCOPE")),
                                     config.get("METHODS", ("POST", "PATCH")),
                                     self.max_body_bytes, self.max_response_bytes)
        self.required = bool(config.get("REQUIRED", False))
        header = str(config.get("HEADER", "Idempotency-Key"))
        self.meta_key = "HTTP_" + header.upper().replace("-", "_")
        self.store_status = default_store_status
        self.replay_headers = frozenset(h.lower() for h in SAFE_REPLAY_HEADERS)
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> Any:
        method = (request.method or "GET").upper()
        if method not in self.methods:
            return self.get_response(request)
        outcome = open_claim(
            self.store, method=method, raw_key=request.META.get(self.meta_key),
            required=self.required, principal_of=lambda: self.scope_of(request),
            path=request.path, query=request.META.get("QUERY_STRING", "").encode("latin-1"),
            read_body=lambda: self._body(request), max_body_bytes=self.max_body_bytes,
            origination=request.META.get("REMOTE_ADDR") or None, base=PROBLEM_BASE)
        if outcome is None:
            return self.get_response(request)
        if isinstance(outcome, HttpAnswer):
            return _answer(outcome)
        claim = outcome
        try:
            with self.store.holding(claim):
                response = self.get_response(request)
        except BaseException:
            self.store.release(claim)
            raise
        streaming = bool(getattr(response, "streaming", False))
        data = b"" if streaming else bytes(response.content)
        finish_claim(self.store, claim, response.status_code, list(response.items()), data,
                     replayable=not streaming and len(data) <= self.max_response_bytes,
                     store_status=self.store_status, replay_headers=self.replay_headers)
        return response

    def _body(self, request: HttpRequest) -> bytes | None:
        length = request.META.get("CONTENT_LENGTH") or ""
        if length.isdigit() and int(length) > self.max_body_bytes:
            return None
        body = bytes(request.body)
        return None if len(body) > self.max_body_bytes else body


def _authenticated_pk(request: HttpRequest) -> Any:
    user = getattr(request, "user", None)
    return user.pk if user is not None and getattr(user, "is_authenticated", False) else None


def _global_scope(request: HttpRequest) -> str:
    return "*"


def _answer(answer: HttpAnswer) -> HttpResponse:
    response = HttpResponse(answer.body, status=answer.status)
    for name, value in answer.headers:
        response[name] = value
    return response


class RateThrottle(BaseThrottle):  # type: ignore[misc]
    """A DRF throttle on fintech_resilience limiters (shared through Redis, GCRA, no races).

    Configured the DRF way: the rate comes from ``REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]``
    under the view's ``throttle_scope`` (else the class's ``scope``, default ``"default"``), or
    from a subclass's ``rate``. DRF rate notation (``"10/s"``, ``"100/min"``) and ``limits``
    notation (``"10/second; 1000/day"``) both work. The backend and trusted proxies come from
    ``settings.FINTECH_RESILIENCE``. Override :meth:`get_key` to key differently, and
    :meth:`get_limits` for limits per request (per plan).
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
                    limiter = RateLimiter(drf_rate(rate), name=f"drf.{scope}"[:64],
                                          backend=backend)
                    if len(self._limiters) >= _MAX_THROTTLE_LIMITERS:  # rates per request
                        self._limiters.clear()
                    self._limiters[cache_key] = limiter
        return limiter

    def allow_request(self, request: Any, view: Any) -> bool:
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
