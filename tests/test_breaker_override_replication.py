"""An operator's override outlives a failover: the command returns once the replicas hold it.

``force_open()`` (and ``disable``, ``metrics_only``, ``reset``) write the override and then
``WAIT`` for every replica the primary has, at most ``OVERRIDE_WAIT`` seconds, on one connection.
Before, the command returned as soon as the primary had it: a primary that died in the next
milliseconds took the override with it, and every process followed the promoted replica's
CLOSED breaker - charges resumed against the PSP the operator had just cut off. A real primary
and replica; the replica's state is read the way an operator reads it (``status``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
from conftest import Replicated

from fintech_resilience import CircuitBreaker, RedisBackend
from fintech_resilience.audit import AuditLog, CallbackSink
from fintech_resilience.breaker import BreakerState
from fintech_resilience.breaker.controls import OVERRIDE_WAIT
from fintech_resilience.inspection.redis import RedisOps, status

pytestmark = pytest.mark.slow


def replica_states(pair: Replicated) -> dict[str, str]:
    ops = RedisOps(pair.replica.url)
    try:
        return {row["name"]: row["state"] for row in status(ops, "fr", 10)["breakers"]}
    finally:
        ops.backend.close()


def audited(records: list[Any]) -> list[dict[str, Any]]:
    return [r.details for r in records if r.event_type == "operator.override"]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_an_override_returns_once_the_replica_acknowledged_it(
        replicated: Replicated, mode: str) -> None:
    records: list[Any] = []
    breaker = CircuitBreaker("psp", backend=RedisBackend.from_url(replicated.primary.url),
                             audit=AuditLog([CallbackSink(records.append)]))
    started = time.monotonic()
    if mode == "sync":
        state = breaker.force_open(actor="oncall")
    else:
        state = asyncio.run(breaker.aforce_open(actor="oncall"))
    took = time.monotonic() - started
    assert state is BreakerState.FORCED_OPEN
    assert audited(records) == [{"action": "force_open", "state": "FORCED_OPEN",
                                 "replicas": 1, "acknowledged": 1}]
    assert took < OVERRIDE_WAIT  # acknowledged, not timed out
    assert replica_states(replicated) == {"psp": "FORCED_OPEN"}
    breaker.backend.close()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_an_override_a_paused_replica_did_not_acknowledge_is_reported(
        replicated: Replicated, mode: str, caplog: pytest.LogCaptureFixture) -> None:
    records: list[Any] = []
    breaker = CircuitBreaker("psp", backend=RedisBackend.from_url(replicated.primary.url),
                             audit=AuditLog([CallbackSink(records.append)]))
    replicated.replica.pause()
    try:
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="fintech_resilience"):
            if mode == "sync":
                state = breaker.force_open(actor="oncall")
            else:
                state = asyncio.run(breaker.aforce_open(actor="oncall"))
        took = time.monotonic() - started
    finally:
        replicated.replica.resume()
    # set on the primary (every process sees it), and the operator is told it is not safe yet
    assert state is BreakerState.FORCED_OPEN
    assert took >= OVERRIDE_WAIT
    assert audited(records) == [{"action": "force_open", "state": "FORCED_OPEN",
                                 "replicas": 1, "acknowledged": 0}]
    warnings = [r.getMessage() for r in caplog.records if "replicas acknowledged" in r.getMessage()]
    assert warnings == [f"breaker 'psp': force_open is set on the primary, but 0 of its 1"
                        f" replicas acknowledged it within {OVERRIDE_WAIT:.1f} s; a failover"
                        f" before they catch up would lose it"]
    breaker.backend.close()
