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


def test_memory_and_redis_gcra_agree_at_the_conformance_boundary(backend_pair):
    """Exhaust the bucket, then step the clock to a few microseconds around the moment the
    next request conforms (where the 1-microsecond tolerance decides): the memory twin and the
    Lua script agree, for one limit and for two combined."""
    memory, redis = backend_pair
    for interval in (1.0, 10.0, 1000.0, 100 / 3, 1e6 / 7):
        for burst in (1, 3):
            for cost in (1, 2):
                n = next(_names)
                keys = [f"fr:t:{{b-{n}}}:k", f"fr:t:{{b-{n}}}:wide"][:1 + (burst == 3)]
                now = 1_700_000_000_000_000
                args = (repr(interval), repr(interval * burst),
                        repr(interval * 2), repr(interval * 2 * burst))[:2 * len(keys)]
                refused = 0
                for step in range(12):
                    replies = [b.run("ratelimit_gcra", keys, (now, cost, *args))
                               for b in (memory, redis)]
                    assert replies[0] == replies[1], (interval, burst, cost, step)
                    if not replies[0][0]:  # refused: wait until 2 us before it would conform
                        refused += 1
                        now += max(0, int(replies[0][1]) - 2)
                    else:
                        now += 1 if step % 2 else 0
                assert refused >= 2  # the boundary was reached, more than once


counted = st.lists(
    st.tuples(
        st.sampled_from(["acquire", "peek", "hit", "refund", "reset", "limits"]),
        st.sampled_from(["a", "b"]),                   # key
        st.integers(min_value=1, max_value=6),        # cost
        st.integers(min_value=0, max_value=2500),     # then advance the clock, ms
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    specs=st.lists(st.sampled_from(SPECS), min_size=1, max_size=3),
    algorithm=st.sampled_from(["gcra", "sliding_window", "fixed_window"]),
    start=st.floats(min_value=1_600_000_000, max_value=1_800_000_000),
    ops=counted,
)
def test_peek_hit_refund_and_reset_identical_on_memory_and_redis(backend_pair, specs, algorithm,
                                                                  start, ops):
    """The ``ratelimit_*_adjust`` and ``ratelimit_reset`` twins, mixed with acquisitions and
    with limits that change (``set_limits``), answer exactly as the scripts."""
    memory, redis = backend_pair
    clock = ManualClock(round(start, 3))
    name = f"adj{next(_names)}"
    limiters = [RateLimiter(specs[0], backend=b, algorithm=algorithm, name=name, clock=clock,
                            on_backend_error="raise") for b in (memory, redis)]
    turn = itertools.cycle(specs)
    for op, key, cost, advance_ms in ops:
        if op == "limits":
            spec = next(turn)
            for rl in limiters:
                rl.set_limits(spec)
            continue
        if op == "reset":
            for rl in limiters:
                rl.reset(key)
        else:
            decisions = [getattr(rl, op)(key, cost) for rl in limiters]
            assert decisions[0]._raw == decisions[1]._raw, (op, key, cost, clock.time())
            assert decisions[0] == decisions[1]
        clock.advance(advance_ms / 1000)
