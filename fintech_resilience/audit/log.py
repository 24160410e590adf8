"""An audit trail for decisions that affect money movement (PCI DSS requirement 10.2.2).

Every decision that changes whether money moves - a rate limit hit, a breaker transition, an
operator override, an idempotent replay, conflict or unknown outcome - becomes one
:class:`AuditRecord` with the six fields PCI DSS 10.2.2 asks for:

==================  ==================================================================
``principal``       user identification (the caller's principal; ``"system"`` when the
                    library decided on its own, e.g. a breaker tripping)
``event_type``      type of event (see :class:`EventType`)
``time``            date and time, UTC, ISO 8601 with microseconds and a ``Z``
``outcome``         ``"success"`` or ``"failure"``
``origination``     origination of the event (client IP from the edge, else host/pid)
``resource``        identity of the affected resource (``"<pattern>:<name>"``)
==================  ==================================================================

plus ``trace_id`` and ``span_id`` of the current OpenTelemetry span (empty without one) and
``details``. Every string passes through a :class:`~fintech_resilience.redaction.Redactor`
(:meth:`Redactor.pci` by default) before any sink sees it: no PAN or CVV reaches the trail.

Sinks: :class:`LoggingSink` (one JSON line per record on stdlib logging), :class:`RedisStreamSink`
(a bounded stream on any :class:`~fintech_resilience.backends.base.Backend`, optionally
hash-chained so that changed, inserted or deleted entries are detected by :func:`verify_stream`),
and :class:`CallbackSink`.

>>> log = AuditLog(sinks=[LoggingSink()])
>>> rec = log.record(EventType.LIMIT_HIT, principal="merchant:42", outcome="failure",
...                  resource="ratelimit:payments")
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import os
import socket
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final, Literal, Protocol, runtime_checkable

from opentelemetry import trace as _trace

from ..backends.base import Backend
from ..backends.resolve import resolve_backend
from ..core import storage_keys as _keys
from ..core.clock import SYSTEM_CLOCK, Clock
from ..core.redaction import Redactor
from ..core.resets import on_reset
from ..errors import BackendUnavailable, ConfigurationError
from .record import (
    DEFAULT_STREAM_TTL,
    MAX_FIELD_CHARS,
    AuditRecord,
    DetailValue,
    EventType,
    Outcome,
    audit_logger,
    chain_hash,
    stream_key,
)
from .verify import VerifyReport, verify_stream

__all__ = ["AuditLog", "CallbackSink", "EventType", "LoggingSink", "RedisStreamSink", "Sink",
           "edge_audits", "emit_soon", "get_default", "resolve", "set_default"]

@runtime_checkable
class Sink(Protocol):
    """Where audit records go. ``emit`` for sync callers, ``aemit`` for async ones."""

    def emit(self, record: AuditRecord) -> None:
        """Write one record; raise on failure."""
        ...

    async def aemit(self, record: AuditRecord) -> None:
        """Async twin of :meth:`emit`."""
        ...


class LoggingSink:
    """Writes each record as one JSON line to a stdlib logger (``fintech_resilience.audit``).

    The record is also attached to the log record as ``extra={"audit": {...}}`` for structured
    log handlers.
    """

    def __init__(self, logger: logging.Logger | str | None = None, *,
                 level: int = logging.INFO) -> None:
        if logger is None:
            logger = audit_logger
        self.logger = logging.getLogger(logger) if isinstance(logger, str) else logger
        self.level = level

    def emit(self, record: AuditRecord) -> None:
        """Log the record (one line of canonical JSON)."""
        self.logger.log(self.level, "%s", record.canonical().decode("ascii"),
                        extra={"audit": record.to_dict()})

    async def aemit(self, record: AuditRecord) -> None:
        """Same as :meth:`emit` (logging does not block on I/O the library controls)."""
        self.emit(record)

    def __repr__(self) -> str:
        return f"LoggingSink({self.logger.name!r})"


class CallbackSink:
    """Calls ``fn(record)`` for each record. An ``async def`` callback is awaited by
    :meth:`AuditLog.arecord`; sync :meth:`AuditLog.record` refuses it (ConfigurationError)."""

    def __init__(self, fn: Callable[[AuditRecord], Any]) -> None:
        if not callable(fn):
            raise ConfigurationError(f"CallbackSink needs a callable; got {fn!r}")
        self.fn = fn
        self.is_async = inspect.iscoroutinefunction(fn)

    def emit(self, record: AuditRecord) -> None:
        """Call the callback."""
        if self.is_async:
            raise ConfigurationError(
                "this CallbackSink has an async callback: record with 'await log.arecord(...)',"
                " or pass a plain function"
            )
        self.fn(record)

    async def aemit(self, record: AuditRecord) -> None:
        """Call the callback and await its result if it is awaitable."""
        result = self.fn(record)
        if inspect.isawaitable(result):
            await result

    def __repr__(self) -> str:
        return f"CallbackSink({self.fn!r})"


class RedisStreamSink:
    """Appends records to a bounded stream in one atomic operation per record.

    :param backend: any :class:`~fintech_resilience.backends.base.Backend` or a URL
        (``"redis://host:6379/0"``: Redis for a shared trail; memory for tests and development).
    :param stream: the stream's name; the key is ``<namespace>:audit:{<stream>}``.
    :param maxlen: at most this many entries are kept (oldest trimmed first).
    :param ttl: seconds the stream lives after the last append (default 400 days).
    :param chain: hash-chain the entries (each carries ``prev_hash`` and ``hash``).
    :param key: HMAC key for the chain. Without it the chain is plain SHA-256: it detects changes
        by anyone who cannot recompute hashes, but not by someone who rewrites the whole chain.
    :param max_conflicts: how often an append is retried when other writers appended first.
    :param clock: time for entry ids (tests); by default the backend's clock (Redis ``TIME``).

    The append is one round trip (EVALSHA of ``audit_append``): read the newest entry's hash,
    compare it with the one this sink chained over, XADD with ``MAXLEN``, refresh the TTL. When
    another process appended in between, nothing is written and the newest hash comes back; the
    sink recomputes and tries again. Asyncio callers share the backend's per-loop pipeline, so
    records emitted concurrently with a pattern's decision travel in the same round trip.
    """

    def __init__(self, backend: Backend | str, *, stream: str = "audit", maxlen: int = 1_000_000,
                 ttl: float = DEFAULT_STREAM_TTL, chain: bool = False, key: bytes | None = None,
                 namespace: str = _keys.DEFAULT_NAMESPACE, max_conflicts: int = 64,
                 clock: Clock | None = None) -> None:
        if not isinstance(backend, Backend | str):
            raise ConfigurationError(
                f"RedisStreamSink needs a Backend or a URL ('redis://host:6379/0'); got"
                f" {backend!r}"
            )
        if type(maxlen) is not int or maxlen < 1:
            raise ConfigurationError(f"maxlen must be a positive int; got {maxlen!r}")
        if not isinstance(ttl, int | float) or ttl <= 0:
            raise ConfigurationError(f"ttl must be a positive number of seconds; got {ttl!r}")
        if key is not None and (not isinstance(key, bytes) or len(key) < 16):
            raise ConfigurationError("key must be bytes of at least 16 bytes (e.g. os.urandom(32))")
        if key is not None and not chain:
            raise ConfigurationError("key is the hash chain's HMAC key: pass chain=True with it")
        self.backend = resolve_backend(backend)
        self.stream = _keys.validate_name(stream, "stream")
        self.namespace = _keys.validate_name(namespace, "namespace")
        self.key_name = stream_key(self.stream, namespace)
        self.maxlen = maxlen
        self.ttl_ms = max(1, round(ttl * 1000))
        self.chain = bool(chain)
        self._hmac_key = key
        self.max_conflicts = max_conflicts
        self._head = ""
        self.clock = clock

    def _args(self, record: AuditRecord) -> tuple[bytes, list[int | str | bytes]]:
        body = record.canonical()
        head = self._head
        digest = chain_hash(head, body, self._hmac_key) if self.chain else ""
        now = 0 if self.clock is None else round(self.clock.time() * 1_000_000)
        return body, [now, self.maxlen, self.ttl_ms, 1 if self.chain else 0, head, body, digest]

    def _settle(self, reply: Any, args: list[int | str | bytes]) -> bool:
        """True when appended; on a chain conflict adopt the stream's head and return False."""
        if int(reply[0]) == 1:
            if self.chain:
                self._head = str(args[6])
            return True
        head = reply[1]
        self._head = head.decode("ascii", "replace") if isinstance(head, bytes) else str(head)
        return False

    def _conflict_error(self) -> BackendUnavailable:
        return BackendUnavailable(
            f"audit stream {self.stream!r}: {self.max_conflicts} concurrent appends won the race;"
            " record not written"
        )

    def emit(self, record: AuditRecord) -> None:
        """Append the record (retrying over the new head when another writer came first)."""
        for _ in range(self.max_conflicts + 1):
            _, args = self._args(record)
            if self._settle(self.backend.run("audit_append", [self.key_name], args), args):
                return
        raise self._conflict_error()

    async def aemit(self, record: AuditRecord) -> None:
        """Async twin of :meth:`emit`."""
        for _ in range(self.max_conflicts + 1):
            _, args = self._args(record)
            if self._settle(await self.backend.arun("audit_append", [self.key_name], args), args):
                return
        raise self._conflict_error()

    def verify(self, *, expected_head: str | None = None) -> VerifyReport:
        """:func:`verify_stream` on this sink's stream, with its key."""
        return verify_stream(self.backend, stream=self.stream, key=self._hmac_key,
                             namespace=self.namespace,
                             expected_head=expected_head)

    def __repr__(self) -> str:
        return (f"RedisStreamSink({self.backend!r}, stream={self.stream!r}, maxlen={self.maxlen},"
                f" chain={self.chain})")


# -- the log -------------------------------------------------------------------------------------
_HOST: Final = socket.gethostname()


def _origination() -> str:
    return f"{_HOST}/{os.getpid()}"


def _bounded(text: str) -> str:
    return text if len(text) <= MAX_FIELD_CHARS else text[: MAX_FIELD_CHARS - 3] + "..."


class AuditLog:
    """Builds audit records (redacted, with trace context) and hands them to every sink.

    :param sinks: where records go, in order.
    :param redactor: applied to every string and detail (default :meth:`Redactor.pci`).
    :param origination: default origination (default ``"<hostname>/<pid>"``).
    :param clock: source of the record time (UTC); default the system clock.
    :param on_sink_error: ``"log"`` (default): a failing sink does not fail the caller; the record
        is written to the ``fintech_resilience.audit`` logger at ERROR level instead, so it is not
        lost, and the failure is logged once per transition. ``"raise"``: the error propagates
        (after every sink was tried).
    """

    def __init__(self, sinks: Sequence[Sink] = (), *, redactor: Redactor | None = None,
                 origination: str | None = None, clock: Clock | None = None,
                 on_sink_error: Literal["log", "raise"] = "log") -> None:
        if isinstance(sinks, Sink):
            sinks = [sinks]
        for sink in sinks:
            if not isinstance(sink, Sink):
                raise ConfigurationError(
                    f"{sink!r} is not an audit sink: use LoggingSink(), RedisStreamSink(backend)"
                    " or CallbackSink(fn)"
                )
        if on_sink_error not in ("log", "raise"):
            raise ConfigurationError(
                f"on_sink_error must be 'log' or 'raise'; got {on_sink_error!r}"
            )
        self.sinks: tuple[Sink, ...] = tuple(sinks)
        self.redactor = redactor if redactor is not None else Redactor.pci()
        self.origination = origination
        self.clock = clock if clock is not None else SYSTEM_CLOCK
        self.on_sink_error = on_sink_error
        self._failing: set[int] = set()
        self._lock = threading.Lock()

    def build(self, event_type: str, *, resource: str, principal: str | None = None,
              outcome: Outcome | bool = "success", origination: str | None = None,
              details: Mapping[str, DetailValue] | None = None) -> AuditRecord:
        """Make a record (redacted, timestamped, with trace ids) without emitting it."""
        if isinstance(outcome, bool):
            outcome = "success" if outcome else "failure"
        if outcome not in ("success", "failure"):
            raise ConfigurationError(f"outcome must be 'success' or 'failure'; got {outcome!r}")
        if not event_type or not resource:
            raise ConfigurationError("an audit record needs an event_type and a resource")
        redact = self.redactor.redact_text
        when = datetime.fromtimestamp(self.clock.time(), UTC)
        context = _trace.get_current_span().get_span_context()
        trace_id = format(context.trace_id, "032x") if context.is_valid else ""
        span_id = format(context.span_id, "016x") if context.is_valid else ""
        clean: dict[str, DetailValue] = {}
        if details:
            for name, value in self.redactor.redact_mapping(details).items():
                if isinstance(value, str):
                    value = _bounded(value)
                elif not (value is None or isinstance(value, bool | int | float)):
                    value = _bounded(redact(str(value)))
                clean[_bounded(redact(str(name)))] = value
        return AuditRecord(
            event_type=_bounded(redact(event_type)),
            principal=_bounded(redact(principal)) if principal else "system",
            time=when.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            outcome=outcome,
            origination=_bounded(redact(origination or self.origination or _origination())),
            resource=_bounded(redact(resource)),
            trace_id=trace_id,
            span_id=span_id,
            details=clean,
        )

    def record(self, event_type: str, *, resource: str, principal: str | None = None,
               outcome: Outcome | bool = "success", origination: str | None = None,
               details: Mapping[str, DetailValue] | None = None) -> AuditRecord:
        """Build a record and emit it to every sink; return it.

        ``resource`` names the affected resource as ``"<pattern>:<name>"`` (``"breaker:psp"``);
        ``principal`` is who acted (``None`` → ``"system"``); ``outcome`` is ``"success"`` when
        the decided action went ahead and ``"failure"`` when it was refused.
        """
        return self.emit(self.build(event_type, resource=resource, principal=principal,
                                    outcome=outcome, origination=origination, details=details))

    def emit(self, rec: AuditRecord) -> AuditRecord:
        """Hand a built record (see :meth:`build`) to every sink; return it."""
        failures = [self._settle(i, sink, rec, _delivered(sink.emit, rec))
                    for i, sink in enumerate(self.sinks)]
        return self._emitted(rec, failures)

    async def arecord(self, event_type: str, *, resource: str, principal: str | None = None,
                      outcome: Outcome | bool = "success", origination: str | None = None,
                      details: Mapping[str, DetailValue] | None = None) -> AuditRecord:
        """Async twin of :meth:`record`."""
        return await self.aemit(self.build(event_type, resource=resource, principal=principal,
                                           outcome=outcome, origination=origination,
                                           details=details))

    async def aemit(self, rec: AuditRecord) -> AuditRecord:
        """Async twin of :meth:`emit`."""
        failures = [self._settle(i, sink, rec, await _adelivered(sink.aemit, rec))
                    for i, sink in enumerate(self.sinks)]
        return self._emitted(rec, failures)

    def _settle(self, index: int, sink: Sink, rec: AuditRecord,
                error: Exception | None) -> Exception | None:
        """Note a sink's success or failure (logged once per transition); return the error."""
        if error is None:
            self._sink_ok(index, sink)
        else:
            self._sink_failed(index, sink, rec, error)
        return error

    def _emitted(self, rec: AuditRecord, failures: list[Exception | None]) -> AuditRecord:
        errors = [e for e in failures if e is not None]
        if errors and self.on_sink_error == "raise":
            raise errors[0]
        return rec

    def _sink_failed(self, index: int, sink: Sink, rec: AuditRecord, exc: BaseException) -> None:
        with self._lock:
            first = index not in self._failing
            self._failing.add(index)
        if first:
            audit_logger.warning("audit sink %r failed (%s); records go to this logger until it"
                                 " recovers", sink, exc)
        audit_logger.error("%s", rec.canonical().decode("ascii"), extra={"audit": rec.to_dict()})

    def _sink_ok(self, index: int, sink: Sink) -> None:
        if index in self._failing:
            with self._lock:
                self._failing.discard(index)
            audit_logger.warning("audit sink %r recovered", sink)

    def __repr__(self) -> str:
        return f"AuditLog(sinks={list(self.sinks)!r})"


_DEFAULT: list[AuditLog | None] = [None]

#: True while an HTTP edge decides a request and audits the refusal itself (it knows the client's
#: principal and address), so the pattern it calls does not write a second, anonymous record.
edge_audits: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "fintech_resilience.audit.edge", default=False)


def set_default(log: AuditLog | None) -> None:
    """Set the process-wide audit log patterns use when they were given none (``None`` clears)."""
    if log is not None and not isinstance(log, AuditLog):
        raise ConfigurationError(f"set_default needs an AuditLog or None; got {log!r}")
    _DEFAULT[0] = log


def _delivered(emit: Callable[[AuditRecord], object], rec: AuditRecord) -> Exception | None:
    """Call a sink; its error, if any (a failing sink must not stop the others). A
    ConfigurationError is the caller's mistake and propagates."""
    try:
        emit(rec)
    except ConfigurationError:
        raise
    except Exception as exc:
        return exc
    return None


async def _adelivered(aemit: Callable[[AuditRecord], Awaitable[object]],
                      rec: AuditRecord) -> Exception | None:
    """Async twin of :func:`_delivered`."""
    try:
        await aemit(rec)
    except ConfigurationError:
        raise
    except Exception as exc:
        return exc
    return None


@on_reset
def _forget_default() -> None:
    _DEFAULT[0] = None


def get_default() -> AuditLog | None:
    """The process-wide audit log, or None (then patterns audit nothing unless given a log)."""
    return _DEFAULT[0]


def resolve(own: AuditLog | None) -> AuditLog | None:
    """The log a pattern writes to: its own, else the process-wide default, else None."""
    return own if own is not None else _DEFAULT[0]


_background: set[asyncio.Task[AuditRecord]] = set()


def emit_soon(log: AuditLog, rec: AuditRecord) -> None:
    """Emit a built record from code shared by sync and async callers: at once (``emit``) outside
    an event loop; inside one, as a task on it (``aemit``), so async sinks work and the loop is not
    blocked. The record's time and trace ids are those of the moment it was built."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        log.emit(rec)
        return
    task = loop.create_task(log.aemit(rec))
    _background.add(task)
    task.add_done_callback(_background.discard)
