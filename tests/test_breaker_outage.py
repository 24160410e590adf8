"""Through a Redis outage a breaker goes on from the state this process last knew.

``on_backend_error="local"`` (the default): when Redis stops answering, the per-process fallback
starts from the last state learned from Redis - an OPEN breaker stays open until its break ends,
FORCED_OPEN, DISABLED and METRICS_ONLY hold until Redis says otherwise, HALF_OPEN admits at most
``half_open_calls`` probes, and a CLOSED window keeps its counts. When Redis answers again, the
shared state wins. Every test counts the calls that ran on real redis-server processes that are
paused (SIGSTOP), killed (SIGKILL) or failed over (a Cluster primary killed).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import servers

from fintech_resilience.backends.redis import RedisBackend
from fintech_resilience.breaker.circuit import (
    BreakerState,
    CircuitBreaker,
    CountWindow,
    TimeWindow,
    Transition,
)
from fintech_resilience.errors import BackendUnavailable, CircuitOpen
from fintech_resilience.testing import ManualClock

pytestmark = pytest.mark.slow

TIMEOUT = 0.1
REFRESH = 1.0  # the breakers' refresh_interval: a known OPEN is trusted this long, then re-asked
SETTINGS: dict[str, Any] = {"minimum_calls": 4, "window": CountWindow(10), "failure_rate": 0.5,
                            "break_duration": 30.0, "half_open_calls": 2,
                            "refresh_interval": REFRESH}
THREADS = 8
CALLS = 25  # per thread (or task) and round


class Boom(Exception):
    pass


class Tally:
    """What the calls of a hammering did: ran (the protected function was entered), rejected
    (by state), failed."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ran = 0
        self.rejected: Counter[BreakerState | None] = Counter()

    def entered(self) -> None:
        with self.lock:
            self.ran += 1

    def refused(self, exc: CircuitOpen) -> None:
        with self.lock:
            self.rejected[exc.state] += 1


def breaker_on(url: str, clock: ManualClock | None, *, listeners: list[Transition] | None = None,
               **overrides: Any) -> CircuitBreaker:
    backend = RedisBackend.from_url(url, timeout=TIMEOUT)
    return CircuitBreaker("psp", backend=backend, clock=clock,
                          listeners=[] if listeners is None else [listeners.append],
                          **{**SETTINGS, **overrides})


def one_call(breaker: CircuitBreaker, fail: bool = False) -> str:
    def dependency() -> None:
        if fail:
            raise Boom

    try:
        breaker.call(dependency)
    except Boom:
        return "failed"
    except CircuitOpen:
        return "rejected"
    return "ran"


def hammer(mode: str, breaker: CircuitBreaker, clock: ManualClock, *, rounds: int = 6,
           step: float = REFRESH, fail: bool = False, threads: int = THREADS,
           calls: int = CALLS) -> Tally:
    """``rounds`` times: advance the clock by ``step`` (so every known state is asked for again),
    then ``threads`` threads (sync) or asyncio tasks (async) make ``calls`` calls each."""
    tally = Tally()

    def dependency() -> None:
        tally.entered()
        if fail:
            raise Boom

    async def adependency() -> None:
        dependency()

    def sync_worker() -> None:
        for _ in range(calls):
            try:
                breaker.call(dependency)
            except CircuitOpen as exc:
                tally.refused(exc)
            except Boom:
                pass

    async def async_worker() -> None:
        for _ in range(calls):
            try:
                await breaker.acall(adependency)
            except CircuitOpen as exc:
                tally.refused(exc)
            except Boom:
                pass

    async def async_rounds() -> None:
        for _ in range(rounds):
            clock.advance(step)
            await asyncio.gather(*(async_worker() for _ in range(threads)))

    if mode == "async":
        asyncio.run(async_rounds())
        return tally
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(rounds):
            clock.advance(step)
            for future in [pool.submit(sync_worker) for _ in range(threads)]:
                future.result()
    return tally


def cut(server: servers.RedisServer, fault: str) -> Callable[[], None]:
    """Apply ``fault`` to ``server``; return what brings it back."""
    if fault == "pause":
        server.pause()
        return server.resume
    server.kill()
    return lambda: server.restart() and None


def _redis_answers(breaker: CircuitBreaker) -> bool:
    """Whether the breaker's own backend reaches Redis (no fallback): its health breaker has
    ended its cool-down and the node serving the key answers."""
    try:
        breaker.backend.run("breaker_control", breaker._keys, (0, 0, breaker.settings.ttl_ms))
    except BackendUnavailable:
        return False
    return True


def wait_for_redis(breaker: CircuitBreaker) -> None:
    servers._wait_until(lambda: _redis_answers(breaker), 30.0, "Redis to answer the breaker")


FAULTS = ["pause", "kill"]
MODES = ["sync", "async"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fault", FAULTS)
def test_a_forced_open_breaker_runs_no_call_while_redis_is_down(
        fresh_redis: servers.RedisServer, clock: ManualClock, fault: str, mode: str) -> None:
    operator = breaker_on(fresh_redis.url, clock)
    seen: list[Transition] = []
    breaker = breaker_on(fresh_redis.url, clock, listeners=seen)
    operator.force_open()
    assert one_call(breaker) == "rejected"  # learned FORCED_OPEN from Redis
    recover = cut(fresh_redis, fault)
    try:
        tally = hammer(mode, breaker, clock)
    finally:
        recover()
    assert tally.ran == 0
    assert tally.rejected == {BreakerState.FORCED_OPEN: 6 * THREADS * CALLS}
    assert seen == []  # the fallback went on FORCED_OPEN: no transition at all
    wait_for_redis(breaker)
    clock.advance(REFRESH)
    if fault == "pause":  # Redis kept the override: the shared state still says FORCED_OPEN
        assert one_call(breaker) == "rejected"
        operator.reset()
        clock.advance(REFRESH)
    # a killed Redis (no persistence) came back empty: the shared state, CLOSED, wins
    assert one_call(breaker) == "ran"
    assert [(t.previous, t.state) for t in seen] == [(BreakerState.FORCED_OPEN,
                                                      BreakerState.CLOSED)]
    breaker.backend.close()
    operator.backend.close()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fault", FAULTS)
def test_an_open_breaker_rejects_until_its_break_ends_then_probes_half_open_calls(
        fresh_redis: servers.RedisServer, clock: ManualClock, fault: str, mode: str) -> None:
    breaker = breaker_on(fresh_redis.url, clock)
    for _ in range(4):
        assert one_call(breaker, fail=True) == "failed"
    assert breaker.known_state is BreakerState.OPEN  # tripped in Redis: a 30 s break
    recover = cut(fresh_redis, fault)
    try:
        during_break = hammer(mode, breaker, clock, rounds=29, step=1.0, fail=True)
        after_break = hammer(mode, breaker, clock, rounds=1, step=1.0, fail=True)
    finally:
        recover()
    assert during_break.ran == 0
    assert during_break.rejected == {BreakerState.OPEN: 29 * THREADS * CALLS}
    # the break ended (locally, at the time Redis had set): at most half_open_calls probes ran,
    # their failure opened the local breaker again
    assert 1 <= after_break.ran <= SETTINGS["half_open_calls"]
    assert breaker.known_state is BreakerState.OPEN
    breaker.backend.close()


@pytest.mark.parametrize("mode", MODES)
def test_half_open_known_locally_admits_at_most_half_open_calls_probes(
        fresh_redis: servers.RedisServer, clock: ManualClock, mode: str) -> None:
    breaker = breaker_on(fresh_redis.url, clock)
    for _ in range(4):
        one_call(breaker, fail=True)
    clock.advance(30)
    with breaker:  # holds one of Redis's two probe permits; the process now knows HALF_OPEN
        assert breaker.known_state is BreakerState.HALF_OPEN
        fresh_redis.pause()
        try:
            tally = hammer(mode, breaker, clock, rounds=3, step=0.1, fail=True)
        finally:
            fresh_redis.resume()
    assert 1 <= tally.ran <= SETTINGS["half_open_calls"]
    # back on Redis the shared state wins; commands a paused server received late may have
    # run after it resumed (a timed-out acquire can still take the other permit), so it is
    # still probing or open again - never closed by probes that failed
    assert breaker.known_state in (BreakerState.OPEN, BreakerState.HALF_OPEN)
    assert breaker.state in (BreakerState.OPEN, BreakerState.HALF_OPEN)
    breaker.backend.close()


@pytest.mark.parametrize("override", ["disable", "metrics_only"])
@pytest.mark.parametrize("fault", FAULTS)
def test_disabled_and_metrics_only_never_reject_through_an_outage(
        fresh_redis: servers.RedisServer, clock: ManualClock, fault: str, override: str) -> None:
    breaker = breaker_on(fresh_redis.url, clock)
    state = getattr(breaker, override)()
    assert one_call(breaker) == "ran"
    recover = cut(fresh_redis, fault)
    try:
        tally = hammer("sync", breaker, clock, rounds=3, fail=True)
    finally:
        recover()
    assert (tally.ran, tally.rejected) == (3 * THREADS * CALLS, {})  # failures never trip it
    assert breaker.known_state is state
    breaker.backend.close()


@pytest.mark.parametrize("window", [CountWindow(10), TimeWindow(seconds=60)])
@pytest.mark.parametrize("fault", FAULTS)
def test_a_closed_window_keeps_its_counts_through_an_outage(
        fresh_redis: servers.RedisServer, clock: ManualClock, fault: str,
        window: CountWindow | TimeWindow) -> None:
    breaker = breaker_on(fresh_redis.url, clock, window=window)
    other = breaker_on(fresh_redis.url, clock, window=window)
    assert [one_call(other, fail=True) for _ in range(2)] == ["failed"] * 2
    assert one_call(breaker) == "ran"  # learns the window: 3 calls, 2 failures; minimum 4
    assert breaker.known_state is BreakerState.CLOSED
    recover = cut(fresh_redis, fault)
    try:
        # 4 calls, 3 failures: the local breaker, which kept the counts, trips at once
        outcomes = [one_call(breaker, fail=True), one_call(breaker)]
    finally:
        recover()
    assert outcomes == ["failed", "rejected"]
    breaker.backend.close()
    other.backend.close()


def test_a_time_window_forgets_counts_older_than_the_window(
        fresh_redis: servers.RedisServer, clock: ManualClock) -> None:
    breaker = breaker_on(fresh_redis.url, clock, window=TimeWindow(seconds=10))
    for _ in range(3):
        one_call(breaker, fail=True)
    assert breaker.known_state is BreakerState.CLOSED
    clock.advance(10)
    fresh_redis.pause()
    try:
        outcomes = [one_call(breaker, fail=True) for _ in range(4)]
    finally:
        fresh_redis.resume()
    # the three failures learned 10 s ago left the window: four new failures trip it
    assert outcomes == ["failed"] * 4
    assert breaker.known_state is BreakerState.OPEN
    breaker.backend.close()


@pytest.mark.parametrize("mode", MODES)
def test_back_from_an_outage_the_shared_state_wins_with_one_log_line_each_way(
        fresh_redis: servers.RedisServer, clock: ManualClock, mode: str,
        caplog: pytest.LogCaptureFixture) -> None:
    seen: list[Transition] = []
    breaker = breaker_on(fresh_redis.url, clock, listeners=seen)
    other = breaker_on(fresh_redis.url, clock)
    assert one_call(breaker) == "ran"
    with caplog.at_level(logging.INFO, logger="fintech_resilience"):
        fresh_redis.pause()
        try:
            # the local breaker trips on failures this process sees while Redis is paused
            tripped = hammer(mode, breaker, clock, rounds=2, step=0.1, fail=True)
        finally:
            fresh_redis.resume()
        assert breaker.known_state is BreakerState.OPEN
        assert tripped.rejected
        wait_for_redis(breaker)
        other.force_open()  # meanwhile, in Redis
        healed = hammer(mode, breaker, clock, rounds=3, step=REFRESH)
    assert healed.ran == 0
    assert BreakerState.FORCED_OPEN in healed.rejected
    assert set(healed.rejected) <= {BreakerState.OPEN, BreakerState.FORCED_OPEN}
    assert breaker.known_state is BreakerState.FORCED_OPEN
    assert [(t.previous, t.state, t.caused_here) for t in seen] == [
        (BreakerState.CLOSED, BreakerState.OPEN, True),  # the local trip
        (BreakerState.OPEN, BreakerState.FORCED_OPEN, False),  # the shared state, once learned
    ]
    messages = [r.getMessage() for r in caplog.records if "'psp'" in r.getMessage()]
    assert len([m for m in messages if "backend unavailable" in m]) == 1
    assert len([m for m in messages if "backend recovered" in m]) == 1
    assert len([m for m in messages if "CLOSED -> OPEN" in m]) == 1
    breaker.backend.close()
    other.backend.close()


class RealTimeHammer:
    """``THREADS`` threads (sync) or tasks in one event loop (async) calling the breaker as
    fast as they can, in real time, until the block ends."""

    def __init__(self, mode: str, breaker: CircuitBreaker) -> None:
        self.tally = Tally()
        self.stop = threading.Event()
        self.breaker = breaker
        self.workers = ([threading.Thread(target=self.sync_worker) for _ in range(THREADS)]
                        if mode == "sync" else
                        [threading.Thread(target=asyncio.run, args=(self.async_workers(),))])

    def dependency(self) -> None:
        self.tally.entered()

    async def adependency(self) -> None:
        self.tally.entered()

    def sync_worker(self) -> None:
        while not self.stop.is_set():
            try:
                self.breaker.call(self.dependency)
            except CircuitOpen as exc:
                self.tally.refused(exc)

    async def async_workers(self) -> None:
        async def worker() -> None:
            while not self.stop.is_set():
                try:
                    await self.breaker.acall(self.adependency)
                except CircuitOpen as exc:
                    self.tally.refused(exc)
                await asyncio.sleep(0)

        await asyncio.gather(*(worker() for _ in range(THREADS)))

    def __enter__(self) -> Tally:
        for worker in self.workers:
            worker.start()
        return self.tally

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        for worker in self.workers:
            worker.join(10)


@pytest.mark.parametrize("mode", MODES)
def test_no_call_runs_through_a_forced_open_breaker_during_a_real_time_sigstop(
        fresh_redis: servers.RedisServer, mode: str) -> None:
    """Real time, as in production: refresh_interval 50 ms, so the process asks Redis (and
    falls back) every 50 ms throughout a 1.5 s SIGSTOP."""
    operator = breaker_on(fresh_redis.url, None)
    breaker = breaker_on(fresh_redis.url, None, refresh_interval=0.05)
    operator.force_open()
    assert one_call(breaker) == "rejected"
    fresh_redis.pause()
    try:
        with RealTimeHammer(mode, breaker) as tally:
            time.sleep(1.5)
    finally:
        fresh_redis.resume()
    assert tally.ran == 0
    assert set(tally.rejected) == {BreakerState.FORCED_OPEN}
    assert sum(tally.rejected.values()) > 100
    breaker.backend.close()
    operator.backend.close()


def _add_replica(cluster: servers.RedisClusterServers, primary: servers.RedisServer
                 ) -> servers.RedisServer:
    """Start one more cluster node and make it a synced replica of ``primary``."""
    bus_port = servers.free_port()
    replica = servers.RedisServer(cluster._node_args(bus_port))
    cluster.nodes.append(replica)  # stopped with the cluster
    cluster.bus_ports.append(bus_port)
    primary.command("CONFIG", "SET", "repl-diskless-sync-delay", "0")  # no 5 s wait to sync
    primary.command("CLUSTER", "MEET", replica.host, replica.port, bus_port)
    primary_id = primary.command("CLUSTER", "MYID").decode()
    servers._wait_until(lambda: replica.command("CLUSTER", "REPLICATE", primary_id) == b"OK",
                        20.0, "the new node to know the primary")

    def replicating() -> bool:
        return replica.info("replication").get("master_link_status") == "up"

    servers._wait_until(replicating, 20.0, "the new replica to sync")
    cluster.wait_ready()
    return replica


@pytest.mark.parametrize("mode", MODES)
def test_no_call_runs_through_a_forced_open_breaker_while_its_cluster_primary_fails_over(
        mode: str) -> None:
    if not servers.REAL_REDIS:
        pytest.skip(servers.FAKEREDIS_FALLBACK)
    with servers.RedisClusterServers(3) as cluster:
        operator = breaker_on(cluster.url, None)
        breaker = breaker_on(cluster.url, None, refresh_interval=0.05)
        owner = cluster.client().get_node_from_key(breaker._keys[0])
        primary = next(n for n in cluster.nodes if n.port == owner.port)
        replica = _add_replica(cluster, primary)
        operator.force_open()
        servers.wait_replicated(primary, replica)  # the override reached the replica
        assert one_call(breaker) == "rejected"
        with RealTimeHammer(mode, breaker) as tally:
            primary.kill()
            # until the replica is promoted (cluster-node-timeout 2 s + election) and this
            # process's client finds it, every call falls back to the local breaker
            wait_for_redis(breaker)  # the promoted replica serves the breaker's key
            time.sleep(0.3)  # and a little while back on the shared state
        assert replica.command("ROLE")[0] == b"master"
        assert tally.ran == 0
        assert set(tally.rejected) == {BreakerState.FORCED_OPEN}
        # the override survived the failover: the shared state still says FORCED_OPEN
        assert breaker.state is BreakerState.FORCED_OPEN
        breaker.backend.close()
        operator.backend.close()
