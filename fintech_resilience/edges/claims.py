"""Opening an idempotency claim for an HTTP request: the steps before the claim, without I/O,
shared by the WSGI and Django middlewares and FastAPI's per-route dependency (each then claims
with the store's sync or async call)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..audit import log as _audit
from ..errors import IdempotencyKeyInvalid
from ..idempotency.context import Claim
from ..idempotency.store import IdempotencyStore
from .http import (
    HttpAnswer,
    claim_answer,
    key_invalid_problem,
    parse_idempotency_key,
    scope_missing_problem,
    too_large_problem,
)

__all__ = ["PreparedClaim", "claimed", "prepare_claim"]

logger = logging.getLogger("fintech_resilience")


@dataclass(frozen=True, slots=True)
class PreparedClaim:
    """What to claim: the record's storage key, the request's fingerprint, its principal."""

    record: str
    fingerprint: str
    principal: Any

    def audit_fields(self, store: IdempotencyStore, origination: str | None) -> dict[str, Any]:
        """The claim's audit keywords: who and from where, when the store is audited."""
        if _audit.resolve(store.audit_log) is None:
            return {}
        return {"principal": str(self.principal), "origination": origination}


def prepare_claim(store: IdempotencyStore, *, method: str, raw_keys: Sequence[bytes | str],
                  required: bool, principal_of: Callable[[], Any], path: str, query: bytes,
                  read_body: Callable[[], bytes | HttpAnswer | None], max_body_bytes: int,
                  base: str) -> HttpAnswer | PreparedClaim | None:
    """The key, the principal and the body, checked in that order.

    None: no key and none required (run unprotected); an answer to send instead of running the
    handler (400, 413, 500); else what to claim. ``read_body`` returns the body, None when it is
    above ``max_body_bytes``, or an answer (a malformed Content-Length).
    """
    try:
        key = parse_idempotency_key(raw_keys)
    except IdempotencyKeyInvalid as exc:
        return key_invalid_problem(exc, missing=False, base=base)
    if key is None:
        if required:
            return key_invalid_problem(IdempotencyKeyInvalid("missing"), missing=True, base=base)
        return None
    principal = principal_of()
    if principal is None or principal == "":
        logger.error("idempotency: no principal for a keyed request; install the middleware"
                     " inside the authentication middleware (or check the principal dependency)")
        return scope_missing_problem(base=base)
    body = read_body()
    if body is None:
        return too_large_problem(max_body_bytes, base=base)
    if isinstance(body, HttpAnswer):
        return body
    return PreparedClaim(store.record_key(key, scope=principal, method=method, route=path),
                         store.fingerprint(method, path, query, body), principal)


def claimed(claim: Claim, base: str) -> HttpAnswer | Claim:
    """The claim to run the handler under, or the answer it calls for (replay, 409, 422)."""
    answer = claim_answer(claim.outcome, retry_after=claim.retry_after, stored=claim.response,
                          base=base)
    return claim if answer is None else answer
