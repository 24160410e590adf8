"""Data residency: each principal's records stay on its region's Redis; cross-region refused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis
import servers

from fintech_resilience import MemoryBackend, RateLimiter, RedisBackend
from fintech_resilience.audit import AuditLog, AuditRecord, CallbackSink, RedisStreamSink
from fintech_resilience.errors import ConfigurationError, ResilienceError
from fintech_resilience.residency import (
    RegionalBackend,
    ResidencyViolation,
    acting_for,
    current_principal,
    current_region,
    region,
)

DIRECTORY = {"merchant:berlin": "eu", "merchant:austin": "us", "merchant:pune": "in"}


@pytest.fixture
async def two_regions(
    redis_url: str, fresh_redis: servers.RedisServer
) -> AsyncIterator[tuple[RegionalBackend, redis.Redis, redis.Redis]]:
    eu = RedisBackend.from_url(redis_url, timeout=2.0)
    us = RedisBackend.from_url(fresh_redis.url, timeout=2.0)
    regional = RegionalBackend({"eu": eu, "us": us}, region_of=DIRECTORY.get)
    eu_client = redis.Redis.from_url(redis_url)
    us_client = redis.Redis.from_url(fresh_redis.url)
    yield regional, eu_client, us_client
    eu_client.close()
    us_client.close()
    await regional.aclose()


async def test_an_eu_principal_never_reaches_the_us_redis(
    two_regions: tuple[RegionalBackend, redis.Redis, redis.Redis],
) -> None:
    regional, eu, us = two_regions
    limiter = RateLimiter("5/second", backend=regional, name="payments",
                          on_backend_error="raise")
    audit = AuditLog([RedisStreamSink(regional, stream="audit", chain=True)],
                     on_sink_error="raise")
    with acting_for("merchant:berlin"):
        for _ in range(3):
            assert limiter.acquire("merchant:berlin").allowed
        assert (await limiter.aacquire("merchant:berlin")).allowed
        await asyncio.gather(*(limiter.aacquire("merchant:berlin") for _ in range(3)))
        audit.record("ratelimit.limit_hit", resource="ratelimit:payments",
                     principal="merchant:berlin", outcome="failure")
    eu_keys = sorted(k.decode() for k in eu.keys("*"))
    assert len(eu_keys) == 2  # the limiter's key and the audit stream
    assert any(k.startswith("fr:audit:") for k in eu_keys)
    assert us.dbsize() == 0
    assert us.keys("*") == []
    with acting_for("merchant:austin"):
        assert limiter.acquire("merchant:austin").allowed
    assert us.dbsize() == 1
    assert len(eu.keys("*")) == 2


def test_cross_region_operations_are_refused_before_anything_is_sent(
    two_regions: tuple[RegionalBackend, redis.Redis, redis.Redis],
) -> None:
    regional, eu, us = two_regions
    limiter = RateLimiter("5/second", backend=regional, name="payments",
                          on_backend_error="local")
    us_only = RateLimiter("5/second", backend=regional, name="us.payments")
    with region("us"), acting_for("merchant:berlin"), pytest.raises(ResidencyViolation,
                                                                     match="cross-region"):
        limiter.acquire("merchant:berlin")
    with acting_for("merchant:berlin"), pytest.raises(ResidencyViolation, match=r"us\.payments"):
        us_only.acquire("merchant:berlin")
    with pytest.raises(ResidencyViolation, match="no region known"):
        limiter.acquire("anyone")
    with acting_for("merchant:pune"), pytest.raises(ResidencyViolation, match="no backend"):
        limiter.acquire("merchant:pune")  # India is not configured here
    with acting_for("merchant:unknown"), pytest.raises(ResidencyViolation, match="no region"):
        limiter.acquire("x")
    assert eu.dbsize() == 0
    assert us.dbsize() == 0
    assert issubclass(ResidencyViolation, ResilienceError)


def test_three_regions_on_memory_backends_with_names_and_default() -> None:
    eu, us, india = MemoryBackend(), MemoryBackend(), MemoryBackend()
    refusals: list[AuditRecord] = []
    regional = RegionalBackend({"eu": eu, "us": us, "in": india}, region_of=DIRECTORY.get,
                               default_region="us", audit=AuditLog([CallbackSink(refusals.append)]))
    shared = RateLimiter("5/second", backend=regional, name="psp-status")
    pinned = RateLimiter("5/second", backend=regional, name="in.payouts")
    shared.acquire("psp")  # no principal, no region: the default region
    pinned.acquire("batch-1")  # the name pins it to India
    with acting_for("merchant:pune"):
        pinned.acquire("merchant:pune")
        shared.acquire("merchant:pune")
    with region("eu"):
        assert current_region() == "eu"
        shared.acquire("x")
    assert (len(eu), len(us), len(india)) == (1, 1, 3)
    with acting_for("merchant:berlin"), pytest.raises(ResidencyViolation):
        pinned.acquire("merchant:berlin")
    assert refusals[0].event_type == "residency.violation"
    assert refusals[0].principal == "merchant:berlin"
    assert current_principal() is None
    assert current_region() is None


async def test_the_region_follows_await_and_tasks() -> None:
    eu, us = MemoryBackend(), MemoryBackend()
    regional = RegionalBackend({"eu": eu, "us": us}, region_of=DIRECTORY.get)
    limiter = RateLimiter("100/second", backend=regional, name="p")

    async def one(merchant: str) -> None:
        with acting_for(merchant):
            await asyncio.sleep(0)
            await limiter.aacquire(merchant)

    await asyncio.gather(*(one(m) for m in ["merchant:berlin", "merchant:austin"] * 5))
    assert (len(eu), len(us)) == (1, 1)


def test_configuration_is_validated() -> None:
    mem = MemoryBackend()
    with pytest.raises(ConfigurationError):
        RegionalBackend({})
    with pytest.raises(ConfigurationError):
        RegionalBackend({"eu": 6379})  # type: ignore[dict-item]
    with pytest.raises(ConfigurationError):  # URLs are accepted, and checked at once
        RegionalBackend({"eu": "redis://x:notaport/0"})
    with pytest.raises(ConfigurationError):
        RegionalBackend({"eu": mem}, default_region="us")
    with pytest.raises(ConfigurationError):
        RegionalBackend({"eu": mem}).for_region("us")
    with pytest.raises(ConfigurationError), region(""):
        pass
    regional = RegionalBackend({"eu": mem})
    with acting_for("merchant:berlin"), pytest.raises(ResidencyViolation, match="region_of"):
        regional.run("ratelimit_gcra", ["fr:x:{p}"], [0, 1, 1.0, 1.0])
