"""Idempotency keys with payment-grade guarantees: exactly-once execution, no cross-user leaks.

A record per (principal scope, method, route, client key) lives in the backend. One atomic claim
decides what a request does (:class:`~fintech_resilience.idempotency.record.ClaimOutcome`):

* ``executed`` - the first request: it runs, holding a lease (renewed while it runs) under a random
  owner token and a **fencing token** that grows with every claim of the key;
* ``replayed`` - the key completed: the stored response/result comes back in the same round trip;
* ``mismatch`` - the key was used with a different request (fingerprint): 422 /
  :class:`~fintech_resilience.IdempotencyKeyMismatch`;
* ``in_progress`` - the first request still runs: 409 /
  :class:`~fintech_resilience.IdempotencyInProgress`;
* ``outcome_unknown`` - the first request's lease expired while it ran (a dead worker, a stalled
  process): 409 / :class:`~fintech_resilience.IdempotencyOutcomeUnknown`, never a silent second
  execution, unless ``reclaim_expired=True`` (then the retry runs with a higher fencing token and
  the same :meth:`IdempotencyContext.downstream_key`, which the PSP deduplicates).

Completion, release and renewal are compare-and-set on the owner token *and* a live lease: once a
lease has expired, the stale owner can change nothing.

Inside a handler, :func:`current_idempotency` gives the fencing token and a downstream key.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import hashlib
import inspect
import json
import logging
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, ParamSpec, TypeVar, cast

from ..audit import log as _audit
from ..backends.base import ALLOW, Backend, BackendGuard, Fallback, OnBackendError
from ..backends.memory import MemoryBackend
from ..backends.redis import RedisBackend
from ..backends.resolve import BackendSpec, resolve_backend
from ..core import storage_keys as _keys
from ..core import telemetry
from ..core.clock import Clock
from ..core.per_loop import PerLoop
from ..core.redaction import RedactorLike
from ..errors import (
    BackendFull,
    BackendUnavailable,
    ConfigurationError,
)
from .codec import JsonCodec, ResultCodec, return_annotation
from .crypto import Cipher
from .record import (
    ClaimOutcome,
    ClaimReply,
    CompleteReply,
    JsonSerializer,
    Serializer,
    StoredResponse,
    decode_response,
    duplicate_outcome,
    encode_response,
    exception_response,
    parse_claim,
    parse_complete,
    result_response,
)
from .stored_redaction import redact_stored

__all__ = [
    "AUDIT_LOGGER",
    "Claim",
    "ClaimOutcome",
    "IdempotencyContext",
    "IdempotencyStore",
    "JsonCodec",
    "JsonSerializer",
    "ResultCodec",
    "StoredResponse",
    "current_idempotency",
    "idempotent",
]

P = ParamSpec("P")
R = TypeVar("R")
KeyArg = str | bytes | int

#: Structured, audit-ready records of every outcome (the key and principal appear hashed only).
AUDIT_LOGGER: Final = "fintech_resilience.audit"
audit_log = logging.getLogger(AUDIT_LOGGER)
PATTERN: Final = telemetry.Pattern.IDEMPOTENCY
#: Claim outcomes written to the AuditLog (when one is configured), and their event types.
_AUDITED: Final = {
    ClaimOutcome.REPLAY.value: _audit.EventType.IDEMPOTENT_REPLAY,
    ClaimOutcome.IN_PROGRESS.value: _audit.EventType.IDEMPOTENCY_CONFLICT,
    ClaimOutcome.MISMATCH.value: _audit.EventType.IDEMPOTENCY_MISMATCH,
    ClaimOutcome.OUTCOME_UNKNOWN.value: _audit.EventType.IDEMPOTENCY_OUTCOME_UNKNOWN,
}
_KIND: Final = "idem"


@dataclass(slots=True)
class Claim:
    """The answer of :meth:`IdempotencyStore.claim`.

    ``outcome`` says what to do; ``response`` is the stored response of a replay (decoded and
    decrypted); ``fencing_token`` grows with every claim of the key; ``fallback`` is ``"allow"``
    when the backend failed and ``on_backend_error="allow"`` let the call run unprotected.
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


class _HmacSha256:
    """HMAC-SHA256 (RFC 2104) under one key, its padded key blocks hashed once: per message it
    costs two hash copies instead of a whole HMAC set-up (``hmac.digest`` looks the digest up
    on every call)."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > 64:  # SHA-256's block size
            key = hashlib.sha256(key).digest()
        block = key.ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))

    def parts(self, *parts: bytes | str) -> bytes:
        """The MAC of length-prefixed parts (no ambiguity between part borders)."""
        inner = self._inner.copy()
        update = inner.update
        for part in parts:
            if isinstance(part, str):
                part = part.encode("utf-8", "surrogatepass")
            update(len(part).to_bytes(8, "big"))
            update(part)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


def _number(value: object, what: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low < value <= high:
        raise ConfigurationError(f"{what} must be a number of seconds in ({low}, {high}];"
                                 f" got {value!r}")
    return float(value)


class IdempotencyStore:
    """Where idempotency records live, and the rules they follow.

    :param backend: a backend or a URL (``"redis://host:6379/0"``); default a process-wide
        :class:`MemoryBackend` (where records are never evicted: past its ``max_records`` live
        records, new claims are refused with :class:`~fintech_resilience.BackendFull`); a
        :class:`RedisBackend` shares records between workers and hosts.
    :param ttl: seconds a record is kept after its claim and after its completion (default 24 h).
    :param lease: seconds a running handler owns the key without renewal (renewed every
        ``lease / 3`` while it runs); after it, duplicates get "outcome unknown".
    :param secret: HMAC key (at least 16 bytes) for fingerprints, record keys and downstream keys;
        identical on every worker. Optional only with a :class:`MemoryBackend`.
    :param redactor: masks card data in stored bodies (``redact_bytes(data, content_type)``), e.g.
        ``Redactor.pci()``. Replays then return the redacted body.
    :param cipher: encrypts stored responses at rest (e.g.
        :class:`~fintech_resilience.crypto.AesGcmCipher`).
    :param on_backend_error: ``"deny"`` (default: refuse - 503 / BackendUnavailable), ``"raise"``
        (the same for this pattern), ``"allow"`` (run unprotected) or ``"local"`` (per-process
        records: duplicates on other workers are not caught).
    :param reclaim_expired: let a duplicate take over an expired lease (with a higher fencing
        token) instead of answering "outcome unknown".
    :param renew: renew the lease in the background while the handler runs (default True).
    :param wait_replicas: after storing a response, wait until this many replicas acknowledged it
        (Redis ``WAIT``, on the connection that wrote it), at most ``wait_timeout`` seconds.
    :param unavailable_retry_after: ``Retry-After`` (seconds) of the 503 when the backend fails.
    :param clock: a :class:`~fintech_resilience.testing.ManualClock` drives leases in tests; by
        default the backend's clock decides (Redis ``TIME``).
    :param check_eviction: on a Redis backend, read ``maxmemory-policy`` once at construction and
        log a warning if Redis may evict records (anything but ``noeviction``). Nothing is raised
        if Redis cannot be reached.
    :param audit: an :class:`~fintech_resilience.audit.AuditLog` for replays, conflicts (in
        progress), mismatches and unknown outcomes (key hashed; principal and origination as
        given to :meth:`claim`); default :func:`fintech_resilience.audit.get_default`. Those
        outcomes then go to the log instead of the ``fintech_resilience.audit`` logger.
    """

    def __init__(self, backend: BackendSpec = None, *, ttl: float = 86_400.0,
                 lease: float = 30.0, secret: bytes | str | None = None, name: str = "default",
                 namespace: str = _keys.DEFAULT_NAMESPACE, redactor: RedactorLike | None = None,
                 cipher: Cipher | None = None, on_backend_error: OnBackendError = "deny",
                 reclaim_expired: bool = False, renew: bool = True, wait_replicas: int = 0,
                 wait_timeout: float = 0.1, unavailable_retry_after: float = 1.0,
                 clock: Clock | None = None, check_eviction: bool = True,
                 audit: _audit.AuditLog | None = None) -> None:
        self.audit_log = audit
        self.ttl = _number(ttl, "ttl", 0, 366 * 86_400)
        self.lease = _number(lease, "lease", 0, 86_400)
        if self.ttl < self.lease:
            raise ConfigurationError(f"ttl ({ttl}) must be at least lease ({lease}): a record"
                                     " must outlive the lease of the handler that owns it")
        self.backend = resolve_backend(backend)
        if secret is None:
            if not isinstance(self.backend, MemoryBackend):
                raise ConfigurationError(
                    "a shared backend needs secret=... (the same >= 16 random bytes on every"
                    " worker), e.g. secret=os.environ['IDEMPOTENCY_SECRET'].encode()"
                )
            secret = secrets.token_bytes(32)
        raw_secret = secret.encode() if isinstance(secret, str) else secret
        if not isinstance(raw_secret, bytes) or len(raw_secret) < 16:
            raise ConfigurationError("secret must be at least 16 bytes (os.urandom(32))")
        self._mac = _HmacSha256(raw_secret)
        if redactor is not None and not callable(getattr(redactor, "redact_bytes", None)):
            raise ConfigurationError("redactor needs a redact_bytes(data, content_type) method;"
                                     " use fintech_resilience.Redactor.pci()")
        if cipher is not None and not (callable(getattr(cipher, "encrypt", None))
                                       and callable(getattr(cipher, "decrypt", None))):
            raise ConfigurationError("cipher needs encrypt/decrypt; use crypto.AesGcmCipher")
        if type(wait_replicas) is not int or wait_replicas < 0:
            raise ConfigurationError(f"wait_replicas must be an int >= 0; got {wait_replicas!r}")
        if wait_replicas and getattr(self.backend, "kind", "") != "redis":
            raise ConfigurationError("wait_replicas needs a RedisBackend (replicas acknowledge"
                                     " writes there); remove it for other backends")
        self.wait_replicas = wait_replicas
        self.wait_timeout = _number(wait_timeout, "wait_timeout", 0, 60)
        self.name = _keys.validate_name(name)
        self.namespace = _keys.validate_name(namespace, "namespace")
        self._record_prefix = _keys.user_prefix(self.namespace, _KIND, self.name)
        self.redactor = redactor
        self.cipher = cipher
        self.reclaim_expired = bool(reclaim_expired)
        self.renew_leases = bool(renew)
        self.unavailable_retry_after = float(unavailable_retry_after)
        self.clock = clock
        self._guard = BackendGuard(PATTERN, self.name, self.backend, on_backend_error)
        if check_eviction and isinstance(self.backend, RedisBackend):
            self.backend.warn_if_evicting("idempotency records")
        self._lease_us = round(self.lease * 1_000_000)
        self._ttl_us = round(self.ttl * 1_000_000)
        self._renewer: _ThreadRenewer | None = None
        self._renewer_lock = threading.Lock()
        self._loop_renewers: PerLoop[_LoopRenewer] = PerLoop()

    @property
    def on_backend_error(self) -> OnBackendError:
        return self._guard.policy

    # -- keys ------------------------------------------------------------------------------------
    def record_key(self, key: KeyArg, *, scope: KeyArg, method: str = "", route: str = "") -> str:
        """The storage key of a client key under a principal ``scope``, method and route: an HMAC
        with the store's secret, so neither the key nor the principal can be read back."""
        if isinstance(key, bool) or not isinstance(key, str | bytes | int):
            raise ConfigurationError(f"an idempotency key is a str, bytes or int; got {key!r}")
        mac = self._mac.parts(b"record", str(scope) if isinstance(scope, int) else scope, method,
                              route, str(key) if isinstance(key, int) else key)
        # the first 128 bits of the HMAC name the record (as a BLAKE2b-128 digest names a
        # limiter's key: same prefix, same length); hashing the MAC again would add nothing
        return self._record_prefix + mac[:16].hex() + "}"

    def fingerprint(self, *parts: bytes | str) -> str:
        """HMAC-SHA256 (hex) of the request parts (method, path, query, body), length-prefixed."""
        return self._mac.parts(b"fingerprint", *parts).hex()

    def downstream_key(self, record_key: str, purpose: str = "") -> str:
        """The downstream key of a record (see :meth:`IdempotencyContext.downstream_key`)."""
        return "fr-" + self._mac.parts(b"downstream", record_key, purpose).hex()[:40]

    def _now(self) -> int:
        return 0 if self.clock is None else round(self.clock.time() * 1_000_000)

    # -- claim -----------------------------------------------------------------------------------
    def _claim_args(self, fingerprint: str) -> tuple[str, tuple[Any, ...]]:
        owner = _keys.token()
        return owner, (self._now(), fingerprint, owner, self._lease_us, self._ttl_us,
                       1 if self.reclaim_expired else 0)

    def _claimed(self, record_key: str, owner: str, raw: Any) -> Claim:
        if isinstance(raw, Fallback):
            if raw is not ALLOW:
                self.audit("backend_unavailable", record_key.rsplit(":", 1)[-1].rstrip("}"), 0,
                           level=logging.WARNING)
                if isinstance(raw.cause, BackendFull):
                    raise BackendFull(f"idempotency store {self.name!r}: {raw.cause}; nothing was"
                                      " executed") from raw.cause
                raise BackendUnavailable(
                    f"idempotency store {self.name!r}: backend unavailable and"
                    f" on_backend_error={self.on_backend_error!r}; nothing was executed"
                )
            claim = Claim(ClaimOutcome.EXECUTE, record_key, owner, 0, fallback="allow")
            self.audit("executed_unprotected", claim.key_hash, 0, level=logging.WARNING)
            return claim
        reply: ClaimReply = parse_claim(raw)
        response = None
        if reply.stored is not None:
            response = decode_response(reply.stored, cipher=self.cipher,
                                       associated_data=record_key.encode())
        claim = Claim(reply.outcome, record_key, owner, reply.fencing_token, reply.reclaimed,
                      reply.retry_after, response)
        if self._observed():
            self.audit(claim.outcome.value, claim.key_hash, claim.fencing_token,
                       reclaimed=claim.reclaimed)
        return claim

    def claim(self, record_key: str, fingerprint: str, *, principal: str | None = None,
              origination: str | None = None) -> Claim:
        """Claim ``record_key`` in one round trip; see the module docstring for the outcomes.

        ``principal`` and ``origination`` (client address) go into the audit record of a replay,
        conflict, mismatch or unknown outcome when an audit log is configured.
        Raises :class:`~fintech_resilience.BackendUnavailable` when the backend fails and
        ``on_backend_error`` is ``"deny"`` or ``"raise"``.
        """
        owner, args = self._claim_args(fingerprint)
        claim = self._claimed(record_key, owner,
                              self._guard.run("idempotency_claim", [record_key], args))
        if claim.outcome is not ClaimOutcome.EXECUTE:
            log = _audit.resolve(self.audit_log)
            if log is not None:
                log.record(_AUDITED[claim.outcome.value], **self._audit_fields(
                    claim, principal, origination))
        return claim

    async def aclaim(self, record_key: str, fingerprint: str, *, principal: str | None = None,
                     origination: str | None = None) -> Claim:
        """Async twin of :meth:`claim`."""
        owner, args = self._claim_args(fingerprint)
        claim = self._claimed(record_key, owner,
                              await self._guard.arun("idempotency_claim", [record_key], args))
        if claim.outcome is not ClaimOutcome.EXECUTE:
            log = _audit.resolve(self.audit_log)
            if log is not None:
                await log.arecord(_AUDITED[claim.outcome.value], **self._audit_fields(
                    claim, principal, origination))
        return claim

    def _audit_fields(self, claim: Claim, principal: str | None,
                      origination: str | None) -> dict[str, Any]:
        """The fields of an idempotency audit record: the key only as its hash, never a body."""
        return {"resource": f"{PATTERN}:{self.name}", "principal": principal,
                "origination": origination,
                "outcome": "success" if claim.outcome is ClaimOutcome.REPLAY else "failure",
                "details": {"key_hash": claim.key_hash, "fencing_token": claim.fencing_token}}

    # -- complete / release / renew ----------------------------------------------------------------
    def encode(self, claim: Claim, response: StoredResponse) -> bytes:
        """The stored form of ``response``: redacted, then encrypted.

        HTTP responses: header values and the body (by its content type; a compressed body is
        decoded, redacted and encoded again, or not stored when it cannot be read - see
        :mod:`fintech_resilience.idempotency.stored_redaction`). Function results and exceptions
        when they are JSON (the default serializer), so replays still deserialise. Other
        serialisations are stored as they are: encrypt them (``cipher=``) if they can carry card
        data.
        """
        if self.redactor is not None and response.kind == "http":
            response = redact_stored(response, self.redactor)
        elif self.redactor is not None and response.body:
            content_type = "application/json" if _is_json(response.body) else None
            if content_type is None:
                return encode_response(response, cipher=self.cipher,
                                       associated_data=claim.record_key.encode())
            body = self.redactor.redact_bytes(response.body, content_type)
            if body != response.body:
                response = StoredResponse(response.kind, response.status, response.headers, body,
                                          response.replayable, redacted=True)
        return encode_response(response, cipher=self.cipher,
                               associated_data=claim.record_key.encode())

    def _cas_result(self, op: str, claim: Claim, raw: Any) -> bool:
        if isinstance(raw, BackendUnavailable):
            self.audit(f"{op}_failed", claim.key_hash, claim.fencing_token, level=logging.ERROR,
                       error=str(raw))
            return False
        if isinstance(raw, Fallback):
            self.audit(f"{op}_failed", claim.key_hash, claim.fencing_token, level=logging.ERROR)
            return False
        result = parse_complete(raw)
        if result is CompleteReply.OK:
            if op != "renew" and self._observed():
                self.audit("completed" if op == "complete" else "released", claim.key_hash,
                           claim.fencing_token)
            return True
        claim.lease_lost = True
        self.audit(f"{op}_rejected", claim.key_hash, claim.fencing_token, level=logging.ERROR,
                   reason=result.value)
        return False

    def _complete_args(self, claim: Claim, response: StoredResponse) -> tuple[Any, ...]:
        return (self._now(), claim.owner, self.encode(claim, response), self._ttl_us)

    def complete(self, claim: Claim, response: StoredResponse) -> bool:
        """Store ``response`` if ``claim`` still owns a live lease (compare-and-set); False if the
        lease was lost (the record then reports "outcome unknown" or belongs to a newer claim).

        Never raises for a failing backend, whatever ``on_backend_error`` says: the handler has
        run, so its answer must reach the caller. The write (or, with ``wait_replicas``, the
        ``WAIT``) failing is audited as ``complete_failed`` and False is returned; the record
        may then be completed or still in progress - duplicates get the replay, or 409 until
        the lease expires and "outcome unknown" after it, never a second execution."""
        if claim.fallback:
            return False
        args = self._complete_args(claim, response)
        try:
            raw = (self._complete_and_wait(claim, args) if self.wait_replicas else
                   self._guard.run("idempotency_complete", [claim.record_key], args))
        except BackendUnavailable as exc:
            raw = exc
        return self._cas_result("complete", claim, raw)

    async def acomplete(self, claim: Claim, response: StoredResponse) -> bool:
        """Async twin of :meth:`complete` (with ``wait_replicas``, the write and ``WAIT`` run in a
        worker thread on one connection of the sync client)."""
        if claim.fallback:
            return False
        args = self._complete_args(claim, response)
        try:
            raw = (await asyncio.to_thread(self._complete_and_wait, claim, args)
                   if self.wait_replicas else
                   await self._guard.arun("idempotency_complete", [claim.record_key], args))
        except BackendUnavailable as exc:
            raw = exc
        return self._cas_result("complete", claim, raw)

    def release(self, claim: Claim) -> bool:
        """Free the key (the handler failed) if ``claim`` still owns a live lease.

        Like :meth:`complete`, never raises for a failing backend (the handler's own error or
        answer must reach the caller): audited as ``release_failed``, False returned, and the
        record stays in progress until its lease expires ("outcome unknown" after it)."""
        if claim.fallback:
            return False
        try:
            raw = self._guard.run("idempotency_release", [claim.record_key],
                                  (self._now(), claim.owner, 0))
        except BackendUnavailable as exc:
            raw = exc
        return self._cas_result("release", claim, raw)

    async def arelease(self, claim: Claim) -> bool:
        """Async twin of :meth:`release`."""
        if claim.fallback:
            return False
        try:
            raw = await self._guard.arun("idempotency_release", [claim.record_key],
                                         (self._now(), claim.owner, 0))
        except BackendUnavailable as exc:
            raw = exc
        return self._cas_result("release", claim, raw)

    def renew(self, claim: Claim) -> bool:
        """Extend the lease by ``lease`` seconds; False once it was lost."""
        if claim.fallback:
            return True
        return self._cas_result("renew", claim, self._guard.run(
            "idempotency_renew", [claim.record_key], (self._now(), claim.owner, self._lease_us)))

    async def arenew(self, claim: Claim) -> bool:
        """Async twin of :meth:`renew`."""
        if claim.fallback:
            return True
        return self._cas_result("renew", claim, await self._guard.arun(
            "idempotency_renew", [claim.record_key], (self._now(), claim.owner, self._lease_us)))

    def forget(self, record_key: str) -> bool:
        """Operator action: free a record whatever its state (e.g. after resolving an "outcome
        unknown" by hand). Its fencing counter is kept. True if there was something to free."""
        raw = self._guard.run("idempotency_release", [record_key], (self._now(), "", 1))
        ok = not isinstance(raw, Fallback) and parse_complete(raw) is CompleteReply.OK
        self.audit("forgotten", record_key.rsplit(":", 1)[-1].rstrip("}"), 0,
                   level=logging.WARNING)
        return ok

    def _complete_and_wait(self, claim: Claim, args: Sequence[Any]) -> Any:
        """Complete and ``WAIT`` in one pipeline on one connection (WAIT counts the replicas that
        acknowledged *this connection's* writes); in a Cluster, on the node owning the key."""
        raw, acked = _complete_and_wait(self.backend, claim.record_key, args, self.wait_replicas,
                                       self.wait_timeout)
        if acked < self.wait_replicas:
            self.audit("replication_timeout", claim.key_hash, claim.fencing_token,
                       level=logging.WARNING, acked=acked, wanted=self.wait_replicas)
        return raw

    # -- holding a claim while the handler runs ---------------------------------------------------
    def _context(self, claim: Claim) -> IdempotencyContext:
        return IdempotencyContext(claim, self)

    def holding(self, claim: Claim) -> _Holding:
        """``with store.holding(claim) as ctx:`` runs a block as the owner of ``claim``: sets
        :func:`current_idempotency` and renews the lease every ``lease / 3`` seconds (in a
        background thread; with ``async with``, as timer callbacks on the running loop)."""
        return _Holding(self, claim)

    #: the same object, named for ``async with`` (kept for symmetry with the other ``a*`` names)
    aholding = holding

    def _thread_renewer(self) -> _ThreadRenewer:
        if self._renewer is None:
            with self._renewer_lock:
                if self._renewer is None:
                    self._renewer = _ThreadRenewer(self)
        return self._renewer

    def _loop_renewer(self) -> _LoopRenewer:
        loop = asyncio.get_running_loop()
        renewer = self._loop_renewers.get(loop)
        if renewer is None:
            with self._renewer_lock:
                renewer = self._loop_renewers.get(loop)
                if renewer is None:
                    renewer = _LoopRenewer(self)
                    self._loop_renewers.set(loop, renewer)
        return renewer

    # -- telemetry and audit -----------------------------------------------------------------------
    @staticmethod
    def _observed() -> bool:
        """Whether an INFO outcome reaches anyone (telemetry, or the audit logger's handlers):
        the common outcomes skip building their record when it would not."""
        return telemetry.active() or audit_log.isEnabledFor(logging.INFO)

    def audit(self, outcome: str, key_hash: str, fencing_token: int, *,
              level: int = logging.INFO, **fields: Any) -> None:
        """One outcome: an OTel event + the ``resilience.decisions`` metric, and a structured log
        record on the ``fintech_resilience.audit`` logger (key hashed, no bodies)."""
        if telemetry.active():
            telemetry.emit_decision(PATTERN, self.name, outcome, {
                telemetry.Attr.KEY_HASH: key_hash,
                telemetry.Attr.FENCING_TOKEN: fencing_token,
            })
        if outcome in _AUDITED and _audit.resolve(self.audit_log) is not None:
            return  # claim()/aclaim() write it to the AuditLog
        if audit_log.isEnabledFor(level):
            record = {"event": f"idempotency.{outcome}", "pattern": PATTERN, "name": self.name,
                      "outcome": outcome, "key_hash": key_hash, "fencing_token": fencing_token,
                      "at": time.time(), **fields}
            audit_log.log(level, "idempotency %s %s key=%s fencing_token=%d", self.name,
                          outcome, key_hash, fencing_token, extra={"resilience": record})

    def __repr__(self) -> str:
        return (f"IdempotencyStore(name={self.name!r}, ttl={self.ttl}, lease={self.lease},"
                f" backend={self.backend!r})")


class _ThreadRenewer:
    """One daemon thread per store renews every running sync claim each ``lease / 3`` seconds
    (real time); it exits after a few idle seconds and restarts on demand."""

    _IDLE_EXIT = 5.0

    def __init__(self, store: IdempotencyStore) -> None:
        self.store = store
        self.interval = store.lease / 3
        self._due: dict[int, tuple[Claim, float]] = {}
        self._cond = threading.Condition()
        self._running = False

    def add(self, claim: Claim) -> None:
        with self._cond:
            self._due[id(claim)] = (claim, time.monotonic() + self.interval)
            self._cond.notify()
            if not self._running:
                self._running = True
                threading.Thread(target=self._loop, name="fr-idempotency-renewer",
                                 daemon=True).start()

    def remove(self, claim: Claim) -> None:
        with self._cond:
            self._due.pop(id(claim), None)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    now = time.monotonic()
                    if not self._due:
                        if not self._cond.wait(self._IDLE_EXIT) and not self._due:
                            self._running = False
                            return
                        continue
                    next_at = min(at for _, at in self._due.values())
                    if next_at <= now:
                        break
                    self._cond.wait(next_at - now)
                due = [c for c, at in self._due.values() if at <= now]
                for claim in due:
                    self._due[id(claim)] = (claim, now + self.interval)
            for claim in due:
                try:
                    ok = self.store.renew(claim)
                except BackendUnavailable:
                    continue  # the next tick tries again; the lease may still be alive
                if not ok:
                    self.remove(claim)


class _Holding:
    """The context of :meth:`IdempotencyStore.holding`, for ``with`` and ``async with``."""

    __slots__ = ("claim", "lease", "store", "token")

    def __init__(self, store: IdempotencyStore, claim: Claim) -> None:
        self.store = store
        self.claim = claim
        self.lease: _ThreadRenewer | _LoopRenewer | None = None

    def _enter(self) -> IdempotencyContext:
        ctx = self.store._context(self.claim)
        self.token = _CURRENT.set(ctx)
        return ctx

    def _renews(self) -> bool:
        return self.store.renew_leases and not self.claim.fallback

    def __enter__(self) -> IdempotencyContext:
        if self._renews():
            self.lease = self.store._thread_renewer()
            self.lease.add(self.claim)
        return self._enter()

    async def __aenter__(self) -> IdempotencyContext:
        if self._renews():
            self.lease = self.store._loop_renewer()
            self.lease.add(self.claim)
        return self._enter()

    def __exit__(self, *exc_info: object) -> None:
        if self.lease is not None:
            self.lease.remove(self.claim)
        _CURRENT.reset(self.token)

    async def __aexit__(self, *exc_info: object) -> None:
        self.__exit__()


class _LoopRenewer:
    """One per store and event loop: renews every running async claim of the store each
    ``lease / 3`` seconds, with one timer armed while claims run (so a fast handler costs two
    dict operations, no timer of its own). Renewals of one tick run concurrently in one task.
    It keeps no reference to its loop (the store finds it by a weak one), so a finished loop
    can be collected."""

    __slots__ = ("armed", "due", "interval", "store", "tasks")

    def __init__(self, store: IdempotencyStore) -> None:
        self.store = store
        self.interval = store.lease / 3
        self.due: dict[int, tuple[Claim, float]] = {}
        self.armed = False  # a _tick is scheduled (its handle is not kept: it refers to the loop)
        self.tasks: set[asyncio.Task[None]] = set()

    def add(self, claim: Claim) -> None:
        loop = asyncio.get_running_loop()
        self.due[id(claim)] = (claim, loop.time() + self.interval)
        if not self.armed:
            self.armed = True
            loop.call_later(self.interval, self._tick)

    def remove(self, claim: Claim) -> None:
        self.due.pop(id(claim), None)

    def _tick(self) -> None:
        self.armed = False
        if not self.due:
            return  # nothing runs: the next add() arms the timer again
        loop = asyncio.get_running_loop()
        now = loop.time()
        due = [claim for claim, at in self.due.values() if at <= now]
        for claim in due:
            self.due[id(claim)] = (claim, now + self.interval)
        if due:
            task = loop.create_task(self._renew(due))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        self.armed = True
        loop.call_at(min(at for _, at in self.due.values()), self._tick)

    async def _renew(self, claims: list[Claim]) -> None:
        await asyncio.gather(*(self._renew_one(claim) for claim in claims))

    async def _renew_one(self, claim: Claim) -> None:
        if id(claim) not in self.due:
            return  # finished meanwhile: its record is completed or released
        try:
            ok = await self.store.arenew(claim)
        except BackendUnavailable:
            return  # the next tick tries again; the lease may still be alive
        if not ok:
            self.remove(claim)


# -- the decorator ---------------------------------------------------------------------------------
def idempotent(store: IdempotencyStore, *, key: Callable[..., KeyArg],
               scope: Callable[..., KeyArg] | None = None, global_scope: bool = False,
               fingerprint: Callable[..., bytes | str] | None = None,
               codec: ResultCodec | None = None, serializer: Serializer | None = None,
               store_exceptions: Sequence[type[BaseException]] = (),
               route: str | None = None) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Run a sync or async function once per key; duplicates get the stored result.

    :param key: callable receiving the call's arguments, returning the idempotency key
        (e.g. ``lambda event: event["id"]``).
    :param scope: callable returning the principal the key belongs to (e.g. the account); keys of
        different principals never meet. Required unless ``global_scope=True``.
    :param fingerprint: callable returning what must be identical for a duplicate (e.g. the
        payload); a different value raises :class:`~fintech_resilience.IdempotencyKeyMismatch`.
        Default: the key alone identifies the call.
    :param codec: stores results and rebuilds them for duplicates (a
        :class:`~fintech_resilience.ResultCodec`); default
        :class:`~fintech_resilience.JsonCodec`, which keeps dataclasses, Pydantic models,
        tuples, Decimal, datetime, UUID, ... as their types. When the function is decorated the
        codec checks its return annotation: a type it cannot store raises
        :class:`~fintech_resilience.ConfigurationError` then, not after money moved.
    :param serializer: an object with ``dumps``/``loads`` only (no annotation check); prefer
        ``codec=``.
    :param store_exceptions: exceptions that are outcomes (a card decline): stored and re-raised
        to duplicates. Any other exception releases the key, so a retry runs again.
    :param route: names the operation in the record key (default: the function's qualified name).

    Duplicates raise :class:`~fintech_resilience.IdempotencyInProgress`,
    :class:`~fintech_resilience.IdempotencyKeyMismatch` or
    :class:`~fintech_resilience.IdempotencyOutcomeUnknown` as the claim decides. A result the
    codec still cannot store after the function ran is recorded as "completed, not replayable"
    (its type name only): duplicates raise
    :class:`~fintech_resilience.IdempotencyNotReplayable` until the record's TTL, and the
    function never runs twice for the key.
    """
    if scope is None and not global_scope:
        raise ConfigurationError(
            "idempotent() needs scope=lambda ...: <principal> so one principal's result is never"
            " returned to another; pass global_scope=True if keys are globally unique"
        )
    if not callable(key):
        raise ConfigurationError("key must be a callable receiving the call's arguments")
    if codec is not None and serializer is not None:
        raise ConfigurationError("pass codec= or serializer=, not both (serializer= is the older"
                                 " name for a codec without the annotation check)")
    chosen: Serializer = codec if codec is not None else (
        serializer if serializer is not None else JsonCodec())
    for method in ("dumps", "loads"):
        if not callable(getattr(chosen, method, None)):
            raise ConfigurationError(f"codec needs dumps(value) -> bytes and loads(bytes);"
                                     f" {chosen!r} has no {method}")
    stored_types = tuple(store_exceptions)
    scope_of: Callable[..., KeyArg] = scope if scope is not None else (lambda *_a, **_k: "*")

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        name = route or f"{fn.__module__}.{fn.__qualname__}"
        bind = getattr(chosen, "for_return", None)
        ser: Serializer = bind(return_annotation(fn)) if callable(bind) else chosen

        def prepare(args: Any, kwargs: Any) -> tuple[str, str, str | None]:
            who = scope_of(*args, **kwargs)
            record = store.record_key(key(*args, **kwargs), scope=who, method="CALL", route=name)
            fp = store.fingerprint(fingerprint(*args, **kwargs) if fingerprint else b"")
            return record, fp, None if scope is None else str(who)

        if inspect.iscoroutinefunction(fn):
            afn = cast(Callable[P, Awaitable[Any]], fn)

            @functools.wraps(fn)
            async def awrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                record, fp, who = prepare(args, kwargs)
                claim = await store.aclaim(record, fp, principal=who)
                if claim.outcome is not ClaimOutcome.EXECUTE:
                    return duplicate_outcome(claim.outcome, claim.retry_after, claim.response, ser,
                                         stored_types)
                async with store.aholding(claim):
                    try:
                        result = await afn(*args, **kwargs)
                    except stored_types as exc:
                        await store.acomplete(claim, exception_response(exc, ser))
                        raise
                    except BaseException:
                        await store.arelease(claim)
                        raise
                await store.acomplete(claim, result_response(result, ser))
                return result

            return cast(Callable[P, R], awrapper)

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            record, fp, who = prepare(args, kwargs)
            claim = store.claim(record, fp, principal=who)
            if claim.outcome is not ClaimOutcome.EXECUTE:
                return cast(R, duplicate_outcome(claim.outcome, claim.retry_after, claim.response,
                                                 ser, stored_types))
            with store.holding(claim):
                try:
                    result = fn(*args, **kwargs)
                except stored_types as exc:
                    store.complete(claim, exception_response(exc, ser))
                    raise
                except BaseException:
                    store.release(claim)
                    raise
            store.complete(claim, result_response(result, ser))
            return result

        return wrapper

    return decorate


def _complete_and_wait(backend: Backend, record_key: str, args: Sequence[Any], replicas: int,
                       timeout: float) -> tuple[Any, int]:
    """Run ``idempotency_complete`` then ``WAIT replicas timeout`` in one pipeline (one round trip,
    one connection) on the node that owns ``record_key``; return (reply, replicas that acked)."""
    import redis.exceptions as rex

    from ..backends.redis import RedisBackend, script

    if not isinstance(backend, RedisBackend):
        raise ConfigurationError("wait_replicas needs a RedisBackend")
    sha, source = script("idempotency_complete")
    backend.health.before_call()
    client = backend.client
    if backend.topology == "cluster":
        client = client.get_node_from_key(record_key).redis_connection
    wait_ms = max(1, round(timeout * 1000))
    try:
        for attempt in (0, 1):
            pipe = client.pipeline(transaction=False)
            if attempt == 0:
                pipe.evalsha(sha, 1, record_key, *args)
            else:
                pipe.eval(source, 1, record_key, *args)
            pipe.execute_command("WAIT", replicas, wait_ms)
            raw, acked = pipe.execute(raise_on_error=False)
            if isinstance(raw, rex.NoScriptError) and attempt == 0:
                continue
            break
        if isinstance(raw, BaseException):
            raise raw
        if isinstance(acked, BaseException):
            raise acked
    except (rex.RedisError, OSError) as exc:
        backend.health.failure()
        raise BackendUnavailable(f"Redis: {type(exc).__name__}: {exc}") from exc
    backend.health.success()
    return raw, int(acked)


def _is_json(data: bytes) -> bool:
    try:
        json.loads(data)
    except ValueError:
        return False
    return True
