"""peek, hit (count by outcome), refund, stats and reset - exact, on every backend."""

from __future__ import annotations

import asyncio
import math

import pytest

from fintech_resilience import BackendUnavailable, MemoryBackend, RateLimiter, RedisBackend
from fintech_resilience.audit import AuditLog, CallbackSink
from fintech_resilience.backends.base import Backend
from fintech_resilience.testing import ManualClock


def limiter(spec: str, backend: Backend, clock: ManualClock, **kw: object) -> RateLimiter:
    return RateLimiter(spec, backend=backend, clock=clock, name="acct",  # type: ignore[arg-type]
                       on_backend_error="raise", **kw)


def s(seconds: float) -> int:
    return round(seconds)


def stored_keys(backend: Backend) -> set[str]:
    if isinstance(backend, RedisBackend):
        client = backend.client
        found = (client.keys("*", target_nodes=client.PRIMARIES)
                 if backend.topology == "cluster" else client.keys("*"))
        return {k.decode() for k in found}
    assert isinstance(backend, MemoryBackend)
    return set(backend.store.keys())


class TestPeek:
    @pytest.mark.parametrize("algorithm", ["gcra", "sliding_window", "fixed_window"])
    def test_peek_consumes_nothing_and_writes_nothing(self, backend, clock, algorithm):
        rl = limiter("3/minute", backend, clock, algorithm=algorithm)
        fresh = rl.peek("m")
        assert fresh.allowed and fresh.remaining == 3 and fresh.retry_after == 0
        assert stored_keys(backend) == set()
        assert [rl.acquire("m").remaining for _ in range(3)] == [2, 1, 0]
        before = stored_keys(backend)
        full = [rl.peek("m") for _ in range(5)]
        assert all(not d.allowed and d.remaining == 0 and d.retry_after > 0 for d in full)
        assert stored_keys(backend) == before
        assert rl.peek("m", cost=4).retry_after == math.inf

    def test_peek_tells_what_acquire_would_answer(self, backend, clock):
        rl = limiter("5/second; 100/day", backend, clock)
        rl.acquire("m", cost=5)
        peeked = rl.peek("m")
        acquired = rl.acquire("m")
        assert (peeked.allowed, peeked.retry_after) == (acquired.allowed, acquired.retry_after)
        assert round(peeked.retry_after * 1000) == 200

    def test_shadow_mode_does_not_change_the_answer(self, backend, clock):
        rl = limiter("1/minute", backend, clock, shadow=True)
        rl.acquire("m")
        assert rl.acquire("m").allowed  # shadow: admitted anyway
        assert not rl.peek("m").allowed  # but the limit is exhausted, and peek says so


class TestHit:
    def test_gcra_hit_counts_past_the_limit_and_caps_the_debt(self, backend, clock):
        rl = limiter("3/minute", backend, clock)  # 20 s per unit, a bucket of 60 s
        hits = [rl.hit("card") for _ in range(4)]
        assert [h.allowed for h in hits] == [True, True, True, False]
        assert [h.remaining for h in hits] == [2, 1, 0, 0]
        assert s(hits[3].retry_after) == 40  # 80 s of debt: 20 s past the bucket, plus a unit
        refused = rl.acquire("card")
        assert not refused.allowed and s(refused.retry_after) == 40
        for _ in range(20):
            rl.hit("card")
        # at most one extra bucket of debt: refused for the bucket's 60 s and one unit's 20 s
        assert s(rl.peek("card").retry_after) == 80

    def test_fixed_window_hit_counts_until_the_window_ends(self, backend, clock):
        rl = limiter("3/minute", backend, clock, algorithm="fixed_window")  # 20 s into a minute
        hits = [rl.hit("card") for _ in range(5)]
        assert [h.allowed for h in hits] == [True, True, True, False, False]
        assert s(hits[4].retry_after) == 40 and hits[4].remaining == 0
        clock.advance(40)
        assert rl.acquire("card").remaining == 2

    def test_sliding_window_hit_weighs_into_the_next_window(self, backend, clock):
        rl = limiter("3/minute", backend, clock, algorithm="sliding_window")
        hits = [rl.hit("card") for _ in range(4)]
        assert [h.allowed for h in hits] == [True, True, True, False]
        # the next window starts in 40 s; 4 x (1 - e) + 1 <= 3 from e = 0.5 on: 30 s later
        assert s(hits[3].retry_after) == 70

    def test_hit_with_a_cost(self, backend, clock):
        rl = limiter("1000/day", backend, clock)
        assert rl.hit("card", cost=600).remaining == 400
        over = rl.hit("card", cost=600)
        assert not over.allowed and over.remaining == 0

    async def test_concurrent_hits_are_each_counted_once(self, backend, clock):
        rl = limiter("1000/minute", backend, clock, algorithm="fixed_window")
        await asyncio.gather(*(rl.ahit("ip") for _ in range(100)))
        assert rl.stats("ip")[0].remaining == 900


class TestRefund:
    @pytest.mark.parametrize("algorithm", ["gcra", "sliding_window", "fixed_window"])
    def test_refund_gives_back_and_never_beyond_the_limit(self, backend, clock, algorithm):
        rl = limiter("3/minute", backend, clock, algorithm=algorithm)
        for _ in range(3):
            rl.acquire("m")
        back = rl.refund("m")
        assert back.allowed and back.remaining == 1
        assert rl.acquire("m").allowed
        assert rl.refund("m", cost=100).remaining == 3
        assert rl.peek("m").remaining == 3
        assert rl.refund("fresh").remaining == 3  # nothing consumed: nothing to give

    def test_a_sliding_window_refunds_the_previous_window_too(self, backend, clock):
        rl = limiter("4/minute", backend, clock, algorithm="sliding_window")
        for _ in range(4):
            rl.acquire("m")
        clock.advance(60)  # 20 s into the next minute: 4 in the previous one, weighing 2/3
        assert rl.peek("m").remaining == 1
        assert rl.refund("m", cost=3).remaining == 3  # 1 left in the previous one: 3.33 free

    def test_refund_after_a_changed_limit_stays_within_the_new_one(self, backend, clock):
        rl = limiter("10/second", backend, clock)
        rl.acquire("m", cost=4)
        rl.set_limits("2/second")
        assert rl.refund("m", cost=10).remaining == 2


class TestStatsAndReset:
    def test_stats_per_limit(self, backend, clock):
        rl = limiter("5/second; 100/day", backend, clock)
        rl.acquire("m", cost=2)
        per_second, per_day = rl.stats("m")
        assert (per_second.limit, per_second.window, per_second.remaining) == (5, 1.0, 3)
        assert round(per_second.reset_after * 1000) == 400
        assert (per_day.limit, per_day.window, per_day.remaining) == (100, 86400.0, 98)
        assert per_day.policy == "100/day"

    def test_reset_unblocks_a_key(self, backend, clock):
        rl = limiter("2/minute; 10/day", backend, clock)
        rl.acquire("merchant", cost=2)
        assert not rl.acquire("merchant").allowed
        rl.reset("merchant")
        assert rl.acquire("merchant").remaining == 1
        assert [st.remaining for st in rl.stats("merchant")] == [1, 9]
        rl.reset("other")  # nothing stored: nothing happens
        assert rl.peek("other").remaining == 2
        assert stored_keys(backend)
        rl.reset("merchant")
        assert stored_keys(backend) == set()

    def test_reset_is_audited_with_the_key_hash_only(self, backend, clock):
        seen = []
        rl = limiter("2/minute", backend, clock, audit=AuditLog([CallbackSink(seen.append)]))
        rl.acquire("4111111111111111")
        rl.reset("4111111111111111", actor="ops:alice")
        (record,) = seen
        assert record.event_type == "operator.override"
        assert record.principal == "ops:alice" and record.resource == "ratelimit:acct"
        assert record.details["action"] == "reset"
        assert "4111" not in str(record.details)

    async def test_async_twins(self, backend, clock):
        rl = limiter("3/minute", backend, clock)
        assert (await rl.apeek("m")).remaining == 3
        assert (await rl.ahit("m", cost=2)).remaining == 1
        assert (await rl.arefund("m")).remaining == 2
        assert [st.remaining for st in await rl.astats("m")] == [2]
        await rl.areset("m")
        assert (await rl.apeek("m")).remaining == 3


async def test_reset_raises_when_redis_is_down_whatever_on_backend_error_says(fresh_redis):
    red = RedisBackend.from_url(fresh_redis.url, timeout=0.2)
    try:
        rl = RateLimiter("2/minute", backend=red, name="down", on_backend_error="local")
        rl.acquire("m")
        fresh_redis.kill()
        assert rl.acquire("m").fallback == "local"  # decisions carry on locally
        assert rl.hit("m").fallback == "local"
        with pytest.raises(BackendUnavailable):
            rl.reset("m")
        with pytest.raises(BackendUnavailable):
            await rl.areset("m")
    finally:
        await red.aclose()
