"""The memory default counts plain successes in CLOSED without the general operation.

These tests look inside the memory twin's count window (``CountRing``): its totals must always
equal a recount of its slots, no slot may be lost under threads, and the key must live on while the
breaker is in use.
"""

from __future__ import annotations

import contextlib
import sys
import threading

import pytest

from fintech_resilience.backends.memory import MemoryBackend
from fintech_resilience.backends.memory_ops.breaker import CountRing
from fintech_resilience.breaker.circuit import BreakerState, CircuitBreaker, CountWindow
from fintech_resilience.testing import ManualClock


class Boom(Exception):
    pass


def ring_of(backend: MemoryBackend, breaker: CircuitBreaker) -> CountRing:
    ring = backend.store.data[breaker._keys[0]][0]["cw"]
    assert isinstance(ring, CountRing)
    return ring


def recount(ring: CountRing) -> tuple[int, int, int]:
    slots = ring.ring[:ring.size]
    return (sum(1 for v in slots if v), sum((v - 1) % 2 for v in slots if v),
            sum((v - 1) // 2 for v in slots if v))


def test_totals_stay_exact_and_no_slot_is_lost_under_threads() -> None:
    backend = MemoryBackend()
    # never trips: at most 1 failure in 4 calls stays below the rate
    breaker = CircuitBreaker("threads", backend=backend, window=CountWindow(32),
                             minimum_calls=32, failure_rate=0.9)
    assert breaker._quick is not None
    threads, calls = 8, 4000
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def fail() -> None:
        raise Boom

    def caller(offset: int) -> None:
        try:
            start.wait()
            for i in range(calls):
                with contextlib.suppress(Boom):
                    breaker.call(fail if (i + offset) % 4 == 0 else int)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        workers = [threading.Thread(target=caller, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    finally:
        sys.setswitchinterval(old)
    assert not errors
    assert breaker.known_state is BreakerState.CLOSED
    ring = ring_of(backend, breaker)
    assert (ring.n, ring.f, ring.s) == recount(ring)
    assert ring.n == 32 and 0 < ring.f < 32
    assert ring.take() == threads * calls  # every call took exactly one slot
    assert breaker.refresh()[5:] == (ring.n, ring.f, ring.s)


@pytest.mark.parametrize("calls_per_day", [17, 24, 1000])
def test_the_key_lives_on_while_the_breaker_is_in_use(calls_per_day: int) -> None:
    clock = ManualClock(1_700_000_000.0)
    backend = MemoryBackend(clock=clock)
    breaker = CircuitBreaker("in-use", backend=backend, window=CountWindow(4), minimum_calls=4,
                             failure_rate=0.5, clock=clock)
    breaker.call(int)
    for _ in range(3):
        breaker.call(int)
    ring = ring_of(backend, breaker)
    with pytest.raises(Boom):
        breaker.call(lambda: (_ for _ in ()).throw(Boom))  # one failure in the window
    for _ in range(3 * calls_per_day):  # three days
        clock.advance(86_400 / calls_per_day)
        breaker.call(int)
        key = breaker._keys[0]
        assert backend.store.ttl_us(key, backend.now_us()) > 0, "expired while in use"
        assert ring_of(backend, breaker) is ring, "the window was forgotten while in use"
    assert (ring.n, ring.f) == (4, 0) == recount(ring)[:2]


def test_an_idle_breaker_expires_and_starts_afresh() -> None:
    clock = ManualClock(1_700_000_000.0)
    backend = MemoryBackend(clock=clock)
    breaker = CircuitBreaker("idle", backend=backend, window=CountWindow(4), minimum_calls=4,
                             failure_rate=0.5, clock=clock)
    for _ in range(20):
        breaker.call(int)
    old = ring_of(backend, breaker)
    assert old.take() == 20
    clock.advance(86_400 * 2)
    for _ in range(40):  # whichever call checks the expiry, the old window is gone
        breaker.call(int)
    ring = ring_of(backend, breaker)
    assert ring is not old and ring.n == 4 == recount(ring)[0]


def test_a_success_leaving_a_failure_behind_corrects_the_totals_and_never_trips() -> None:
    backend = MemoryBackend()
    breaker = CircuitBreaker("edge", backend=backend, window=CountWindow(4), minimum_calls=4,
                             failure_rate=0.5)

    def fail() -> None:
        raise Boom

    for fn in (fail, int, int, int):  # full window, 1 failure of 4
        with contextlib.suppress(Boom):
            breaker.call(fn)
    ring = ring_of(backend, breaker)
    assert (ring.n, ring.f) == (4, 1)
    breaker.call(int)  # replaces the failure, in place
    assert (ring.n, ring.f) == (4, 0) == recount(ring)[:2]
    assert breaker.known_state is BreakerState.CLOSED
