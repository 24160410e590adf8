"""Property: random JSON with embedded PANs (many formats) through every sink - no PAN survives,
and digit runs that fail the Luhn check are kept: the redactor itself, audit records through every
sink, and the sinks as the patterns and edges wire them (idempotency stored HTTP responses with
``Redactor.pci()``, the audit records of the idempotency, rate-limit and breaker wiring, the
library's log records). Span and metric attributes: test_chaos_telemetry.py."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fintech_resilience import MemoryBackend
from fintech_resilience.audit import (
    AuditLog,
    AuditRecord,
    CallbackSink,
    LoggingSink,
    RedisStreamSink,
)
from fintech_resilience.core.redaction import Redactor, luhn_valid

JOIN = "; "  # never a PAN separator, so tokens stay apart
#: separators the PANs below are written with (a subset of what the redactor knows)
SEPARATORS = " \t+./-\u00a0\u202f\u2009\u3000"
FULLWIDTH = str.maketrans({48 + i: 0xFF10 + i for i in range(10)})
ASCII = str.maketrans({0xFF10 + i: 48 + i for i in range(10)} | {ord(c): None for c in SEPARATORS})
SAFE_KEYS = ["order", "note", "items", "meta", "ref", "desc", "data", "customer", "memo"]


def _check_digit(body: str) -> str:
    return next(str(d) for d in range(10) if luhn_valid(body + str(d)))


@st.composite
def pans(draw: st.DrawFn) -> str:
    length = draw(st.integers(13, 19))
    body = draw(st.text("0123456789", min_size=length - 1, max_size=length - 1))
    digits = body + _check_digit(body)
    if draw(st.booleans()):
        digits = digits.translate(FULLWIDTH) if draw(st.integers(0, 4)) == 0 else digits
    style = draw(st.sampled_from(["plain", "space4", "dash4", "amex", "mixed", "any4"]))
    if style == "plain":
        return digits
    if style == "amex" and length == 15:
        return f"{digits[:4]} {digits[4:10]} {digits[10:]}"
    groups = [digits[i:i + 4] for i in range(0, length, 4)]
    if style == "mixed":
        return "".join(g + ("-" if i % 2 else " ") for i, g in enumerate(groups)).rstrip(" -")
    if style == "any4":  # dots, slashes, several spaces, Unicode spaces, mixed per group
        seps = draw(st.lists(st.text(SEPARATORS, min_size=1, max_size=3),
                             min_size=len(groups) - 1, max_size=len(groups) - 1))
        return groups[0] + "".join(sep + g for sep, g in zip(seps, groups[1:], strict=True))
    return ("-" if style == "dash4" else " ").join(groups)


@st.composite
def non_pans(draw: st.DrawFn) -> str:
    length = draw(st.integers(13, 19))
    digits = draw(st.text("0123456789", min_size=length, max_size=length))
    if luhn_valid(digits):
        digits = digits[:-1] + str((int(digits[-1]) + 1) % 10)
    return digits


words = st.text("abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8)
strings = st.lists(st.one_of(words, pans(), non_pans()), min_size=1, max_size=6).map(JOIN.join)
leaves = st.one_of(
    strings,
    pans().map(lambda p: int(p.translate(ASCII))),
    non_pans().filter(lambda n: n[0] != "0").map(int),
    st.integers(-1000, 1000), st.booleans(), st.none(),
)
documents = st.recursive(
    leaves,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.sampled_from(SAFE_KEYS), children, max_size=4)),
    max_leaves=12,
)


def _leaves(doc: Any) -> list[Any]:
    if isinstance(doc, dict):
        return [leaf for v in doc.values() for leaf in _leaves(v)]
    if isinstance(doc, list):
        return [leaf for v in doc for leaf in _leaves(v)]
    return [doc]


def _tokens(doc: Any) -> tuple[set[str], set[str]]:
    """(PAN digit strings, kept non-PAN digit strings) embedded in the document."""
    found_pans: set[str] = set()
    kept: set[str] = set()
    for leaf in _leaves(doc):
        if isinstance(leaf, bool) or leaf is None:
            continue
        for token in (leaf.split(JOIN) if isinstance(leaf, str) else [str(leaf)]):
            digits = token.translate(ASCII)
            if digits.isascii() and digits.isdigit() and 13 <= len(digits) <= 19:
                (found_pans if luhn_valid(digits) else kept).add(digits)
    return found_pans, kept


def _assert_clean(output: str, doc_pans: set[str], kept: set[str]) -> None:
    for pan in doc_pans:
        # the PAN's digits as a whole run, in any separator format, ASCII or fullwidth
        written = ("(?<![0-9\uff10-\uff19])"
                   + f"[{re.escape(SEPARATORS)}]{{0,3}}".join(
                       f"[{d}{chr(0xFF10 + int(d))}]" for d in pan)
                   + "(?![0-9\uff10-\uff19])")
        assert re.search(written, output) is None, (pan, output)
    for digits in kept:
        assert digits in output, (digits, output)


SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@SETTINGS
@given(documents)
def test_stored_responses_keep_no_pan(doc: Any) -> None:
    doc_pans, kept = _tokens(doc)
    redactor = Redactor.pci()
    body = json.dumps(doc).encode()
    _assert_clean(redactor.redact_bytes(body, "application/json").decode(), doc_pans, kept)
    # as text, JSON's \u escapes are not read: a text body carries its characters as UTF-8
    text = json.dumps(doc, ensure_ascii=False).encode()
    _assert_clean(redactor.redact_bytes(text, "application/json").decode(), doc_pans, kept)
    _assert_clean(redactor.redact_bytes(text, "text/plain").decode(), doc_pans, kept)
    if isinstance(doc, dict):
        _assert_clean(json.dumps(redactor.redact_mapping(doc)), doc_pans, kept)
    _assert_clean(json.dumps(redactor.redact_value(doc)), doc_pans, kept)


@SETTINGS
@given(documents)
def test_audit_records_and_their_logs_keep_no_pan(doc: Any) -> None:
    doc_pans, kept = _tokens(doc)
    backend = MemoryBackend()
    sink = RedisStreamSink(backend, stream="audit", chain=True)
    lines: list[str] = []

    class ListHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.getLogger("test.audit.property")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = ListHandler()
    logger.addHandler(handler)
    seen: list[AuditRecord] = []
    try:
        log = AuditLog([sink, LoggingSink(logger), CallbackSink(seen.append)])
        details = {f"f{i}": leaf for i, leaf in enumerate(_leaves(doc))}
        principal = next((v for v in details.values() if isinstance(v, str)), "p")
        log.record("ratelimit.limit_hit", resource=f"ratelimit:{principal}",
                   principal=principal, details=details)
    finally:
        logger.removeHandler(handler)
    stream = backend.run("audit_read", [sink.key_name], [0, "-", 10])
    for output in (lines[0], seen[0].canonical().decode(), stream[1].decode()):
        _assert_clean(output, doc_pans, kept)
    assert sink.verify().ok


# -- the sinks as the patterns and edges wire them ---------------------------------------------------
def _asgi(app: Any, scope: dict[str, Any], body: bytes = b"") -> tuple[int, bytes]:
    import asyncio

    got: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        got.append(message.get("status", message.get("body", b"")))

    asyncio.run(app(scope, receive, send))
    return got[0], b"".join(m for m in got[1:] if isinstance(m, bytes))


def _scope(principal: str, key: str | None = None) -> dict[str, Any]:
    headers = [(b"content-type", b"application/json")]
    if key is not None:
        headers.append((b"idempotency-key", key.encode()))
    return {"type": "http", "method": "POST", "path": "/payments", "root_path": "",
            "query_string": b"", "headers": headers, "client": ("203.0.113.7", 5000),
            "state": {"principal": principal}}


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(documents, pans())
def test_wired_sinks_keep_no_pan(doc: Any, pan: str) -> None:
    """Idempotency stored responses (``Redactor.pci()``), audit records written by the patterns
    and edges, and the library's log records: a PAN in a body, a principal, an idempotency key or
    an operator name survives in none of them."""
    from fintech_resilience import audit as audit_module
    from fintech_resilience.breaker.circuit import CircuitBreaker
    from fintech_resilience.edges.asgi.idempotency import IdempotencyMiddleware
    from fintech_resilience.edges.asgi.ratelimit import RateLimitMiddleware
    from fintech_resilience.idempotency import IdempotencyStore, idempotent
    from fintech_resilience.ratelimit.limiter import RateLimiter

    doc_pans, kept = _tokens(doc)
    doc_pans.add(pan.translate(ASCII))
    body = json.dumps(doc).encode()
    principal = f"user {pan}"
    records: list[AuditRecord] = []
    lines: list[str] = []

    class ListHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())
            lines.extend(json.dumps(getattr(record, name), default=str)
                         for name in ("audit", "resilience") if hasattr(record, name))

    library = logging.getLogger("fintech_resilience")
    handler = ListHandler(level=logging.DEBUG)
    library.addHandler(handler)
    old_level = library.level
    library.setLevel(logging.DEBUG)
    audit_module.set_default(AuditLog([CallbackSink(records.append),
                                       LoggingSink("fintech_resilience.audit")]))
    try:
        backend = MemoryBackend()

        async def app(scope: Any, receive: Any, send: Any) -> None:
            await send({"type": "http.response.start", "status": 201,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})

        store = IdempotencyStore(backend, name="payments", redactor=Redactor.pci())
        idem = IdempotencyMiddleware(app, store=store, scope=lambda s: s["state"]["principal"])
        key = pan if pan.isascii() and pan.isprintable() else pan.translate(ASCII)  # a header
        first = _asgi(idem, _scope(principal, key=key), body)
        replay = _asgi(idem, _scope(principal, key=key), body)
        other = _asgi(idem, _scope(principal, key=key), body + b" ")  # a mismatch
        assert (first[0], replay[0], other[0]) == (201, 201, 422)

        limited = RateLimitMiddleware(app, limiter=RateLimiter("1/minute", name="api",
                                                               backend=backend))
        assert [_asgi(limited, _scope(principal))[0] for _ in range(2)] == [201, 429]

        CircuitBreaker("psp", backend=backend).force_open(actor=f"ops {pan}")

        # the decorator's JSON results pass through the store's redactor too
        results = IdempotencyStore(backend, name="refunds", redactor=Redactor.pci())

        @idempotent(results, key=lambda p: p["key"], scope=lambda p: p["who"], route="refund")
        def refund(payment: dict[str, Any]) -> Any:
            return doc

        refund({"key": pan, "who": principal})
        refund({"key": pan, "who": principal})
    finally:
        audit_module.set_default(None)
        library.removeHandler(handler)
        library.setLevel(old_level)

    stored = [repr(entry[0]) for entry in
              (*backend.store.data.values(), *backend.records.data.values())]
    assert {r.event_type for r in records} >= {"idempotency.replay", "idempotency.mismatch",
                                                "ratelimit.limit_hit", "operator.override"}
    outputs = [replay[1].decode("utf-8", "replace"), *stored, *lines,
               *(r.canonical().decode() for r in records)]
    for output in outputs:
        _assert_clean(output, doc_pans, set())
    # what is not a PAN is kept in the replayed body
    _assert_clean(replay[1].decode(), set(), kept)
