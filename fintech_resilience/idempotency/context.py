"""What a claim is, and what a running handler can read about it (:func:`current_idempotency`)."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .record import ClaimOutcome, StoredResponse

if TYPE_CHECKING:
    from .store import IdempotencyStore

__all__ = ["Claim", "IdempotencyContext", "KeyArg", "current_idempotency"]

KeyArg = str | bytes | int


@dataclass(slots=True)
class Claim:
    """The answer of :meth:`IdempotencyStore.claim`.

    ``outcome`` says what to do; ``response`` is the stored response of a replay (decoded and
    decrypted); ``fencing_token`` grows with every claim of the key; ``fallback`` is ``"allow"``
    when the backend failed and ``on_backend_error="allow"`` let the call run unprotected;
    ``local`` is true for a claim made on the per-process records of ``"local"`` (it is
    completed, renewed and released there, and a claim made on the backend never is).
    """

    outcome: ClaimOutcome
    record_key: str
    owner: str
    fencing_token: int
    reclaimed: bool = False
    retry_after: float = 0.0
    response: StoredResponse | None = None
    fallback: str | None = None
    lease_lost: bool = False
    local: bool = False

    @property
    def key_hash(self) -> str:
        """The hashed record id used in telemetry and audit records (no user data)."""
        key = self.record_key
        return key[key.rfind(":") + 1:].rstrip("}")


class IdempotencyContext:
    """What a running handler can read through :func:`current_idempotency` (read-only)."""

    __slots__ = ("_claim", "_store")

    def __init__(self, claim: Claim, store: IdempotencyStore) -> None:
        self._claim = claim
        self._store = store

    @property
    def key_hash(self) -> str:
        """The hashed record id (as in telemetry and audit records)."""
        return self._claim.key_hash

    @property
    def fencing_token(self) -> int:
        """Grows with every claim of the key: pass it to systems that can reject stale writers."""
        return self._claim.fencing_token

    @property
    def reclaimed(self) -> bool:
        """True when this attempt took over an expired lease (a previous attempt may have run)."""
        return self._claim.reclaimed

    def __repr__(self) -> str:
        return (f"IdempotencyContext(key_hash={self.key_hash!r},"
                f" fencing_token={self.fencing_token}, reclaimed={self.reclaimed})")

    @property
    def lease_lost(self) -> bool:
        """True once a renewal found the lease gone: the outcome is no longer ours to report."""
        return self._claim.lease_lost

    def downstream_key(self, purpose: str = "") -> str:
        """A key for the downstream call (e.g. the PSP's Idempotency-Key): derived from the record
        with the store's secret, identical on every attempt of this key, different per principal
        and per ``purpose`` (``"charge"``, ``"refund"``), and revealing nothing of either."""
        return self._store.downstream_key(self._claim.record_key, purpose)


_CURRENT: contextvars.ContextVar[IdempotencyContext | None] = contextvars.ContextVar(
    "fintech_resilience_idempotency", default=None
)


def current_idempotency() -> IdempotencyContext | None:
    """The idempotency context of the running handler (None outside an idempotent call)."""
    return _CURRENT.get()
