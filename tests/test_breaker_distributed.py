"""One breaker shared by many processes, threads and tasks: trips, probes and overrides agree."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import threading
from typing import Any

import pytest

from fintech_resilience.backends.base import Backend
from fintech_resilience.backends.redis import RedisBackend
from fintech_resilience.breaker.circuit import BreakerState, CircuitBreaker, CountWindow
from fintech_resilience.errors import CircuitOpen
from fintech_resilience.testing import ManualClock

CTX = mp.get_context("spawn")
SETTINGS: dict[str, Any] = {"minimum_calls": 10, "window": CountWindow(20), "failure_rate": 0.5,
                            "break_duration": 30.0, "half_open_calls": 3, "probe_lease": 60.0}


class SharedClock:
    """A manual clock every process reads from one shared double."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def time(self) -> float:
        return float(self.value.value)

    def monotonic(self) -> float:
        return float(self.value.value)

    def advance(self, seconds: float) -> None:
        with self.value.get_lock():
            self.value.value += seconds

    def sleep(self, seconds: float) -> None:
        raise AssertionError("the breaker must never sleep")

    async def asleep(self, seconds: float) -> None:
        raise AssertionError("the breaker must never sleep")


class Boom(Exception):
    pass


def _worker(url: str, clock: SharedClock, commands: Any, results: Any, calls: Any,
            inflight: Any, release: Any, wid: int) -> None:
    breaker = CircuitBreaker("psp", backend=RedisBackend.from_url(url, timeout=5.0), clock=clock,
                             **SETTINGS)
    mode = "fail"

    def dependency() -> str:
        with calls.get_lock():
            calls.value += 1
        if mode == "fail":
            raise Boom
        if mode == "block":
            with inflight.get_lock():
                inflight.value += 1
            release.wait(60)
        return "ok"

    while True:
        cmd, arg = commands.get()
        if cmd == "stop":
            return
        if cmd == "mode":
            mode = arg
            results.put((wid, None))
            continue
        out = []
        for _ in range(arg):
            try:
                breaker.call(dependency)
                outcome = "ran"
            except Boom:
                outcome = "failed"
            except CircuitOpen:
                outcome = "rejected"
            known = breaker.known_state
            out.append((outcome, None if known is None else known.name))
        results.put((wid, out))


def _collect(results: Any, n: int) -> dict[int, Any]:
    got = {}
    for _ in range(n):
        wid, value = results.get(timeout=60)
        got[wid] = value
    return got


@pytest.mark.slow
@pytest.mark.parametrize("topology", ["redis", "cluster"])
def test_eight_processes_trip_probe_and_recover_together(topology: str,
                                                         request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("redis_url" if topology == "redis" else "cluster_url")
    clock = SharedClock(CTX.Value("d", 1_700_000_000.0))
    calls, inflight, release = CTX.Value("i", 0), CTX.Value("i", 0), CTX.Event()
    results = CTX.Queue()
    queues = [CTX.Queue() for _ in range(8)]
    procs = [CTX.Process(target=_worker, args=(url, clock, queues[i], results, calls, inflight,
                                               release, i), daemon=True) for i in range(8)]
    for p in procs:
        p.start()

    def broadcast(cmd: str, arg: Any) -> dict[int, Any]:
        for q in queues:
            q.put((cmd, arg))
        return _collect(results, 8)

    try:
        broadcast("mode", "fail")  # every process is up
        # 1. every process calls a failing dependency at once: the breaker trips once
        phase = broadcast("calls", 6)
        assert 10 <= calls.value <= 10 + 7  # after the trip, at most one call per other process
        for wid, out in phase.items():
            states = [s for _, s in out]
            if "OPEN" in states:  # once a process knows, it never calls again
                first_open = states.index("OPEN")
                assert all(o == "rejected" for o, _ in out[first_open + 1:]), (wid, out)
        # every process knows OPEN within one call
        phase = broadcast("calls", 1)
        assert all(out[0][1] == "OPEN" for out in phase.values()), phase
        assert calls.value <= 10 + 7
        # 2. during OPEN nobody calls: every attempt is rejected locally
        before = calls.value
        phase = broadcast("calls", 20)
        assert calls.value == before
        assert all(o == ("rejected", "OPEN") for out in phase.values() for o in out)
        # 3. HALF_OPEN: exactly three probes in total while everybody keeps trying
        clock.advance(30.0)
        broadcast("mode", "block")
        before = calls.value
        for q in queues:
            q.put(("calls", 10))
        rejected = _collect(results, 5)  # the five without a permit report; three are blocked
        assert inflight.value == 3
        assert calls.value - before == 3
        assert all(o == ("rejected", "HALF_OPEN") for out in rejected.values() for o in out[1:])
        release.set()
        probers = _collect(results, 3)
        assert calls.value - before == 3 + sum(
            o == "ran" for out in probers.values() for o, _ in out[1:])
        assert all(out[0] == ("ran", out[0][1]) for out in probers.values())
        # 4. every process sees CLOSED within one call
        broadcast("mode", "ok")
        phase = broadcast("calls", 1)
        assert all(out == [("ran", "CLOSED")] for out in phase.values()), phase
        # 5. an operator override is obeyed from each process's next call on
        operator = CircuitBreaker("psp", backend=RedisBackend.from_url(url, timeout=5.0),
                                  clock=clock, **SETTINGS)
        operator.force_open()
        phase = broadcast("calls", 3)
        assert all(out == [("ran", "FORCED_OPEN")] + [("rejected", "FORCED_OPEN")] * 2
                   for out in phase.values()), phase
        operator.reset()
        clock.advance(1.0)  # refresh_interval: processes that reject locally ask again
        phase = broadcast("calls", 1)
        assert all(out == [("ran", "CLOSED")] for out in phase.values()), phase
    finally:
        release.set()
        for q in queues:
            q.put(("stop", None))
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()


def _die_while_probing(url: str, clock: SharedClock) -> None:
    breaker = CircuitBreaker("psp", backend=RedisBackend.from_url(url, timeout=5.0), clock=clock,
                             **{**SETTINGS, "half_open_calls": 1})
    with breaker:
        os._exit(3)  # killed mid-probe: the permit is never given back


@pytest.mark.slow
@pytest.mark.parametrize("topology", ["redis", "cluster"])
def test_a_prober_killed_mid_probe_loses_its_permit_and_another_process_probes(
        topology: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("redis_url" if topology == "redis" else "cluster_url")
    clock = SharedClock(CTX.Value("d", 1_700_000_000.0))
    breaker = CircuitBreaker("psp", backend=RedisBackend.from_url(url, timeout=5.0), clock=clock,
                             refresh_interval=0, **{**SETTINGS, "half_open_calls": 1})
    for _ in range(10):
        with pytest.raises(Boom), breaker:
            raise Boom
    assert breaker.known_state is BreakerState.OPEN
    clock.advance(30)
    prober = CTX.Process(target=_die_while_probing, args=(url, clock))
    prober.start()
    prober.join(60)
    assert prober.exitcode == 3
    with pytest.raises(CircuitOpen):  # the dead prober still holds the only permit
        breaker.call(lambda: None)
    assert breaker.known_state is BreakerState.HALF_OPEN
    clock.advance(60.0)  # its lease expires: the breaker is not stuck
    breaker.call(lambda: None)
    assert breaker.known_state is BreakerState.CLOSED


def test_an_abandoned_probe_permit_expires(backend: Backend, clock: ManualClock) -> None:
    dead = CircuitBreaker("psp", backend=backend, clock=clock, **{**SETTINGS,
                                                                  "half_open_calls": 1})
    live = CircuitBreaker("psp", backend=backend, clock=clock, **{**SETTINGS,
                                                                  "half_open_calls": 1})
    for _ in range(10):
        with pytest.raises(Boom), dead:
            raise Boom
    clock.advance(30)
    dead.__enter__()  # holds the permit and never reports
    with pytest.raises(CircuitOpen):
        live.call(lambda: None)
    clock.advance(59.999)
    with pytest.raises(CircuitOpen):
        live.call(lambda: None)
    clock.advance(0.001)
    live.call(lambda: None)
    assert live.known_state is BreakerState.CLOSED
    dead.__exit__(None, None, None)  # too late: its permit was reclaimed, nothing is counted
    assert live.state is BreakerState.CLOSED


async def _half_open_rush(backend: Backend, clock: ManualClock, callers: int) -> int:
    breakers = [CircuitBreaker("psp", backend=backend, clock=clock, **SETTINGS)
                for _ in range(8)]
    for _ in range(10):
        with pytest.raises(Boom):
            await breakers[0].acall(_afail)
    clock.advance(30)
    release = asyncio.Event()
    made = 0
    rejected = 0

    async def dependency() -> str:
        nonlocal made
        made += 1
        await release.wait()
        return "ok"

    async def caller(i: int) -> None:
        nonlocal rejected
        try:
            await breakers[i % 8].acall(dependency)
        except CircuitOpen:
            rejected += 1

    tasks = [asyncio.create_task(caller(i)) for i in range(callers)]
    for _ in range(10_000):
        if rejected + made == callers:
            break
        await asyncio.sleep(0.001)
    assert (made, rejected) == (3, callers - 3)
    release.set()
    await asyncio.gather(*tasks)
    assert all(b.known_state in (BreakerState.CLOSED, BreakerState.HALF_OPEN) for b in breakers)
    assert await breakers[0].astate() is BreakerState.CLOSED
    return made


async def _afail() -> None:
    raise Boom


async def test_half_open_admits_exactly_three_probes_among_1000_concurrent_callers(
        backend: Backend, clock: ManualClock) -> None:
    callers = 1000
    if isinstance(backend, RedisBackend) and backend.topology == "cluster":
        # backends/redis.py pipelines concurrent asyncio scripts, which redis-py refuses on a
        # cluster (RedisClusterException), and unpipelined, 1000 concurrent scripts exhaust the
        # cluster client's connection pool (MaxConnectionsError): both reported to the lead
        backend.pipeline = False
        callers = 100
    try:
        assert await _half_open_rush(backend, clock, callers) == 3
    finally:
        await backend.aclose()


def test_half_open_admits_exactly_three_probes_among_64_threads(backend: Backend,
                                                                clock: ManualClock) -> None:
    breakers = [CircuitBreaker("psp", backend=backend, clock=clock, **SETTINGS)
                for _ in range(4)]
    for _ in range(10):
        with pytest.raises(Boom), breakers[0]:
            raise Boom
    clock.advance(30)
    release = threading.Event()
    lock = threading.Lock()
    counts = {"made": 0, "rejected": 0}
    start = threading.Barrier(64)

    def dependency() -> None:
        with lock:
            counts["made"] += 1
        release.wait(30)

    def caller(i: int) -> None:
        start.wait(30)
        try:
            breakers[i % 4].call(dependency)
        except CircuitOpen:
            with lock:
                counts["rejected"] += 1

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for _ in range(30_000):
        with lock:
            if counts["made"] + counts["rejected"] == 64:
                break
        threading.Event().wait(0.001)
    assert counts == {"made": 3, "rejected": 61}
    release.set()
    for t in threads:
        t.join(30)
    assert breakers[1].state is BreakerState.CLOSED
