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


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    interval=st.one_of(st.sampled_from([1.0, 10.0, 1000.0, 1e6, 100 / 3, 1e6 / 7]),
                       st.floats(min_value=0.5, max_value=1e9, allow_nan=False)),
    burst=st.integers(min_value=1, max_value=8),
    # cost, then advance the clock: by whole intervals +- a few microseconds (where the
    # 1-microsecond tolerance decides), or by anything up to 50 minutes
    steps=st.lists(st.tuples(st.integers(min_value=1, max_value=10),
                             st.integers(min_value=0, max_value=3),
                             st.integers(min_value=-3, max_value=3),
                             st.one_of(st.none(), st.integers(min_value=0, max_value=3 * 10**9))),
                   min_size=1, max_size=30),
)
def test_the_one_limit_gcra_script_answers_as_the_general_one(backend_pair, interval, burst,
                                                               steps):
    """``ratelimit_gcra1`` (one limit) and ``ratelimit_gcra`` give the same replies and leave
    the same state, step by step, on the same Redis."""
    _, redis = backend_pair
    n = next(_names)
    one, general = f"fr:t:{{g1-{n}}}:k", f"fr:t:{{gn-{n}}}:k"
    now = 1_700_000_000_000_000
    tau = repr(interval * burst)
    for cost, intervals, delta, far in steps:
        args = (now, cost, repr(interval), tau)
        assert redis.run("ratelimit_gcra1", [one], args) == redis.run(
            "ratelimit_gcra", [general], args)
        assert redis.client.get(one) == redis.client.get(general)  # type: ignore[attr-defined]
        now += far if far is not None else max(0, round(intervals * interval) + delta)


def test_the_one_limit_gcra_script_agrees_at_the_conformance_boundary(backend_pair):
    """Exhaust the bucket, then step the clock to a few microseconds around the moment the
    next request conforms (where the 1-microsecond tolerance decides): both scripts agree."""
    _, redis = backend_pair
    for interval in (1.0, 10.0, 1000.0, 100 / 3, 1e6 / 7):
        for burst in (1, 3):
            for cost in (1, 2):
                n = next(_names)
                keys = {"ratelimit_gcra1": f"fr:t:{{b1-{n}}}:k",
                        "ratelimit_gcra": f"fr:t:{{bn-{n}}}:k"}
                now = 1_700_000_000_000_000
                args = (repr(interval), repr(interval * burst))
                refused = 0
                for step in range(12):
                    replies = [redis.run(s, [k], (now, cost, *args)) for s, k in keys.items()]
                    assert replies[0] == replies[1], (interval, burst, cost, step)
                    if not replies[0][0]:  # refused: wait until 2 us before it would conform
                        refused += 1
                        now += max(0, int(replies[0][1]) - 2)
                    else:
                        now += 1 if step % 2 else 0
                assert refused >= 2  # the boundary was reached, more than once
