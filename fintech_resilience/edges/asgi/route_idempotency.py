"""Per-route idempotency under ASGI: the claim is made inside the app, once the route's own
dependencies (authentication first) have run, and settled here when the response leaves.

:class:`RouteIdempotency` holds a route's options and opens its claims (no framework import);
FastAPI's :class:`fintech_resilience.fastapi.Idempotent` is the dependency that calls it.
:class:`RouteClaimsMiddleware` (added by :func:`fintech_resilience.fastapi.install`) gives each
request a :class:`RouteClaim` slot in its scope and sends the response of a claimed request
through a :class:`~fintech_resilience.edges.asgi.capture.ResponseCapture`; requests nothing
claimed pass through untouched.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Final

from ...errors import BackendUnavailable, ConfigurationError
from ...idempotency.context import Claim
from ...idempotency.record import default_store_status
from ...idempotency.store import IdempotencyStore
from ..asgi_types import ASGIApp, Message, Receive, Scope, Send
from ..claims import PreparedClaim, claimed, prepare_claim
from ..http import (
    PROBLEM_BASE,
    SAFE_REPLAY_HEADERS,
    HttpAnswer,
    declared_length,
    invalid_length_problem,
    replay_header_names,
    send_answer,
    unavailable_problem,
)
from .capture import ResponseCapture
from .idempotency import DEFAULT_MAX_BODY, check_options

__all__ = ["SLOT", "RouteClaim", "RouteClaimsMiddleware", "RouteIdempotency"]

#: The scope key of a request's :class:`RouteClaim`.
SLOT: Final = "fintech_resilience.route_claim"


class RouteClaim:
    """Filled by the route's dependency: the claim the request runs under (and the options that
    settle it), or the answer to send instead of the app's response."""

    __slots__ = ("answer", "claim", "options")

    def __init__(self) -> None:
        self.claim: Claim | None = None
        self.options: RouteIdempotency | None = None
        self.answer: HttpAnswer | None = None


class RouteIdempotency:
    """One route's idempotency options, validated once (see
    :class:`fintech_resilience.fastapi.Idempotent` for their meaning)."""

    def __init__(self, store: IdempotencyStore, *, principal: object = None,
                 principal_key: Callable[[Any], Any] | None = None, global_scope: bool = False,
                 required: bool = False, header: str = "Idempotency-Key",
                 max_body_bytes: int = DEFAULT_MAX_BODY,
                 max_response_bytes: int = DEFAULT_MAX_BODY,
                 store_status: Callable[[int], bool] = default_store_status,
                 replay_headers: Iterable[str] = SAFE_REPLAY_HEADERS,
                 problem_base: str = PROBLEM_BASE) -> None:
        if principal is None and not global_scope:
            raise ConfigurationError(
                "Idempotent needs principal=<a dependency returning the authenticated principal>"
                " so one user's response is never replayed to another; pass global_scope=True"
                " only if keys are unique across all clients")
        # the route's own methods take part; the other options are the middleware's
        check_options(store, principal, global_scope, ("POST",), max_body_bytes,
                      max_response_bytes)
        if principal_key is not None and not callable(principal_key):
            raise ConfigurationError("principal_key must be a callable(principal) -> str | int")
        if not isinstance(header, str) or not header:
            raise ConfigurationError(f"header is a header name; got {header!r}")
        self.store = store
        self.principal_key = principal_key
        self.global_scope = bool(global_scope)
        self.required = bool(required)
        self.header = header
        self.max_body_bytes = max_body_bytes
        self.max_response_bytes = max_response_bytes
        self.store_status = store_status
        self.replay_header_names = replay_header_names(
            frozenset(h.lower() for h in replay_headers))
        self.base = problem_base

    def scope_of(self, principal: Any) -> Any:
        """The record's scope from the principal dependency's value (None: none)."""
        if self.global_scope:
            return "*"
        if principal is not None and self.principal_key is not None:
            principal = self.principal_key(principal)
        if principal is None or isinstance(principal, str | bytes):
            return principal
        if isinstance(principal, int) and not isinstance(principal, bool):
            return principal
        if isinstance(principal, uuid.UUID):
            return str(principal)
        raise ConfigurationError(
            f"the principal dependency returned a {type(principal).__name__}; the record is"
            " scoped by a str, int or UUID: pass principal_key=lambda user: user.id")

    async def open(self, scope: Scope, raw_keys: Sequence[str], principal: Any,
                   read_body: Callable[[], Awaitable[bytes]]) -> HttpAnswer | Claim | None:
        """Claim the request's key: None (no key, none required), the answer to send instead of
        running the endpoint, or the claim to run it under."""
        if not raw_keys and not self.required:
            return None  # skip reading the body of an unkeyed request
        body: bytes | HttpAnswer | None = None
        length = declared_length(_header(scope, b"content-length"))
        if length is not None and length < 0:
            body = invalid_length_problem(base=self.base)
        elif length is None or length <= self.max_body_bytes:
            data = await read_body()
            body = data if len(data) <= self.max_body_bytes else None
        method = scope["method"]
        path = scope.get("root_path", "") + scope["path"]
        prepared = prepare_claim(
            self.store, method=method, raw_keys=raw_keys, required=self.required,
            principal_of=lambda: self.scope_of(principal), path=path,
            query=scope.get("query_string", b""), read_body=lambda: body,
            max_body_bytes=self.max_body_bytes, base=self.base)
        if not isinstance(prepared, PreparedClaim):
            return prepared
        client = scope.get("client")
        try:
            claim = await self.store.aclaim(prepared.record, prepared.fingerprint,
                                            **prepared.audit_fields(
                                                self.store, str(client[0]) if client else None))
        except BackendUnavailable:
            return unavailable_problem(self.store.unavailable_retry_after, base=self.base)
        return claimed(claim, self.base)


def _header(scope: Scope, name: bytes) -> bytes:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value)
    return b""


class RouteClaimsMiddleware:
    """Settles the claims routes make (pure ASGI; added by
    :func:`fintech_resilience.fastapi.install`). A request nothing claimed passes through."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        slot = RouteClaim()
        scope[SLOT] = slot
        capture: ResponseCapture | None = None

        async def send_through(message: Message) -> None:
            nonlocal capture
            if slot.answer is not None:  # the route answered (replay, 409, 422, 400, ...)
                if message["type"] == "http.response.start":
                    await send_answer(send, slot.answer)
                return
            if capture is None:
                if slot.claim is None or slot.options is None:
                    await send(message)
                    return
                capture = ResponseCapture(slot.options, slot.claim, send)
            await capture.send(message)

        try:
            await self.app(scope, receive, send_through)
        except BaseException:
            if slot.claim is not None and slot.options is not None:
                await (capture or ResponseCapture(slot.options, slot.claim, send)).fail()
            raise
        if capture is not None:
            await capture.finish()
        elif slot.claim is not None and slot.options is not None:
            await slot.options.store.arelease(slot.claim)  # claimed, but nothing was sent
