"""wait_replicas: a stored response is on a replica before the caller gets its answer."""

from __future__ import annotations

import logging

import fintech_resilience as fr


def events(caplog):
    return [r.resilience["outcome"] for r in caplog.records if hasattr(r, "resilience")]


def test_wait_replicas_acknowledges_before_returning_then_reports_a_timeout(sentinel, caplog):
    backend = fr.RedisBackend.from_url(sentinel.primary.url, timeout=2.0)
    store = fr.IdempotencyStore(backend, secret=b"k" * 32, wait_replicas=1, wait_timeout=0.5)
    replica = sentinel.replica.client()
    runs = []

    @fr.idempotent(store, key=lambda event: event["id"], scope=lambda event: event["account"])
    def credit(event: dict) -> dict:
        runs.append(event["id"])
        return {"credited": event["amount"]}

    with caplog.at_level(logging.INFO, logger="fintech_resilience.audit"):
        assert credit({"id": "evt_1", "account": "a", "amount": 5}) == {"credited": 5}
        # WAIT returned only after the replica had the completed record: it is there now
        stored = [replica.hgetall(k) for k in replica.keys("fr:*")]
        assert len(stored) == 1 and stored[0], "the record reached the replica before returning"
        assert "replication_timeout" not in events(caplog)

        sentinel.replica.kill()
        caplog.clear()
        assert credit({"id": "evt_2", "account": "a", "amount": 7}) == {"credited": 7}
        # the money moved: the answer still goes out, and the audit trail says it is not replicated
        timeouts = [r.resilience for r in caplog.records
                    if getattr(r, "resilience", {}).get("outcome") == "replication_timeout"]
        assert len(timeouts) == 1
        assert timeouts[0]["acked"] == 0 and timeouts[0]["wanted"] == 1
    assert runs == ["evt_1", "evt_2"]
    assert credit({"id": "evt_2", "account": "a", "amount": 7}) == {"credited": 7}
    assert runs == ["evt_1", "evt_2"]  # the replay came from the primary's record
    backend.close()


async def test_wait_replicas_from_async_code(sentinel):
    backend = fr.RedisBackend.from_url(sentinel.primary.url, timeout=2.0)
    store = fr.IdempotencyStore(backend, secret=b"k" * 32, wait_replicas=1, wait_timeout=0.5)
    replica = sentinel.replica.client()

    @fr.idempotent(store, key=lambda event: event["id"], scope=lambda event: event["account"])
    async def credit(event: dict) -> dict:
        return {"credited": event["amount"]}

    assert await credit({"id": "evt_9", "account": "b", "amount": 1}) == {"credited": 1}
    keys = replica.keys("fr:*")
    assert len(keys) == 1 and replica.hgetall(keys[0])
    await backend.aclose()
