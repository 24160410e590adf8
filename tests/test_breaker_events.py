"""Circuit breaker events: one CallEvent per call (success, failure, ignored, rejected, slow),
transitions to listeners, and the refusal hook - on memory, Redis and Redis Cluster."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from test_breaker import Boom, attempt, boom, make, ok, trip

import fintech_resilience as fr
from fintech_resilience.backends.base import Backend
from fintech_resilience.breaker import CallEvent, CallKind
from fintech_resilience.core.outcomes import on_exceptions, on_status
from fintech_resilience.testing import ManualClock


class Declined(Exception):
    """A card decline: the PSP is healthy, it just said no."""


class Response:
    def __init__(self, status_code: int) -> None:
        self.status_code = status_code


def kinds(events: list[CallEvent]) -> list[str]:
    return [str(e.kind) for e in events]


def test_every_call_is_an_event_with_its_verdict_duration_and_slowness(
        backend: Backend, clock: ManualClock) -> None:
    events: list[CallEvent] = []
    breaker = make(backend, clock, on_call=events.append, slow_call_duration=2.0,
                   slow_call_rate=1.0, neutral=on_exceptions(Declined))

    def slow() -> str:
        clock.advance(3.0)
        return "late"

    def declined() -> None:
        clock.advance(0.5)
        raise Declined

    assert attempt(breaker) == "ran"
    assert attempt(breaker, boom) == "failed"
    assert attempt(breaker, slow) == "ran"
    with pytest.raises(Declined):
        breaker.call(declined)
    assert kinds(events) == ["success", "failure", "success", "ignored"]
    assert [(e.duration, e.slow) for e in events] == [(0.0, False), (0.0, False), (3.0, True),
                                                      (0.5, False)]
    assert events[0].result == "ok" and events[0].exception is None
    assert isinstance(events[1].exception, Boom) and events[2].result == "late"
    assert isinstance(events[3].exception, Declined)
    assert {e.name for e in events} == {"psp"}


def test_rejected_calls_are_events_too_and_go_to_the_refusal_hook(
        backend: Backend, clock: ManualClock) -> None:
    events: list[CallEvent] = []
    refusals: list[fr.Refusal] = []
    breaker = make(backend, clock, on_call=events.append, on_refusal=refusals.append)
    trip(breaker)
    failures = len(events)
    assert attempt(breaker) == "rejected"
    rejected = events[failures:]
    assert kinds(rejected) == ["rejected"]
    assert isinstance(rejected[0].exception, fr.CircuitOpen) and rejected[0].duration == 0.0
    (refusal,) = refusals
    assert (refusal.pattern, refusal.name, refusal.key) == ("breaker", "psp", None)
    assert refusal.error is rejected[0].exception
    assert refusal.retry_after == pytest.approx(10.0)
    assert refusal.error.state is fr.BreakerState.OPEN  # type: ignore[attr-defined]


def test_results_are_classified_for_the_event_as_for_the_window(
        backend: Backend, clock: ManualClock) -> None:
    events: list[CallEvent] = []
    breaker = make(backend, clock, on_call=events.append,
                   failure=on_status(range(500, 600)), neutral=on_status(402))
    for status in (200, 503, 402):
        breaker.call(Response, status)
    assert kinds(events) == ["success", "failure", "ignored"]
    assert [e.result.status_code for e in events] == [200, 503, 402]


async def test_async_calls_and_with_blocks_are_events(backend: Backend,
                                                      clock: ManualClock) -> None:
    events: list[CallEvent] = []
    breaker = make(backend, clock, on_call=events.append)

    async def aok() -> str:
        return "ok"

    assert await breaker.acall(aok) == "ok"
    with pytest.raises(Boom):
        async with breaker:
            raise Boom
    with breaker:
        pass
    assert kinds(events) == ["success", "failure", "success"]


def test_the_memory_fast_path_still_reports_every_success(clock: ManualClock) -> None:
    """On a MemoryBackend a plain success in CLOSED is counted in place; with on_call set it is
    still an event."""
    events: list[CallEvent] = []
    breaker = fr.CircuitBreaker("psp", backend=fr.MemoryBackend(), on_call=events.append)
    protected = breaker(ok)
    for _ in range(5):
        protected()
    assert kinds(events) == ["success"] * 5


def test_listeners_and_call_events_are_separate_streams(backend: Backend,
                                                       clock: ManualClock) -> None:
    transitions: list[fr.Transition] = []
    events: list[CallEvent] = []
    breaker = make(backend, clock, listeners=[transitions.append], on_call=events.append)
    trip(breaker)
    clock.advance(10.0)
    assert attempt(breaker) == "ran"  # the probe
    assert attempt(breaker) == "ran"  # second probe: closes
    assert [(t.previous.name, t.state.name) for t in transitions] == [
        ("CLOSED", "OPEN"), ("OPEN", "HALF_OPEN"), ("HALF_OPEN", "CLOSED")]
    assert kinds(events) == ["failure"] * 4 + ["success", "success"]


def test_hooks_that_raise_are_logged_and_the_call_goes_on(
        backend: Backend, clock: ManualClock, caplog: pytest.LogCaptureFixture) -> None:
    def broken(_event: Any) -> None:
        raise RuntimeError("hook bug")

    breaker = make(backend, clock, on_call=broken, on_refusal=broken, listeners=[broken])
    with caplog.at_level(logging.ERROR, "fintech_resilience"):
        assert attempt(breaker) == "ran"
        trip(breaker)
        assert attempt(breaker) == "rejected"
    messages = {r.getMessage() for r in caplog.records}
    assert messages == {f"circuit breaker 'psp': the {option} hook {broken.__qualname__} failed"
                        for option in ("on_call", "on_refusal", "listener")}
    assert breaker.known_state is fr.BreakerState.OPEN


def test_hooks_must_be_callable() -> None:
    for option in ("on_call", "on_refusal"):
        with pytest.raises(fr.ConfigurationError, match=f"{option} must be a callable"):
            fr.CircuitBreaker("psp", **{option: "print"})


def test_call_kinds_read_as_their_values() -> None:
    assert [str(k) for k in CallKind] == ["success", "failure", "ignored", "rejected"]
