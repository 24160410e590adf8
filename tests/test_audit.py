"""AuditLog: PCI DSS 10.2.2 fields, redaction, sinks, hash chaining and tamper detection."""

from __future__ import annotations

import io
import json
import logging
import re
import threading
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from fintech_resilience import MemoryBackend, RedisBackend
from fintech_resilience.audit import (
    CHAIN_BREAK,
    HASH_MISMATCH,
    HEAD_MISMATCH,
    AuditLog,
    AuditRecord,
    CallbackSink,
    EventType,
    LoggingSink,
    RedisStreamSink,
    chain_hash,
    get_default,
    set_default,
    stream_key,
    verify_cli,
    verify_stream,
)
from fintech_resilience.backends.base import Backend
from fintech_resilience.errors import BackendUnavailable, ConfigurationError
from fintech_resilience.testing import ManualClock

PCI_10_2_2 = ("principal", "event_type", "time", "outcome", "origination", "resource")
KEY = b"0123456789abcdef0123456789abcdef"
VISA = "4111111111111111"


def _span(trace_id: int = 0x0AF7651916CD43DD8448EB211C80319C, span_id: int = 0xB7AD6B7169203331):
    ctx = SpanContext(trace_id=trace_id, span_id=span_id, is_remote=False,
                      trace_flags=TraceFlags(TraceFlags.SAMPLED))
    return trace.use_span(NonRecordingSpan(ctx))


def _all_event_records(log: AuditLog) -> list[AuditRecord]:
    return [
        log.record(EventType.LIMIT_HIT, resource="ratelimit:payments", principal="merchant:42",
                   outcome="failure", origination="203.0.113.7", details={"policy": "10/second"}),
        log.record(EventType.BREAKER_TRANSITION, resource="breaker:psp-acme",
                   details={"from": "closed", "to": "open"}),
        log.record(EventType.OPERATOR_OVERRIDE, resource="breaker:psp-acme", principal="ops:ana",
                   details={"action": "force_open"}),
        log.record(EventType.IDEMPOTENT_REPLAY, resource="idempotency:payments",
                   principal="merchant:42", outcome=True),
        log.record(EventType.IDEMPOTENCY_CONFLICT, resource="idempotency:payments",
                   principal="merchant:42", outcome=False),
        log.record(EventType.IDEMPOTENCY_OUTCOME_UNKNOWN, resource="idempotency:payments",
                   principal="merchant:42", outcome="failure"),
    ]


# -- records ---------------------------------------------------------------------------------------
def test_every_record_has_the_six_pci_fields_and_trace_ids() -> None:
    seen: list[AuditRecord] = []
    log = AuditLog([CallbackSink(seen.append)], clock=ManualClock(1_700_000_000.25))
    with _span():
        records = _all_event_records(log)
    assert seen == records
    for rec in records:
        data = rec.to_dict()
        for name in PCI_10_2_2:
            assert isinstance(data[name], str), name
            assert data[name], name
        assert rec.time == "2023-11-14T22:13:20.250000Z"
        assert rec.outcome in ("success", "failure")
        assert rec.trace_id == "0af7651916cd43dd8448eb211c80319c"
        assert rec.span_id == "b7ad6b7169203331"
    assert records[0].origination == "203.0.113.7"
    assert records[1].principal == "system"
    assert re.fullmatch(r".+/\d+", records[1].origination)  # host/pid by default
    assert [r.outcome for r in records[3:]] == ["success", "failure", "failure"]


def test_without_a_span_trace_ids_are_empty() -> None:
    rec = AuditLog().record(EventType.LIMIT_HIT, resource="ratelimit:x")
    assert (rec.trace_id, rec.span_id) == ("", "")


def test_every_string_is_redacted_before_any_sink_sees_it() -> None:
    seen: list[AuditRecord] = []
    log = AuditLog([CallbackSink(seen.append)])
    log.record(f"evt {VISA}", resource=f"ratelimit:{VISA}", principal=f"card {VISA}",
               origination=f"from {VISA}", details={"cvv": "123", "note": f"pan {VISA}",
                                                   "raw": int(VISA), VISA: 1})
    text = seen[0].canonical().decode()
    assert VISA not in text
    assert '"123"' not in text
    assert seen[0].details["cvv"] == "[REDACTED]"


def test_long_values_are_bounded() -> None:
    rec = AuditLog().record("x", resource="r" * 10_000, details={"d": "v" * 10_000})
    assert len(rec.resource) == 512
    assert rec.resource.endswith("...")
    assert len(str(rec.details["d"])) == 512


def test_bad_outcome_and_missing_fields_are_refused() -> None:
    log = AuditLog()
    with pytest.raises(ConfigurationError):
        log.record("x", resource="r", outcome="ok")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        log.record("", resource="r")
    with pytest.raises(ConfigurationError):
        AuditLog([object()])  # type: ignore[list-item]


def test_canonical_json_round_trips() -> None:
    rec = AuditLog().record("x", resource="r", details={"b": 1, "a": None})
    assert AuditRecord.from_json(rec.canonical()) == rec
    assert rec.canonical() == json.dumps(json.loads(rec.canonical()), sort_keys=True,
                                         separators=(",", ":")).encode()


# -- sinks -----------------------------------------------------------------------------------------
def test_logging_sink_writes_one_json_line(caplog: pytest.LogCaptureFixture) -> None:
    log = AuditLog([LoggingSink()])
    with caplog.at_level(logging.INFO, logger="fintech_resilience.audit"):
        rec = log.record(EventType.LIMIT_HIT, resource="ratelimit:p", principal="m")
    [line] = [r for r in caplog.records if r.name == "fintech_resilience.audit"]
    assert "\n" not in line.getMessage()
    assert AuditRecord.from_json(line.getMessage()) == rec
    assert line.audit["resource"] == "ratelimit:p"  # type: ignore[attr-defined]


async def test_async_callback_sink_is_awaited_by_arecord() -> None:
    seen: list[AuditRecord] = []

    async def collect(rec: AuditRecord) -> None:
        seen.append(rec)

    log = AuditLog([CallbackSink(collect), LoggingSink()])
    rec = await log.arecord(EventType.IDEMPOTENT_REPLAY, resource="idempotency:p")
    assert seen == [rec]
    with pytest.raises(ConfigurationError, match="arecord"):
        log.record(EventType.IDEMPOTENT_REPLAY, resource="idempotency:p")


def test_a_failing_sink_does_not_fail_the_caller_and_the_record_is_not_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[AuditRecord] = []

    def broken(rec: AuditRecord) -> None:
        raise OSError("disk full")

    log = AuditLog([CallbackSink(broken), CallbackSink(calls.append)])
    with caplog.at_level(logging.WARNING, logger="fintech_resilience.audit"):
        rec1 = log.record("a", resource="r")
        log.record("b", resource="r")
    assert len(calls) == 2  # the healthy sink still got both
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(warnings) == 1  # once per transition
    assert AuditRecord.from_json(errors[0].getMessage()) == rec1
    strict = AuditLog([CallbackSink(broken)], on_sink_error="raise")
    with pytest.raises(OSError, match="disk full"):
        strict.record("a", resource="r")


def test_default_log_can_be_set_and_cleared() -> None:
    log = AuditLog()
    assert get_default() is None
    set_default(log)
    try:
        assert get_default() is log
    finally:
        set_default(None)
    assert get_default() is None


# -- the stream sink on every backend ------------------------------------------------------------
def _client(backend: Backend) -> Any:
    assert isinstance(backend, RedisBackend)
    return backend.client


def test_stream_sink_appends_bounded_chained_entries(backend: Backend) -> None:
    sink = RedisStreamSink(backend, stream="audit", maxlen=5, chain=True, key=KEY)
    log = AuditLog([sink])
    records = [log.record(EventType.LIMIT_HIT, resource="ratelimit:p", details={"n": i})
               for i in range(8)]
    flat = backend.run("audit_read", [sink.key_name], [0, "-", 100])
    assert len(flat) == 4 * 5  # trimmed to maxlen
    assert [AuditRecord.from_json(flat[i + 1]) for i in range(0, 20, 4)] == records[3:]
    for i in range(4, 20, 4):
        assert flat[i + 2] == flat[i - 1]  # prev_hash is the previous entry's hash
    report = sink.verify()
    assert report.ok
    assert report.checked == 5
    assert not report.from_genesis
    assert report.head == flat[-1].decode()
    if isinstance(backend, RedisBackend):
        ttl = _client(backend).pttl(sink.key_name)
        assert 399 * 86_400_000 < ttl <= 400 * 86_400_000


async def test_stream_sink_async_and_unchained(backend: Backend) -> None:
    sink = RedisStreamSink(backend, stream="plain")
    log = AuditLog([sink])
    for i in range(3):
        await log.arecord(EventType.BREAKER_TRANSITION, resource="breaker:b", details={"n": i})
    flat = await backend.arun("audit_read", [sink.key_name], [0, "-", 10])
    assert [f for i, f in enumerate(flat) if i % 4 == 3] == [b"", b"", b""]  # no hash fields
    assert [json.loads(flat[i])["details"]["n"] for i in range(1, 12, 4)] == [0, 1, 2]


def test_verify_detects_a_changed_record(backend: Backend) -> None:
    sink = RedisStreamSink(backend, stream="audit", chain=True, key=KEY)
    log = AuditLog([sink])
    for i in range(4):
        log.record(EventType.OPERATOR_OVERRIDE, resource="breaker:psp", principal="ops:ana",
                   details={"n": i})
    assert sink.verify().ok
    entries = _read_all(backend, sink.key_name)
    target = entries[2][0]
    forged = entries[2][1].replace(b"ops:ana", b"ops:bob")
    _rewrite(backend, sink.key_name, {target: {b"record": forged}})
    report = verify_stream(backend, stream="audit", key=KEY)
    assert [(b.id, b.reason) for b in report.broken] == [(target.decode(), HASH_MISMATCH)]


def test_verify_detects_a_deleted_entry_and_a_recomputed_hash_without_the_key(
    backend: Backend,
) -> None:
    sink = RedisStreamSink(backend, stream="audit", chain=True, key=KEY)
    log = AuditLog([sink])
    for i in range(5):
        log.record(EventType.LIMIT_HIT, resource="ratelimit:p", details={"n": i})
    entries = _read_all(backend, sink.key_name)
    # an attacker without the key forges entry 1 and recomputes its hash with plain SHA-256
    forged = entries[1][1].replace(b'"n":1', b'"n":9')
    _rewrite(backend, sink.key_name, {
        entries[1][0]: {b"record": forged, b"hash": chain_hash(entries[1][2].decode(),
                                                                forged).encode()},
        entries[3][0]: None,  # and deletes entry 3
    })
    report = verify_stream(backend, stream="audit", key=KEY)
    assert [(b.id, b.reason) for b in report.broken] == [
        (entries[1][0].decode(), HASH_MISMATCH),
        (entries[2][0].decode(), CHAIN_BREAK),  # its prev_hash no longer matches entry 1
        (entries[4][0].decode(), CHAIN_BREAK),  # the entry after the deleted one
    ]


def test_truncating_the_newest_entries_is_caught_with_the_expected_head(backend: Backend) -> None:
    sink = RedisStreamSink(backend, stream="audit", chain=True, key=KEY)
    log = AuditLog([sink])
    for i in range(3):
        log.record("e", resource="r", details={"n": i})
    head = sink.verify().head
    entries = _read_all(backend, sink.key_name)
    _rewrite(backend, sink.key_name, {entries[-1][0]: None})
    assert sink.verify().ok  # a shorter chain is still a chain ...
    report = sink.verify(expected_head=head)
    assert [b.reason for b in report.broken] == [HEAD_MISMATCH]


def test_concurrent_writers_keep_one_intact_chain(backend: Backend) -> None:
    # Each thread has its own sink (its own cached head), as separate processes would.
    def write(worker: int) -> None:
        log = AuditLog([RedisStreamSink(backend, stream="shared", chain=True, key=KEY)],
                       on_sink_error="raise")
        for i in range(15):
            log.record("e", resource="r", details={"worker": worker, "n": i})

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report = verify_stream(backend, stream="shared", key=KEY)
    assert report.ok
    assert report.checked == 60
    assert report.from_genesis


async def test_memory_and_redis_give_identical_replies(redis_url: str) -> None:
    red = RedisBackend.from_url(redis_url, timeout=2.0)
    mem = MemoryBackend()
    clock = ManualClock(1_700_000_000.0)
    key = stream_key("diff")
    try:
        for chained in (1, 0, 1, 1):
            for _ in range(3):
                now = round(clock.time() * 1_000_000)
                clock.advance(0.0004)  # sub-millisecond steps: sequence numbers count up
                flat = mem.run("audit_read", [key], [now, "-", 100])
                head = flat[-1] if flat and chained else b""
                for expected in (head, b"wrong"):
                    args = [now, 4, 60_000, chained, expected, b'{"a":1}', b"h" + head[:8]]
                    assert mem.run("audit_append", [key], args) == red.run(
                        "audit_append", [key], args)
        now = round(clock.time() * 1_000_000)
        assert mem.run("audit_read", [key], [now, "-", 100]) == red.run(
            "audit_read", [key], [now, "-", 100])
        assert mem.run("audit_read", [key], [now, "1700000000001-0", 2]) == await red.arun(
            "audit_read", [key], [now, "1700000000001-0", 2])
    finally:
        await red.aclose()


def test_stream_sink_configuration_is_validated() -> None:
    mem = MemoryBackend()
    for kwargs in ({"maxlen": 0}, {"ttl": 0}, {"chain": True, "key": b"short"},
                   {"key": KEY}, {"stream": "has space"}):
        with pytest.raises(ConfigurationError):
            RedisStreamSink(mem, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        RedisStreamSink(6379)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):  # URLs are accepted, and checked at once
        RedisStreamSink("redis://x:notaport/0")


def test_a_dead_redis_sink_falls_back_to_the_logger(caplog: pytest.LogCaptureFixture) -> None:
    dead = RedisBackend.from_url("redis://127.0.0.1:1/0", timeout=0.2)
    log = AuditLog([RedisStreamSink(dead, chain=True)])
    with caplog.at_level(logging.ERROR, logger="fintech_resilience.audit"):
        rec = log.record(EventType.LIMIT_HIT, resource="ratelimit:p")
    assert AuditRecord.from_json(caplog.records[-1].getMessage()) == rec
    with pytest.raises(BackendUnavailable):
        AuditLog([RedisStreamSink(dead)], on_sink_error="raise").record("e", resource="r")


# -- the CLI hook ----------------------------------------------------------------------------------
def test_verify_cli_exit_codes(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    red = RedisBackend.from_url(redis_url, timeout=2.0)
    try:
        log = AuditLog([RedisStreamSink(red, stream="trail", chain=True, key=KEY)])
        for i in range(3):
            log.record("e", resource="r", details={"n": i})
        monkeypatch.setenv("FR_TEST_AUDIT_KEY", KEY.hex())
        out = io.StringIO()
        argv = ["--redis", redis_url, "--stream", "trail", "--key-env", "FR_TEST_AUDIT_KEY"]
        assert verify_cli(argv, out=out) == 0
        assert "3 entries checked from genesis, chain intact" in out.getvalue()
        entries = _read_all(red, stream_key("trail"))
        _rewrite(red, stream_key("trail"), {entries[0][0]: {b"record": entries[0][1] + b" "}})
        out = io.StringIO()
        assert verify_cli([*argv, "--json"], out=out) == 1
        report = json.loads(out.getvalue())
        assert report["ok"] is False
        assert report["broken"][0]["id"] == entries[0][0].decode()
        monkeypatch.delenv("FR_TEST_AUDIT_KEY")
        assert verify_cli(argv, out=io.StringIO()) == 1  # without the key nothing verifies
    finally:
        red.close()
    assert verify_cli(["--stream", "x"], out=io.StringIO()) == 2  # --redis is required
    assert verify_cli(["--redis", "redis://127.0.0.1:1/0"], out=io.StringIO()) == 2


# -- helpers: read and tamper with a stream behind the library's back ---------------------------
def _read_all(backend: Backend, key: str) -> list[tuple[bytes, bytes, bytes, bytes]]:
    flat = backend.run("audit_read", [key], [0, "-", 10_000])
    return [tuple(flat[i:i + 4]) for i in range(0, len(flat), 4)]  # type: ignore[misc]


def _rewrite(backend: Backend, key: str, changes: dict[bytes, dict[bytes, bytes] | None]) -> None:
    """Replace fields of entries (or delete entries with None), keeping every entry id."""
    if isinstance(backend, MemoryBackend):
        stream = backend.store.get(key, 0)
        for entry in list(stream):
            entry_id = b"%d-%d" % (entry[0], entry[1])
            if entry_id in changes:
                change = changes[entry_id]
                if change is None:
                    stream.remove(entry)
                else:
                    entry[2].update(change)
        return
    client = _client(backend)
    entries = client.xrange(key)
    ttl = client.pttl(key)
    client.delete(key)
    for entry_id, fields in entries:
        if entry_id in changes and changes[entry_id] is None:
            continue
        fields = {**fields, **(changes.get(entry_id) or {})}
        client.xadd(key, fields, id=entry_id)
    client.pexpire(key, ttl)
