"""Limits per key (per plan), per call, and changed at run time - on every backend."""

from __future__ import annotations

import threading

import pytest

from fintech_resilience import ConfigurationError, RateLimited, RateLimiter
from fintech_resilience.backends.base import Backend
from fintech_resilience.ratelimit import specs
from fintech_resilience.testing import ManualClock

ALGORITHMS = ("gcra", "sliding_window", "fixed_window")


def limiter(limits, backend: Backend, clock: ManualClock, **kw: object) -> RateLimiter:
    return RateLimiter(limits, backend=backend, clock=clock, name="plans",  # type: ignore[arg-type]
                       on_backend_error="raise", **kw)


def ms(seconds: float) -> int:
    return round(seconds * 1000)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_dropping_a_limit_keeps_the_state_of_the_windows_that_remain(backend, clock, algorithm):
    """A deploy that drops the per-second limit must find the daily count again, not read the
    per-second state as the day's (which made a window's reset years away)."""
    before = limiter("2/second; 100/day", backend, clock, algorithm=algorithm)
    assert [before.acquire("m").allowed for _ in range(3)] == [True, True, False]
    after = limiter("100/day", backend, clock, algorithm=algorithm)
    d = after.acquire("m")
    assert d.allowed and d.remaining == 97
    # the clock is 80,000 s into its UTC day: the window ends in 6,400 s; the sliding window's
    # count weighs until the end of the next day; GCRA's 3 units are 3 x 864 s of debt
    expected = {"gcra": 3 * 864, "fixed_window": 6_400, "sliding_window": 86_400 + 6_400}
    assert ms(d.reset_after) == expected[algorithm] * 1000


class TestLimitsPerKey:
    def test_each_plan_applies_to_its_own_keys(self, backend, clock):
        plans = {"free": "2/second", "pro": "5/second"}
        plan_of = {"m-free": "free", "m-pro": "pro"}
        rl = limiter(lambda key: plans[plan_of[key]], backend, clock)
        free = [rl.acquire("m-free") for _ in range(3)]
        pro = [rl.acquire("m-pro") for _ in range(6)]
        assert [d.allowed for d in free] == [True, True, False]
        assert [d.allowed for d in pro] == [True] * 5 + [False]
        assert free[0].headers()["RateLimit-Policy"] == '"plans";q=2;w=1'
        assert pro[0].headers()["RateLimit-Policy"] == '"plans";q=5;w=1'
        assert pro[0].policy_field == '"plans";q=5;w=1'
        assert rl.rates == ()
        with pytest.raises(ConfigurationError, match="per key"):
            _ = rl.policy_field

    def test_a_plan_change_is_seen_by_the_next_decision(self, backend, clock):
        plan = {"m": "2/second"}
        rl = limiter(lambda key: plan[key], backend, clock)
        assert [rl.acquire("m").allowed for _ in range(3)] == [True, True, False]
        plan["m"] = "4/second"  # upgraded: the GCRA debt of 1 s is a full 4/second bucket too
        assert not rl.acquire("m").allowed
        clock.advance(0.5)
        assert [rl.acquire("m").allowed for _ in range(3)] == [True, True, False]

    def test_each_distinct_limits_string_is_parsed_once(self, backend, clock, monkeypatch):
        parsed: list[object] = []
        real = specs.parse_limits

        def counting(spec):  # type: ignore[no-untyped-def]
            parsed.append(spec)
            return real(spec)

        monkeypatch.setattr(specs, "parse_limits", counting)
        plans = ["1000/second", "2000/second", ["10/second", "5000/day"]]
        rl = limiter(lambda key: plans[int(key) % 3], backend, clock)
        for i in range(60):
            assert rl.acquire(str(i)).allowed
        assert parsed == plans

    def test_the_cache_of_parsed_limits_is_bounded(self, clock):
        from fintech_resilience import MemoryBackend

        rl = limiter(lambda key: f"{key}/minute", MemoryBackend(), clock)
        for amount in range(1, 3 * specs.SPEC_CACHE_SIZE):
            d = rl.acquire(amount)
            assert d.allowed and d.limit == amount and d.remaining == amount - 1
        assert len(rl._specs._entries) <= specs.SPEC_CACHE_SIZE

    def test_a_limits_callable_must_answer_a_rate(self, backend, clock):
        rl = limiter(lambda key: None, backend, clock)
        with pytest.raises(ConfigurationError, match="returned None"):
            rl.acquire("m")
        bad = limiter(lambda key: "10 per fortnight", backend, clock)
        with pytest.raises(ConfigurationError, match="10/second"):
            bad.acquire("m")
        worse = limiter(lambda key: 10, backend, clock)
        with pytest.raises(ConfigurationError, match="rate limit is a string"):
            worse.acquire("m")


class TestLimitsPerCall:
    def test_a_call_s_limits_override_the_limiter_s(self, backend, clock):
        rl = limiter("100/second", backend, clock)
        assert rl.acquire("m", limits="1/second").allowed
        refused = rl.acquire("m", limits="1/second")
        assert not refused.allowed and refused.policy == "1/second"
        # the same window, so the same state: for GCRA the override left 1 s of debt, a full
        # bucket of the limiter's own 100/second too
        own = rl.acquire("m")
        assert not own.allowed and ms(own.retry_after) == 10

    async def test_async_and_the_decorator(self, backend, clock):
        rl = limiter("100/second", backend, clock)
        assert (await rl.aacquire("m", limits=["1/second"])).allowed
        assert not (await rl.aacquire("m", limits=["1/second"])).allowed

        @rl.limit(key=lambda merchant, plan: merchant, limits=lambda merchant, plan: plan)
        def charge(merchant: str, plan: str) -> str:
            return merchant

        assert charge("x", "1/second") == "x"
        with pytest.raises(RateLimited) as refused:
            charge("x", "1/second")
        assert refused.value.decision.policy == "1/second"
        assert charge("y", "1/second") == "y"

    def test_two_limits_of_one_window_are_refused(self):
        with pytest.raises(ConfigurationError, match="same window"):
            RateLimiter("10/minute; 20/minute")
        with pytest.raises(ConfigurationError, match="same window"):
            RateLimiter("10/hour; 100/60 minutes")


class TestSetLimits:
    def test_gcra_debt_carries_over(self, backend, clock):
        rl = limiter("10/second", backend, clock)
        for _ in range(5):
            rl.acquire("m")  # 0.5 s of debt
        rl.set_limits("20/second")  # a bucket of 1 s: 0.5 s free = 10 units
        d = rl.acquire("m")
        assert d.policy == "20/second" and d.remaining == 9
        rl.set_limits("5/second")  # 0.55 s of debt out of 1 s: 2 units of 0.2 s
        assert [rl.acquire("m").allowed for _ in range(3)] == [True, True, False]
        assert rl.policy_field == '"plans";q=5;w=1'

    @pytest.mark.parametrize("algorithm", ["fixed_window", "sliding_window"])
    def test_a_window_keeps_its_count(self, backend, clock, algorithm):
        clock.set(1_700_000_000.0)  # the start of a second: one window for the whole test
        rl = limiter("5/second", backend, clock, algorithm=algorithm)
        for _ in range(4):
            rl.acquire("m")
        rl.set_limits("10/second")
        assert rl.acquire("m").remaining == 5
        rl.set_limits("3/second")  # the count (5) is above the new limit: refused
        refused = rl.acquire("m")
        assert not refused.allowed and refused.remaining == 0
        rl.set_limits("5/minute")  # another window: another count, starting empty
        assert rl.acquire("m").remaining == 4

    def test_from_fixed_to_per_key_and_back(self, backend, clock):
        rl = limiter("1/second", backend, clock)
        rl.set_limits(lambda key: "3/second")
        assert rl.acquire("m").remaining == 2
        rl.set_limits("1/second")
        assert not rl.acquire("m").allowed

    def test_bad_limits_leave_the_limiter_as_it_was(self, backend, clock):
        rl = limiter("2/second", backend, clock)
        with pytest.raises(ConfigurationError):
            rl.set_limits("2/fortnight")
        assert rl.policy_field == '"plans";q=2;w=1'

    def test_threads_deciding_while_the_limits_change(self, backend, clock):
        rl = limiter("1000000/second", backend, clock)
        seen: set[str] = set()
        errors: list[BaseException] = []
        stop = threading.Event()

        def decide() -> None:
            try:
                while not stop.is_set():
                    seen.add(rl.acquire("m").policy)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=decide) for _ in range(4)]
        for t in threads:
            t.start()
        for i in range(200):
            rl.set_limits("1000000/second" if i % 2 else (lambda key: "2000000/second"))
        stop.set()
        for t in threads:
            t.join()
        assert not errors
        assert seen <= {"1000000/second", "2000000/second"} and seen
