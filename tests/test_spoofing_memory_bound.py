"""Client identities cost Redis memory only for as long as their keys' TTLs.

An attacker who can present many identities (a botnet behind a trusted proxy, or spoofed
X-Forwarded-For values when no proxy is trusted) must not be able to grow Redis without bound.
Untrusted X-Forwarded-For values do not even create keys; real distinct clients create keys that
all expire with their limit's TTL.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from fintech_resilience import RateLimiter, RedisBackend
from fintech_resilience.backends.redis import script
from fintech_resilience.keys import principal_or_ip

SPOOFED = 1_000_000
DISTINCT = 100_000


def scope_from(peer: str, forwarded: str) -> dict:
    return {"type": "http", "client": (peer, 40000), "state": {},
            "headers": [(b"x-forwarded-for", forwarded.encode())]}


def spoofed(i: int) -> str:
    return f"198.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


@pytest.mark.slow
async def test_spoofed_and_distinct_identities_leave_nothing_behind_after_the_ttl(redis_url):
    backend = RedisBackend.from_url(redis_url, timeout=5.0)
    rl = RateLimiter("5/second", backend=backend, name="edge", on_backend_error="raise")
    untrusted = principal_or_ip()                        # no proxy trusted: the TCP peer counts
    trusted = principal_or_ip(trusted_proxies=["10.0.0.0/8"])
    try:
        client = backend.async_client()
        await client.ping()
        baseline = (await client.info("memory"))["used_memory"]

        # spoofed X-Forwarded-For from one untrusted peer: one identity, one key
        keys = {untrusted(scope_from("203.0.113.9", f"{spoofed(i)}, 10.0.0.1"))
                for i in range(SPOOFED)}
        assert keys == {"ip:203.0.113.9"}

        # behind a trusted proxy, spoofed hops left of the proxy's own entry change nothing either
        keys = {trusted(scope_from("10.0.0.1", f"{spoofed(i)}, 203.0.113.9"))
                for i in range(DISTINCT)}
        assert keys == {"ip:203.0.113.9"}

        # 100,000 genuinely distinct clients behind a trusted proxy: a key each, each with a TTL.
        # The decisions are the limiter's own script and keys, pipelined 10,000 at a time.
        script_sha, source = script(rl._script)
        await client.script_load(source)
        chunk = 10_000
        for start in range(0, DISTINCT, chunk):
            pipe = client.pipeline(transaction=False)
            for i in range(start, start + chunk):
                key = trusted(scope_from("10.0.0.1", spoofed(i)))
                applied = rl._applied(key, None)
                keys, args = applied.storage_keys(key), applied.usual_args
                pipe.evalsha(script_sha, len(keys), *keys, *args)
            replies = await pipe.execute()
            assert all(reply[0] == 1 for reply in replies)
            if start == DISTINCT // 2:
                # every key has a TTL: the keyspace counts as many keys with an expiry as keys
                keyspace = (await client.info("keyspace"))["db0"]
                assert keyspace["keys"] == keyspace["expires"] > 0
                sample = [await client.pttl(await client.randomkey()) for _ in range(100)]
                # 200 ms + 1 s of grace; 0: the key's last millisecond; -2: expired between
                # RANDOMKEY and PTTL; never -1 (a key without a TTL)
                outside = [ttl for ttl in sample if not (0 <= ttl <= 1_200 or ttl == -2)]
                assert outside == [], outside
        peak = (await client.info("memory"))["used_memory"]

        deadline = time.monotonic() + 30
        while await client.dbsize() and time.monotonic() < deadline:  # noqa: ASYNC110 - polling Redis
            await asyncio.sleep(0.2)
        assert await client.dbsize() == 0, "every key expired by its TTL"
        after = (await client.info("memory"))["used_memory"]
        assert after - baseline < (peak - baseline) / 10 + 1_000_000
    finally:
        await backend.aclose()
