"""Redacting an HTTP response before the idempotency store keeps it: the replayed header values
and the body, also when the body is compressed.

A compressed body (``Content-Encoding: gzip``, ``deflate``, ``br``) is decoded, redacted and
encoded again with the same codings; when nothing was masked the original bytes are kept. A body
that cannot be read - an unknown coding, ``br`` without the ``brotli`` package, a corrupt stream,
or more than :data:`MAX_DECODED_BYTES` once decoded - is **not stored**: the record keeps the
status and the redacted headers, marked not replayable, so the key still never runs twice
(duplicates get 409 ``idempotency-response-not-replayable``) and no unredacted card data is
written. A warning says why.
"""

from __future__ import annotations

import gzip
import importlib
import logging
import zlib
from collections.abc import Callable
from typing import Any, Final

from ..core.redaction import RedactorLike
from .record import StoredResponse

__all__ = ["DECODERS", "MAX_DECODED_BYTES", "redact_stored"]

logger = logging.getLogger("fintech_resilience")

#: A compressed body larger than this once decoded is not stored (a decompression bomb, or a
#: response no redactor should spend its time on).
MAX_DECODED_BYTES: Final = 16 * 1024 * 1024


class _Unreadable(Exception):
    """The body cannot be decoded here; the message says why (no body content in it)."""


def _inflate(data: bytes, wbits: int, members: bool) -> bytes:
    """zlib/gzip decoding bounded by MAX_DECODED_BYTES (gzip: every member)."""
    out: list[bytes] = []
    size = 0
    while True:
        decoder = zlib.decompressobj(wbits)
        try:
            chunk = decoder.decompress(data, MAX_DECODED_BYTES + 1 - size)
        except zlib.error as exc:
            raise _Unreadable(f"corrupt stream ({exc})") from exc
        size += len(chunk)
        if size > MAX_DECODED_BYTES:
            raise _Unreadable(f"larger than {MAX_DECODED_BYTES} bytes once decoded")
        if not decoder.eof:
            raise _Unreadable("truncated stream")
        out.append(chunk)
        data = decoder.unused_data
        if not (members and data.strip(b"\0")):
            return b"".join(out)


def _gunzip(data: bytes) -> bytes:
    return _inflate(data, 31, members=True)


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def _undeflate(data: bytes) -> bytes:
    # HTTP's "deflate" is the zlib format; some servers send a raw deflate stream instead
    try:
        return _inflate(data, 15, members=False)
    except _Unreadable:
        return _inflate(data, -15, members=False)


def _brotli_codec() -> tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]] | None:
    try:
        brotli: Any = importlib.import_module("brotli")
    except ImportError:
        return None

    def decode(data: bytes) -> bytes:
        decoder = brotli.Decompressor()
        try:
            try:
                plain = bytes(decoder.process(data, output_buffer_limit=MAX_DECODED_BYTES + 1))
            except TypeError:  # brotli < 1.2 cannot bound its output: decode, then measure
                plain, finished = bytes(brotli.decompress(data)), True
            else:
                finished = decoder.is_finished()
        except brotli.error as exc:
            raise _Unreadable(f"corrupt stream ({exc})") from exc
        if len(plain) > MAX_DECODED_BYTES:
            raise _Unreadable(f"larger than {MAX_DECODED_BYTES} bytes once decoded")
        if not finished:
            raise _Unreadable("truncated stream")
        return plain

    def encode(data: bytes) -> bytes:
        return bytes(brotli.compress(data))

    return decode, encode


#: Content codings the store can decode and encode again; None: known, but no decoder installed.
DECODERS: dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]] | None] = {
    "gzip": (_gunzip, _gzip),
    "x-gzip": (_gunzip, _gzip),
    "deflate": (_undeflate, zlib.compress),
    "br": _brotli_codec(),
}


def _codings(value: str) -> list[str]:
    return [c for c in (part.strip().lower() for part in value.split(",")) if c and c != "identity"]


def _redact_value(name: str, value: str, redactor: RedactorLike) -> str:
    sensitive = getattr(redactor, "is_sensitive_header", None)
    if sensitive is not None and sensitive(name):
        return str(getattr(redactor, "mask", "[REDACTED]"))
    # header values arrive as latin-1 text of the bytes on the wire; redact those bytes (the
    # redactor reads UTF-8 in them, e.g. fullwidth digits)
    try:
        raw, encoding = value.encode("latin-1"), "latin-1"
    except UnicodeEncodeError:
        raw, encoding = value.encode("utf-8"), "utf-8"
    masked = redactor.redact_bytes(raw, None)
    return value if masked is raw or masked == raw else masked.decode(encoding)


def redact_headers(headers: tuple[tuple[str, str], ...], redactor: RedactorLike
                   ) -> tuple[tuple[str, str], ...]:
    """``headers`` with PANs masked in every value (the same tuple when nothing changed)."""
    out: list[tuple[str, str]] | None = None
    for i, (name, value) in enumerate(headers):
        masked = _redact_value(name, value, redactor)
        if masked is not value:
            if out is None:
                out = list(headers)
            out[i] = (name, masked)
    return headers if out is None else tuple(out)


def redact_stored(response: StoredResponse, redactor: RedactorLike) -> StoredResponse:
    """``response`` (an HTTP response about to be stored) with card data masked in its header
    values and body; ``response`` itself when nothing was masked. See the module docstring for
    compressed bodies and for what is not stored."""
    headers = redact_headers(tuple(response.headers), redactor)
    content_type = coding = None
    for name, value in headers:
        low = name.lower()
        if low == "content-type":
            content_type = value
        elif low == "content-encoding":
            coding = value
    body = response.body
    codings = _codings(coding) if coding and body else []
    if codings:
        try:
            body = _redact_encoded(body, codings, content_type, redactor)
        except _Unreadable as exc:
            logger.warning(
                "idempotency: a %d response body with Content-Encoding %r cannot be redacted"
                " (%s); stored without its body: duplicates get 409 not-replayable, the"
                " request is not executed again", response.status, coding, exc)
            return StoredResponse(response.kind, response.status, headers, b"", False, True)
    elif body:
        body = redactor.redact_bytes(body, content_type)
    if headers is response.headers and (body is response.body or body == response.body):
        return response
    return StoredResponse(response.kind, response.status, headers, body, response.replayable,
                          redacted=True)


def _redact_encoded(body: bytes, codings: list[str], content_type: str | None,
                    redactor: RedactorLike) -> bytes:
    """Decode ``body`` (codings applied in order, so undone in reverse), redact it, encode it
    again; the original bytes when nothing was masked."""
    steps = []
    for name in codings:
        codec = DECODERS.get(name)
        if codec is None:
            installed = "" if name not in DECODERS else " (install the 'brotli' package)"
            raise _Unreadable(f"no decoder for {name!r}{installed}")
        steps.append(codec)
    plain = body
    for decode, _ in reversed(steps):
        plain = decode(plain)
    masked = redactor.redact_bytes(plain, content_type)
    if masked is plain or masked == plain:
        return body
    for _, encode in steps:
        masked = encode(masked)
    return masked
