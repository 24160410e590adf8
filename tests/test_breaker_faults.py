"""Redis faults: killed, paused, flushed, failed over. The policy holds, nothing blocks, state
converges after recovery."""

from __future__ import annotations

import time
from typing import Any

import pytest
import servers

from fintech_resilience.backends.redis import RedisBackend
from fintech_resilience.breaker.circuit import BreakerState, CircuitBreaker, CountWindow
from fintech_resilience.errors import CircuitOpen
from fintech_resilience.testing import ManualClock

TIMEOUT = 0.2
SETTINGS: dict[str, Any] = {"minimum_calls": 4, "window": CountWindow(10),
                            "break_duration": 10.0, "half_open_calls": 1}


class Boom(Exception):
    pass


def attempt(breaker: CircuitBreaker, fail: bool = False) -> tuple[str, float]:
    """Outcome and wall-clock seconds the attempt took."""
    start = time.perf_counter()

    def dependency() -> None:
        if fail:
            raise Boom

    try:
        breaker.call(dependency)
        outcome = "ran"
    except Boom:
        outcome = "failed"
    except CircuitOpen:
        outcome = "rejected"
    return outcome, time.perf_counter() - start


def breaker_on(url: str, clock: ManualClock, policy: str = "local") -> CircuitBreaker:
    backend = RedisBackend.from_url(url, timeout=TIMEOUT, cooldown=0.0)
    return CircuitBreaker("psp", backend=backend, clock=clock, on_backend_error=policy,  # type: ignore[arg-type]
                          **SETTINGS)


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["kill", "pause"])
def test_local_policy_keeps_a_per_process_breaker_and_converges_after_recovery(
        fresh_redis: servers.RedisServer, clock: ManualClock, fault: str) -> None:
    breaker = breaker_on(fresh_redis.url, clock)
    other = breaker_on(fresh_redis.url, clock)
    assert attempt(breaker)[0] == "ran"
    getattr(fresh_redis, fault)()
    try:
        outcomes = [attempt(breaker, fail=True) for _ in range(6)]
        assert max(d for _, d in outcomes) < TIMEOUT * 5  # nobody blocks past the timeout
        # the per-process breaker goes on from the window it knew (1 call, a success) and trips
        # on the failures it sees: 4 calls, 3 failures
        assert [o for o, _ in outcomes] == ["failed"] * 3 + ["rejected"] * 3
        assert breaker.known_state is BreakerState.OPEN
    finally:
        if fault == "pause":
            fresh_redis.resume()
        else:
            fresh_redis.restart()
    # the shared state never saw the outage: after the local break, both processes agree
    clock.advance(10)
    assert attempt(breaker)[0] == "ran"
    assert breaker.known_state is BreakerState.CLOSED
    assert other.state is BreakerState.CLOSED
    breaker.backend.close()
    other.backend.close()


@pytest.mark.slow
@pytest.mark.parametrize(("policy", "expected"), [("allow", "ran"), ("deny", "rejected")])
def test_allow_and_deny_policies_hold_while_redis_is_down(
        fresh_redis: servers.RedisServer, clock: ManualClock, policy: str,
        expected: str) -> None:
    breaker = breaker_on(fresh_redis.url, clock, policy)
    assert attempt(breaker)[0] == "ran"  # learns CLOSED
    fresh_redis.kill()
    outcomes = [attempt(breaker) for _ in range(5)]
    assert max(d for _, d in outcomes) < TIMEOUT * 5
    # "deny": the first call had already been admitted on the cached CLOSED state; its record
    # fails, and from then on the process asks first and is refused
    first = "ran" if policy == "deny" else expected
    assert [o for o, _ in outcomes] == [first] + [expected] * 4
    fresh_redis.restart()
    assert attempt(breaker)[0] == "ran"
    assert breaker.state is BreakerState.CLOSED
    breaker.backend.close()


@pytest.mark.slow
def test_flushed_redis_forgets_the_trip_and_every_process_converges(
        fresh_redis: servers.RedisServer, clock: ManualClock) -> None:
    a = breaker_on(fresh_redis.url, clock)
    b = breaker_on(fresh_redis.url, clock)
    for _ in range(4):
        attempt(a, fail=True)
    assert a.known_state is BreakerState.OPEN
    assert attempt(b)[0] == "rejected"
    assert b.known_state is BreakerState.OPEN
    fresh_redis.flushall()
    assert attempt(a)[0] == "rejected"  # known OPEN: rejected locally, no round trip
    clock.advance(1.0)  # refresh_interval: the next call asks and finds a fresh, CLOSED breaker
    assert attempt(a)[0] == "ran"
    assert a.known_state is BreakerState.CLOSED
    assert attempt(b)[0] == "ran"
    assert b.known_state is BreakerState.CLOSED
    for _ in range(4):  # and counting starts over on the fresh state
        attempt(b, fail=True)
    assert b.known_state is BreakerState.OPEN
    a.backend.close()
    b.backend.close()


@pytest.mark.slow
def test_sentinel_failover_policy_holds_and_state_converges(
        sentinel: servers.SentinelServers, clock: ManualClock,
        caplog: pytest.LogCaptureFixture) -> None:
    backend = RedisBackend.from_url(sentinel.url, timeout=TIMEOUT, cooldown=0.0)
    breaker = CircuitBreaker("psp", backend=backend, clock=clock, **SETTINGS)
    assert attempt(breaker)[0] == "ran"
    sentinel.kill_primary()
    outcomes = [attempt(breaker, fail=True) for _ in range(4)]
    assert max(d for _, d in outcomes) < 5.0  # bounded by the timeouts, never stuck
    sentinel.wait_for_failover()
    clock.advance(10)  # the break the local fallback started has ended
    # calls go on (on the local fallback) until the client has found the promoted replica; the
    # guard then says decisions are shared again (scripts reloaded after NOSCRIPT). Until then
    # breaker.state may be the local fallback's own, so it is not the signal.
    caplog.clear()
    deadline = time.monotonic() + 15
    while "decisions are shared again" not in caplog.text:
        assert time.monotonic() < deadline, "the breaker never used the promoted replica"
        attempt(breaker)
        time.sleep(0.01)
    assert breaker.state is BreakerState.CLOSED  # the shared state: the failures never reached it
    # shared state works on the new primary: failures trip it within one window (successes
    # that ran while the topology was re-resolved may sit in the window, so up to its size)
    for _ in range(10):
        attempt(breaker, fail=True)
        if breaker.known_state is BreakerState.OPEN:
            break
    assert breaker.state is BreakerState.OPEN
    backend.close()
