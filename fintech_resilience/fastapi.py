"""FastAPI edge: rate limits and per-route idempotency as dependencies, app settings.

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

Idempotency per route: :class:`Idempotent` claims the key after the route's authentication
dependency, so the principal is your authenticated user; the layer :func:`install` adds holds
the response back and stores it once the endpoint answered:

>>> charge_once = Idempotent(store, principal=current_user, principal_key=lambda u: u.id,
...                          required=True)                                  # doctest: +SKIP
>>> @app.post("/payments")
... async def pay(body: PaymentIn, ctx: IdempotencyContext = Depends(charge_once)): ...

Or for every route of the app: :func:`install_idempotency` adds
:class:`fintech_resilience.asgi.IdempotencyMiddleware` (the principal then comes from the ASGI
scope), and the :func:`idempotency_context` dependency hands the endpoint the running key's
fencing token and downstream key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import re
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

try:
    from fastapi import Depends, FastAPI, HTTPException, Request, Response, params
except ModuleNotFoundError as _missing:  # the framework's extra is not installed: say which
    from .core.extras import install_hint

    install_hint(_missing, "fastapi")
    raise

from .backends.base import Backend, OnBackendError
from .backends.memory import MemoryBackend
from .backends.resolve import BackendSpec, resolve_backend
from .config.build import build_backend, default_key, idempotency_options, rate_limit_core
from .config.check import check_config
from .config.schema import Config
from .edges.asgi.idempotency import DEFAULT_MAX_BODY, IdempotencyMiddleware
from .edges.asgi.route_idempotency import SLOT as ROUTE_SLOT
from .edges.asgi.route_idempotency import RouteClaim, RouteClaimsMiddleware, RouteIdempotency
from .edges.http import SAFE_REPLAY_HEADERS, HttpAnswer
from .edges.ratelimit_http import (
    KeyFunc,
    LimitsFunc,
    RateLimitCore,
    Verdict,
    limits_from_requests,
)
from .errors import ConfigurationError
from .idempotency.context import IdempotencyContext, current_idempotency
from .idempotency.record import default_store_status
from .idempotency.store import IdempotencyStore
from .keys import principal_or_ip
from .ratelimit.limiter import Algorithm, Decision, RateLimiter
from .ratelimit.specs import LimitsArg

__all__ = ["Idempotent", "RateLimit", "RateLimitExceeded", "idempotency_context", "install",
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


def _app_state(app: Any) -> _AppState:
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

    * Registers the handler that answers :class:`RateLimitExceeded` as problem+json, and the
      pure ASGI layer that settles the claims of :class:`Idempotent` routes (requests without
      one pass through it untouched).
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
    app.add_middleware(RouteClaimsMiddleware)
    chosen = (build_backend(config, MemoryBackend) if backend is None
              else resolve_backend(backend, MemoryBackend))
    if check if check is not None else config.check:
        check_config(config if backend is None else dataclasses.replace(
            config, backend=backend, backend_options=None))
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

    :param limits: ``"5/second"``, ``"10/second; 1000/day"``, a ready
        :class:`~fintech_resilience.RateLimiter` (shared wherever this dependency is used), or
        a ``callable(request) -> rate string | None`` resolved per request (per-plan limits,
        as slowapi's dynamic limits; None: this request is not limited).
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

    A dependency cannot see the response, so counting only some responses (``count_when``) is
    the ASGI middleware's: ``app.add_middleware(RateLimitMiddleware, rules=[Rule(...,
    count_when=...)])``.
    """

    def __init__(self, limits: str | RateLimiter | LimitsFunc, *, key: KeyFunc | None = None,
                 cost: int | Callable[[Any], int] = 1, name: str | None = None,
                 backend: BackendSpec = None, algorithm: Algorithm = "gcra",
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
            self._limiter: RateLimiter | None = limits
        else:
            self._limiter = None
            if callable(limits):
                per_request = limits
            else:
                self._own = limits
            RateLimiter(self._own, backend=MemoryBackend(), algorithm=algorithm,
                        name=name or "probe", on_backend_error=on_backend_error,
                        clock=clock)  # validates everything once, here
        self._spec = limits
        self._name = name
        self._backend = None if backend is None else resolve_backend(backend)
        self._options: dict[str, Any] = {
            "algorithm": algorithm, "on_backend_error": on_backend_error, "clock": clock}
        self._key = key
        self._core_options: dict[str, Any] = {
            "cost": cost, "limits": per_request, "headers": headers,
            "headers_on_allowed": headers_on_allowed, "shadow": shadow}

    def _core(self, request: Request, state: _AppState) -> RateLimitCore:
        route = self._name or _route_name(request)
        core = state.cores.get((self, route))
        if core is None:
            limiter = self._limiter or RateLimiter(
                self._own, name=route, backend=self._backend or state.backend, **self._options)
            core = state.cores.setdefault((self, route), RateLimitCore(
                limiter, key=self._key or state.key, **self._core_options))
        return core

    async def __call__(self, request: Request, response: Response) -> Decision | None:
        state = _app_state(request.app)
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


class _Answered(HTTPException):
    """Stops the endpoint of a request the route answered itself (the answer is sent by
    :class:`RouteClaimsMiddleware` in place of whatever the app makes of this exception)."""

    def __init__(self, answer: HttpAnswer) -> None:
        super().__init__(answer.status)
        self.answer = answer


class Idempotent:
    """A dependency that makes one route idempotent, with the principal from another dependency.

    >>> charge_once = Idempotent(store, principal=current_user_id, required=True)  # doctest: +SKIP
    >>> @app.post("/charges")
    ... async def charge(body: ChargeIn, ctx: IdempotencyContext = Depends(charge_once)): ...

    Routes without it (``POST /login``) are untouched, whatever ``required`` says here. The key
    is claimed after the route's other dependencies ran - authentication included - so the
    record is scoped by the authenticated principal and an unauthenticated request gets your
    401 and claims nothing. The answers are the middleware's: the stored response replayed with
    ``Idempotent-Replayed: true``, 409 while the first request runs, 422 for the key reused with
    another request, 400 for a bad or (``required``) missing key, 503 when the store is down.
    Needs :func:`install` on the app (it settles the claim when the response leaves).

    :param store: the :class:`~fintech_resilience.IdempotencyStore`.
    :param principal: a dependency returning the authenticated principal (``current_user``, or
        ``Depends(current_user)``); its value scopes the record. A str, int or UUID is used as it
        is; map other objects with ``principal_key``. None returned: 500 (no principal).
    :param principal_key: ``callable(principal) -> str | int`` (``lambda user: user.id``).
    :param global_scope: no principal: one record space for every client (only if keys are
        unique across clients).
    :param required: answer 400 to a request without a key.
    :param header, max_body_bytes, max_response_bytes, store_status, replay_headers: as for
        :class:`fintech_resilience.asgi.IdempotencyMiddleware`.

    The dependency's value is the running :class:`IdempotencyContext` (None when the request
    has no key): ``ctx.downstream_key("psp")`` is the key to send on. On a route already behind
    the app-wide middleware it hands on that middleware's claim instead of claiming again.
    """

    def __init__(self, store: IdempotencyStore, *, principal: Any = None,
                 principal_key: Callable[[Any], Any] | None = None, global_scope: bool = False,
                 required: bool = False, header: str = "Idempotency-Key",
                 max_body_bytes: int = DEFAULT_MAX_BODY,
                 max_response_bytes: int = DEFAULT_MAX_BODY,
                 store_status: Callable[[int], bool] = default_store_status,
                 replay_headers: Iterable[str] = SAFE_REPLAY_HEADERS) -> None:
        depends = principal if isinstance(principal, params.Depends) or principal is None else (
            Depends(principal))
        if depends is not None and not callable(depends.dependency):
            raise ConfigurationError("principal is a dependency: a callable or Depends(...)")
        self._route = RouteIdempotency(
            store, principal=None if depends is None else depends.dependency,
            principal_key=principal_key, global_scope=global_scope, required=required,
            header=header, max_body_bytes=max_body_bytes, max_response_bytes=max_response_bytes,
            store_status=store_status, replay_headers=replay_headers)
        parameters = [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                        annotation=Request)]
        if depends is not None:
            parameters.append(inspect.Parameter("principal", inspect.Parameter.KEYWORD_ONLY,
                                                default=depends))
        # FastAPI reads the parameters from here: the principal's dependency is this route's
        self.__signature__ = inspect.Signature(parameters)

    async def __call__(self, request: Request, principal: Any = None
                       ) -> AsyncIterator[IdempotencyContext | None]:
        running = current_idempotency()
        if running is not None:  # the app-wide middleware claimed this request already
            yield running
            return
        slot = request.scope.get(ROUTE_SLOT)
        if not isinstance(slot, RouteClaim):
            raise ConfigurationError(
                "Idempotent needs fintech_resilience.fastapi.install(app) on the app")
        route = self._route
        outcome = await route.open(request.scope, request.headers.getlist(route.header),
                                   principal, request.body)
        if outcome is None:
            yield None
            return
        if isinstance(outcome, HttpAnswer):
            slot.answer = outcome
            raise _Answered(outcome)
        slot.claim, slot.options = outcome, route
        async with route.store.aholding(outcome) as ctx:
            yield ctx

    def __repr__(self) -> str:
        return f"Idempotent({self._route.store!r})"


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
