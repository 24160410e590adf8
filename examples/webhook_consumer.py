"""A webhook consumer that credits each event once, however often the PSP delivers it.

    python examples/webhook_consumer.py

PSPs deliver webhooks at least once: retries after a timeout, redeliveries after a deploy, two
deliveries racing on two workers. ``@fr.idempotent`` claims each event id atomically, so exactly
one delivery runs the handler; the others get the stored result (or ``IdempotencyInProgress``
while the first still runs - answer the PSP with 409/5xx so it delivers again later).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import fintech_resilience as fr

URL = os.environ.get("FINTECH_RESILIENCE_REDIS_URL") or None
backend: fr.Backend = fr.RedisBackend.from_url(URL) if URL else fr.MemoryBackend()
store = fr.IdempotencyStore(backend, ttl=7 * 86400, lease=30, name="webhooks",
                            secret=os.environ.get("IDEMPOTENCY_SECRET",
                                                  "dev-only-secret-32-bytes-long!!"))
ledger: list[tuple[str, int]] = []
ledger_lock = threading.Lock()


class UnknownAccount(Exception):
    """A permanent answer: stored, so redeliveries get it too (without running again)."""


@fr.idempotent(store, key=lambda event: event["id"], scope=lambda event: event["account"],
               fingerprint=lambda event: str(event["amount"]), store_exceptions=(UnknownAccount,),
               route="payment_succeeded")
def on_payment_succeeded(event: dict) -> dict:
    if event["account"] == "acct_closed":
        raise UnknownAccount(event["account"])
    time.sleep(0.05)  # a slow ledger write: concurrent duplicates arrive meanwhile
    with ledger_lock:
        ledger.append((event["account"], event["amount"]))
    fencing = fr.current_idempotency().fencing_token  # send along to the ledger as a guard
    return {"credited": event["amount"], "fencing_token": fencing}


def deliver(event: dict) -> str:
    """What the HTTP endpoint would answer the PSP."""
    try:
        return f"200 {on_payment_succeeded(event)}"
    except fr.IdempotencyInProgress:
        return "409 in progress (the PSP delivers again later)"
    except fr.IdempotencyKeyMismatch:
        return "422 same event id, different payload"
    except UnknownAccount:
        return "200 ignored: unknown account"


def main() -> None:
    run = uuid.uuid4().hex[:8]  # the PSP's event ids are unique: this run's own
    event = {"id": f"evt_{run}_1", "account": "acct_9", "amount": 500}
    with ThreadPoolExecutor(4) as pool:  # four deliveries racing on four workers
        racing = list(pool.map(deliver, [event] * 4))
    for answer in racing:
        print("concurrent delivery:", answer)
    print("redelivery:", deliver(event))
    print("tampered redelivery:", deliver({**event, "amount": 50_000}))
    print("other account, same event id:", deliver({**event, "account": "acct_3"}))
    closed = {"id": f"evt_{run}_2", "account": "acct_closed", "amount": 1}
    print("closed account:", deliver(closed), "| again:", deliver(closed))
    print("ledger:", ledger)
    assert sum(a.startswith("200") for a in racing) >= 1
    assert ledger.count(("acct_9", 500)) == 1
    assert len(ledger) == 2


if __name__ == "__main__":
    main()
