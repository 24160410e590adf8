"""Memory and Redis must return identical decisions for the same operations and times."""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fintech_resilience import RateLimiter
from fintech_resilience.testing import ManualClock

_names = itertools.count()

SPECS = ["5/second", "3/second; 10/minute", "7/2 seconds", "100/day; 20/hour", "1/second"]

operations = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c"]),              # key
        st.integers(min_value=1, max_value=6),        # cost
        st.integers(min_value=0, max_value=2500),     # then advance the clock, ms
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    spec=st.sampled_from(SPECS),
    algorithm=st.sampled_from(["gcra", "sliding_window", "fixed_window"]),
    burst=st.one_of(st.none(), st.integers(min_value=1, max_value=8)),
    start=st.floats(min_value=1_600_000_000, max_value=1_800_000_000),
    ops=operations,
)
def test_memory_and_redis_decide_identically(backend_pair, spec, algorithm, burst, start, ops):
    memory, redis = backend_pair
    clock = ManualClock(round(start, 3))
    name = f"diff{next(_names)}"  # a fresh key space per example
    extra = {"burst": burst} if algorithm == "gcra" else {}
    limiters = [
        RateLimiter(spec, backend=b, algorithm=algorithm, name=name, clock=clock,
                    on_backend_error="raise", **extra)
        for b in (memory, redis)
    ]
    for key, cost, advance_ms in ops:
        on_memory, on_redis = (rl.acquire(key, cost=cost) for rl in limiters)
        assert on_memory == on_redis, (key, cost, clock.time())
        assert on_memory._raw == on_redis._raw
        clock.advance(advance_ms / 1000)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(st.sampled_from(["acquire", "release", "renew"]),
                              st.integers(0, 3), st.integers(0, 12_000)), max_size=30))
def test_concurrency_leases_identical_on_memory_and_redis(backend_pair, ops):
    from fintech_resilience import ConcurrencyLimiter

    memory, redis = backend_pair
    clock = ManualClock(1_700_000_000.0)
    name = f"ccdiff{next(_names)}"
    pair = [ConcurrencyLimiter(2, backend=b, name=name, lease=10, clock=clock,
                               on_backend_error="raise") for b in (memory, redis)]
    held: list[list] = [[], []]
    for op, index, advance_ms in ops:
        results = []
        for side, cl in enumerate(pair):
            if op == "acquire":
                slot = cl.try_acquire("psp")
                results.append((slot.acquired, slot.in_use, slot.retry_after))
                if slot.acquired:
                    held[side].append(slot)
            elif held[side]:
                slot = held[side][index % len(held[side])]
                results.append(cl.release(slot) if op == "release" else cl.renew(slot))
        assert results[:1] == results[1:] or not results
        clock.advance(advance_ms / 1000)
