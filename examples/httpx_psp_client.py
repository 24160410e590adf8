"""An httpx client for a PSP: retries under one Idempotency-Key, a breaker, a budget, a timeout.

    python examples/httpx_psp_client.py

The PSP here is an in-process ``httpx.MockTransport`` that fails the way PSPs do (a 503 with
Retry-After, then an outage); point ``base_url`` at your PSP and drop ``transport=`` to use it
for real.
"""

from __future__ import annotations

import asyncio
import json

import httpx

import fintech_resilience as fr
from fintech_resilience.httpx import AsyncResilientTransport

seen_keys: list[str] = []
charges: dict[str, dict[str, object]] = {}
psp = {"mode": "flaky", "calls": 0}


def fake_psp(request: httpx.Request) -> httpx.Response:
    """A PSP that deduplicates on Idempotency-Key; "flaky" fails every other call."""
    psp["calls"] += 1
    key = request.headers["idempotency-key"]
    seen_keys.append(key)
    if psp["mode"] == "down" or (psp["mode"] == "flaky" and psp["calls"] % 2):
        return httpx.Response(503, headers={"Retry-After": "0"}, json={"error": "unavailable"})
    charge = charges.setdefault(key, {"id": f"ch_{len(charges) + 1}",
                                      **json.loads(request.content)})
    return httpx.Response(201, json=charge)


breaker = fr.CircuitBreaker("psp-acme", minimum_calls=8, failure_rate=0.6,
                            window=fr.CountWindow(10), break_duration=30)
policy = fr.Policy(
    name="psp-acme",
    rate_limit=fr.RateLimiter("50/second", name="psp-acme-out"),
    bulkhead=fr.Bulkhead(10, name="psp-acme"),
    retry=fr.retry(attempts=3, wait=fr.full_jitter(initial=0.01, maximum=0.05), deadline=5,
                   budget=fr.RetryBudget("psp-acme", ratio=0.2, min_per_second=2)),
    breaker=breaker, timeout=2.0)


async def main() -> None:
    transport = AsyncResilientTransport(httpx.MockTransport(fake_psp), policy=policy,
                                        generate_idempotency_key=True)
    async with httpx.AsyncClient(transport=transport,
                                 base_url="https://api.psp.example") as psp_api:
        first = await psp_api.post("/v1/charges", json={"amount": 2500})
        print("charge:", first.status_code, first.json(), "after", psp["calls"], "attempts;",
              "keys sent:", len(set(seen_keys)))
        assert first.status_code == 201
        assert len(set(seen_keys)) == 1

        # our own key (e.g. the idempotency record's downstream key) is sent unchanged
        mine = await psp_api.post("/v1/charges", json={"amount": 700},
                                  headers={"Idempotency-Key": "order-77-charge"})
        print("with our key:", mine.status_code, "PSP saw", seen_keys[-1])

        psp["mode"] = "down"
        for _ in range(4):
            try:
                response = await psp_api.post("/v1/charges", json={"amount": 1})
                print("PSP down:", response.status_code, "(after the retries)")
            except fr.CircuitOpen as exc:
                print(f"breaker {breaker.known_state}: not calling the PSP; retry in"
                      f" {exc.retry_after:.0f}s")
            except fr.RetryBudgetExhausted:
                print("retry budget exhausted: failing fast instead of piling on retries")
        assert breaker.known_state is fr.BreakerState.OPEN


if __name__ == "__main__":
    asyncio.run(main())
