"""Property tests: the breaker against a simple reference model, and memory against Redis."""

from __future__ import annotations

import contextlib
import uuid
from collections import deque
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from fintech_resilience.backends.base import Backend
from fintech_resilience.backends.memory import MemoryBackend
from fintech_resilience.breaker.circuit import BreakerState, CircuitBreaker, CountWindow, TimeWindow
from fintech_resilience.breaker.state import Settings
from fintech_resilience.core.outcomes import on_exceptions
from fintech_resilience.errors import CircuitOpen
from fintech_resilience.testing import ManualClock

S = BreakerState
SIZE, MIN_CALLS, RATE, SLOW_RATE, SLOW = 5, 3, 0.5, 0.5, 1.0
BREAK, MULT, MAX_BREAK, PROBES = 10.0, 2.0, 25.0, 2


class Boom(Exception):
    pass


class Declined(Exception):
    pass


class Model:
    """The breaker's rules written as plainly as possible (one process, count window)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.state = S.CLOSED
        self.override: S | None = None
        self.window: deque[tuple[bool, bool]] = deque(maxlen=SIZE)
        self.until = 0.0
        self.trips = 0
        self.probes: list[tuple[bool, bool]] = []

    def effective(self) -> S:
        return self.override or self.state

    def _open(self) -> None:
        self.trips += 1
        self.until = self.now + min(BREAK * MULT ** (self.trips - 1), MAX_BREAK)
        self.state = S.OPEN
        self.window.clear()
        self.probes = []

    def _close(self) -> None:
        self.trips = 0
        self.state = S.CLOSED
        self.window.clear()
        self.probes = []

    def call(self, kind: str, slow: bool) -> str:
        if self.override is S.FORCED_OPEN:
            return "rejected"
        if self.override is None and self.state is S.OPEN:
            if self.now < self.until:
                return "rejected"
            self.state = S.HALF_OPEN
            self.probes = []
        if slow:
            self.now += SLOW
        if kind == "neutral" or self.override is S.DISABLED:
            return "ran"
        outcome = (kind == "failure", slow)
        if self.override is None and self.state is S.HALF_OPEN:
            self.probes.append(outcome)
            fails = sum(f for f, _ in self.probes)
            slows = sum(s for _, s in self.probes)
            if fails / PROBES >= RATE or slows / PROBES >= SLOW_RATE:
                self._open()
            elif len(self.probes) >= PROBES:
                self._close()
            return "ran"
        self.window.append(outcome)
        n = len(self.window)
        fails = sum(f for f, _ in self.window)
        slows = sum(s for _, s in self.window)
        if self.override is None and n >= MIN_CALLS and (fails / n >= RATE
                                                         or slows / n >= SLOW_RATE):
            self._open()
        return "ran"


class BreakerMachine(RuleBasedStateMachine):
    @initialize()
    def start(self) -> None:
        self.clock = ManualClock(1_700_000_000.0)
        self.model = Model()
        self.breaker = CircuitBreaker(
            "model", backend=MemoryBackend(), clock=self.clock, window=CountWindow(SIZE),
            minimum_calls=MIN_CALLS, failure_rate=RATE, slow_call_rate=SLOW_RATE,
            slow_call_duration=SLOW, break_duration=BREAK, break_duration_multiplier=MULT,
            max_break_duration=MAX_BREAK, half_open_calls=PROBES, refresh_interval=0,
            failure=on_exceptions(Boom), neutral=on_exceptions(Declined))

    @rule(kind=st.sampled_from(["success", "failure", "neutral"]), slow=st.booleans())
    def call(self, kind: str, slow: bool) -> None:
        def dependency() -> None:
            if slow:
                self.clock.advance(SLOW)
            if kind == "failure":
                raise Boom
            if kind == "neutral":
                raise Declined

        try:
            self.breaker.call(dependency)
            got = "ran"
        except (Boom, Declined):
            got = "ran"
        except CircuitOpen:
            got = "rejected"
        assert got == self.model.call(kind, slow)

    @rule(seconds=st.sampled_from([0.5, 1.0, 5.0, 10.0, 20.0, 25.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.model.now += seconds

    @rule(command=st.sampled_from(["force_open", "disable", "metrics_only", "reset"]))
    def operator(self, command: str) -> None:
        getattr(self.breaker, command)()
        m = self.model
        if command == "reset":
            m.override = None
            m._close()
        else:
            m.override = {"force_open": S.FORCED_OPEN, "disable": S.DISABLED,
                          "metrics_only": S.METRICS_ONLY}[command]

    @invariant()
    def same_state(self) -> None:
        if hasattr(self, "breaker") and self.breaker.known_state is not None:
            assert self.breaker.known_state is self.model.effective()

    @invariant()
    def same_window(self) -> None:
        # the shared counts, however each call was recorded (in place or by the general op)
        if not hasattr(self, "breaker") or self.model.effective() not in (S.CLOSED,
                                                                           S.METRICS_ONLY):
            return
        view = self.breaker.refresh()
        window = self.model.window
        assert (view.calls, view.failures, view.slow_calls) == (
            len(window), sum(f for f, _ in window), sum(s for _, s in window))


BreakerMachine.TestCase.settings = settings(max_examples=120, stateful_step_count=40,
                                            deadline=None)
test_breaker_matches_the_reference_model = BreakerMachine.TestCase


_ops = st.lists(st.tuples(
    st.sampled_from(["acquire", "record", "record", "record", "control"]),
    st.sampled_from([0, 1, 1000, 300_000, 1_000_000, 2_700_000, 11_000_000]),
    st.integers(0, 4), st.integers(0, 2), st.booleans()), min_size=1, max_size=50)


@pytest.mark.parametrize("window", [CountWindow(4), TimeWindow(3), TimeWindow(2.5, buckets=5)])
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_ops)
def test_memory_and_redis_scripts_return_identical_replies(
        backend_pair: tuple[Backend, Backend], window: Any, ops: list[Any]) -> None:
    _, red = backend_pair
    mem = MemoryBackend()
    key = [f"fr:cb:{{diff-{uuid.uuid4().hex}}}"]  # a fresh breaker for every example
    cfg = Settings.build(window=window, minimum_calls=2, failure_rate=0.5, slow_call_rate=0.5,
                         slow_call_duration=1.0, break_duration=2.5,
                         break_duration_multiplier=1.5, max_break_duration=6.0,
                         half_open_calls=2, probe_lease=0.5, refresh_interval=1.0)
    now = 1_700_000_000_000_000
    gen, tokens = 0, ["t0"]
    for i, (op, dt, a, b, c) in enumerate(ops):
        now += dt
        if op == "acquire":
            tokens.append(f"t{i}")
            name, args = "breaker_acquire", (now, tokens[-1], *cfg.acquire_tail())
        elif op == "record":
            token = tokens[a % len(tokens)] if c else ""
            name, args = "breaker_record", (now, gen - (a == 4), token, b, int(c),
                                            *cfg.record_tail())
        else:
            name, args = "breaker_control", (now, a, cfg.ttl_ms)
        expected = mem.run(name, key, args)
        assert red.run(name, key, args) == expected, (name, args)
        gen = expected[1]


_calls = st.lists(st.tuples(st.sampled_from(["success"] * 6 + ["failure"]),
                            st.sampled_from([False] * 5 + [True])), min_size=1, max_size=80)


@pytest.mark.parametrize("slow_calls", [True, False])
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(calls=_calls)
def test_memory_breaker_counts_like_the_redis_one(
        backend_pair: tuple[Backend, Backend], slow_calls: bool,
        calls: list[tuple[str, bool]]) -> None:
    # The memory default counts plain successes in place, without the general operation; the
    # Redis breaker always runs breaker_record. After every call both see the same window.
    mem, red = backend_pair
    clocks = [ManualClock(1_700_000_000.0) for _ in range(2)]
    name = f"diff-{uuid.uuid4().hex[:12]}"
    breakers = [CircuitBreaker(name, backend=b, clock=c, window=CountWindow(SIZE),
                               minimum_calls=MIN_CALLS, failure_rate=RATE,
                               slow_call_rate=SLOW_RATE,
                               slow_call_duration=SLOW if slow_calls else None,
                               break_duration=BREAK) for b, c in zip((mem, red), clocks, strict=True)]
    for kind, slow in calls:
        views = []
        for breaker, clock in zip(breakers, clocks, strict=True):
            def dependency(clock: ManualClock = clock, kind: str = kind,
                           slow: bool = slow) -> None:
                if slow:
                    clock.advance(SLOW)
                if kind == "failure":
                    raise Boom

            with contextlib.suppress(Boom, CircuitOpen):
                breaker.call(dependency)
            views.append(breaker.refresh())
        assert views[0][:2] == views[1][:2] and views[0][5:] == views[1][5:], views
        if views[0].state is S.OPEN:
            for clock in clocks:
                clock.advance(BREAK)
    assert breakers[0]._quick is (None if slow_calls else breakers[0]._closed_success)
