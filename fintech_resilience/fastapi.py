"""FastAPI edge: rate limits as dependencies.

>>> from fastapi import Depends, FastAPI                                 # doctest: +SKIP
>>> from fintech_resilience.fastapi import RateLimit, install
>>> app = FastAPI()
>>> install(app)            # refusals answer as RFC 9457 problem+json (else FastAPI's JSON)
>>> @app.post("/payments", dependencies=[Depends(RateLimit("5/second"))])
... async def pay(body: PaymentIn) -> PaymentOut: ...

The endpoint needs no ``request`` parameter: the dependency receives the request itself. Admitted
responses carry the ``RateLimit``/``RateLimit-Policy`` fields; refusals raise
:class:`RateLimitExceeded` (an ``HTTPException``: 429 with ``Retry-After``, or 503 when the
backend is down and ``on_backend_error="deny"``).

Idempotency is a middleware, not a dependency: a dependency cannot hold back, store and replay
the response the endpoint produces. :func:`install_idempotency` adds
:class:`fintech_resilience.asgi.IdempotencyMiddleware` to the app (options validated at once),
and the :func:`idempotency_context` dependency hands the endpoint the running key's fencing token
and downstream key:

>>> install_idempotency(app, store, scope=lambda scope: scope["state"]["principal"])
>>> @app.post("/payments")                                                # doctest: +SKIP
... async def pay(body: PaymentIn,
...               ctx: IdempotencyContext | None = Depends(idempotency_context)): ...
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response

from .backends.base import Backend, OnBackendError
from .edges.asgi.idempotency import IdempotencyMiddleware
from .edges.ratelimit_http import (
    KeyFunc,
    LimitsFunc,
    RateLimitCore,
    Verdict,
    limits_from_requests,
)
from .errors import ConfigurationError
from .idempotency.store import IdempotencyContext, IdempotencyStore, current_idempotency
from .ratelimit.limiter import Algorithm, Decision, RateLimiter
from .ratelimit.specs import LimitsArg

__all__ = ["RateLimit", "RateLimitExceeded", "idempotency_context", "install",
           "install_idempotency"]

_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")


class RateLimitExceeded(HTTPException):
    """A rate-limit refusal: an ``HTTPException`` carrying the problem document.

    Without :func:`install`, FastAPI answers it with its usual ``{"detail": ...}`` JSON (status
    and fields are right); with it, with the RFC 9457 problem+json body.
    """

    def __init__(self, verdict: Verdict) -> None:
        headers = {k: v for k, v in verdict.headers if k not in ("Content-Type", "Content-Length")}
        super().__init__(verdict.status, detail=_detail(verdict.body), headers=headers)
        self.verdict = verdict
        self.decision = verdict.decisions[-1]


def _detail(body: bytes) -> str:
    import json

    doc = json.loads(body)
    return str(doc.get("detail") or doc["title"])


async def _problem_handler(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, RateLimitExceeded):  # registered for this class only
        raise exc
    verdict = exc.verdict
    return Response(verdict.body, status_code=verdict.status, headers=dict(verdict.headers))


def install(app: FastAPI) -> None:
    """Register the handler that answers :class:`RateLimitExceeded` as problem+json."""
    app.add_exception_handler(RateLimitExceeded, _problem_handler)


def _route_name(request: Request) -> str:
    route = request.scope.get("route")
    path = getattr(route, "path", None) or request.url.path
    readable = _NAME_CHARS.sub("_", path).strip("_")[:40] or "root"
    return f"{readable}-{hashlib.blake2b(path.encode(), digest_size=4).hexdigest()}"


class RateLimit:
    """A FastAPI dependency: ``Depends(RateLimit("5/second", key=...))``.

    :param limits: ``"5/second"``, ``"10/second; 1000/day"``, a ready
        :class:`~fintech_resilience.RateLimiter` (shared wherever this dependency is used), or
        a ``callable(request) -> rate string | None`` resolved per request (per-plan limits,
        as slowapi's dynamic limits; None: this request is not limited).
    :param key: ``callable(request) -> key | None``; default
        :func:`fintech_resilience.keys.principal_or_ip` (the TCP peer; configure
        ``trusted_proxies`` behind a load balancer). ``None`` means "not limited".
    :param cost: units per request, or ``callable(request) -> int``.
    :param name: the limiter's name (the policy name in the fields). Default: one limiter per
        route, named after the route's path template - the same dependency object on two
        routes limits each route separately.
    :param backend, algorithm, on_backend_error, clock: passed to each RateLimiter created.
    :param headers, headers_on_allowed, shadow: as for the ASGI middleware.

    The dependency returns the :class:`~fintech_resilience.Decision` (``None`` if not limited),
    so ``decision: Decision | None = Depends(limit)`` exposes it to the endpoint.

    A dependency cannot see the response, so counting only some responses (``count_when``) is
    the ASGI middleware's: ``app.add_middleware(RateLimitMiddleware, rules=[Rule(...,
    count_when=...)])``.
    """

    def __init__(self, limits: str | RateLimiter | LimitsFunc, *, key: KeyFunc | None = None,
                 cost: int | Callable[[Any], int] = 1, name: str | None = None,
                 backend: Backend | None = None, algorithm: Algorithm = "gcra",
                 on_backend_error: OnBackendError = "local", clock: Any = None,
                 headers: bool = True, headers_on_allowed: bool = True,
                 shadow: bool = False) -> None:
        per_request: LimitsFunc | None = None
        #: the limits of each RateLimiter made here (per request: each passes its own)
        self._own: str | Callable[[object], LimitsArg] = limits_from_requests
        if isinstance(limits, RateLimiter):
            if name is not None or backend is not None:
                raise ConfigurationError(
                    "name/backend configure the RateLimiter created from a string; with a"
                    " ready RateLimiter, set them on it"
                )
            self._fixed: RateLimiter | None = limits
        else:
            if callable(limits):
                per_request = limits
            else:
                self._own = limits
            probe = RateLimiter(self._own, backend=backend, algorithm=algorithm,
                                name=name or "probe", on_backend_error=on_backend_error,
                                clock=clock)  # validates everything once, here
            self._fixed = probe if name is not None else None
        self._spec = limits
        self._options: dict[str, Any] = {
            "backend": backend, "algorithm": algorithm, "on_backend_error": on_backend_error,
            "clock": clock}
        self._core_options: dict[str, Any] = {
            "key": key, "cost": cost, "limits": per_request, "headers": headers,
            "headers_on_allowed": headers_on_allowed, "shadow": shadow}
        self._cores: dict[str, RateLimitCore] = {}
        if self._fixed is not None:
            self._cores[""] = RateLimitCore(self._fixed, **self._core_options)

    def _core(self, request: Request) -> RateLimitCore:
        if self._fixed is not None:
            return self._cores[""]
        route = _route_name(request)
        core = self._cores.get(route)
        if core is None:
            limiter = RateLimiter(self._own, name=route, **self._options)
            core = self._cores.setdefault(route, RateLimitCore(limiter, **self._core_options))
        return core

    async def __call__(self, request: Request, response: Response) -> Decision | None:
        verdict = await self._core(request).acheck(request.method, request.url.path, request)
        if not verdict.allowed:
            raise RateLimitExceeded(verdict)
        for name, value in verdict.headers:
            response.headers[name] = value
        return verdict.decisions[-1] if verdict.decisions else None

    def __repr__(self) -> str:
        return f"RateLimit({self._spec!r})"


async def _no_app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover - never run
    raise RuntimeError("placeholder app used only to validate the options")


def install_idempotency(app: FastAPI, store: IdempotencyStore, *,
                        scope: Callable[[Any], Any] | None = None, **options: Any) -> None:
    """Add :class:`~fintech_resilience.asgi.IdempotencyMiddleware` to ``app``: the supported way
    to make FastAPI endpoints idempotent.

    ``scope`` and ``options`` (``methods``, ``required``, ``global_scope``, ``header``,
    ``max_body_bytes``, ...) are the middleware's and are validated here, at once. Middleware added
    later wraps this one: call this *before* adding your authentication middleware, so the
    principal ``scope`` reads is already set when the key is looked up.
    """
    IdempotencyMiddleware(_no_app, store=store, scope=scope, **options)  # raises on bad options
    app.add_middleware(IdempotencyMiddleware, store=store, scope=scope, **options)


async def idempotency_context() -> IdempotencyContext | None:
    """A dependency: the running idempotency key's context (``fencing_token``,
    ``downstream_key(purpose)``), or None when the request carries no key.

    ``ctx: IdempotencyContext | None = Depends(idempotency_context)``; send
    ``ctx.downstream_key("charge")`` as the PSP's ``Idempotency-Key``.
    """
    return current_idempotency()
