"""Flask edge: an extension with app-wide limits and per-view decorators.

>>> from fintech_resilience.flask import Resilience                     # doctest: +SKIP
>>> resilience = Resilience(backend=red, key=principal_or_ip(trusted_proxies=["10.0.0.0/8"]))
>>> resilience.init_app(app)                  # or Resilience(app, ...)
>>> @app.post("/payments")
... @resilience.limit("5/second")
... def pay(): ...

Refusals are ``429`` RFC 9457 problem+json with ``Retry-After`` and the IETF ``RateLimit``/
``RateLimit-Policy`` fields (which admitted responses carry too); ``503`` when the backend is down
and ``on_backend_error="deny"`` refused. Key functions receive the Flask ``request``.

Settings may also come from ``app.config["FINTECH_RESILIENCE"]`` (the schema of
:class:`fintech_resilience.config.Config`, as Django's); an option given to :class:`Resilience`
wins over it. Each app the extension is initialised on keeps its own state: without a configured
backend, a memory backend of its own (two apps in one test process never share counters).

Set ``RESILIENCE_ENABLED = False`` in ``app.config`` to switch every limit off (e.g. in tests).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import re
import weakref
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, cast

try:
    from flask import Flask, Response, current_app, g, request
except ModuleNotFoundError as _missing:  # the framework's extra is not installed: say which
    from .core.extras import install_hint

    install_hint(_missing, "flask")
    raise

from .backends.base import Backend, OnBackendError
from .backends.memory import MemoryBackend
from .backends.resolve import BackendSpec, resolve_backend
from .config.build import build_backend, default_key, idempotency_options, rate_limit_core
from .config.check import check_config
from .config.schema import Config, RateLimitConfig
from .core.storage_keys import validate_name
from .edges.ratelimit_http import (
    CountWhen,
    KeyFunc,
    LimitsFunc,
    RateLimitCore,
    Rule,
    Verdict,
    limits_from_requests,
)
from .errors import ConfigurationError
from .ratelimit.limiter import ALGORITHMS, Algorithm, RateLimiter
from .ratelimit.rates import parse_limits

__all__ = ["Resilience"]

F = TypeVar("F", bound=Callable[..., Any])
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")
_FIELDS = "_fintech_resilience_fields"
_COUNTED = "_fintech_resilience_counted"


def _view_name(view: Callable[..., Any]) -> str:
    qualified = f"{view.__module__}.{view.__qualname__}"
    readable = _NAME_CHARS.sub("_", view.__name__).strip("_")[:40] or "view"
    return f"{readable}-{hashlib.blake2b(qualified.encode(), digest_size=4).hexdigest()}"


def _refusal(verdict: Verdict) -> Response:
    return Response(verdict.body, status=verdict.status, headers=verdict.headers)


@dataclasses.dataclass(eq=False)
class _ViewLimit:
    """One ``@resilience.limit(...)``: what to build for each app the view is served by."""

    limits: str | RateLimiter | LimitsFunc
    name: str
    key: KeyFunc | None
    cost: int | Callable[[Any], int]
    methods: Iterable[str] | None
    count_when: CountWhen | None


class _AppState:
    """What one app gets from one extension: its backend, key function and limit cores."""

    def __init__(self, backend: Backend, key: KeyFunc, section: RateLimitConfig,
                 default: RateLimitCore | None, clock: Any) -> None:
        self.backend = backend
        self.key = key
        self.section = section
        self.default = default
        self.clock = clock
        self.cores: dict[_ViewLimit, RateLimitCore] = {}

    def core(self, spec: _ViewLimit) -> RateLimitCore:
        core = self.cores.get(spec)
        if core is None:
            per_request: LimitsFunc | None = None
            if isinstance(spec.limits, RateLimiter):
                limiter = spec.limits
            else:
                own: Any = spec.limits
                if callable(spec.limits):  # per request: the limiter takes each one's own
                    per_request, own = spec.limits, limits_from_requests
                limiter = RateLimiter(
                    own, name=spec.name, backend=self.backend, clock=self.clock,
                    algorithm=self.section.algorithm,  # type: ignore[arg-type]
                    on_backend_error=self.section.on_backend_error)  # type: ignore[arg-type]
            rule = Rule(limiter, methods=spec.methods, cost=spec.cost, limits=per_request,
                        count_when=spec.count_when)
            core = self.cores.setdefault(spec, RateLimitCore(
                rules=[rule], key=spec.key or self.key, headers=self.section.headers,
                headers_on_allowed=self.section.headers_on_allowed, shadow=self.section.shadow))
        return core


class Resilience:
    """The Flask extension: ``Resilience(app, ...)`` or ``Resilience(...).init_app(app)``.

    Every option left as None comes from ``app.config["FINTECH_RESILIENCE"]`` (``BACKEND``,
    ``TRUSTED_PROXIES``, ``RATE_LIMIT: {"LIMITS", "EXEMPT_PATHS", "KEY", ...}``, see
    :class:`fintech_resilience.config.Config`), else from its default below.

    :param backend: where counters live: a backend or a URL (``"redis://host:6379/0"``);
        default (and ``"memory://"``): a memory backend of each app's own.
    :param key: ``callable(request) -> key | None`` for every limit (default
        :func:`fintech_resilience.keys.principal_or_ip`: the TCP peer; configure
        ``trusted_proxies`` behind a load balancer).
    :param default_limits: a limit for every request of the app (``"100/minute"``), a
        ``callable(request) -> rate string | None`` (per plan; None: not limited), or None.
    :param exempt_paths: path prefixes ``default_limits`` never applies to.
    :param headers, headers_on_allowed, shadow: as for the ASGI middleware (default True, True,
        False).
    :param algorithm, on_backend_error, clock: for the limiters this extension creates
        (default ``"gcra"``, ``"local"``).
    :param check: connect to the backend and check it in :meth:`init_app`
        (:func:`fintech_resilience.config.check_config`); default ``CHECK`` of the settings.
    """

    def __init__(self, app: Flask | None = None, *, backend: BackendSpec = None,
                 key: KeyFunc | None = None,
                 default_limits: str | LimitsFunc | None = None,
                 exempt_paths: Iterable[str] | None = None, headers: bool | None = None,
                 headers_on_allowed: bool | None = None, shadow: bool | None = None,
                 algorithm: Algorithm | None = None,
                 on_backend_error: OnBackendError | None = None, clock: Any = None,
                 check: bool | None = None) -> None:
        if backend is not None:
            resolve_backend(backend, MemoryBackend)  # a bad URL or type fails here
        self._backend = backend
        if isinstance(default_limits, str):
            parse_limits(default_limits)
        if algorithm is not None and algorithm not in ALGORITHMS:
            raise ConfigurationError(f"algorithm must be one of {ALGORITHMS}; got {algorithm!r}")
        if isinstance(exempt_paths, str):
            raise ConfigurationError(f"exempt_paths is a list; write [{exempt_paths!r}]")
        given: dict[str, Any] = {
            "limits": default_limits, "key": key, "headers": headers,
            "headers_on_allowed": headers_on_allowed, "shadow": shadow, "algorithm": algorithm,
            "on_backend_error": on_backend_error,
            "exempt_paths": None if exempt_paths is None else tuple(exempt_paths)}
        self._given = {name: value for name, value in given.items() if value is not None}
        self._clock = clock
        self._check = check
        self._states: weakref.WeakKeyDictionary[Flask, _AppState] = (
            weakref.WeakKeyDictionary())
        self._exempt_views: set[Callable[..., Any]] = set()
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Attach to ``app``: read its settings, build its limits, check its backend if asked;
        app-wide limits run before each request, fields are added after it."""
        config = Config.from_mapping(app.config.get("FINTECH_RESILIENCE"),
                                     where="app.config['FINTECH_RESILIENCE']")
        section = dataclasses.replace(config.rate_limit or RateLimitConfig(), **self._given)
        backend = (build_backend(config, MemoryBackend) if self._backend is None
                   else resolve_backend(self._backend, MemoryBackend))
        if self._check if self._check is not None else config.check:
            check_config(config if self._backend is None else dataclasses.replace(
                config, backend=self._backend, backend_options=None))
        default = rate_limit_core(config, section, backend=backend, default_name="default",
                                  clock=self._clock)
        self._states[app] = _AppState(backend, default.key if default is not None
                                      else section.key or default_key(config),
                                      section, default, self._clock)
        app.extensions["fintech_resilience"] = self
        app.config.setdefault("RESILIENCE_ENABLED", config.enabled)
        if default is not None:
            app.before_request(self._before)
        app.after_request(self._after)
        app.teardown_request(self._teardown)
        if config.idempotency is not None:
            from .wsgi import IdempotencyMiddleware

            app.wsgi_app = IdempotencyMiddleware(  # type: ignore[method-assign]
                app.wsgi_app, **idempotency_options(config.idempotency))

    def backend(self, app: Flask | None = None) -> Backend:
        """The backend this extension uses for ``app`` (default: the current app)."""
        return self._state(app).backend

    def _state(self, app: Flask | None = None) -> _AppState:
        found = app if app is not None else current_app._get_current_object()  # type: ignore[attr-defined]
        state = self._states.get(found)
        if state is None:
            raise ConfigurationError(
                f"this Resilience extension is not initialised on app {found.name!r}: call"
                " resilience.init_app(app) (or Resilience(app, ...))")
        return state

    def _before(self) -> Response | None:
        view = current_app.view_functions.get(request.endpoint or "")
        state = self._state()
        if (state.default is None or not current_app.config["RESILIENCE_ENABLED"]
                or view in self._exempt_views):
            return None
        return self._apply(state.default)

    def _apply(self, core: RateLimitCore) -> Response | None:
        verdict = core.check(request.method, request.path, request)
        if not verdict.allowed:
            return _refusal(verdict)
        if verdict.counted:
            g.setdefault(_COUNTED, []).append((core, verdict))
        elif verdict.headers:
            g.setdefault(_FIELDS, []).extend(verdict.headers)
        return None

    def _after(self, response: Response) -> Response:
        fields: list[tuple[str, str]] = g.pop(_FIELDS, [])
        counted: list[tuple[RateLimitCore, Verdict]] = g.pop(_COUNTED, [])
        for core, verdict in counted:  # count_when: the status is known now
            fields.extend(core.settle(verdict, response.status_code))
        if fields:
            merged: dict[str, list[str]] = {}
            for name, value in fields:  # several limits: one List per field
                merged.setdefault(name, []).append(value)
            for name, values in merged.items():
                existing = response.headers.get(name)  # a refusal's own fields come last
                response.headers[name] = ", ".join([*values, existing] if existing else values)
        return response

    def _teardown(self, exc: BaseException | None) -> None:
        """A request that ended without a response (an exception Flask let through): its
        limits that count by outcome are settled as a 500."""
        counted: list[tuple[RateLimitCore, Verdict]] = g.pop(_COUNTED, [])
        for core, verdict in counted:
            core.settle(verdict, 500)

    def exempt(self, view: F) -> F:
        """Decorator: ``default_limits`` do not apply to this view."""
        self._exempt_views.add(view)
        return view

    def limit(self, limits: str | RateLimiter | LimitsFunc, *, key: KeyFunc | None = None,
              cost: int | Callable[[Any], int] = 1, name: str | None = None,
              methods: Iterable[str] | None = None,
              count_when: CountWhen | None = None) -> Callable[[F], F]:
        """Decorator: limit this view (sync or async), per key, on top of ``default_limits``.

        :param limits: ``"5/second"``, a ready :class:`~fintech_resilience.RateLimiter` (then
            shared by every app; from a string, each app gets a limiter on its backend), or a
            ``callable(request) -> rate string | None`` resolved per request (per-plan limits;
            None: this request is not limited).
        :param key: overrides the extension's key function for this view.
        :param cost: units per request, or ``callable(request) -> int``.
        :param name: the limiter's name (default: the view function's name + a short hash).
        :param methods: only these methods count (default all the view serves).
        :param count_when: ``callable(status) -> bool``: count only the responses it is true
            for (Flask-Limiter's ``deduct_when``); the others get their unit back once the view
            has answered, before the fields are sent.
        """
        if isinstance(limits, RateLimiter) and name is not None:
            raise ConfigurationError("name configures a limiter made from a string; with a"
                                     " ready RateLimiter, set it on the limiter")
        if isinstance(limits, str):
            parse_limits(limits)  # a bad rate fails here, when the view is decorated
        if name is not None:
            validate_name(name)

        def decorate(view: F) -> F:
            spec = _ViewLimit(limits, name or _view_name(view), key, cost, methods, count_when)

            def refusal() -> Response | None:
                if not current_app.config.get("RESILIENCE_ENABLED", True):
                    return None
                return self._apply(self._state().core(spec))

            if inspect.iscoroutinefunction(view):
                # Flask runs async views on a loop of their own per request: decide with the
                # sync path (no async Redis connection outlives that loop)
                @functools.wraps(view)
                async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                    refused = refusal()
                    return refused if refused is not None else await view(*args, **kwargs)

                return cast(F, async_wrapper)

            @functools.wraps(view)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                refused = refusal()
                return refused if refused is not None else view(*args, **kwargs)

            return cast(F, wrapper)

        return decorate
