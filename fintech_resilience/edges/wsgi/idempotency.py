"""WSGI middleware (plain callable classes): the WSGI twins of :mod:`fintech_resilience.asgi`."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ...errors import BackendUnavailable
from ...idempotency.context import Claim
from ...idempotency.record import StoredResponse
from ...idempotency.store import IdempotencyStore
from ..asgi.idempotency import IdempotencyEdge
from ..claims import PreparedClaim, claimed, prepare_claim
from ..http import (
    HttpAnswer,
    declared_length,
    invalid_length_problem,
    safe_headers,
    start_answer,
    unavailable_problem,
)

if TYPE_CHECKING:
    from _typeshed.wsgi import (
        StartResponse,
        WSGIApplication,  # noqa: F401 - the base class's parameter
        WSGIEnvironment,
    )

__all__ = ["IdempotencyMiddleware", "finish_claim", "open_claim"]

logger = logging.getLogger("fintech_resilience")

def open_claim(store: IdempotencyStore, *, method: str, raw_key: str | None, required: bool,
               principal_of: Callable[[], Any], path: str, query: bytes,
               read_body: Callable[[], bytes | HttpAnswer | None], max_body_bytes: int,
               origination: str | None, base: str) -> HttpAnswer | Claim | None:
    """Everything before the handler runs, for the WSGI and Django middlewares.

    Returns None when the request carries no key and none is required (run it unprotected), an
    :class:`~fintech_resilience.edges.http.HttpAnswer` to send instead of running the handler (400,
    413, 500, 503, 409, 422 or the replay), or the :class:`Claim` to run the handler under.
    ``read_body`` returns the body, None when it is above ``max_body_bytes``, or an answer (a
    malformed Content-Length).
    """
    prepared = prepare_claim(
        store, method=method, raw_keys=[] if raw_key is None else [raw_key], required=required,
        principal_of=principal_of, path=path, query=query, read_body=read_body,
        max_body_bytes=max_body_bytes, base=base)
    if not isinstance(prepared, PreparedClaim):
        return prepared
    try:
        claim = store.claim(prepared.record, prepared.fingerprint,
                            **prepared.audit_fields(store, origination))
    except BackendUnavailable:
        return unavailable_problem(store.unavailable_retry_after, base=base)
    return claimed(claim, base)


def finish_claim(store: IdempotencyStore, claim: Claim, status: int,
                 headers: Iterable[tuple[str, str]], data: bytes, *, replayable: bool,
                 store_status: Callable[[int], bool], replay_headers: frozenset[str]) -> None:
    """Store the handler's response (or release the key, by ``store_status``)."""
    if not store_status(status):
        store.release(claim)
    else:
        store.complete(claim, StoredResponse("http", status, safe_headers(headers, replay_headers),
                                             data if replayable else b"", replayable))


class IdempotencyMiddleware(IdempotencyEdge["WSGIApplication", "WSGIEnvironment"]):
    """Executes each keyed request once; duplicates get the stored response.

    The same options and answers as :class:`fintech_resilience.asgi.IdempotencyMiddleware`, with
    ``scope=lambda environ: <principal>`` (e.g. ``environ["REMOTE_USER"]``).
    """

    def __call__(self, environ: WSGIEnvironment,
                 start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET").upper()
        if method not in self.methods:
            return self.app(environ, start_response)
        path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        # PEP 3333 strings are latin-1 decoded bytes: parse them as such
        outcome = open_claim(
            self.store, method=method, raw_key=environ.get(self.environ_key),
            required=self.required, principal_of=lambda: self.scope_of(environ), path=path,
            query=environ.get("QUERY_STRING", "").encode("latin-1"),
            read_body=lambda: self._read_body(environ), max_body_bytes=self.max_body_bytes,
            origination=environ.get("REMOTE_ADDR") or None, base=self.base)
        if outcome is None:
            return self.app(environ, start_response)
        if isinstance(outcome, HttpAnswer):
            return start_answer(start_response, outcome)
        return self._execute(environ, start_response, outcome)

    def _read_body(self, environ: WSGIEnvironment) -> bytes | HttpAnswer | None:
        """The whole body (and a rewound ``wsgi.input``), None when above the bound, or the 400
        for a malformed ``CONTENT_LENGTH``."""
        limit = self.max_body_bytes
        stream = environ.get("wsgi.input")
        length = declared_length(environ.get("CONTENT_LENGTH") or "")
        if length is not None:
            if length < 0:
                return invalid_length_problem(base=self.base)
            if length > limit:
                return None
            body = stream.read(length) if stream is not None and length else b""
        elif stream is not None and environ.get("wsgi.input_terminated"):
            body = stream.read(limit + 1)
            if len(body) > limit:
                return None
        else:
            body = b""
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        return body

    def _execute(self, environ: WSGIEnvironment, start_response: StartResponse,
                 claim: Claim) -> Iterable[bytes]:
        store = self.store
        started: list[Any] = []
        chunks: list[bytes] = []

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None
                    ) -> Callable[[bytes], object]:
            started[:] = [status, headers, exc_info]
            return chunks.append

        size = 0
        rest: Iterator[bytes] | None = None
        try:
            with store.holding(claim):
                result = self.app(environ, capture)
                iterator = iter(result)
                try:
                    for chunk in iterator:
                        chunks.append(chunk)
                        size += len(chunk)
                        if size > self.max_response_bytes:
                            rest = iterator
                            break
                finally:
                    if rest is None and hasattr(result, "close"):
                        result.close()
        except BaseException:
            store.release(claim)
            raise
        if not started:
            store.release(claim)
            raise RuntimeError("the WSGI application returned without calling start_response")
        status_line, headers, _ = started
        data = b"".join(chunks)
        finish_claim(store, claim, int(status_line.split(" ", 1)[0]), headers, data,
                     replayable=rest is None, store_status=self.store_status,
                     replay_headers=self.replay_headers)
        start_response(status_line, headers)
        if rest is None:
            return [data]
        return _Streamed(data, rest, result)


class _Streamed:
    """The rest of a response too large to store, streamed after what was already read."""

    def __init__(self, head: bytes, rest: Iterator[bytes], result: Iterable[bytes]) -> None:
        self.head = head
        self.rest = rest
        self.result = result

    def __iter__(self) -> Iterator[bytes]:
        yield self.head
        yield from self.rest

    def close(self) -> None:
        close = getattr(self.result, "close", None)
        if close is not None:
            close()
