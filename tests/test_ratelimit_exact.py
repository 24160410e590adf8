"""Each algorithm's definition, to the millisecond, on a manual clock, on every backend."""

from __future__ import annotations

import math

import pytest

from fintech_resilience import RateLimited, RateLimiter
from fintech_resilience.backends.base import Backend
from fintech_resilience.backends.memory import MemoryBackend
from fintech_resilience.testing import ManualClock


def limiter(spec: str, backend: Backend, clock: ManualClock, **kw: object) -> RateLimiter:
    return RateLimiter(spec, backend=backend, clock=clock, name="exact", **kw)  # type: ignore[arg-type]


def ms(seconds: float) -> int:
    return round(seconds * 1000)


class TestGcra:
    def test_burst_then_refill_at_the_emission_interval(self, backend, clock):
        rl = limiter("5/second", backend, clock)
        decisions = [rl.acquire("m") for _ in range(5)]
        assert [d.allowed for d in decisions] == [True] * 5
        assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0]
        assert [ms(d.reset_after) for d in decisions] == [200, 400, 600, 800, 1000]
        denied = rl.acquire("m")
        assert not denied.allowed
        assert ms(denied.retry_after) == 200
        assert denied.remaining == 0 and ms(denied.reset_after) == 1000
        clock.advance(0.199)
        assert not rl.acquire("m").allowed
        clock.advance(0.001)
        again = rl.acquire("m")
        assert again.allowed and again.remaining == 0
        clock.advance(0.1)
        late = rl.acquire("m")
        assert not late.allowed and ms(late.retry_after) == 100

    def test_full_bucket_after_idle_period(self, backend, clock):
        rl = limiter("5/second", backend, clock)
        for _ in range(5):
            rl.acquire("m")
        clock.advance(1.0)
        assert [rl.acquire("m").allowed for _ in range(6)] == [True] * 5 + [False]

    def test_explicit_burst_smaller_than_the_limit(self, backend, clock):
        rl = limiter("10/second", backend, clock, burst=2)
        assert [rl.acquire("m").allowed for _ in range(3)] == [True, True, False]
        denied = rl.acquire("m")
        assert ms(denied.retry_after) == 100
        clock.advance(0.1)
        assert rl.acquire("m").allowed

    def test_fractional_emission_interval(self, backend, clock):
        rl = limiter("3/second", backend, clock)
        assert [rl.acquire("m").allowed for _ in range(4)] == [True, True, True, False]
        denied = rl.acquire("m")
        assert ms(denied.retry_after) == 333
        clock.advance(1 / 3)
        assert rl.acquire("m").allowed
        assert not rl.acquire("m").allowed

    def test_admitted_never_exceeds_burst_plus_rate_times_elapsed(self, backend, clock):
        rl = limiter("20/second", backend, clock)
        admitted = 0
        for _step in range(300):  # 3 seconds in 10 ms steps, 3 tries per step
            admitted += sum(rl.acquire("m").allowed for _ in range(3))
            clock.advance(0.01)
        # burst 20 + 20/s * 2.99 s elapsed since the first decision
        assert admitted == 20 + math.floor(20 * 2.99)

    def test_cost_consumes_units(self, backend, clock):
        rl = limiter("10/second", backend, clock)
        first = rl.acquire("card", cost=4)
        assert first.allowed and first.remaining == 6 and ms(first.reset_after) == 400
        second = rl.acquire("card", cost=7)
        assert not second.allowed and ms(second.retry_after) == 100
        assert rl.acquire("card", cost=6).allowed

    def test_cost_above_the_limit_is_never_admitted(self, backend, clock):
        rl = limiter("10/second", backend, clock)
        d = rl.acquire("card", cost=11)
        assert not d.allowed and math.isinf(d.retry_after)
        assert "Retry-After" not in d.headers()
        assert rl.acquire("card", cost=10).allowed  # nothing was consumed


class TestSlidingWindow:
    def test_previous_window_weighs_by_overlap(self, backend, clock):
        rl = limiter("10/second", backend, clock, algorithm="sliding_window")
        assert sum(rl.acquire("m").allowed for _ in range(12)) == 10
        denied = rl.acquire("m")
        # the current window is full: wait for the next one, then until 10 * (1 - e) + 1 <= 10
        assert ms(denied.retry_after) == 1100
        assert denied.remaining == 0 and ms(denied.reset_after) == 2000
        clock.advance(1.099)
        assert not rl.acquire("m").allowed
        clock.advance(0.001)
        d = rl.acquire("m")
        assert d.allowed and d.remaining == 0
        clock.advance(0.4)  # previous window weighs 0.5 -> estimate 5 + 1
        d = rl.acquire("m")
        assert d.allowed and d.remaining == 3

    def test_retry_after_inside_the_current_window(self, backend, clock):
        rl = limiter("10/second", backend, clock, algorithm="sliding_window")
        for _ in range(10):
            rl.acquire("m")
        clock.advance(1.5)  # previous = 10, weight 0.5 -> estimate 5
        assert sum(rl.acquire("m").allowed for _ in range(6)) == 5
        denied = rl.acquire("m")
        # current 5, previous 10: need 10 * (1 - e) <= 4 -> e >= 0.6, now e = 0.5
        assert ms(denied.retry_after) == 100


class TestFixedWindow:
    def test_windows_are_aligned_on_the_clock(self, backend, clock):
        clock.advance(0.3)
        rl = limiter("10/second", backend, clock, algorithm="fixed_window")
        decisions = [rl.acquire("m") for _ in range(11)]
        assert [d.allowed for d in decisions] == [True] * 10 + [False]
        assert ms(decisions[-1].retry_after) == 700 and ms(decisions[-1].reset_after) == 700
        clock.advance(0.7)
        assert sum(rl.acquire("m").allowed for _ in range(11)) == 10

    def test_a_day_starts_at_midnight_utc(self, backend, clock):
        clock.set(1_700_006_399.0)  # 2023-11-14T23:59:59Z
        rl = limiter("2/day", backend, clock, algorithm="fixed_window")
        d = rl.acquire("m")
        assert ms(d.reset_after) == 1000
        rl.acquire("m")
        assert not rl.acquire("m").allowed
        clock.advance(1.0)
        assert rl.acquire("m").allowed


@pytest.mark.parametrize("algorithm", ["gcra", "sliding_window", "fixed_window"])
class TestAllOrNothing:
    def test_rejection_by_one_limit_consumes_nothing_from_the_others(
        self, backend, clock, algorithm
    ):
        rl = limiter("2/second; 3/day", backend, clock, algorithm=algorithm)
        assert rl.acquire("m").allowed and rl.acquire("m").allowed
        by_second = rl.acquire("m")  # refused by 2/second
        assert not by_second.allowed
        assert by_second.policy == "2/second"
        assert [s.remaining for s in by_second.limits] == [0, 1]  # the day kept its unit
        clock.advance(2.0)
        assert rl.acquire("m").allowed  # the day's last unit
        clock.advance(2.0)
        by_day = rl.acquire("m")  # refused by 3/day
        assert not by_day.allowed and by_day.policy == "3/day"
        assert [s.remaining for s in by_day.limits] == [2, 0]  # the second lost nothing

    def test_decorator_raises_rate_limited(self, backend, clock, algorithm):
        rl = limiter("1/minute", backend, clock, algorithm=algorithm)
        calls = []

        @rl.limit(key=lambda merchant_id, **_: merchant_id)
        def charge(merchant_id: str, amount: int) -> int:
            calls.append(amount)
            return amount

        assert charge("m1", amount=5) == 5
        with pytest.raises(RateLimited) as info:
            charge("m1", amount=6)
        assert info.value.decision.policy == "1/minute" and info.value.retry_after > 0
        assert charge("m2", amount=7) == 7
        assert calls == [5, 7]

    async def test_async_decorator_and_aacquire(self, backend, clock, algorithm):
        rl = limiter("2/minute", backend, clock, algorithm=algorithm)

        @rl.limit(key="psp", cost=lambda amount: amount)
        async def charge(amount: int) -> int:
            return amount

        assert await charge(1) == 1
        assert await charge(1) == 1
        with pytest.raises(RateLimited):
            await charge(1)
        assert not (await rl.aacquire("psp")).allowed


def test_shadow_mode_counts_but_never_refuses(backend, clock):
    rl = limiter("2/second", backend, clock, shadow=True)
    decisions = [rl.acquire("m") for _ in range(3)]
    assert all(d.allowed for d in decisions)
    assert [d.shadowed for d in decisions] == [False, False, True]


def test_headers_follow_the_ietf_fields(backend, clock):
    rl = RateLimiter("2/second; 100/hour", backend=backend, clock=clock, name="api")
    d = rl.acquire("m")
    assert d.headers() == {
        "RateLimit-Policy": '"api-0";q=2;w=1, "api-1";q=100;w=3600',
        "RateLimit": '"api-0";r=1;t=1',
    }
    rl.acquire("m")
    refused = rl.acquire("m")
    assert refused.headers()["Retry-After"] == "1"
    one = RateLimiter("5/minute", backend=backend, clock=clock, name="one")
    single = one.acquire("m")
    assert single.headers() == {"RateLimit-Policy": '"one";q=5;w=60',
                                "RateLimit": '"one";r=4;t=12'}
    # t is the effective window: the seconds until ONE more unit is available (12 s for GCRA at
    # 5/minute), not until the whole quota is back (36 s, 60 s)
    one.acquire("m")
    assert one.acquire("m").headers()["RateLimit"] == '"one";r=2;t=12'
    one.acquire("m")
    one.acquire("m")
    clock.advance(5)
    refused_one = one.acquire("m")
    assert refused_one.headers() == {"RateLimit-Policy": '"one";q=5;w=60',
                                     "RateLimit": '"one";r=0;t=7', "Retry-After": "7"}
    window = RateLimiter("5/minute", backend=backend, clock=clock, name="fw",
                         algorithm="fixed_window")
    clock.set(1_700_000_080.0)  # 40 s into a minute: the window resets in 20 s
    assert window.acquire("m").headers()["RateLimit"] == '"fw";r=4;t=20'


def test_headers_omit_ratelimit_when_on_backend_error_decided(clock):
    import servers

    from fintech_resilience.backends.redis import RedisBackend

    dead = RedisBackend.from_url(f"redis://127.0.0.1:{servers.free_port()}", timeout=0.2)
    try:
        for policy, allowed in (("allow", True), ("deny", False)):
            d = RateLimiter("5/minute; 100/day", backend=dead, clock=clock, name="api",
                            on_backend_error=policy, deny_retry_after=3).acquire("m")
            assert d.allowed is allowed and d.fallback == policy and not d.measured
            expected = {"RateLimit-Policy": '"api-0";q=5;w=60, "api-1";q=100;w=86400'}
            if not allowed:
                expected["Retry-After"] = "3"
            assert d.headers() == expected
            assert d.policy_label == "api-0" and d.remaining == (5 if allowed else 0)
    finally:
        dead.close()


def test_an_expired_state_reads_as_a_fresh_key_on_memory(clock):
    """The memory GCRA reads an expired entry left in place (its TAT is behind now) as no state
    and overwrites it: the decisions are those of a key never seen, and the state lives on."""
    backend = MemoryBackend()
    rl = limiter("2/second", backend, clock)
    for _ in range(2):
        assert rl.acquire("old").allowed
    assert not rl.acquire("old").allowed
    clock.advance(5)  # long past the key's expiry; nothing has swept it
    assert len(backend.store) == 1
    old = [rl.acquire("old") for _ in range(3)]
    fresh = [rl.acquire("fresh") for _ in range(3)]
    assert [(d.allowed, d.limits, d.retry_after) for d in old] == [
        (d.allowed, d.limits, d.retry_after) for d in fresh]
    assert [d.allowed for d in old] == [True, True, False]
    now_us = round(clock.time() * 1_000_000)
    assert len(backend.store) == 2
    keys = backend.store.keys()  # MemoryStore is not a mapping
    assert all(backend.store.ttl_us(key, now_us) > 0 for key in keys)
