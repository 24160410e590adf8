"""Every core pattern in memory, in a few lines: python examples/quickstart.py"""

import logging

import fintech_resilience as fr

logging.basicConfig(level=logging.WARNING, format="log: %(message)s")  # breaker transitions

# Rate limit: 3 charges per second per merchant (GCRA, all-or-nothing across windows)
limiter = fr.RateLimiter("3/second; 1000/day", name="charges")
decisions = [limiter.acquire("merchant:42").allowed for _ in range(4)]
print("rate limit:", decisions, "->", limiter.acquire("merchant:42").headers())

# Circuit breaker: trips after 2 failures out of the last 4 calls
psp = fr.CircuitBreaker("psp-acme", minimum_calls=2, failure_rate=0.5,
                        window=fr.CountWindow(4), break_duration=30)
for _ in range(3):
    try:
        with psp:
            raise ConnectionError("PSP unreachable")
    except ConnectionError:
        print("breaker: call failed, state", psp.state.name)
    except fr.CircuitOpen as exc:
        print(f"breaker: rejected without calling the PSP, retry in {exc.retry_after:.0f}s")

# Retry: one idempotency key for every attempt of a non-idempotent call
attempts = []

@fr.retry(on=ConnectionError, attempts=3, wait=0, idempotent=False, idempotency_key="auto")
def capture(payment_id: str) -> str:
    attempts.append(fr.current_attempt().idempotency_key)
    if len(attempts) < 3:
        raise ConnectionError("connection reset")
    return f"captured {payment_id}"

print("retry:", capture("pay_1"), "after", len(attempts), "attempts with 1 key:",
      len(set(attempts)) == 1)

# Idempotency: a webhook delivered twice moves money once
store = fr.IdempotencyStore(fr.MemoryBackend())
ledger = []

@fr.idempotent(store, key=lambda event: event["id"], scope=lambda event: event["account"])
def credit(event: dict) -> dict:
    ledger.append(event["amount"])
    return {"credited": event["amount"]}

event = {"id": "evt_1", "account": "acct_9", "amount": 500}
print("idempotency:", credit(event), credit(event), "ledger:", ledger)
assert ledger == [500]
assert decisions == [True, True, True, False]
