"""Under ``on_backend_error="local"`` a claim is settled where it was made.

A claim made on Redis holds nothing in the per-process records, and a claim made on those
records (Redis was down) holds nothing in Redis. Completing, renewing or releasing either one
elsewhere used to find no claim there: the completion was refused as ``not_owner``
(``complete_rejected``), the stored answer was lost, and the duplicates of a charge got "in
progress" and then "outcome unknown" instead of its answer. Real redis-server, paused or killed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import servers

from fintech_resilience.backends.redis import RedisBackend
from fintech_resilience.idempotency.record import ClaimOutcome, StoredResponse
from fintech_resilience.idempotency.store import IdempotencyStore

pytestmark = pytest.mark.slow

SECRET = b"local-fallback-secret-01"
ANSWER = StoredResponse("http", 201, (("content-type", "application/json"),),
                        b'{"charge": "ch_1"}')


@pytest.fixture
def store(fresh_redis: servers.RedisServer) -> Iterator[IdempotencyStore]:
    built = IdempotencyStore(RedisBackend.from_url(fresh_redis.url), secret=SECRET,
                             on_backend_error="local", check_eviction=False)
    yield built
    built.backend.close()


def outcomes(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.resilience["outcome"] for r in caplog.records if hasattr(r, "resilience")]


def test_a_claim_made_on_the_fallback_completes_there_after_redis_is_back(
        fresh_redis: servers.RedisServer, store: IdempotencyStore,
        caplog: pytest.LogCaptureFixture) -> None:
    key = store.record_key("charge-1", scope="merchant-1")
    fingerprint = store.fingerprint(b'{"amount": 100}')
    fresh_redis.kill()
    claim = store.claim(key, fingerprint)
    assert claim.outcome is ClaimOutcome.EXECUTE and claim.local
    fresh_redis.restart()  # back while the charge ran
    with caplog.at_level(logging.INFO, logger="fintech_resilience.audit"):
        assert store.complete(claim, ANSWER)
    assert "complete_rejected" not in outcomes(caplog)
    # this process's duplicates meet the per-process record: the answer, not a second run
    fresh_redis.kill()
    again = store.claim(key, fingerprint)
    assert again.outcome is ClaimOutcome.REPLAY
    assert again.response is not None and again.response.body == ANSWER.body


async def test_a_claim_made_on_redis_is_never_completed_on_the_fallback(
        fresh_redis: servers.RedisServer, store: IdempotencyStore,
        caplog: pytest.LogCaptureFixture) -> None:
    key = store.record_key("charge-2", scope="merchant-1")
    fingerprint = store.fingerprint(b'{"amount": 200}')
    claim = await store.aclaim(key, fingerprint)
    assert claim.outcome is ClaimOutcome.EXECUTE and not claim.local
    fresh_redis.pause()
    try:
        with caplog.at_level(logging.INFO, logger="fintech_resilience.audit"):
            assert not await store.acomplete(claim, ANSWER)
            with pytest.raises(Exception, match="may still be alive"):
                await store.arenew(claim)
    finally:
        fresh_redis.resume()
    seen = outcomes(caplog)
    assert "complete_failed" in seen and "renew_failed" in seen, seen
    assert "complete_rejected" not in seen and "renew_rejected" not in seen, seen
    assert not claim.lease_lost
    # back on Redis, the record is the charge's: its answer (a paused Redis runs the commands
    # it received once it resumes) or still in progress - never a second execution
    duplicate = await store.aclaim(key, fingerprint)
    assert duplicate.outcome in (ClaimOutcome.REPLAY, ClaimOutcome.IN_PROGRESS)
    await store.backend.aclose()
