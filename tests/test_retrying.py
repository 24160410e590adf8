"""fr.retrying: retrying a block (stamina's retry_context, tenacity's Retrying iterator), sync
with ``for`` and async with ``async for``, under the decorator's own decisions."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import fintech_resilience as fr
from fintech_resilience.backends.memory import MemoryBackend
from fintech_resilience.core import telemetry
from fintech_resilience.policy.deadline import time_remaining
from fintech_resilience.retries.attempt import SPAN_NAME
from fintech_resilience.testing import ManualClock, test_mode


class Busy(Exception):
    """A failure carrying its own retry hint, as a PSP's 'try again in N s' error does."""

    def __init__(self, retry_after: float) -> None:
        super().__init__("busy")
        self.retry_after = retry_after


class Script:
    """Raises the scripted exceptions in order, then returns ``result``."""

    def __init__(self, *failures: BaseException, result: Any = "ok") -> None:
        self.failures = list(failures)
        self.result = result
        self.calls = 0

    def __call__(self) -> Any:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return self.result


async def run_block(mode: str, work: Callable[[fr.Attempt], Any], **options: Any) -> list[Any]:
    """Run ``work(attempt)`` in a retrying block, sync or async; the attempts seen."""
    seen: list[Any] = []
    if mode == "sync":
        for attempt in fr.retrying(**options):
            with attempt:
                seen.append(attempt)
                work(attempt)
    else:
        async for attempt in fr.retrying(**options):
            with attempt:
                seen.append(attempt)
                await asyncio.sleep(0)
                work(attempt)
    return seen


def slept(clock: ManualClock) -> float:
    """Seconds the manual clock was advanced (the fixture starts it at 1_700_000_000)."""
    return clock.monotonic() - 1_700_000_000.0


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_a_block_is_retried_until_it_succeeds(mode: str, clock: ManualClock) -> None:
    work = Script(ValueError(1), ValueError(2))
    seen = await run_block(mode, lambda a: work(), on=ValueError, attempts=3, wait=0.5,
                           clock=clock)
    assert [a.number for a in seen] == [1, 2, 3] and work.calls == 3
    assert slept(clock) == 1.0  # slept 0.5 s twice, on the manual clock


async def test_when_attempts_run_out_the_last_exception_is_raised(mode: str,
                                                                 clock: ManualClock) -> None:
    work = Script(*(ValueError(n) for n in range(1, 9)))
    with pytest.raises(ValueError, match=r"^3$"):
        await run_block(mode, lambda a: work(), on=ValueError, attempts=3, wait=0, clock=clock)
    assert work.calls == 3


async def test_an_exception_on_does_not_match_ends_the_loop_at_once(mode: str,
                                                                   clock: ManualClock) -> None:
    work = Script(KeyError("k"))
    with pytest.raises(KeyError):
        await run_block(mode, lambda a: work(), on=ValueError, clock=clock)
    assert work.calls == 1


async def test_every_attempt_carries_the_same_idempotency_key_and_the_time_left(
        mode: str, clock: ManualClock) -> None:
    work = Script(TimeoutError(), TimeoutError())
    lefts: list[float | None] = []

    def step(attempt: fr.Attempt) -> None:
        assert fr.current_attempt() is not None
        assert fr.current_attempt().number == attempt.number  # type: ignore[union-attr]
        lefts.append(time_remaining())
        work()

    seen = await run_block(mode, step, on=TimeoutError, attempts=3, wait=2.0, deadline=10,
                           idempotent=False, idempotency_key="auto", clock=clock)
    keys = {a.idempotency_key for a in seen}
    assert len(keys) == 1 and None not in keys
    assert lefts == [10.0, 8.0, 6.0]
    assert fr.current_attempt() is None  # outside the block again


def test_a_second_loop_gets_a_new_key(clock: ManualClock) -> None:
    block = fr.retrying(idempotency_key="auto", clock=clock)
    first = [a.idempotency_key for a in block]
    second = [a.idempotency_key for a in block]
    assert len(first) == len(second) == 1 and first != second


async def test_a_non_idempotent_block_without_a_key_runs_once_unless_never_sent(
        mode: str, clock: ManualClock) -> None:
    unknown = Script(TimeoutError())
    with pytest.raises(TimeoutError):
        await run_block(mode, lambda a: unknown(), on=(TimeoutError, ConnectionError),
                        idempotent=False, wait=0, clock=clock)
    assert unknown.calls == 1
    refused = Script(ConnectionRefusedError())
    await run_block(mode, lambda a: refused(), on=(TimeoutError, ConnectionError),
                    idempotent=False, wait=0, clock=clock)
    assert refused.calls == 2  # the request never left: safe to send again
    keyed = Script(TimeoutError())
    await run_block(mode, lambda a: keyed(), on=TimeoutError, idempotent=False,
                    idempotency_key=lambda: "order-42", wait=0, clock=clock)
    assert keyed.calls == 2


async def test_retry_after_on_the_exception_is_honoured_and_capped(mode: str,
                                                                 clock: ManualClock) -> None:
    work = Script(Busy(2.5), Busy(500.0))
    await run_block(mode, lambda a: work(), on=Busy, attempts=3, wait=0, deadline=None,
                    max_retry_after=60, clock=clock)
    assert slept(clock) == 62.5


async def test_the_deadline_ends_the_loop_instead_of_sleeping_past_it(
        mode: str, clock: ManualClock) -> None:
    work = Script(*(ValueError(n) for n in range(1, 9)))
    with pytest.raises(ValueError, match=r"^2$"):
        await run_block(mode, lambda a: work(), on=ValueError, attempts=5, wait=4.0,
                        deadline=6.0, clock=clock)
    assert work.calls == 2 and slept(clock) == 4.0


async def test_the_retry_budget_must_grant_every_retry(mode: str, clock: ManualClock) -> None:
    budget = fr.RetryBudget("psp", backend=MemoryBackend(), ratio=0.1, min_per_second=1,
                            clock=clock)
    work = Script(*(ValueError(n) for n in range(1, 9)))
    with pytest.raises(fr.RetryBudgetExhausted):
        await run_block(mode, lambda a: work(), on=ValueError, attempts=5, wait=0,
                        budget=budget, clock=clock)
    assert work.calls == 2  # one retry granted (the floor), the next refused


async def test_results_go_through_on_result(mode: str, clock: ManualClock) -> None:
    statuses = iter([503, 503, 503])

    def step(attempt: Any) -> None:
        attempt.set_result(next(statuses))

    with pytest.raises(fr.RetryError) as info:
        await run_block(mode, step, on_result=lambda status: status >= 500, attempts=3,
                        wait=0, clock=clock)
    assert info.value.last == 503 and info.value.attempts == 3


async def test_hooks_and_the_log_line_name_the_enclosing_function(
        mode: str, clock: ManualClock, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[str] = []
    work = Script(ValueError(1))
    with caplog.at_level(logging.WARNING, "fintech_resilience"):
        await run_block(mode, lambda a: work(), on=ValueError, wait=0, clock=clock,
                        before=lambda d: seen.append(d.name))
    name = f"{__name__}.run_block"
    assert seen == [name, name]
    assert [r.getMessage() for r in caplog.records] == [
        f"retry {name}: attempt 1 failed (ValueError); retrying in 0.000s"]


def test_a_name_can_be_given_and_a_retry_policy_can_run_a_block(clock: ManualClock) -> None:
    policy = fr.retry(on=ValueError, wait=0, clock=clock)
    block = policy.retrying(name="capture")
    assert block.name == "capture" and block.policy is policy
    assert fr.retrying(name="capture", clock=clock).name == "capture"
    assert policy.retrying().name == (  # the enclosing function, by default
        f"{__name__}.test_a_name_can_be_given_and_a_retry_policy_can_run_a_block")
    work = Script(ValueError(1))
    for attempt in block:
        with attempt:
            work()
    assert work.calls == 2


def test_a_block_that_does_not_enter_its_attempt_succeeds_once(clock: ManualClock) -> None:
    assert [a.number for a in fr.retrying(clock=clock)] == [1]


async def test_cancellation_is_not_caught_nor_retried(clock: ManualClock) -> None:
    calls = 0

    async def block() -> None:
        nonlocal calls
        async for attempt in fr.retrying(on=Exception, clock=clock):
            with attempt:
                calls += 1
                raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await block()
    assert calls == 1 and fr.current_attempt() is None


def test_test_mode_turns_the_waits_off(clock: ManualClock) -> None:
    work = Script(ValueError(1), ValueError(2))
    with test_mode():
        for attempt in fr.retrying(on=ValueError, wait=30.0, clock=clock):
            with attempt:
                work()
    assert work.calls == 3 and slept(clock) == 0.0


def test_key_argument_makes_no_sense_for_a_block() -> None:
    with pytest.raises(fr.ConfigurationError, match="use idempotency_key='auto'"):
        fr.retrying(key_argument="idempotency_key")


def test_one_span_per_attempt(monkeypatch: pytest.MonkeyPatch, clock: ManualClock) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(telemetry, "active", lambda: True)
    monkeypatch.setattr(telemetry, "tracer", provider.get_tracer("test"))
    work = Script(ValueError(1))
    for attempt in fr.retrying(on=ValueError, wait=0.5, clock=clock, name="capture"):
        with attempt:
            work()
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == [SPAN_NAME, SPAN_NAME]
    attrs = [dict(s.attributes or {}) for s in spans]
    assert [(a["resilience.name"], a["resilience.retry.attempt"], a["resilience.outcome"])
            for a in attrs] == [("capture", 1, "failure"), ("capture", 2, "success")]
    assert attrs[0]["error.type"] == "ValueError" and "error.type" not in attrs[1]
    assert [s.status.status_code.name for s in spans] == ["ERROR", "UNSET"]
