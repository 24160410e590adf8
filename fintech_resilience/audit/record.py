"""Audit records: the PCI DSS 10.2.2 fields, canonical JSON and the chain hash (see ``audit``)."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeAlias

from ..core import storage_keys as _keys

__all__ = ["AuditRecord", "EventType", "chain_hash", "stream_key"]

Outcome: TypeAlias = Literal["success", "failure"]
DetailValue: TypeAlias = str | int | float | bool | None

#: Longest string kept in a record field (longer values are cut and end with ``"..."``).
MAX_FIELD_CHARS: Final = 512
#: PCI DSS 10.5.1 asks for 12 months of audit history: streams expire 400 days after the last
#: append unless told otherwise.
DEFAULT_STREAM_TTL: Final = 400 * 86_400.0

audit_logger = logging.getLogger("fintech_resilience.audit")


class EventType:
    """The ``event_type`` values the library's patterns and edges emit."""

    LIMIT_HIT: Final = "ratelimit.limit_hit"
    BREAKER_TRANSITION: Final = "breaker.transition"
    OPERATOR_OVERRIDE: Final = "operator.override"
    IDEMPOTENT_REPLAY: Final = "idempotency.replay"
    IDEMPOTENCY_CONFLICT: Final = "idempotency.conflict"
    IDEMPOTENCY_MISMATCH: Final = "idempotency.mismatch"
    IDEMPOTENCY_OUTCOME_UNKNOWN: Final = "idempotency.outcome_unknown"
    RETRY_BUDGET_EXHAUSTED: Final = "retry_budget.exhausted"
    CHAOS_INJECTED: Final = "chaos.injected"
    RESIDENCY_VIOLATION: Final = "residency.violation"


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One audited decision: the PCI DSS 10.2.2 fields, trace context and details."""

    event_type: str
    principal: str
    time: str
    outcome: Outcome
    origination: str
    resource: str
    trace_id: str = ""
    span_id: str = ""
    details: Mapping[str, DetailValue] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The record as a plain dict (``details`` copied)."""
        return {
            "event_type": self.event_type,
            "principal": self.principal,
            "time": self.time,
            "outcome": self.outcome,
            "origination": self.origination,
            "resource": self.resource,
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "details": dict(self.details),
        }

    def canonical(self) -> bytes:
        """Canonical JSON (sorted keys, no spaces, ASCII): what the hash chain covers."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"),
                          ensure_ascii=True, allow_nan=False).encode("ascii")

    @classmethod
    def from_json(cls, data: str | bytes) -> AuditRecord:
        """Parse a record written by :meth:`canonical` (or a :class:`LoggingSink` line)."""
        raw = json.loads(data)
        if not isinstance(raw, dict):
            raise ValueError("an audit record is a JSON object")
        return cls(
            event_type=raw["event_type"], principal=raw["principal"], time=raw["time"],
            outcome=raw["outcome"], origination=raw["origination"], resource=raw["resource"],
            trace_id=raw.get("trace_id", ""), span_id=raw.get("span_id", ""),
            details=raw.get("details", {}),
        )


def chain_hash(prev_hash: str, record: bytes, key: bytes | None = None) -> str:
    """The chain hash of one entry: HMAC-SHA256 with ``key`` (or plain SHA-256 without one)
    over ``prev_hash``, a newline and the record's canonical JSON; lower-case hex."""
    message = prev_hash.encode("ascii", "replace") + b"\n" + record
    if key:
        return hmac.new(key, message, hashlib.sha256).hexdigest()
    return hashlib.sha256(message).hexdigest()



def stream_key(stream: str, namespace: str = _keys.DEFAULT_NAMESPACE) -> str:
    """The storage key of audit stream ``stream`` (``fr:audit:{audit}``)."""
    return _keys.name_key(_keys.validate_name(namespace, "namespace"), "audit",
                          _keys.validate_name(stream, "stream"))
