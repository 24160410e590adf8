"""One place for the HTTP answers of every edge: RFC 9457 problem+json answers and the problem
types, sending a complete answer through ASGI or WSGI, reason phrases, request-field reading, the
``Idempotency-Key`` rules and the safe-header filter for replays.

No framework imports, so every middleware answers the same way.
"""

from __future__ import annotations

import http
import json
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from ..errors import IdempotencyKeyInvalid
from ..idempotency.record import ClaimOutcome, StoredResponse
from ..ratelimit.decision import retry_after_field

__all__ = [
    "NEVER_REPLAYED_HEADERS",
    "PROBLEM_BASE",
    "PROBLEM_CONTENT_TYPE",
    "QUOTA_EXCEEDED",
    "SAFE_REPLAY_HEADERS",
    "TEMPORARY_REDUCED_CAPACITY",
    "HttpAnswer",
    "claim_answer",
    "declared_length",
    "injected_answer",
    "invalid_length_problem",
    "key_invalid_problem",
    "parse_idempotency_key",
    "problem",
    "reason_phrase",
    "replay_answer",
    "replay_header_names",
    "safe_asgi_headers",
    "safe_headers",
    "scope_missing_problem",
    "send_answer",
    "shed_answer",
    "start_answer",
    "too_large_problem",
    "unavailable_problem",
]

#: Base of the ``type`` URIs of our problem+json answers (override per middleware).
PROBLEM_BASE: Final = "https://fintech-resilience.dev/problems/"
PROBLEM_CONTENT_TYPE: Final = "application/problem+json"
#: Problem types registered by draft-ietf-httpapi-ratelimit-headers (section "Problem Types").
QUOTA_EXCEEDED: Final = "https://iana.org/assignments/http-problem-types#quota-exceeded"
TEMPORARY_REDUCED_CAPACITY: Final = (
    "https://iana.org/assignments/http-problem-types#temporary-reduced-capacity"
)
MAX_KEY_LENGTH: Final = 255
#: A Content-Length with more digits than this is refused (400): 18 digits already exceed any
#: body bound, and ``int()`` of a few thousand digits raises instead of answering.
MAX_LENGTH_DIGITS: Final = 18

#: Response headers a replay carries by default (lower case).
SAFE_REPLAY_HEADERS: Final = frozenset({
    "content-type", "content-language", "content-encoding", "content-location", "location",
    "etag", "last-modified", "link", "cache-control", "expires", "vary", "retry-after",
})
#: Never stored nor replayed, whatever the configuration: credentials, cookies, hop-by-hop
#: fields and fields that describe the original transmission.
NEVER_REPLAYED_HEADERS: Final = frozenset({
    "set-cookie", "set-cookie2", "cookie", "authorization", "proxy-authorization",
    "proxy-authenticate", "www-authenticate", "connection", "keep-alive", "transfer-encoding",
    "te", "trailer", "upgrade", "content-length", "date", "idempotent-replayed",
})


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    """A complete HTTP answer: status, headers (latin-1 strings) and body."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """Headers as ASGI wants them (lower-case name bytes, value bytes), with length."""
        out = [(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in self.headers]
        out.append((b"content-length", str(len(self.body)).encode()))
        return out

    def wsgi_headers(self) -> list[tuple[str, str]]:
        """Headers as WSGI wants them, with Content-Length."""
        return [*self.headers, ("Content-Length", str(len(self.body)))]


def problem(status: int, *, type_: str = "about:blank", title: str | None = None,
            detail: str | None = None, retry_after: float | None = None,
            headers: Iterable[tuple[str, str]] = (), **members: Any) -> HttpAnswer:
    """An RFC 9457 ``application/problem+json`` answer: every problem answer of the library.

    ``title`` defaults to the status's reason phrase; ``retry_after`` (seconds) becomes a
    ``Retry-After`` field (whole seconds, at least 1; none when infinite); ``members`` are
    extension members (``violated_policies`` -> ``violated-policies``).
    """
    doc: dict[str, Any] = {"type": type_, "title": title or reason_phrase(status),
                           "status": status}
    if detail:
        doc["detail"] = detail
    for name, value in members.items():
        doc[name.replace("_", "-")] = value
    out = [("Content-Type", PROBLEM_CONTENT_TYPE), *headers]
    wait = None if retry_after is None else retry_after_field(retry_after)
    if wait is not None:
        out.append(("Retry-After", wait))
    return HttpAnswer(status, tuple(out), json.dumps(doc, separators=(",", ":")).encode())


def shed_answer(retry_after: float) -> HttpAnswer:
    """503 for a request shed to keep capacity for critical traffic."""
    return problem(503, type_=TEMPORARY_REDUCED_CAPACITY, retry_after=retry_after,
                   detail="The server is busy; retry later.")


def injected_answer(status: int, rule: str) -> HttpAnswer:
    """The answer of a status injected by a chaos rule (``Retry-After: 1`` on 429 and 503)."""
    return problem(status, detail=f"fault injected by fintech_resilience chaos (rule {rule!r})",
                   retry_after=1.0 if status in (429, 503) else None)


def _ours(status: int, kind: str, title: str, detail: str, *, base: str,
          retry_after: float | None = None) -> HttpAnswer:
    """A problem of the library's own types (``type`` = ``base + kind``)."""
    return problem(status, type_=base + kind, title=title, detail=detail,
                   retry_after=retry_after)


async def send_answer(send: Callable[[dict[str, Any]], Awaitable[None]],
                      answer: HttpAnswer) -> None:
    """Send a complete answer through an ASGI ``send``."""
    await send({"type": "http.response.start", "status": answer.status,
                "headers": answer.raw_headers()})
    await send({"type": "http.response.body", "body": answer.body, "more_body": False})


def start_answer(start_response: Callable[..., Any], answer: HttpAnswer) -> list[bytes]:
    """Start a complete answer through a WSGI ``start_response``; return its body iterable."""
    start_response(f"{answer.status} {reason_phrase(answer.status)}", answer.wsgi_headers())
    return [answer.body]


def declared_length(value: bytes | str) -> int | None:
    """A request's ``Content-Length``: None when absent (empty), -1 when malformed.

    RFC 9110 allows ASCII digits only (``str.isdigit`` also accepts ``"²"`` and ``"٣"``, which
    ``int()`` refuses or reads as another number); more than 18 digits counts as malformed.
    """
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    text = text.strip(" \t")
    if not text:
        return None
    if len(text) > MAX_LENGTH_DIGITS or not (text.isascii() and text.isdigit()):
        return -1
    return int(text)


def reason_phrase(status: int) -> str:
    """The standard reason phrase of ``status`` (``201`` -> ``"Created"``) for a WSGI status
    line; ``"Unknown"`` for a code HTTP does not name."""
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def parse_idempotency_key(values: Sequence[bytes | str]) -> str | None:
    """The idempotency key from the header's values: None if absent; raise
    :class:`~fintech_resilience.IdempotencyKeyInvalid` if repeated, empty, longer than 255
    characters or not printable ASCII (0x20-0x7E).

    Surrounding whitespace is dropped (as HTTP does); a key sent as a Structured Field string
    (``"abc"``, the IETF draft's syntax) is read without its quotes.
    """
    if not values:
        return None
    if len(values) > 1:
        raise IdempotencyKeyInvalid("send exactly one Idempotency-Key header")
    raw = values[0]
    text = raw.decode("latin-1") if isinstance(raw, bytes) else raw
    text = text.strip(" \t")
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        text = text[1:-1]
    if not text:
        raise IdempotencyKeyInvalid("the Idempotency-Key header is empty")
    if len(text) > MAX_KEY_LENGTH:
        raise IdempotencyKeyInvalid(
            f"an Idempotency-Key has at most {MAX_KEY_LENGTH} characters; got {len(text)}"
        )
    if not (text.isascii() and text.isprintable()):  # 0x20-0x7E
        raise IdempotencyKeyInvalid("an Idempotency-Key is printable ASCII (0x20-0x7E) only")
    return text


def safe_headers(headers: Iterable[tuple[str, str]], allowed: frozenset[str]
                 ) -> tuple[tuple[str, str], ...]:
    """The headers a replay may carry: in ``allowed`` and never in NEVER_REPLAYED_HEADERS."""
    return tuple((n, v) for n, v in headers
                 if (low := n.lower()) in allowed and low not in NEVER_REPLAYED_HEADERS)


def replay_header_names(allowed: frozenset[str]) -> frozenset[bytes]:
    """``allowed`` as lower-case ASGI header names, minus NEVER_REPLAYED_HEADERS."""
    return frozenset(n.lower().encode("latin-1") for n in allowed
                     if n.lower() not in NEVER_REPLAYED_HEADERS)


def safe_asgi_headers(headers: Iterable[tuple[bytes, bytes]], names: frozenset[bytes]
                      ) -> tuple[tuple[str, str], ...]:
    """:func:`safe_headers` of an ASGI header list, ``names`` from :func:`replay_header_names`
    (only the kept headers are decoded)."""
    return tuple((n.decode("latin-1"), v.decode("latin-1")) for n, v in headers
                 if n.lower() in names)


def replay_answer(stored: StoredResponse) -> HttpAnswer:
    """The replay of a stored HTTP response, marked ``Idempotent-Replayed: true``."""
    return HttpAnswer(stored.status, (*stored.headers, ("idempotent-replayed", "true")),
                      stored.body)


def claim_answer(outcome: ClaimOutcome, *, retry_after: float = 0.0,
                 stored: StoredResponse | None = None, base: str = PROBLEM_BASE
                 ) -> HttpAnswer | None:
    """The answer to a claim: None when the handler runs, else the replay or the problem.
    Status codes follow the IETF Idempotency-Key draft (409 in flight, 422 other request)."""
    if outcome is ClaimOutcome.EXECUTE:
        return None
    if outcome is ClaimOutcome.MISMATCH:
        return _ours(422, "idempotency-key-mismatch", "Idempotency-Key is already used",
                       "This Idempotency-Key was already used with a different request"
                       " (method, path, query or body).", base=base)
    if outcome is ClaimOutcome.IN_PROGRESS:
        return _ours(409, "idempotency-request-in-progress",
                       "A request is outstanding for this Idempotency-Key",
                       "The first request with this Idempotency-Key is still being processed;"
                       " retry later.", base=base, retry_after=retry_after)
    if outcome is ClaimOutcome.OUTCOME_UNKNOWN:
        return _ours(409, "idempotency-outcome-unknown",
                       "Outcome of the original request is unknown",
                       "The first request with this Idempotency-Key stopped reporting while it"
                       " ran; it may or may not have taken effect. It will not be executed"
                       " again: check its outcome before retrying with a new key.", base=base)
    if stored is None or stored.kind != "http" or not stored.replayable:
        code = str(stored.status) if stored is not None and stored.status else "unknown"
        return _ours(409, "idempotency-response-not-replayable",
                       "The original response cannot be replayed",
                       f"The request with this Idempotency-Key completed (status {code}), but"
                       " its response was not kept (too large to store, or in a content"
                       " encoding that could not be redacted); it will not run again.",
                       base=base)
    return replay_answer(stored)


def key_invalid_problem(exc: Exception, *, missing: bool, base: str = PROBLEM_BASE) -> HttpAnswer:
    """400 for a missing (where required) or invalid ``Idempotency-Key``."""
    if missing:
        return _ours(400, "idempotency-key-missing", "Idempotency-Key is missing",
                       "This operation is idempotent and requires an Idempotency-Key header.",
                       base=base)
    return _ours(400, "idempotency-key-invalid", "Idempotency-Key is invalid", str(exc),
                   base=base)


def too_large_problem(limit: int, *, base: str = PROBLEM_BASE) -> HttpAnswer:
    """413 for a request body above the idempotency middleware's bound."""
    return _ours(413, "idempotency-request-too-large", "Request body too large",
                   f"Requests with an Idempotency-Key may carry at most {limit} bytes.", base=base)


def invalid_length_problem(*, base: str = PROBLEM_BASE) -> HttpAnswer:
    """400 for a ``Content-Length`` that is not 1-18 ASCII digits (never executed)."""
    return _ours(400, "invalid-content-length", "Content-Length is invalid",
                   "Content-Length must be a decimal number of bytes (ASCII digits only).",
                   base=base)


def unavailable_problem(retry_after: float, *, base: str = PROBLEM_BASE) -> HttpAnswer:
    """503 + Retry-After when the idempotency store cannot answer (``on_backend_error="deny"``)."""
    return _ours(503, "idempotency-store-unavailable", "Idempotency store unavailable",
                   "The request was not processed because its Idempotency-Key could not be"
                   " checked; retry with the same key.", base=base, retry_after=retry_after)


def scope_missing_problem(*, base: str = PROBLEM_BASE) -> HttpAnswer:
    """500 when the configured scope callable found no principal (a server misconfiguration)."""
    return _ours(500, "idempotency-scope-unavailable", "No principal for the idempotency scope",
                   "The server could not determine who sent this request.", base=base)
