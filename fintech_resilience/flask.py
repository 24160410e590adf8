"""Flask edge: an extension with app-wide limits and per-view decorators.

>>> from fintech_resilience.flask import Resilience                     # doctest: +SKIP
>>> resilience = Resilience(backend=red, key=principal_or_ip(trusted_proxies=["10.0.0.0/8"]))
>>> resilience.init_app(app)                  # or Resilience(app, ...)
>>> @app.post("/payments")
... @resilience.limit("5/second")
... def pay(): ...

Refusals are ``429`` RFC 9457 problem+json with ``Retry-After`` and the IETF ``RateLimit``/
``RateLimit-Policy`` fields (which admitted responses carry too); ``503`` when the backend is down
and ``on_backend_error="deny"`` refused. Key, cost and limits functions receive the Flask
``request``; ``count_when`` receives the response status.

Set ``RESILIENCE_ENABLED = False`` in ``app.config`` to switch every limit off (e.g. in tests).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import re
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, cast

from flask import Flask, Response, current_app, g, request

from .backends.base import Backend, OnBackendError
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
from .ratelimit.limiter import Algorithm, RateLimiter

__all__ = ["Resilience"]

F = TypeVar("F", bound=Callable[..., Any])
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")
_FIELDS = "_fintech_resilience_fields"
#: (core, verdict) of the limits this request counts by outcome, settled after the response
_COUNTED = "_fintech_resilience_counted"


def _view_name(view: Callable[..., Any]) -> str:
    qualified = f"{view.__module__}.{view.__qualname__}"
    readable = _NAME_CHARS.sub("_", view.__name__).strip("_")[:40] or "view"
    return f"{readable}-{hashlib.blake2b(qualified.encode(), digest_size=4).hexdigest()}"


def _limiter(limits: str | RateLimiter | LimitsFunc, name: str,
             options: dict[str, Any]) -> tuple[RateLimiter, LimitsFunc | None]:
    """The limiter for ``limits``, and the callable of the request when they vary per
    request (the limiter then takes each request's own)."""
    if isinstance(limits, RateLimiter):
        return limits, None
    if callable(limits):
        return RateLimiter(limits_from_requests, name=name, **options), limits
    return RateLimiter(limits, name=name, **options), None


def _refusal(verdict: Verdict) -> Response:
    return Response(verdict.body, status=verdict.status, headers=verdict.headers)


class Resilience:
    """The Flask extension: ``Resilience(app, ...)`` or ``Resilience(...).init_app(app)``.

    :param backend: where counters live (default: the process-wide memory backend).
    :param key: ``callable(request) -> key | None`` for every limit (default
        :func:`fintech_resilience.keys.principal_or_ip`: the TCP peer; configure
        ``trusted_proxies`` behind a load balancer).
    :param default_limits: a limit for every request of the app (``"100/minute"``), a
        ``callable(request) -> rate string | None`` (per plan; None: not limited), or None.
    :param exempt_paths: path prefixes ``default_limits`` never applies to.
    :param headers, headers_on_allowed, shadow: as for the ASGI middleware.
    :param algorithm, on_backend_error, clock: for the limiters this extension creates.
    """

    def __init__(self, app: Flask | None = None, *, backend: Backend | None = None,
                 key: KeyFunc | None = None, default_limits: str | LimitsFunc | None = None,
                 exempt_paths: Iterable[str] = (), headers: bool = True,
                 headers_on_allowed: bool = True, shadow: bool = False,
                 algorithm: Algorithm = "gcra", on_backend_error: OnBackendError = "local",
                 clock: Any = None) -> None:
        self._limiter_options: dict[str, Any] = {
            "backend": backend, "algorithm": algorithm, "on_backend_error": on_backend_error,
            "clock": clock}
        self._core_options: dict[str, Any] = {
            "key": key, "headers": headers, "headers_on_allowed": headers_on_allowed,
            "shadow": shadow}
        self._exempt_views: set[Callable[..., Any]] = set()
        self._default: RateLimitCore | None = None
        if default_limits is not None:
            limiter, per_request = _limiter(default_limits, "default", self._limiter_options)
            self._default = RateLimitCore(limiter, limits=per_request, exempt_paths=exempt_paths,
                                          **self._core_options)
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Attach to ``app``: app-wide limits before each request, fields after it."""
        app.extensions["fintech_resilience"] = self
        app.config.setdefault("RESILIENCE_ENABLED", True)
        if self._default is not None:
            app.before_request(self._before)
        app.after_request(self._after)
        app.teardown_request(self._teardown)

    def _before(self) -> Response | None:
        view = current_app.view_functions.get(request.endpoint or "")
        if (self._default is None or not current_app.config["RESILIENCE_ENABLED"]
                or view in self._exempt_views):
            return None
        return self._apply(self._default)

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

        :param limits: ``"5/second"``, a ready :class:`~fintech_resilience.RateLimiter`, or a
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

        def decorate(view: F) -> F:
            limiter, per_request = _limiter(limits, name or _view_name(view),
                                            self._limiter_options)
            options = dict(self._core_options)
            if key is not None:
                options["key"] = key
            core = RateLimitCore(rules=[Rule(limiter, methods=methods, cost=cost,
                                             limits=per_request, count_when=count_when)],
                                 **options)

            if inspect.iscoroutinefunction(view):
                # Flask runs async views on a loop of their own per request: decide with the
                # sync path (no async Redis connection outlives that loop)
                @functools.wraps(view)
                async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                    if current_app.config.get("RESILIENCE_ENABLED", True):
                        refusal = self._apply(core)
                        if refusal is not None:
                            return refusal
                    return await view(*args, **kwargs)

                return cast(F, async_wrapper)

            @functools.wraps(view)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                if current_app.config.get("RESILIENCE_ENABLED", True):
                    refusal = self._apply(core)
                    if refusal is not None:
                        return refusal
                return view(*args, **kwargs)

            return cast(F, wrapper)

        return decorate
