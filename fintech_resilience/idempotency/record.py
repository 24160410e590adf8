"""The pure core of idempotency: claim replies, completion decisions, stored-record format.

Nothing here does I/O. :mod:`fintech_resilience.idempotency` sends a claim, hands the raw reply to
:func:`parse_claim`, and stores what :func:`encode_response` produced; both HTTP middlewares and the
decorator share these functions.

Stored response format (the ``res`` field of the record), before optional encryption::

    0x01 | header length (4 bytes, big endian) | JSON header | body

The JSON header holds ``kind`` (``"http"``, ``"result"`` or ``"exception"``), ``status``,
``headers`` (safe headers only), ``replayable`` and ``redacted``. An encrypted record is
``0x02 | cipher envelope`` (see :mod:`fintech_resilience.crypto`); the record's storage key is the
associated data, so an envelope copied to another record does not decrypt.
"""

from __future__ import annotations

import enum
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, NamedTuple, Protocol

from ..errors import (
    IdempotencyError,
    IdempotencyInProgress,
    IdempotencyKeyMismatch,
    IdempotencyNotReplayable,
    IdempotencyOutcomeUnknown,
)

__all__ = [
    "ClaimOutcome",
    "ClaimReply",
    "CompleteReply",
    "JsonSerializer",
    "Serializer",
    "StoredResponse",
    "decode_response",
    "default_store_status",
    "duplicate_outcome",
    "encode_response",
    "exception_response",
    "exception_type_name",
    "parse_claim",
    "parse_complete",
    "rebuild_exception",
    "result_response",
]

_PLAIN: Final = 1
_ENCRYPTED: Final = 2

Kind = Literal["http", "result", "exception"]


class ClaimOutcome(enum.Enum):
    """What a claim decided. The values are the outcome names used in telemetry and logs."""

    EXECUTE = "executed"
    REPLAY = "replayed"
    MISMATCH = "mismatch"
    IN_PROGRESS = "in_progress"
    OUTCOME_UNKNOWN = "outcome_unknown"


_CODES: Final = {
    1: ClaimOutcome.EXECUTE,
    2: ClaimOutcome.REPLAY,
    3: ClaimOutcome.MISMATCH,
    4: ClaimOutcome.IN_PROGRESS,
    5: ClaimOutcome.OUTCOME_UNKNOWN,
}


class ClaimReply(NamedTuple):
    """A parsed ``idempotency_claim`` reply.

    ``stored`` is the raw stored response (replay only); ``retry_after`` is in seconds (in
    progress only); ``reclaimed`` is true when this claim took over an expired lease.
    """

    outcome: ClaimOutcome
    fencing_token: int
    reclaimed: bool = False
    retry_after: float = 0.0
    stored: bytes | None = None
    completed_at: float = 0.0


def parse_claim(raw: Sequence[Any]) -> ClaimReply:
    """Turn the flat reply of ``idempotency_claim`` into a :class:`ClaimReply`."""
    outcome = _CODES[int(raw[0])]
    fence = int(raw[1])
    if outcome is ClaimOutcome.EXECUTE:
        return ClaimReply(outcome, fence, bool(int(raw[2])))  # reclaimed (positional: faster)
    if outcome is ClaimOutcome.REPLAY:
        return ClaimReply(outcome, fence, stored=bytes(raw[2]),
                          completed_at=int(raw[3]) / 1_000_000)
    if outcome is ClaimOutcome.IN_PROGRESS:
        return ClaimReply(outcome, fence, retry_after=int(raw[2]) / 1_000_000)
    return ClaimReply(outcome, fence)


class CompleteReply(enum.Enum):
    """The answer of ``idempotency_complete`` / ``_release`` / ``_renew`` (compare-and-set)."""

    OK = "ok"
    NOT_OWNER = "not_owner"  # released, reclaimed by another attempt, or forgotten
    LEASE_EXPIRED = "lease_expired"  # the record now reports "outcome unknown"


def parse_complete(raw: Sequence[Any]) -> CompleteReply:
    """Turn ``{ok, reason}`` into a :class:`CompleteReply`."""
    if int(raw[0]):
        return CompleteReply.OK
    return CompleteReply.LEASE_EXPIRED if int(raw[1]) == 2 else CompleteReply.NOT_OWNER


def default_store_status(status: int) -> bool:
    """Store 2xx and 4xx answers except 409 and 429 (a retry may succeed); release the rest."""
    return 200 <= status < 500 and status not in (409, 429)


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """What a duplicate gets back.

    * ``kind="http"``: ``status``, safe ``headers`` and ``body`` of the original response;
      ``replayable=False`` when the body was not kept (streamed past the size bound).
    * ``kind="result"``: ``body`` is the serialised return value of a decorated function.
    * ``kind="exception"``: ``headers`` holds ``(("type", "module:qualname"),)`` and ``body`` the
      serialised exception arguments.
    """

    kind: Kind = "http"
    status: int = 0
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    replayable: bool = True
    redacted: bool = False


class _Sealer(Protocol):
    def encrypt(self, plaintext: bytes, associated_data: bytes) -> bytes: ...

    def decrypt(self, envelope: bytes, associated_data: bytes) -> bytes: ...


#: one encoder for every stored header (``json.dumps`` would set one up per call)
_HEADER_JSON: Final = json.JSONEncoder(separators=(",", ":"))


def encode_response(response: StoredResponse, *, cipher: _Sealer | None = None,
                    associated_data: bytes = b"") -> bytes:
    """Serialise (and, with a cipher, encrypt) a response for the record's ``res`` field:
    ``0x01 | header length | JSON header | body``."""
    header = _HEADER_JSON.encode({
        "kind": response.kind, "status": int(response.status),
        "headers": [[name, value] for name, value in response.headers],
        "replayable": bool(response.replayable), "redacted": bool(response.redacted),
    }).encode()
    plain = bytes((_PLAIN,)) + len(header).to_bytes(4, "big") + header + response.body
    if cipher is None:
        return plain
    return bytes((_ENCRYPTED,)) + cipher.encrypt(plain, associated_data)


def decode_response(blob: bytes, *, cipher: _Sealer | None = None,
                    associated_data: bytes = b"") -> StoredResponse:
    """Inverse of :func:`encode_response`. Raises ValueError on a malformed or foreign value
    (and :class:`~fintech_resilience.crypto.DecryptionError` when decryption fails)."""
    if not blob:
        raise ValueError("empty stored response")
    if blob[0] == _ENCRYPTED:
        if cipher is None:
            raise ValueError("the stored response is encrypted; configure the store's cipher")
        blob = cipher.decrypt(blob[1:], associated_data)
    if blob[0] != _PLAIN or len(blob) < 5:
        raise ValueError("unknown stored response format")
    size = int.from_bytes(blob[1:5], "big")
    header = json.loads(blob[5:5 + size])
    return StoredResponse(
        kind=header["kind"], status=int(header["status"]),
        headers=tuple((str(n), str(v)) for n, v in header["headers"]),
        body=blob[5 + size:], replayable=bool(header["replayable"]),
        redacted=bool(header.get("redacted", False)),
    )


#: Serialiser protocol for decorated functions' results: ``dumps(obj) -> bytes``,
#: ``loads(bytes) -> obj``.
class Serializer(Protocol):
    """Turns results into bytes and back (JSON by default)."""

    def dumps(self, value: Any) -> bytes:
        """Serialise ``value``; raise TypeError/ValueError when it cannot be stored."""
        ...

    def loads(self, data: bytes) -> Any:
        """Inverse of :meth:`dumps`."""
        ...


class JsonSerializer:
    """The default serialiser: compact JSON (results must be JSON-serialisable)."""

    __slots__ = ()

    def dumps(self, value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()

    def loads(self, data: bytes) -> Any:
        return json.loads(data)

    def __repr__(self) -> str:
        return "JsonSerializer()"


def exception_type_name(exc_type: type[Any]) -> str:
    """``module:qualname`` of a class (how stored exceptions and results name their type)."""
    return f"{exc_type.__module__}:{exc_type.__qualname__}"


def rebuild_exception(stored: StoredResponse, allowed: Sequence[type[BaseException]],
                      loads: Callable[[bytes], Any]) -> BaseException | None:
    """The stored exception, rebuilt only if its type is one of ``allowed`` (never an arbitrary
    class named by the store); None when it cannot be rebuilt."""
    name = dict(stored.headers).get("type")
    for exc_type in allowed:
        if exception_type_name(exc_type) == name:
            try:
                args = loads(stored.body)
                return exc_type(*args)
            except Exception:
                return None
    return None


# -- what a decorated function's duplicate gets ----------------------------------------------------
def duplicate_outcome(outcome: ClaimOutcome, retry_after: float, stored: StoredResponse | None,
                      serializer: Serializer,
                      store_exceptions: tuple[type[BaseException], ...]) -> Any:
    """What a duplicate call returns (or raises), from a claim that does not execute."""
    if outcome is ClaimOutcome.IN_PROGRESS:
        raise IdempotencyInProgress(retry_after=retry_after)
    if outcome is ClaimOutcome.MISMATCH:
        raise IdempotencyKeyMismatch("this idempotency key was already used with other arguments")
    if outcome is ClaimOutcome.OUTCOME_UNKNOWN:
        raise IdempotencyOutcomeUnknown(
            "the first call with this key stopped renewing its lease while it ran; it may or may"
            " not have taken effect"
        )
    result_type = dict(stored.headers).get("type") if stored is not None else None
    if stored is None or not stored.replayable:
        raise IdempotencyNotReplayable(
            "the first call with this key completed, but its result"
            f"{f' ({result_type})' if result_type else ''} could not be stored; it will not"
            " run again", result_type)
    if stored.kind == "exception":
        exc = rebuild_exception(stored, store_exceptions, serializer.loads)
        if exc is None:
            raise IdempotencyError("the first call with this key raised an exception that"
                                   " cannot be rebuilt here")
        raise exc
    try:
        return serializer.loads(stored.body)
    except Exception as exc:  # a codec that changed, a class no longer allowed, redacted fields
        raise IdempotencyNotReplayable(
            "the first call with this key completed, but its stored result cannot be rebuilt"
            f" here ({type(exc).__name__}); it will not run again", result_type) from exc


def result_response(result: Any, serializer: Serializer) -> StoredResponse:
    """The stored form of a decorated function's result. A result the serialiser refuses is
    recorded as "completed, not replayable" with its type name (never its value): duplicates
    get :class:`~fintech_resilience.IdempotencyNotReplayable` and the call never runs twice."""
    try:
        return StoredResponse("result", body=serializer.dumps(result))
    except (TypeError, ValueError) as exc:
        result_type = exception_type_name(type(result))
        logging.getLogger("fintech_resilience").error(
            "idempotent result of type %s cannot be stored (%s); the call completed and will"
            " not run again, duplicates get IdempotencyNotReplayable", result_type, exc)
        return StoredResponse("result", headers=(("type", result_type),), replayable=False)


def exception_response(exc: BaseException, serializer: Serializer) -> StoredResponse:
    """The stored form of an exception listed in ``store_exceptions``."""
    headers = (("type", exception_type_name(type(exc))),)
    try:
        body = serializer.dumps(list(exc.args))
    except (TypeError, ValueError):
        return StoredResponse("exception", headers=headers, replayable=False)
    return StoredResponse("exception", headers=headers, body=body)


def is_json(data: bytes) -> bool:
    try:
        json.loads(data)
    except ValueError:
        return False
    return True
