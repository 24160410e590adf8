"""Bulkhead: never more than max_concurrent inside (threads, tasks, processes); bounded waits."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time
from typing import Any

import pytest

from fintech_resilience.backends.base import Backend
from fintech_resilience.errors import BulkheadFull, ConfigurationError
from fintech_resilience.policy.bulkhead import Bulkhead
from fintech_resilience.ratelimit.concurrency import ConcurrencyLimiter
from fintech_resilience.testing import ManualClock


class Inside:
    """Counts callers inside the protected section and remembers the peak."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0
        self.done = 0

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def leave(self) -> None:
        with self.lock:
            self.now -= 1
            self.done += 1


def test_100_threads_never_more_than_5_inside() -> None:
    bulkhead = Bulkhead(5, max_wait=30, name="psp")
    inside = Inside()
    start = threading.Barrier(100)

    @bulkhead
    def call() -> None:
        inside.enter()
        time.sleep(0.002)  # simulated work, so callers overlap
        inside.leave()

    def caller() -> None:
        start.wait()
        call()

    threads = [threading.Thread(target=caller) for _ in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert inside.done == 100
    assert 2 <= inside.peak <= 5  # callers did overlap, and never more than 5
    assert bulkhead.in_use == 0


async def test_100_tasks_never_more_than_5_inside() -> None:
    bulkhead = Bulkhead(5, max_wait=30, name="psp")
    inside = Inside()

    @bulkhead
    async def call() -> None:
        inside.enter()
        await asyncio.sleep(0.001)
        inside.leave()

    await asyncio.gather(*(call() for _ in range(100)))
    assert inside.done == 100
    assert 2 <= inside.peak <= 5  # callers did overlap, and never more than 5
    assert bulkhead.in_use == 0


async def test_threads_and_tasks_share_one_local_limit() -> None:
    bulkhead = Bulkhead(5, max_wait=30, name="psp")
    inside = Inside()

    def sync_call() -> None:
        with bulkhead:
            inside.enter()
            time.sleep(0.002)
            inside.leave()

    async def async_call() -> None:
        async with bulkhead:
            inside.enter()
            await asyncio.sleep(0.002)
            inside.leave()

    threads = [threading.Thread(target=sync_call) for _ in range(50)]
    for t in threads:
        t.start()
    await asyncio.gather(*(async_call() for _ in range(50)))
    for t in threads:
        await asyncio.to_thread(t.join)
    assert inside.done == 100
    assert inside.peak <= 5
    assert bulkhead.in_use == 0


def _fill(bulkhead: Bulkhead, n: int) -> tuple[list[threading.Thread], threading.Event]:
    """Start ``n`` threads that hold a slot until the returned event is set."""
    release = threading.Event()
    entered = threading.Semaphore(0)

    def hold() -> None:
        with bulkhead:
            entered.release()
            release.wait()

    threads = [threading.Thread(target=hold) for _ in range(n)]
    for t in threads:
        t.start()
    for _ in range(n):
        entered.acquire()
    return threads, release


def test_waiters_time_out_with_bulkhead_full() -> None:
    bulkhead = Bulkhead(5, max_wait=0.05, name="psp")
    threads, release = _fill(bulkhead, 5)
    try:
        with pytest.raises(BulkheadFull) as info, bulkhead:
            pass
        assert info.value.max_concurrent == 5 and info.value.name == "psp"
        no_wait = Bulkhead(1, name="psp")
        with no_wait, pytest.raises(BulkheadFull), no_wait:
            pass
    finally:
        release.set()
        for t in threads:
            t.join()
    with bulkhead:  # slots came back
        assert bulkhead.in_use == 1


async def test_async_waiters_time_out_with_bulkhead_full() -> None:
    bulkhead = Bulkhead(5, max_wait=0.05, name="psp")
    threads, release = _fill(bulkhead, 5)
    try:
        with pytest.raises(BulkheadFull):
            async with bulkhead:
                pass
        assert bulkhead.in_use == 5
    finally:
        release.set()
        for t in threads:
            await asyncio.to_thread(t.join)
    assert bulkhead.in_use == 0


async def test_a_freed_slot_goes_to_the_waiting_task() -> None:
    bulkhead = Bulkhead(1, max_wait=30, name="psp")
    order: list[str] = []
    await bulkhead.aacquire()
    waiter = asyncio.create_task(bulkhead.aacquire())
    await asyncio.sleep(0)
    order.append("released")
    await bulkhead.arelease()
    await waiter
    order.append("waiter got it")
    assert bulkhead.in_use == 1
    assert order == ["released", "waiter got it"]
    await bulkhead.arelease()
    assert bulkhead.in_use == 0


async def test_a_cancelled_waiter_does_not_leak_its_slot() -> None:
    bulkhead = Bulkhead(1, max_wait=30, name="psp")
    await bulkhead.aacquire()
    waiter = asyncio.create_task(bulkhead.aacquire())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await bulkhead.arelease()
    assert bulkhead.in_use == 0
    async with bulkhead:
        assert bulkhead.in_use == 1


def test_distributed_waiter_gives_up_after_max_wait(backend: Backend,
                                                    clock: ManualClock) -> None:
    bulkhead = Bulkhead(2, max_wait=1.0, name="psp", backend=backend, clock=clock)
    a, b = bulkhead.acquire(), bulkhead.acquire()
    started = clock.monotonic()
    with pytest.raises(BulkheadFull):
        bulkhead.acquire()
    assert clock.monotonic() - started == pytest.approx(1.0)  # waited max_wait, not longer
    bulkhead.release(a)
    c = bulkhead.acquire()
    bulkhead.release(b)
    bulkhead.release(c)


async def test_distributed_async_twin(backend: Backend, clock: ManualClock) -> None:
    bulkhead = Bulkhead(1, max_wait=0.5, name="psp", backend=backend, clock=clock)
    async with bulkhead:
        with pytest.raises(BulkheadFull):
            async with bulkhead:
                pass
    async with bulkhead:
        pass


def _process(url: str, inside_now: Any, peak: Any, done: Any) -> None:
    from fintech_resilience.backends.redis import RedisBackend

    backend = RedisBackend.from_url(url, timeout=5.0)
    bulkhead = Bulkhead(5, max_wait=60, name="psp", backend=backend)

    def call() -> None:
        with bulkhead:
            with inside_now.get_lock():
                inside_now.value += 1
                peak.value = max(peak.value, inside_now.value)
            time.sleep(0.005)
            with inside_now.get_lock():
                inside_now.value -= 1
                done.value += 1

    threads = [threading.Thread(target=call) for _ in range(25)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    backend.close()


def test_100_callers_in_4_processes_never_more_than_5_inside(redis_url: str) -> None:
    ctx = multiprocessing.get_context("forkserver")
    inside_now, peak, done = ctx.Value("i", 0), ctx.Value("i", 0), ctx.Value("i", 0)
    procs = [ctx.Process(target=_process, args=(redis_url, inside_now, peak, done))
             for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert done.value == 100
    assert 1 <= peak.value <= 5


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"max_concurrent": 0}, "max_concurrent must be an int >= 1"),
    ({"max_concurrent": 2.0}, "max_concurrent must be an int"),
    ({"max_concurrent": 2, "max_wait": -1}, "max_wait must be a finite number"),
    ({"max_concurrent": 2, "max_wait": float("inf")}, "max_wait must be a finite number"),
    ({"max_concurrent": 2, "name": "a b"}, "name must be"),
    ({"max_concurrent": 2, "limiter": ConcurrencyLimiter(3)}, "make them equal"),
])
def test_bad_bulkhead_configuration(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Bulkhead(**kwargs)
