"""acquire(..., max_wait=s): wait for a permit instead of being refused at once."""

from __future__ import annotations

import asyncio
import math
import threading
import time

import pytest

from fintech_resilience import (
    ConfigurationError,
    MemoryBackend,
    Policy,
    RateLimited,
    RateLimiter,
    RedisBackend,
)
from fintech_resilience.backends.base import Backend
from fintech_resilience.ratelimit.waiting import Patience
from fintech_resilience.testing import ManualClock


class RecordingClock(ManualClock):
    """A manual clock that remembers each sleep (sync and async) and can act during one."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        super().__init__(start)
        self.sleeps: list[float] = []
        self.during_sleep = lambda: None

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        super().sleep(seconds)
        self.during_sleep()

    async def asleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await super().asleep(seconds)
        self.during_sleep()


def limiter(spec: str, backend: Backend, clock: ManualClock, **kw: object) -> RateLimiter:
    return RateLimiter(spec, backend=backend, clock=clock, name="wait",  # type: ignore[arg-type]
                       on_backend_error="raise", wait_jitter=0, **kw)


def ms(seconds: float) -> int:
    return round(seconds * 1000)


class TestWait:
    def test_a_refused_call_sleeps_its_retry_after_and_is_admitted(self, backend):
        clock = RecordingClock()
        rl = limiter("5/second", backend, clock)
        for _ in range(5):
            rl.acquire("psp")
        d = rl.acquire("psp", max_wait=1.0)
        assert d.allowed
        assert [ms(x) for x in clock.sleeps] == [200]

    def test_a_wait_that_cannot_end_in_time_refuses_at_once(self, backend):
        clock = RecordingClock()
        rl = limiter("5/second", backend, clock)
        for _ in range(5):
            rl.acquire("psp")
        d = rl.acquire("psp", max_wait=0.199)
        assert not d.allowed and ms(d.retry_after) == 200
        never = rl.acquire("psp", cost=6, max_wait=3600)
        assert not never.allowed and math.isinf(never.retry_after)
        assert clock.sleeps == []

    def test_a_permit_taken_meanwhile_means_sleeping_again_until_the_deadline(self, backend):
        clock = RecordingClock()
        rl = limiter("5/second", backend, clock)
        for _ in range(5):
            rl.acquire("psp")
        # another caller takes each permit while this one sleeps
        clock.during_sleep = lambda: rl.acquire("psp")
        d = rl.acquire("psp", max_wait=0.5)
        assert not d.allowed
        assert [ms(x) for x in clock.sleeps] == [200, 200]  # a third 200 ms would pass 0.5 s
        assert ms(sum(clock.sleeps)) <= 500

    def test_the_last_sleep_ends_at_the_deadline(self, backend):
        clock = RecordingClock()
        rl = limiter("5/second", backend, clock, algorithm="fixed_window")
        clock.set(1_700_000_000.5)  # half a second into a window
        for _ in range(5):
            rl.acquire("psp")
        d = rl.acquire("psp", max_wait=0.5)
        assert d.allowed and [ms(x) for x in clock.sleeps] == [500]

    def test_jitter_makes_each_sleep_up_to_that_fraction_longer(self):
        rl = RateLimiter("1/second", backend=MemoryBackend(), clock=ManualClock(), name="j")
        rl.acquire("m")
        refused = rl.acquire("m")  # a refusal to plan with
        assert not refused.allowed and ms(refused.retry_after) == 1000
        for r, expected in ((0.0, 1000), (0.5, 1250), (0.998, 1499)):
            patience = Patience(10.0, 0.5, 0.0, rand=lambda r=r: r)
            assert ms(patience.pause(refused, now=0.0)) == expected
        # never past the deadline, and nothing to wait for once it has passed
        assert ms(Patience(1.2, 0.5, 0.0, rand=lambda: 0.9).pause(refused, now=0.0)) == 1200
        assert Patience(1.2, 0.5, 0.0).pause(refused, now=1.2) is None

    def test_jittered_waits_on_every_backend(self, backend):
        clock = RecordingClock()
        rl = RateLimiter("5/second", backend=backend, clock=clock, name="jitter",
                         wait_jitter=0.5, on_backend_error="raise")
        assert all(rl.acquire("psp", max_wait=10).allowed for _ in range(30))
        # each sleep: a refusal's retry_after (at most 200 ms), up to half as long again
        assert len(clock.sleeps) >= 20 and all(0 < ms(x) <= 300 for x in clock.sleeps)
        assert len({round(x, 9) for x in clock.sleeps}) > 1  # not one fixed delay

    async def test_async_waits_with_asleep(self, backend):
        clock = RecordingClock()
        rl = limiter("2/second", backend, clock)
        assert all([(await rl.aacquire("psp")).allowed for _ in range(2)])
        d = await rl.aacquire("psp", max_wait=1)
        assert d.allowed and [ms(x) for x in clock.sleeps] == [500]
        refused = await rl.aacquire("psp", max_wait=0.4)
        assert not refused.allowed and len(clock.sleeps) == 1

    async def test_a_cancelled_waiter_consumed_nothing(self):
        clock = RecordingClock()
        rl = limiter("1/minute", MemoryBackend(), clock)
        rl.acquire("psp")
        started = asyncio.Event()

        async def asleep(seconds: float) -> None:
            started.set()
            await asyncio.Event().wait()  # sleeps until cancelled

        clock.asleep = asleep  # type: ignore[method-assign]
        waiter = asyncio.create_task(rl.aacquire("psp", max_wait=120))
        await started.wait()
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        clock.advance(60)
        assert rl.acquire("psp").remaining == 0  # the one unit of the next minute was free

    def test_per_call_limits_and_waiting_together(self, backend):
        clock = RecordingClock()
        rl = limiter("100/second", backend, clock)
        rl.acquire("psp", limits="2/second")
        rl.acquire("psp", limits="2/second")
        assert rl.acquire("psp", limits="2/second", max_wait=1).allowed
        assert [ms(x) for x in clock.sleeps] == [500]

    @pytest.mark.parametrize("bad", [-1, math.nan, math.inf, "1", True])
    def test_bad_max_wait(self, bad):
        rl = RateLimiter("5/second", name="bad")
        with pytest.raises(ConfigurationError, match="max_wait"):
            rl.acquire("m", max_wait=bad)
        with pytest.raises(ConfigurationError, match="max_wait"):
            rl.limit(key="m", max_wait=bad)
        with pytest.raises(ConfigurationError, match="rate_limit_wait"):
            Policy(rate_limit=rl, rate_limit_wait=bad)

    @pytest.mark.parametrize("bad", [-0.1, 1.5, "0.1", None])
    def test_bad_jitter(self, bad):
        with pytest.raises(ConfigurationError, match="wait_jitter"):
            RateLimiter("5/second", wait_jitter=bad)


class TestDecoratorAndPolicy:
    def test_decorator_waits(self, backend):
        clock = RecordingClock()
        rl = limiter("1/second", backend, clock)

        @rl.limit(key="psp", max_wait=2)
        def call_psp() -> str:
            return "ok"

        assert [call_psp() for _ in range(3)] == ["ok"] * 3
        assert [ms(x) for x in clock.sleeps] == [1000, 1000]

    async def test_policy_waits_for_the_outbound_quota(self, backend):
        clock = RecordingClock()
        rl = limiter("2/second", backend, clock)
        policy = Policy(name="psp", rate_limit=rl, rate_limit_wait=1.0)
        calls = []

        @policy
        async def charge(amount: int) -> int:
            calls.append(amount)
            return amount

        assert [await charge(i) for i in range(4)] == [0, 1, 2, 3]
        assert [ms(x) for x in clock.sleeps] == [500, 500]
        clock.sleeps.clear()
        impatient = Policy(name="psp", rate_limit=rl, rate_limit_wait=0.1)
        with pytest.raises(RateLimited):
            impatient.call(lambda: None)
        assert clock.sleeps == []  # 500 ms could never fit in 100 ms: refused at once

    def test_policy_needs_a_rate_limit_to_wait_for(self):
        with pytest.raises(ConfigurationError, match="rate_limit_wait"):
            Policy(rate_limit_wait=1.0)


class TestRealTime:
    """Real sleeps on a real clock, real threads and tasks: every waiter gets its permit and
    the limit holds (40 permits at 20/second with a burst of 20 take at least a second)."""

    def test_threads_waiting_on_redis(self, redis_url):
        red = RedisBackend.from_url(redis_url, timeout=2.0)
        try:
            rl = RateLimiter("20/second", backend=red, name="threads", on_backend_error="raise")
            results: list[bool] = []
            lock = threading.Lock()

            def worker() -> None:
                d = rl.acquire("psp", max_wait=30)
                with lock:
                    results.append(d.allowed)

            start = time.monotonic()
            threads = [threading.Thread(target=worker) for _ in range(40)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.monotonic() - start
        finally:
            red.close()
        assert results == [True] * 40
        assert elapsed >= 0.95

    async def test_tasks_waiting(self, backend):
        rl = RateLimiter("20/second", backend=backend, name="tasks", on_backend_error="raise")
        start = time.monotonic()
        decisions = await asyncio.gather(*(rl.aacquire("psp", max_wait=30) for _ in range(40)))
        elapsed = time.monotonic() - start
        assert all(d.allowed for d in decisions)
        assert elapsed >= 0.95
