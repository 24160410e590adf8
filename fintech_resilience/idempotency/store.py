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
import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, Final, ParamSpec, TypeVar

from ..audit import log as _audit
from ..backends.base import ALLOW, BackendGuard, Fallback, LocalReply, OnBackendError
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
from .context import Claim, IdempotencyContext
from .crypto import Cipher, Mac
from .record import (
    ClaimOutcome,
    ClaimReply,
    CompleteReply,
    StoredResponse,
    decode_response,
    encode_response,
    is_json,
    parse_claim,
    parse_complete,
)
from .renewal import Holding, LoopRenewer, ThreadRenewer
from .stored_redaction import redact_stored

__all__ = ["AUDIT_LOGGER", "IdempotencyStore"]

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
        records: duplicates on other workers are not caught). A claim made on the backend is
        completed, renewed and released there only, whatever the policy.
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
            if self.backend.shared:
                raise ConfigurationError(
                    "a shared backend needs secret=... (the same >= 16 random bytes on every"
                    " worker), e.g. secret=os.environ['IDEMPOTENCY_SECRET'].encode()"
                )
            secret = secrets.token_bytes(32)
        raw_secret = secret.encode() if isinstance(secret, str) else secret
        if not isinstance(raw_secret, bytes) or len(raw_secret) < 16:
            raise ConfigurationError("secret must be at least 16 bytes (os.urandom(32))")
        self._mac = Mac(raw_secret)
        if redactor is not None and not callable(getattr(redactor, "redact_bytes", None)):
            raise ConfigurationError("redactor needs a redact_bytes(data, content_type) method;"
                                     " use fintech_resilience.Redactor.pci()")
        if cipher is not None and not (callable(getattr(cipher, "encrypt", None))
                                       and callable(getattr(cipher, "decrypt", None))):
            raise ConfigurationError("cipher needs encrypt/decrypt; use crypto.AesGcmCipher")
        if type(wait_replicas) is not int or wait_replicas < 0:
            raise ConfigurationError(f"wait_replicas must be an int >= 0; got {wait_replicas!r}")
        if wait_replicas and not self.backend.replicated:
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
        if check_eviction:
            self.backend.warn_if_evicting("idempotency records")
        self._lease_us = round(self.lease * 1_000_000)
        self._ttl_us = round(self.ttl * 1_000_000)
        self._renewer: ThreadRenewer | None = None
        self._renewer_lock = threading.Lock()
        self._loop_renewers: PerLoop[LoopRenewer] = PerLoop()

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
        # the HMAC's first 128 bits name the record (as BLAKE2b-128 names a limiter's key)
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
                      reply.retry_after, response, local=type(raw) is LocalReply)
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
            content_type = "application/json" if is_json(response.body) else None
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
            raw = (self._complete_and_wait(claim, args) if self.wait_replicas and not claim.local
                   else self._guard.run_where(claim.local, "idempotency_complete",
                                              [claim.record_key], args))
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
                   if self.wait_replicas and not claim.local else
                   await self._guard.arun_where(claim.local, "idempotency_complete",
                                                [claim.record_key], args))
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
            raw = self._guard.run_where(claim.local, "idempotency_release", [claim.record_key],
                                        (self._now(), claim.owner, 0))
        except BackendUnavailable as exc:
            raw = exc
        return self._cas_result("release", claim, raw)

    async def arelease(self, claim: Claim) -> bool:
        """Async twin of :meth:`release`."""
        if claim.fallback:
            return False
        try:
            raw = await self._guard.arun_where(claim.local, "idempotency_release",
                                               [claim.record_key], (self._now(), claim.owner, 0))
        except BackendUnavailable as exc:
            raw = exc
        return self._cas_result("release", claim, raw)

    def renew(self, claim: Claim) -> bool:
        """Extend the lease by ``lease`` seconds; False once it was lost.

        Raises :class:`~fintech_resilience.BackendUnavailable` when the backend did not answer,
        whatever ``on_backend_error`` says: the lease may well be alive, so ask again (the
        renewers do, on their next tick) rather than give it up while the handler runs."""
        if claim.fallback:
            return True
        args = (self._now(), claim.owner, self._lease_us)
        with self._renewal(claim):
            raw = self._guard.run_where(claim.local, "idempotency_renew", [claim.record_key], args)
        return self._cas_result("renew", claim, raw)

    async def arenew(self, claim: Claim) -> bool:
        """Async twin of :meth:`renew`."""
        if claim.fallback:
            return True
        args = (self._now(), claim.owner, self._lease_us)
        with self._renewal(claim):
            raw = await self._guard.arun_where(claim.local, "idempotency_renew",
                                               [claim.record_key], args)
        return self._cas_result("renew", claim, raw)

    @contextlib.contextmanager
    def _renewal(self, claim: Claim) -> Iterator[None]:
        """A renewal the backend did not answer: audited, raised again (renew again)."""
        try:
            yield
        except BackendUnavailable as exc:
            self.audit("renew_failed", claim.key_hash, claim.fencing_token,
                       level=logging.WARNING, error=str(exc))
            raise BackendUnavailable(f"idempotency store {self.name!r}: the lease was not"
                                     f" renewed ({exc}); it may still be alive") from exc

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
        raw, acked = self.backend.run_replicated("idempotency_complete", [claim.record_key], args,
                                                 self.wait_replicas, self.wait_timeout)
        if acked < self.wait_replicas:
            self.audit("replication_timeout", claim.key_hash, claim.fencing_token,
                       level=logging.WARNING, acked=acked, wanted=self.wait_replicas)
        return raw

    # -- holding a claim while the handler runs ---------------------------------------------------
    def _context(self, claim: Claim) -> IdempotencyContext:
        return IdempotencyContext(claim, self)

    def holding(self, claim: Claim) -> Holding:
        """``with store.holding(claim) as ctx:`` runs a block as the owner of ``claim``: sets
        :func:`current_idempotency` and renews the lease every ``lease / 3`` seconds (in a
        background thread; with ``async with``, as timer callbacks on the running loop)."""
        return Holding(self, claim)

    #: the same object, named for ``async with`` (kept for symmetry with the other ``a*`` names)
    aholding = holding

    def _thread_renewer(self) -> ThreadRenewer:
        if self._renewer is None:
            with self._renewer_lock:
                if self._renewer is None:
                    self._renewer = ThreadRenewer(self)
        return self._renewer

    def _loop_renewer(self) -> LoopRenewer:
        loop = asyncio.get_running_loop()
        renewer = self._loop_renewers.get(loop)
        if renewer is None:
            with self._renewer_lock:
                renewer = self._loop_renewers.get(loop)
                if renewer is None:
                    renewer = LoopRenewer(self)
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
