"""Django idempotency: the middleware (configured from ``settings.FINTECH_RESILIENCE``) and the
DRF view mixin that claims a key after DRF's authentication."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse  # type: ignore[import-untyped]

from ..config.build import idempotency_options
from ..config.schema import IdempotencyConfig
from ..core.resets import on_reset
from ..edges.http import (
    PROBLEM_BASE,
    SAFE_REPLAY_HEADERS,
    HttpAnswer,
    declared_length,
    invalid_length_problem,
)
from ..edges.wsgi.idempotency import finish_claim, open_claim
from ..errors import ConfigurationError
from ..idempotency.context import Claim
from .settings import _answer, _authenticated_pk, _config, _lock

__all__ = ["IdempotencyMiddleware", "IdempotencyMixin"]

class _IdempotencySettings:
    """``settings.FINTECH_RESILIENCE["IDEMPOTENCY"]``, validated once: what the middleware and
    :class:`IdempotencyMixin` share."""

    def __init__(self, config: IdempotencyConfig | None) -> None:
        from ..edges.asgi.idempotency import check_options
        from ..idempotency.record import default_store_status

        if config is None:
            raise ConfigurationError(
                "settings.FINTECH_RESILIENCE['IDEMPOTENCY'] must be a dict with 'STORE' (a dotted"
                " path to an IdempotencyStore)"
            )
        options = idempotency_options(config)
        self.store = options["store"]
        self.scope_of: Callable[[Any], Any] = options["scope"] or _authenticated_pk
        if config.global_scope:
            self.scope_of = _global_scope
        self.max_body_bytes = config.max_body_bytes
        self.max_response_bytes = config.max_response_bytes
        self.methods = check_options(self.store, self.scope_of, config.global_scope,
                                     config.methods, self.max_body_bytes,
                                     self.max_response_bytes)
        self.required = config.required
        self.meta_key = "HTTP_" + config.header.upper().replace("-", "_")
        self.store_status = default_store_status
        self.replay_headers = frozenset(h.lower() for h in SAFE_REPLAY_HEADERS)

    def open(self, request: Any) -> HttpAnswer | Claim | None:
        """Claim the request's key (see
        :func:`~fintech_resilience.edges.wsgi.idempotency.open_claim`); ``request`` is Django's
        request, or DRF's once it is authenticated."""
        return open_claim(
            self.store, method=(request.method or "GET").upper(),
            raw_key=request.META.get(self.meta_key), required=self.required,
            principal_of=lambda: self.scope_of(request), path=request.path,
            query=request.META.get("QUERY_STRING", "").encode("latin-1"),
            read_body=lambda: self._body(request), max_body_bytes=self.max_body_bytes,
            origination=request.META.get("REMOTE_ADDR") or None, base=PROBLEM_BASE)

    def finish(self, claim: Claim, response: HttpResponse) -> None:
        """Store the response (or release the key) once the view answered."""
        streaming = bool(getattr(response, "streaming", False))
        data = b"" if streaming else bytes(response.content)
        finish_claim(self.store, claim, response.status_code, list(response.items()), data,
                     replayable=not streaming and len(data) <= self.max_response_bytes,
                     store_status=self.store_status, replay_headers=self.replay_headers)

    def _body(self, request: Any) -> bytes | HttpAnswer | None:
        length = declared_length(request.META.get("CONTENT_LENGTH") or "")
        if length is not None and length < 0:
            return invalid_length_problem()
        if length is not None and length > self.max_body_bytes:
            return None
        django_request = getattr(request, "_request", request)  # DRF wraps Django's request
        body = bytes(django_request.body)
        return None if len(body) > self.max_body_bytes else body

_settings_cache: list[Any] = [None, None]  # [the config object, its _IdempotencySettings]


@on_reset
def _forget_settings() -> None:
    _settings_cache[:] = [None, None]


def _idempotency_settings() -> _IdempotencySettings:
    """The validated idempotency settings, rebuilt when the settings object changes."""
    config = _config().idempotency
    cached = _settings_cache
    if cached[0] is not config or cached[1] is None:
        built = _IdempotencySettings(config)
        cached[:] = [config, built]  # the config is kept alive, so its identity is never reused
    return cached[1]  # type: ignore[no-any-return]

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

    Place it after ``AuthenticationMiddleware`` (last is best). A keyed request from an anonymous
    user has no principal and is refused (500, ``idempotency-scope-unavailable``) rather than
    sharing one record space; set ``"GLOBAL_SCOPE": True`` only if keys are unique across all
    clients. **Django REST framework views** authenticate inside the view, so for them the key is
    claimed after DRF's authentication, permissions and throttles, with DRF's ``request.user``
    as the principal (the view runs as if it had :class:`IdempotencyMixin`). Under ASGI, Django
    runs it in a thread (it is sync only). Streaming responses are not replayable: the key is
    completed as such and later duplicates get 409.
    """

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.edge = _IdempotencySettings(_config().idempotency)
        self.store = self.edge.store
        self.methods = self.edge.methods
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> Any:
        method = (request.method or "GET").upper()
        if method not in self.methods or _drf_view_class(request) is not None:
            return self.get_response(request)  # a DRF view claims in process_view
        outcome = self.edge.open(request)
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
        self.edge.finish(claim, response)
        return response

    def process_view(self, request: HttpRequest, view_func: Any, view_args: Any,
                     view_kwargs: Any) -> Any:
        """Run a DRF view without :class:`IdempotencyMixin` as if it had it."""
        cls: Any = getattr(view_func, "cls", None)
        if ((request.method or "GET").upper() not in self.methods or not _is_drf_view(cls)
                or issubclass(cls, IdempotencyMixin)):
            return None
        actions = getattr(view_func, "actions", None)  # a ViewSet's method -> action map
        mixed: Any = _with_mixin(cls)
        view = (mixed.as_view(actions, **view_func.initkwargs) if actions is not None
                else mixed.as_view(**view_func.initkwargs))
        return view(request, *view_args, **view_kwargs)

class _Answered(Exception):
    """Carries the answer to a claim that does not run the view (replay, 409, 422, 400, ...)."""

    def __init__(self, response: HttpResponse) -> None:
        super().__init__("idempotency answered")
        self.response = response

class IdempotencyMixin:
    """Idempotency for a Django REST framework view, after DRF's authentication.

    ``class ChargeView(IdempotencyMixin, APIView)`` (also generic views and ViewSets): the key is
    claimed once DRF has authenticated the request and checked its permissions and throttles,
    so the principal is DRF's ``request.user`` (its ``pk``; ``SCOPE`` in settings receives the
    DRF request). Settings, answers and stored statuses are those of
    :class:`IdempotencyMiddleware` (``settings.FINTECH_RESILIENCE["IDEMPOTENCY"]``), which runs
    every DRF view this way by itself; the mixin is for views not behind the middleware.
    Unauthenticated requests get DRF's own 401/403 and claim nothing.
    """

    fintech_idempotency = True

    def initial(self, request: Any, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)  # type: ignore[misc]
        edge = _idempotency_settings()
        if (request.method or "GET").upper() not in edge.methods:
            return
        outcome = edge.open(request)
        if outcome is None:
            return
        if isinstance(outcome, HttpAnswer):
            raise _Answered(_answer(outcome))
        holding = edge.store.holding(outcome)
        holding.__enter__()
        self._fr_held = (holding, outcome, edge)

    def handle_exception(self, exc: Exception) -> Any:
        if isinstance(exc, _Answered):
            return exc.response
        try:
            return super().handle_exception(exc)  # type: ignore[misc]
        except BaseException:
            self._fr_settle(None)  # an uncaught error: release, a retry runs again
            raise

    def finalize_response(self, request: Any, response: Any, *args: Any, **kwargs: Any) -> Any:
        response = super().finalize_response(  # type: ignore[misc]
            request, response, *args, **kwargs)
        self._fr_settle(response)
        return response

    def _fr_settle(self, response: Any) -> None:
        held = self.__dict__.pop("_fr_held", None)
        if held is None:
            return
        holding, claim, edge = held
        holding.__exit__(None, None, None)
        if response is None:
            edge.store.release(claim)
            return
        try:
            if callable(getattr(response, "render", None)) and not response.is_rendered:
                response.render()  # the stored body is the bytes the client gets
        except BaseException:
            edge.store.release(claim)
            raise
        edge.finish(claim, response)

_mixed_classes: dict[type, type] = {}


def _with_mixin(cls: type) -> type:
    """``cls`` with :class:`IdempotencyMixin` first (one subclass per view class)."""
    mixed = _mixed_classes.get(cls)
    if mixed is None:
        with _lock:
            mixed = _mixed_classes.get(cls)
            if mixed is None:
                mixed = type(cls.__name__, (IdempotencyMixin, cls),
                             {"__module__": cls.__module__, "__qualname__": cls.__qualname__})
                _mixed_classes[cls] = mixed
    return mixed

def _is_drf_view(cls: Any) -> bool:
    from rest_framework.views import APIView  # type: ignore[import-untyped]

    return isinstance(cls, type) and issubclass(cls, APIView)

def _drf_view_class(request: HttpRequest) -> type | None:
    """The DRF view class the request's URL resolves to, if it is one."""
    from django.urls import Resolver404, resolve  # type: ignore[import-untyped]

    try:
        match = resolve(request.path_info, getattr(request, "urlconf", None))
    except Resolver404:
        return None
    cls = getattr(match.func, "cls", None)
    return cls if _is_drf_view(cls) else None

def _global_scope(request: HttpRequest) -> str:
    return "*"
