"""MemoryBackend: bounded, expiring, thread-safe."""

from __future__ import annotations

import threading

from fintech_resilience import ConcurrencyLimiter, MemoryBackend, RateLimiter
from fintech_resilience.testing import ManualClock


def test_a_million_distinct_keys_stay_inside_the_bound():
    backend = MemoryBackend(max_keys=10_000)
    rl = RateLimiter("5/second", backend=backend, name="flood")
    run = backend.bind("ratelimit_gcra")
    args = (0, 1, 200_000.0, 1_000_000.0)  # 5/second, as the limiter sends it
    for i in range(1_000_000):
        run([f"fr:rl.gcra:{{flood:{i}}}:0"], args)
        if i % 50_000 == 0:
            assert len(backend) <= 10_000
    assert len(backend) <= 10_000
    assert backend.evictions > 0  # live keys were evicted to hold the bound, not kept
    assert rl.acquire("fresh").allowed


def test_expired_keys_go_before_live_ones():
    clock = ManualClock()
    backend = MemoryBackend(max_keys=100, clock=clock)
    short = RateLimiter("1/second", backend=backend, name="short", clock=clock)
    long = RateLimiter("1/day", backend=backend, name="long", clock=clock)
    long.acquire("keep-me")
    for i in range(90):
        short.acquire(f"s{i}")
    clock.advance(5)  # every short key has expired (1 s bucket + 1 s grace)
    for i in range(95):
        short.acquire(f"t{i}")
    assert not long.acquire("keep-me").allowed  # the live day-long key survived
    assert backend.evictions == 0


def test_state_expires_with_time():
    clock = ManualClock()
    backend = MemoryBackend(clock=clock)
    rl = RateLimiter("1/second", backend=backend, name="ttl", clock=clock)
    rl.acquire("m")
    clock.advance(3)
    rl.acquire("other")  # a write sweeps expired keys
    assert len(backend) <= 2


def test_threads_share_one_consistent_view():
    backend = MemoryBackend()
    rl = RateLimiter("500/hour", backend=backend, name="threads")
    admitted = []
    lock = threading.Lock()

    def worker():
        mine = sum(rl.acquire("m").allowed for _ in range(200))
        with lock:
            admitted.append(mine)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(admitted) == 500


def test_concurrency_slots_are_leases():
    clock = ManualClock()
    slots = ConcurrencyLimiter(2, backend=MemoryBackend(), name="psp", lease=10, clock=clock)
    a, b = slots.try_acquire("psp"), slots.try_acquire("psp")
    c = slots.try_acquire("psp")
    assert a.acquired and b.acquired and not c.acquired
    assert c.retry_after == 10.0
    clock.advance(5)
    assert slots.renew(a)
    clock.advance(5)  # b's lease ran out (its holder died); a was renewed
    d = slots.try_acquire("psp")
    assert d.acquired and d.in_use == 2
    assert not slots.release(b)  # releasing an expired lease frees nothing of anyone else
    assert slots.release(a) and slots.release(d)


def test_a_bound_rate_limit_operation_answers_as_the_operation_itself():
    """MemoryBackend.bind prepares ratelimit_gcra once (one limit goes straight to the
    single-limit step); its replies and stored state equal backend.run's, step by step."""
    clocks = (ManualClock(), ManualClock())
    bound_backend, plain_backend = (MemoryBackend(clock=c) for c in clocks)
    bound = bound_backend.bind("ratelimit_gcra")
    one = (0, 1, 250_000.0, 1_000_000.0)  # 4/second, burst 4
    two = (0, 2, 250_000.0, 1_000_000.0, 10_000_000.0, 20_000_000.0)
    steps = [(["a"], one), (["a"], one), (["b", "c"], two), (["a"], (0, 3, *one[2:])),
             (["b", "c"], two), (["a"], one), (["b", "c"], two)]
    for round_ in range(3):
        for keys, args in steps:
            assert bound(keys, args) == plain_backend.run("ratelimit_gcra", keys, args)
        # a caller's own time (args[0]) wins over the backend's clock, as in the script
        at = (0.4 + round_) * 1_000_000 + 1
        assert (bound(["a"], (round(at), *one[1:]))
                == plain_backend.run("ratelimit_gcra", ["a"], (round(at), *one[1:])))
        for clock in clocks:
            clock.advance(0.37)
    assert bound_backend.store.data.keys() == plain_backend.store.data.keys()
    assert ([e[0] for e in bound_backend.store.data.values()]
            == [e[0] for e in plain_backend.store.data.values()])
