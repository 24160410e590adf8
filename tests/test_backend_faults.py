"""Redis killed, paused, flushed, restarted, failed over: every on_backend_error policy holds.

Each call must return a decision (never an unhandled exception) within the configured timeout
plus a margin, and decisions must come from Redis again once it is healthy.
"""

from __future__ import annotations

import time

import pytest

from fintech_resilience import RateLimiter, RedisBackend

TIMEOUT = 0.1
MARGIN = 0.4  # scheduling slack on a loaded 2-core machine


def timed(fn):
    start = time.monotonic()
    result = fn()
    return result, time.monotonic() - start


def until_shared_again(rl: RateLimiter, key: str, within: float = 10.0):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        d, took = timed(lambda: rl.acquire(key))
        assert took <= TIMEOUT + MARGIN
        if d.fallback is None:
            return d
        time.sleep(0.05)
    raise AssertionError("decisions did not go back to Redis")


def check_policy_while_down(rl: RateLimiter, policy: str) -> None:
    outcomes = []
    for _ in range(6):
        d, took = timed(lambda: rl.acquire("merchant"))
        assert took <= TIMEOUT + MARGIN, took
        outcomes.append((d.allowed, d.fallback))
    if policy == "allow":
        assert outcomes == [(True, "allow")] * 6
    elif policy == "deny":
        assert outcomes == [(False, "deny")] * 6
    else:  # a per-process limiter of the same limits takes over: 3 per minute
        assert outcomes == [(True, "local")] * 3 + [(False, "local")] * 3


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["allow", "deny", "local"])
def test_killed_then_restarted(fresh_redis, policy):
    backend = RedisBackend.from_url(fresh_redis.url, timeout=TIMEOUT, cooldown=0.3)
    rl = RateLimiter("3/minute", backend=backend, name="faults", on_backend_error=policy)
    assert rl.acquire("merchant").fallback is None
    fresh_redis.kill()
    check_policy_while_down(rl, policy)
    fresh_redis.restart()  # empty: the script cache and the counters are gone
    d = until_shared_again(rl, "merchant")
    assert d.allowed and d.remaining == 2
    backend.close()


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["allow", "deny", "local"])
def test_paused_for_two_seconds(fresh_redis, policy):
    backend = RedisBackend.from_url(fresh_redis.url, timeout=TIMEOUT, cooldown=0.3)
    rl = RateLimiter("3/minute", backend=backend, name="pause", on_backend_error=policy)
    assert rl.acquire("warm").fallback is None
    fresh_redis.pause()
    try:
        paused_at = time.monotonic()
        check_policy_while_down(rl, policy)
        worst = 0.0
        while time.monotonic() - paused_at < 2.0:
            _, took = timed(lambda: rl.acquire("other"))
            worst = max(worst, took)
        assert worst <= TIMEOUT + MARGIN
    finally:
        fresh_redis.resume()
    until_shared_again(rl, "third")
    backend.close()


async def test_async_callers_are_covered_too(fresh_redis):
    backend = RedisBackend.from_url(fresh_redis.url, timeout=TIMEOUT, cooldown=0.3)
    rl = RateLimiter("3/minute", backend=backend, name="afaults", on_backend_error="local")
    assert (await rl.aacquire("m")).fallback is None
    fresh_redis.kill()
    start = time.monotonic()
    import asyncio

    decisions = await asyncio.gather(*(rl.aacquire("m") for _ in range(20)))
    assert time.monotonic() - start <= TIMEOUT + MARGIN
    assert {d.fallback for d in decisions} == {"local"}
    assert sum(d.allowed for d in decisions) == 3
    await backend.aclose()


def test_health_breaker_skips_a_dead_redis(fresh_redis):
    backend = RedisBackend.from_url(fresh_redis.url, timeout=TIMEOUT, cooldown=30)
    rl = RateLimiter("3/minute", backend=backend, name="health", on_backend_error="allow")
    fresh_redis.kill()
    for _ in range(3):
        rl.acquire("m")
    assert backend.health.is_open
    _, took = timed(lambda: [rl.acquire("m") for _ in range(1000)])
    assert took < 1.0  # 1000 decisions while cooling down: no network at all
    backend.close()


def test_raise_policy_surfaces_backend_unavailable(fresh_redis):
    from fintech_resilience import BackendUnavailable

    backend = RedisBackend.from_url(fresh_redis.url, timeout=TIMEOUT)
    rl = RateLimiter("3/minute", backend=backend, name="raise", on_backend_error="raise")
    fresh_redis.kill()
    with pytest.raises(BackendUnavailable) as info:
        rl.acquire("m")
    assert info.value.__cause__ is not None
    backend.close()


def test_fallbacks_are_logged_once_per_transition(fresh_redis, caplog):
    backend = RedisBackend.from_url(fresh_redis.url, timeout=TIMEOUT, cooldown=0.2)
    rl = RateLimiter("3/minute", backend=backend, name="logs", on_backend_error="local")
    rl.acquire("m")
    fresh_redis.kill()
    with caplog.at_level("WARNING", logger="fintech_resilience"):
        for _ in range(20):
            rl.acquire("m")
        fresh_redis.restart()
        until_shared_again(rl, "m")
        for _ in range(5):
            rl.acquire("m")
    messages = [r.getMessage() for r in caplog.records]
    assert sum("backend unavailable" in m for m in messages) == 1
    assert sum("backend recovered" in m for m in messages) == 1
    backend.close()


@pytest.mark.slow
def test_sentinel_failover_is_followed(sentinel):
    backend = RedisBackend.from_url(sentinel.url, timeout=0.2, cooldown=0.2)
    rl = RateLimiter("1000/minute", backend=backend, name="failover",
                     on_backend_error="local")
    assert rl.acquire("m").fallback is None
    sentinel.kill_primary()
    seen = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        d, took = timed(lambda: rl.acquire("m"))
        assert took <= 1.5  # timeout plus a sentinel lookup, never redis-py's 5 s
        seen.append(d.fallback)
        if d.fallback is None and "local" in seen:
            break
        time.sleep(0.05)
    assert "local" in seen, "the gap was covered by the local policy"
    assert seen[-1] is None, "decisions are shared again through the promoted replica"
    assert sentinel.master_address()[1] == sentinel.replica.port
    backend.close()
