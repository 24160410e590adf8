"""A running claim keeps its lease through a Redis blink.

The lease of a claim whose handler still runs is renewed every ``lease / 3`` seconds. A renewal
that cannot reach Redis (paused, timing out) says nothing about the lease - it may well be alive -
so the renewer asks again on its next tick; only Redis answering "not yours any more" ends the
renewals. Under the default ``on_backend_error="deny"``, one failed renewal used to end them: the
lease then lapsed while the handler (a charge) was still running, and every retry of the client
was answered "outcome unknown" for the rest of the record's TTL.

Real time (the renewals run on a thread or the event loop's timers) and a real redis-server,
paused with SIGSTOP across one renewal tick.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import servers

from fintech_resilience.backends.redis import RedisBackend
from fintech_resilience.idempotency.record import ClaimOutcome, StoredResponse
from fintech_resilience.idempotency.store import IdempotencyStore

pytestmark = pytest.mark.slow

SECRET = b"s" * 32
LEASE = 0.6  # renewals every 0.2 s
PAUSE_AT, RESUME_AT = 0.1, 0.35  # covers the tick at 0.2 s, not the one at 0.4 s
DUPLICATE_AT = 1.2  # the lease had lapsed at 0.6 s without renewals after the pause
HANDLER_RUNS = 1.5


def store_on(url: str, policy: str = "deny") -> IdempotencyStore:
    return IdempotencyStore(RedisBackend.from_url(url), secret=SECRET, lease=LEASE, ttl=60,
                            check_eviction=False,
                            on_backend_error=policy)  # type: ignore[arg-type]


def response() -> StoredResponse:
    return StoredResponse("http", 201, (("content-type", "application/json"),),
                          b'{"charge": "ch_1"}')


def blink(server: servers.RedisServer, started: float) -> threading.Thread:
    """Pause ``server`` from PAUSE_AT to RESUME_AT seconds after ``started``."""

    def run() -> None:
        time.sleep(max(0.0, started + PAUSE_AT - time.monotonic()))
        server.pause()
        time.sleep(max(0.0, started + RESUME_AT - time.monotonic()))
        server.resume()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.parametrize("policy", ["deny", "local"])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_failed_renewal_is_tried_again_and_the_lease_holds(
        fresh_redis: servers.RedisServer, mode: str, policy: str) -> None:
    """Under "local" the renewal of a claim made on Redis never runs on the per-process
    records (it used to, found no claim there and ended the renewals as lost)."""
    store, other = store_on(fresh_redis.url, policy), store_on(fresh_redis.url, policy)
    key = store.record_key("charge-42", scope="merchant-1")
    fingerprint = store.fingerprint(b'{"amount": 100}')
    seen: dict[str, object] = {}

    def duplicate_meanwhile(started: float) -> None:
        time.sleep(max(0.0, started + DUPLICATE_AT - time.monotonic()))
        seen["duplicate"] = other.claim(key, fingerprint).outcome

    def run_sync() -> None:
        claim = store.claim(key, fingerprint)
        assert claim.outcome is ClaimOutcome.EXECUTE
        started = time.monotonic()
        pause = blink(fresh_redis, started)
        with store.holding(claim) as ctx:
            duplicate_meanwhile(started)
            time.sleep(max(0.0, started + HANDLER_RUNS - time.monotonic()))
            seen["lost"] = ctx.lease_lost
        pause.join()
        seen["completed"] = store.complete(claim, response())

    async def run_async() -> None:
        claim = await store.aclaim(key, fingerprint)
        assert claim.outcome is ClaimOutcome.EXECUTE
        started = time.monotonic()
        pause = blink(fresh_redis, started)
        async with store.aholding(claim) as ctx:
            await asyncio.to_thread(duplicate_meanwhile, started)
            await asyncio.sleep(max(0.0, started + HANDLER_RUNS - time.monotonic()))
            seen["lost"] = ctx.lease_lost
        await asyncio.to_thread(pause.join)
        seen["completed"] = await store.acomplete(claim, response())
        await store.backend.aclose()

    if mode == "sync":
        run_sync()
    else:
        asyncio.run(run_async())
    # while the handler ran, its lease was alive: a retry waited (in progress) ...
    assert seen["duplicate"] is ClaimOutcome.IN_PROGRESS
    assert seen["lost"] is False
    # ... its answer was stored, and the retry after it gets that answer
    assert seen["completed"] is True
    replay = other.claim(key, fingerprint)
    assert replay.outcome is ClaimOutcome.REPLAY
    assert replay.response is not None and replay.response.body == b'{"charge": "ch_1"}'
    store.backend.close()
    other.backend.close()
