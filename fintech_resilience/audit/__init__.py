"""An audit trail for decisions that affect money movement (PCI DSS requirement 10.2.2): the
:class:`AuditLog` and its sinks (``log``), the record and chain hash (``record``), and stream
verification (``verify``)."""

from .log import (
    AuditLog,
    CallbackSink,
    LoggingSink,
    RedisStreamSink,
    Sink,
    emit_soon,
    get_default,
    resolve,
    set_default,
)
from .record import (
    DEFAULT_STREAM_TTL,
    MAX_FIELD_CHARS,
    AuditRecord,
    EventType,
    chain_hash,
    stream_key,
)
from .verify import (
    CHAIN_BREAK,
    HASH_MISMATCH,
    HEAD_MISMATCH,
    NOT_A_RECORD,
    BrokenEntry,
    VerifyReport,
    verify_cli,
    verify_stream,
)

__all__ = [
    "CHAIN_BREAK",
    "DEFAULT_STREAM_TTL",
    "HASH_MISMATCH",
    "HEAD_MISMATCH",
    "MAX_FIELD_CHARS",
    "NOT_A_RECORD",
    "AuditLog",
    "AuditRecord",
    "BrokenEntry",
    "CallbackSink",
    "EventType",
    "LoggingSink",
    "RedisStreamSink",
    "Sink",
    "VerifyReport",
    "chain_hash",
    "emit_soon",
    "get_default",
    "resolve",
    "set_default",
    "stream_key",
    "verify_cli",
    "verify_stream",
]
