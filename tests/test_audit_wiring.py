"""The audit trail as the patterns and edges write it: which decisions, once each, with what; the
async paths use ``arecord``; nothing is written without an AuditLog."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from fintech_resilience import audit
from fintech_resilience.audit import AuditLog, AuditRecord, CallbackSink, EventType
from fintech_resilience.backends.memory import MemoryBackend
from fintech_resilience.breaker.circuit import CircuitBreaker
from fintech_resilience.edges.asgi.ratelimit import RateLimitMiddleware
from fintech_resilience.edges.wsgi.ratelimit import RateLimitMiddleware as WsgiRateLimitMiddleware
from fintech_resilience.idempotency import IdempotencyStore
from fintech_resilience.ratelimit.limiter import RateLimiter
from fintech_resilience.retries.budget import RetryBudget
from fintech_resilience.testing import ManualClock


@pytest.fixture
def default_log() -> Iterator[list[AuditRecord]]:
    seen: list[AuditRecord] = []
    audit.set_default(AuditLog([CallbackSink(seen.append)]))
    yield seen
    audit.set_default(None)


def async_log() -> tuple[AuditLog, list[AuditRecord]]:
    """A log whose only sink is async: sync ``record`` refuses it, so it proves ``arecord``."""
    seen: list[AuditRecord] = []

    async def sink(rec: AuditRecord) -> None:
        seen.append(rec)

    return AuditLog([CallbackSink(sink)]), seen


def test_a_limiter_audits_its_refusals_only(default_log: list[AuditRecord]) -> None:
    limiter = RateLimiter("1/second", name="cards", clock=ManualClock(1_700_000_000.0))
    limiter.acquire("merchant:42")
    limiter.acquire("merchant:42")
    shadow = RateLimiter("1/second", name="shadowed", shadow=True)
    shadow.acquire("k")
    shadow.acquire("k")
    assert [(r.event_type, r.resource, r.outcome, dict(r.details)) for r in default_log] == [
        (EventType.LIMIT_HIT, "ratelimit:cards", "failure", {"policy": "1/second"})]
    assert "merchant:42" not in default_log[0].canonical().decode()


def test_a_limiter_with_its_own_log(default_log: list[AuditRecord]) -> None:
    own: list[AuditRecord] = []
    limiter = RateLimiter("1/minute", name="own", backend=MemoryBackend(),
                          audit=AuditLog([CallbackSink(own.append)]))
    limiter.acquire("k")
    limiter.acquire("k")
    assert [(r.event_type, r.resource) for r in own] == [(EventType.LIMIT_HIT, "ratelimit:own")]
    assert default_log == []  # its own log, not the process-wide one


def test_nothing_is_written_without_a_log() -> None:
    assert audit.get_default() is None
    limiter = RateLimiter("1/second", name="quiet")
    limiter.acquire("k")
    assert not limiter.acquire("k").allowed  # and nothing to write to: no error either
    CircuitBreaker("quiet", backend=MemoryBackend()).force_open()


def test_an_edge_writes_one_record_with_the_client(default_log: list[AuditRecord]) -> None:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    edge = WsgiRateLimitMiddleware(app, limiter=RateLimiter("1/minute", name="api"))
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/pay", "REMOTE_ADDR": "198.51.100.9",
               "fintech_resilience.principal": "merchant:7"}
    statuses: list[str] = []
    for _ in range(2):
        list(edge(dict(environ), lambda status, headers, exc=None: statuses.append(status)))
    assert statuses[1].startswith("429")
    [rec] = default_log  # the limiter left the record to the edge
    assert (rec.principal, rec.origination, rec.resource) == ("merchant:7", "198.51.100.9",
                                                              "ratelimit:api")
    assert dict(rec.details) == {"policy": "1/minute", "status": 429}


def test_an_asgi_edge_uses_its_own_log_and_arecord() -> None:
    log, seen = async_log()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    edge = RateLimitMiddleware(app, limiter=RateLimiter("1/minute", name="api"), audit=log)

    async def run() -> list[int]:
        out: list[int] = []

        async def send(message: Any) -> None:
            if message["type"] == "http.response.start":
                out.append(message["status"])

        async def receive() -> Any:
            return {"type": "http.request"}

        for _ in range(2):
            await edge({"type": "http", "method": "GET", "path": "/", "headers": [],
                        "client": ("203.0.113.1", 1)}, receive, send)
        return out

    assert asyncio.run(run()) == [200, 429]
    [rec] = seen
    assert (rec.principal, rec.origination) == ("anonymous", "203.0.113.1")


def test_breaker_transitions_and_overrides(default_log: list[AuditRecord]) -> None:
    clock = ManualClock(1_700_000_000.0)
    breaker = CircuitBreaker("psp", backend=MemoryBackend(), minimum_calls=1, clock=clock)
    with pytest.raises(ConnectionError):
        breaker.call(_fail)
    breaker.reset(actor="ops:bob")
    assert [(r.event_type, r.principal, dict(r.details)) for r in default_log] == [
        (EventType.BREAKER_TRANSITION, "system", {"from": "CLOSED", "to": "OPEN"}),
        (EventType.BREAKER_TRANSITION, "system", {"from": "OPEN", "to": "CLOSED"}),
        (EventType.OPERATOR_OVERRIDE, "ops:bob", {"action": "reset", "state": "CLOSED"}),
    ]


def _fail() -> None:
    raise ConnectionError("down")


async def test_async_operator_overrides_use_arecord() -> None:
    log, seen = async_log()
    breaker = CircuitBreaker("psp-async", backend=MemoryBackend(), audit=log)
    await breaker.adisable(actor="ops:carol")
    await asyncio.sleep(0)  # the transition's record is written by a task on this loop
    assert sorted((r.event_type, r.principal) for r in seen) == [
        (EventType.BREAKER_TRANSITION, "system"), (EventType.OPERATOR_OVERRIDE, "ops:carol")]


async def test_an_async_limiter_refusal_goes_to_an_async_sink() -> None:
    log, seen = async_log()
    audit.set_default(log)
    try:
        limiter = RateLimiter("1/minute", name="async-cards")
        await limiter.aacquire("k")
        assert not (await limiter.aacquire("k")).allowed
        await asyncio.sleep(0)
    finally:
        audit.set_default(None)
    assert [r.event_type for r in seen] == [EventType.LIMIT_HIT]


async def test_budget_exhaustion_is_audited_sync_and_async() -> None:
    log, seen = async_log()
    clock = ManualClock(1_700_000_000.0)
    budget = RetryBudget("psp", backend=MemoryBackend(), ratio=0.1, min_per_second=1.0,
                         clock=clock, audit=log)
    assert await budget.awithdraw() is True
    assert await budget.awithdraw() is False
    assert [(r.event_type, r.resource, r.outcome) for r in seen] == [
        (EventType.RETRY_BUDGET_EXHAUSTED, "retry_budget:psp", "failure")]


async def test_idempotency_outcomes_go_to_the_log_hashed() -> None:
    log, seen = async_log()
    store = IdempotencyStore(MemoryBackend(), name="pay", audit=log)
    record = store.record_key("order-1", scope="merchant:1")
    first = await store.aclaim(record, store.fingerprint("a"), principal="merchant:1")
    assert seen == []  # executing is not audited
    assert (await store.aclaim(record, store.fingerprint("a"))).outcome.value == "in_progress"
    assert (await store.aclaim(record, store.fingerprint("b"))).outcome.value == "mismatch"
    assert [r.event_type for r in seen] == [EventType.IDEMPOTENCY_CONFLICT,
                                            EventType.IDEMPOTENCY_MISMATCH]
    assert all(dict(r.details)["key_hash"] == first.key_hash for r in seen)
    assert not any("order-1" in r.canonical().decode() for r in seen)
