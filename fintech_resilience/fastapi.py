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

import dataclasses
import hashlib
import re
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response

from .backends.base import Backend, OnBackendError
from .backends.memory import MemoryBackend
from .backends.resolve import BackendSpec, resolve_backend
from .config.build import build_backend, default_key, idempotency_options, rate_limit_core
from .config.check import check_config
from .config.schema import Config
from .edges.asgi.idempotency import IdempotencyMiddleware
from .edges.ratelimit_http import KeyFunc, RateLimitCore, Verdict
from .errors import ConfigurationError
from .idempotency.store import IdempotencyContext, IdempotencyStore, current_idempotency
from .keys import principal_or_ip
from .ratelimit.limiter import Algorithm, Decision, RateLimiter

__all__ = ["RateLimit", "RateLimitExceeded", "idempotency_context", "install",
           "install_idempotency"]

_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")
_STATE = "fintech_resilience"


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


class _AppState:
    """What one app gives this module's dependencies: its backend, key function and switch."""

    __slots__ = ("backend", "cores", "enabled", "key")

    def __init__(self, backend: Backend, key: KeyFunc, enabled: bool = True) -> None:
        self.backend = backend
        self.key = key
        self.enabled = enabled
        self.cores: dict[tuple[RateLimit, str], RateLimitCore] = {}


def app_state(app: Any) -> _AppState:
    """The app's fintech_resilience state (``app.state.fintech_resilience``), created with a
    memory backend of the app's own when :func:`install` did not set one."""
    state: _AppState | None = getattr(app.state, _STATE, None)
    if state is None:
        state = _AppState(MemoryBackend(), principal_or_ip())
        setattr(app.state, _STATE, state)
    return state


def install(app: FastAPI, config: Config | Mapping[str, Any] | None = None, *,
            backend: BackendSpec = None, check: bool | None = None) -> None:
    """Prepare ``app`` for this module: call it once, where the app is created.

    * Registers the handler that answers :class:`RateLimitExceeded` as problem+json.
    * Gives the app its settings, a :class:`~fintech_resilience.config.Config` or a dict of the
      same schema (``Config.from_env()`` reads the environment): ``BACKEND`` (or ``backend=``;
      default a memory backend of this app's own) is where every :class:`RateLimit` without a
      backend of its own counts; ``TRUSTED_PROXIES``/``PRINCIPAL_HEADER`` make their default
      key; ``RATE_LIMIT`` adds an app-wide :class:`~fintech_resilience.asgi.RateLimitMiddleware`
      and ``IDEMPOTENCY`` the :class:`~fintech_resilience.asgi.IdempotencyMiddleware`;
      ``ENABLED: False`` switches every limit off.
    * With ``check=True`` (or ``CHECK``), connects to the backend and checks it now
      (:func:`fintech_resilience.config.check_config`): a wrong host or port fails the start-up.
    """
    if not isinstance(config, Config):
        config = Config.from_mapping(config)
    app.add_exception_handler(RateLimitExceeded, _problem_handler)
    chosen = (build_backend(config, MemoryBackend) if backend is None
              else resolve_backend(backend, MemoryBackend))
    if check if check is not None else config.check:
        check_config(dataclasses.replace(config, backend=chosen, backend_options=None))
    state = _AppState(chosen, default_key(config), config.enabled)
    setattr(app.state, _STATE, state)
    if config.idempotency is not None:
        install_idempotency(app, **idempotency_options(config.idempotency))
    section = config.rate_limit
    core = None if section is None or not config.enabled else rate_limit_core(
        config, section, backend=chosen, default_name="default")
    if core is not None and section is not None:
        from .edges.asgi.ratelimit import RateLimitMiddleware

        app.add_middleware(RateLimitMiddleware, rules=core.rules, key=core.key,
                           exempt_paths=section.exempt_paths, headers=section.headers,
                           headers_on_allowed=section.headers_on_allowed, shadow=section.shadow)


def _route_name(request: Request) -> str:
    route = request.scope.get("route")
    path = getattr(route, "path", None) or request.url.path
    readable = _NAME_CHARS.sub("_", path).strip("_")[:40] or "root"
    return f"{readable}-{hashlib.blake2b(path.encode(), digest_size=4).hexdigest()}"


class RateLimit:
    """A FastAPI dependency: ``Depends(RateLimit("5/second", key=...))``.

    :param limits: ``"5/second"``, ``"10/second; 1000/day"``, or a ready
        :class:`~fintech_resilience.RateLimiter` (shared wherever this dependency is used).
    :param key: ``callable(request) -> key | None``; default the app's (:func:`install`), else
        :func:`fintech_resilience.keys.principal_or_ip` (the TCP peer; configure
        ``trusted_proxies`` behind a load balancer). ``None`` means "not limited".
    :param cost: units per request, or ``callable(request) -> int``.
    :param name: the limiter's name (the policy name in the fields). Default: one limiter per
        route, named after the route's path template - the same dependency object on two
        routes limits each route separately.
    :param backend: a backend or a URL; default the app's (:func:`install`), which is a memory
        backend of each app's own unless configured: two apps never share counters.
    :param algorithm, on_backend_error, clock: passed to each RateLimiter created.
    :param headers, headers_on_allowed, shadow: as for the ASGI middleware.

    The dependency returns the :class:`~fintech_resilience.Decision` (``None`` if not limited),
    so ``decision: Decision | None = Depends(limit)`` exposes it to the endpoint.
    """

    def __init__(self, limits: str | RateLimiter, *, key: KeyFunc | None = None,
                 cost: int | Callable[[Any], int] = 1, name: str | None = None,
                 backend: BackendSpec = None, algorithm: Algorithm = "gcra",
                 on_backend_error: OnBackendError = "local", clock: Any = None,
                 headers: bool = True, headers_on_allowed: bool = True,
                 shadow: bool = False) -> None:
        if isinstance(limits, RateLimiter):
            if name is not None or backend is not None:
                raise ConfigurationError(
                    "name/backend configure the RateLimiter created from a string; with a"
                    " ready RateLimiter, set them on it"
                )
            self._limiter: RateLimiter | None = limits
        else:
            self._limiter = None
            RateLimiter(limits, backend=MemoryBackend(), algorithm=algorithm,
                        name=name or "probe", on_backend_error=on_backend_error,
                        clock=clock)  # validates everything once, here
        self._spec = limits
        self._name = name
        self._backend = None if backend is None else resolve_backend(backend)
        self._options: dict[str, Any] = {
            "algorithm": algorithm, "on_backend_error": on_backend_error, "clock": clock}
        self._key = key
        self._core_options: dict[str, Any] = {
            "cost": cost, "headers": headers, "headers_on_allowed": headers_on_allowed,
            "shadow": shadow}

    def _core(self, request: Request, state: _AppState) -> RateLimitCore:
        route = self._name or _route_name(request)
        core = state.cores.get((self, route))
        if core is None:
            limiter = self._limiter or RateLimiter(
                self._spec, name=route,  # type: ignore[arg-type]
                backend=self._backend or state.backend, **self._options)
            core = state.cores.setdefault((self, route), RateLimitCore(
                limiter, key=self._key or state.key, **self._core_options))
        return core

    async def __call__(self, request: Request, response: Response) -> Decision | None:
        state = app_state(request.app)
        if not state.enabled:
            return None
        verdict = await self._core(request, state).acheck(request.method, request.url.path,
                                                          request)
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
