"""Pure ASGI middleware (never Starlette's ``BaseHTTPMiddleware``).

Non-HTTP scopes (websocket, lifespan) pass straight through; every option is validated once in
``__init__``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from ...audit import log as _audit
from ...errors import BackendUnavailable, ConfigurationError, IdempotencyKeyInvalid
from ...idempotency.context import Claim
from ...idempotency.record import default_store_status
from ...idempotency.store import IdempotencyStore
from ..asgi_types import ASGIApp, Message, Receive, Scope, Send
from ..http import (
    PROBLEM_BASE,
    SAFE_REPLAY_HEADERS,
    claim_answer,
    declared_length,
    invalid_length_problem,
    key_invalid_problem,
    parse_idempotency_key,
    replay_header_names,
    scope_missing_problem,
    send_answer,
    too_large_problem,
    unavailable_problem,
)
from .capture import ResponseCapture

__all__ = ["IdempotencyEdge", "IdempotencyMiddleware"]


logger = logging.getLogger("fintech_resilience")

DEFAULT_MAX_BODY = 1024 * 1024


def check_options(store: object, scope: object, global_scope: bool, methods: Iterable[str],
                  max_body_bytes: int, max_response_bytes: int) -> frozenset[str]:
    """Validate the options both idempotency middlewares share; return the method set."""
    if not isinstance(store, IdempotencyStore):
        raise ConfigurationError("store must be an IdempotencyStore(backend, secret=...)")
    if scope is None and not global_scope:
        raise ConfigurationError(
            "IdempotencyMiddleware needs scope=<callable returning the authenticated principal>"
            " so one user's response is never replayed to another; pass global_scope=True only"
            " if keys are unique across all clients"
        )
    if scope is not None and not callable(scope):
        raise ConfigurationError("scope must be a callable")
    for what, value in (("max_body_bytes", max_body_bytes),
                        ("max_response_bytes", max_response_bytes)):
        if type(value) is not int or value < 0:
            raise ConfigurationError(f"{what} must be an int >= 0 (bytes); got {value!r}")
    chosen = frozenset(m.upper() for m in methods)
    if not chosen:
        raise ConfigurationError("methods must name at least one HTTP method, e.g. ('POST',)")
    return chosen


AppT = TypeVar("AppT")
RequestT = TypeVar("RequestT")


class IdempotencyEdge(Generic[AppT, RequestT]):
    """What the ASGI and WSGI idempotency middlewares share: their options, validated once (see
    :class:`fintech_resilience.asgi.IdempotencyMiddleware`). ``RequestT`` is what ``scope``
    receives: the ASGI scope or the WSGI environ."""

    def __init__(self, app: AppT, *, store: IdempotencyStore,
                 scope: Callable[[RequestT], Any] | None = None, global_scope: bool = False,
                 methods: Iterable[str] = ("POST", "PATCH"), required: bool = False,
                 header: str = "Idempotency-Key", max_body_bytes: int = DEFAULT_MAX_BODY,
                 max_response_bytes: int = DEFAULT_MAX_BODY,
                 store_status: Callable[[int], bool] = default_store_status,
                 replay_headers: Iterable[str] = SAFE_REPLAY_HEADERS,
                 problem_base: str = PROBLEM_BASE) -> None:
        self.methods = check_options(store, scope, global_scope, methods, max_body_bytes,
                                     max_response_bytes)
        self.app = app
        self.store = store
        self.scope_of: Callable[[RequestT], Any] = (
            scope if scope is not None else (lambda _request: "*"))
        self.required = bool(required)
        #: the key's header as an ASGI scope names it, and as a WSGI environ does
        self.header = header.lower().encode("latin-1")
        self.environ_key = "HTTP_" + header.upper().replace("-", "_")
        self.max_body_bytes = max_body_bytes
        self.max_response_bytes = max_response_bytes
        self.store_status = store_status
        self.replay_headers = frozenset(h.lower() for h in replay_headers)
        #: the same, as an ASGI edge compares them (the never-replayed ones already left out)
        self.replay_header_names = replay_header_names(self.replay_headers)
        self.base = problem_base


class IdempotencyMiddleware(IdempotencyEdge[ASGIApp, Scope]):
    """Executes each keyed request once; duplicates get the stored response.

    :param store: the :class:`~fintech_resilience.idempotency.IdempotencyStore`.
    :param scope: ``lambda scope: <principal>`` - the authenticated principal the key belongs to
        (e.g. ``scope["state"]["principal"]``, ``scope["user"].id``). Required unless
        ``global_scope=True``. Returning None answers 500 (a misconfiguration, e.g. this middleware
        installed outside the authentication middleware).
    :param methods: methods that take part (default POST and PATCH); others pass through.
    :param required: answer 400 when a request of those methods has no key (default: pass it
        through without idempotency).
    :param max_body_bytes: request bodies above this get 413 (they are never executed without
        the idempotency guarantee).
    :param max_response_bytes: response bodies up to this are stored and replayed; a larger one
        is streamed, and the key is completed as "not replayable" (duplicates get 409).
    :param store_status: which statuses are stored; default 2xx and 4xx except 409/429. Other
        statuses and exceptions release the key.
    :param replay_headers: response headers a replay carries (lower case); credentials, cookies
        and hop-by-hop fields are never stored whatever this says.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in self.methods:
            await self.app(scope, receive, send)
            return
        name = self.header
        values: list[bytes] = []
        declared = b""  # Content-Length, read in the same pass
        for n, v in scope["headers"]:
            n = n.lower()
            if n == name:
                values.append(v)
            elif n == b"content-length" and not declared:
                declared = v
        try:
            key = parse_idempotency_key(values)
        except IdempotencyKeyInvalid as exc:
            await send_answer(send, key_invalid_problem(exc, missing=False, base=self.base))
            return
        if key is None:
            if self.required:
                await send_answer(send, key_invalid_problem(
                    IdempotencyKeyInvalid("missing"), missing=True, base=self.base))
            else:
                await self.app(scope, receive, send)
            return
        principal = self.scope_of(scope)
        if principal is None or principal == "":
            logger.error("IdempotencyMiddleware: the scope callable found no principal; install"
                         " it inside the authentication middleware")
            await send_answer(send, scope_missing_problem(base=self.base))
            return
        body = await self._read_body(declared, receive, send)
        if body is None:
            return
        method, path = scope["method"], scope.get("root_path", "") + scope["path"]
        store = self.store
        record = store.record_key(key, scope=principal, method=method, route=path)
        fingerprint = store.fingerprint(method, path, scope.get("query_string", b""), body)
        try:
            if _audit.resolve(store.audit_log) is None:
                claim = await store.aclaim(record, fingerprint)
            else:  # audited: who (the scope's principal) and from where (the TCP peer)
                client = scope.get("client")
                claim = await store.aclaim(record, fingerprint, principal=str(principal),
                                           origination=str(client[0]) if client else None)
        except BackendUnavailable:
            await send_answer(send, unavailable_problem(store.unavailable_retry_after,
                                                        base=self.base))
            return
        answer = claim_answer(claim.outcome, retry_after=claim.retry_after,
                              stored=claim.response, base=self.base)
        if answer is not None:
            await send_answer(send, answer)
            return
        await self._execute(scope, receive, send, claim, body)

    async def _read_body(self, declared: bytes, receive: Receive, send: Send) -> bytes | None:
        """The whole request body, or None after answering 400 or 413 (or on disconnect).
        ``declared`` is the request's Content-Length (empty if it has none)."""
        limit = self.max_body_bytes
        if declared:
            length = declared_length(declared)
            if length is not None and length < 0:
                await send_answer(send, invalid_length_problem(base=self.base))
                return None
            if length is not None and length > limit:
                await send_answer(send, too_large_problem(limit, base=self.base))
                return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await send_answer(send, too_large_problem(limit, base=self.base))
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _execute(self, scope: Scope, receive: Receive, send: Send, claim: Claim,
                       body: bytes) -> None:
        replayed = False

        async def receive_again() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        capture = ResponseCapture(self, claim, send)
        try:
            async with self.store.aholding(claim):
                await self.app(scope, receive_again, capture.send)
        except BaseException:
            await capture.fail()
            raise
        await capture.finish()
