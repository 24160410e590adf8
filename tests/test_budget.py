"""RetryBudget: the token arithmetic on every backend, the floor, refills, fallbacks, processes."""

from __future__ import annotations

import contextlib
import multiprocessing
import random
from collections.abc import Sequence
from typing import Any

import pytest

from fintech_resilience.backends.base import Arg, Backend
from fintech_resilience.backends.memory import MemoryBackend
from fintech_resilience.errors import (
    BackendUnavailable,
    ConfigurationError,
    RetryBudgetExhausted,
)
from fintech_resilience.retries.budget import RetryBudget
from fintech_resilience.retries.core import retry
from fintech_resilience.testing import ManualClock, test_mode

START = 1_700_000_000.0


def test_ten_deposits_of_a_tenth_make_exactly_one_retry(backend: Backend,
                                                        clock: ManualClock) -> None:
    budget = RetryBudget("psp", backend=backend, ratio=0.1, min_per_second=0, clock=clock)
    for _ in range(9):
        budget.deposit()
    assert not budget.withdraw()  # 0.9 tokens: no whole retry yet
    budget.deposit()
    assert budget.withdraw()  # 10 x 0.1 = exactly 1.0 (integer micro-tokens, no float drift)
    assert not budget.withdraw()


def test_floor_allows_min_per_second_and_refills_with_time(backend: Backend,
                                                           clock: ManualClock) -> None:
    budget = RetryBudget("psp", backend=backend, ratio=0.1, min_per_second=2, clock=clock)
    assert [budget.withdraw() for _ in range(3)] == [True, True, False]
    clock.advance(0.5)  # half a second refills one retry at 2/second
    assert [budget.withdraw() for _ in range(2)] == [True, False]
    clock.advance(60)  # the floor holds at most one second of retries
    assert [budget.withdraw() for _ in range(3)] == [True, True, False]


def test_tokens_are_capped_at_max_tokens(backend: Backend, clock: ManualClock) -> None:
    budget = RetryBudget("psp", backend=backend, ratio=1.0, min_per_second=0, max_tokens=3,
                         clock=clock)
    for _ in range(50):
        budget.deposit()
    state = budget.flush()
    assert state.tokens == 3.0
    assert [budget.withdraw() for _ in range(4)] == [True, True, True, False]


def test_budget_refills_as_successes_return(backend: Backend, clock: ManualClock) -> None:
    budget = RetryBudget("psp", backend=backend, ratio=0.5, min_per_second=0, clock=clock)
    healthy = [False]

    def call() -> str:
        if not healthy[0]:
            raise ConnectionError("PSP down")
        return "ok"

    guarded = retry(on=ConnectionError, attempts=2, budget=budget, clock=clock)(call)
    with test_mode():
        for _ in range(4):  # 4 first attempts deposit 2 tokens: the first two calls retry
            with pytest.raises((ConnectionError, RetryBudgetExhausted)):
                guarded()
        with pytest.raises(RetryBudgetExhausted) as info:
            guarded()  # deposits 0.5, the retry needs 1: refused
        assert isinstance(info.value.__cause__, ConnectionError)
        healthy[0] = True
        for _ in range(4):
            assert guarded() == "ok"  # successful first attempts deposit too
        healthy[0] = False
        with pytest.raises(ConnectionError):  # the retry was granted again (and failed)
            guarded()


def test_deposits_are_batched_into_one_round_trip_per_token(clock: ManualClock) -> None:
    calls: list[str] = []

    class Counting(MemoryBackend):
        def run(self, script: str, keys: Sequence[str], args: Sequence[Arg]) -> Any:
            calls.append(script)
            return super().run(script, keys, args)

    budget = RetryBudget("psp", backend=Counting(), ratio=0.1, clock=clock)
    for _ in range(25):
        budget.deposit()
    assert calls == ["retrybudget_update"] * 2  # at 10 and 20 pending first attempts
    assert budget.withdraw()  # carries the 5 pending deposits in the same call
    assert len(calls) == 3
    assert budget.flush().tokens == pytest.approx(1.5)


class Down(Backend):
    kind = "down"

    def run(self, script: str, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        raise BackendUnavailable("redis is down")

    async def arun(self, script: str, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        raise BackendUnavailable("redis is down")


async def test_backend_failure_allows_retries_by_default() -> None:
    budget = RetryBudget("psp", backend=Down(), min_per_second=0)
    assert budget.withdraw()
    assert await budget.awithdraw()
    strict = RetryBudget("psp", backend=Down(), on_backend_error="deny")
    assert not strict.withdraw()
    with pytest.raises(BackendUnavailable):
        RetryBudget("psp", backend=Down(), on_backend_error="raise").withdraw()


async def test_async_twins_share_the_arithmetic(backend: Backend, clock: ManualClock) -> None:
    budget = RetryBudget("psp", backend=backend, ratio=0.25, min_per_second=0, clock=clock)
    for _ in range(4):
        await budget.adeposit()
    assert await budget.awithdraw()
    assert not await budget.awithdraw()
    assert (await budget.aflush()).tokens == 0


async def test_memory_and_redis_agree_on_every_reply(
        backend_pair: tuple[Backend, Backend]) -> None:
    memory, redis = backend_pair
    rng = random.Random(3)
    key = ["fr:rb:{psp}"]
    now = 1_700_000_000_000_000
    for _ in range(300):
        now += rng.choice([0, 0, 1, 999, 250_000, 3_000_000])
        args = (now, rng.randint(0, 12), rng.choice([100_000, 333_333, 1_000_000]), 5_000_000,
                rng.randint(0, 1), rng.choice([0, 500_000, 2_000_000]), 2_000_000, 60_000)
        assert memory.run("retrybudget_update", key, args) == \
            await redis.arun("retrybudget_update", key, args)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"ratio": -0.1}, "ratio must be a number"),
    ({"ratio": "10%"}, "ratio must be a number"),
    ({"min_per_second": -1}, "min_per_second must be"),
    ({"max_tokens": 0}, "max_tokens must be"),
    ({"ratio": 0, "min_per_second": 0}, "would refuse every retry"),
    ({"on_backend_error": "ignore"}, "on_backend_error must be one of"),
])
def test_bad_budget_configuration(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        RetryBudget("psp", **kwargs)
    with pytest.raises(ConfigurationError, match="name must be"):
        RetryBudget("psp acme")


# --- 20 processes against one dependency that always fails -----------------------------------

PROCESSES = 20
CALLS_PER_PROCESS = 50
RATIO = 0.1
FLOOR = 3  # min_per_second; the clock stands still, so the floor grants exactly 3 retries
ATTEMPTS = 4


def _worker(url: str) -> tuple[int, int]:
    """Call an always-failing dependency; return (first attempts, retries) of this process."""
    from fintech_resilience.backends.redis import RedisBackend

    backend = RedisBackend.from_url(url, timeout=5.0)
    budget = RetryBudget("psp-acme", backend=backend, ratio=RATIO, min_per_second=FLOOR,
                         clock=ManualClock(START))
    attempts = [0]

    def always_fails() -> None:
        attempts[0] += 1
        raise ConnectionError("PSP down")

    guarded = retry(on=ConnectionError, attempts=ATTEMPTS, budget=budget,
                    clock=ManualClock(START))(always_fails)
    with test_mode():
        for _ in range(CALLS_PER_PROCESS):
            with contextlib.suppress(ConnectionError, RetryBudgetExhausted):
                guarded()
    backend.close()
    return CALLS_PER_PROCESS, attempts[0] - CALLS_PER_PROCESS


def test_twenty_processes_retry_within_ratio_plus_floor(redis_url: str) -> None:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["fintech_resilience.retries.budget", "fintech_resilience.retries.core",
                                "fintech_resilience.backends.redis"])
    with ctx.Pool(PROCESSES) as pool:
        results = pool.map(_worker, [redis_url] * PROCESSES)
    first_attempts = sum(f for f, _ in results)
    retries = sum(r for _, r in results)
    assert first_attempts == PROCESSES * CALLS_PER_PROCESS == 1000
    # Without a budget: 1000 calls x 4 attempts = 4000 attempts hit the failing dependency.
    # With it, every retry spends a whole token; tokens come only from first attempts
    # (0.1 each: 1000 x 0.1 = 100) and from the floor (3, the clock stands still), so
    #     retries <= 0.1 x 1000 + 3 = 103   and   attempts <= 1000 + 103 = 1103.
    bound = RATIO * first_attempts + FLOOR
    assert retries <= bound == 103
    assert first_attempts + retries <= 1103
    # Exactly: retries = deposits + floor - what is left over (all deposits were sent along with
    # each process's withdrawals, so nothing is pending).
    from fintech_resilience.backends.redis import RedisBackend

    backend = RedisBackend.from_url(redis_url, timeout=5.0)
    left = RetryBudget("psp-acme", backend=backend, ratio=RATIO, min_per_second=FLOOR,
                       clock=ManualClock(START)).flush()
    backend.close()
    assert retries == pytest.approx(RATIO * first_attempts + FLOOR - left.tokens - left.floor)
    assert left.tokens < 1 + RATIO * PROCESSES  # the budget was used, not left idle
