"""A FastAPI payments API: per-merchant rate limits, idempotent charges, a protected PSP call.

    python examples/fastapi_payments.py          # drives the API in-process and prints
    uvicorn examples.fastapi_payments:app        # serve it (pip install uvicorn), then
    curl -X POST localhost:8000/charges -H 'X-Merchant: m-1' -H 'Idempotency-Key: k1' \
         -H 'Content-Type: application/json' -d '{"amount": 100}'

Settings come from the environment (``fintech_resilience.config.Config.from_env``): with
``FINTECH_RESILIENCE_BACKEND`` (or ``FINTECH_RESILIENCE_REDIS_URL``) set to a Redis URL, every
pattern shares its state through that Redis. Each run uses keys of its own, so runs can follow
each other (and the other examples) on one Redis.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import uuid
from typing import Annotated, Any

import httpx
from fastapi import Depends, FastAPI, Header, HTTPException
from pydantic import BaseModel

import fintech_resilience as fr
from fintech_resilience.config import Config
from fintech_resilience.fastapi import Idempotent, RateLimit, install

config = Config.from_env()  # validated now: a bad URL stops the start-up here
store = fr.IdempotencyStore(config.backend, secret=os.environ.get(
    "IDEMPOTENCY_SECRET", "dev-only-secret-32-bytes-long!!"))

psp_policy = fr.Policy(
    name="psp-acme",
    bulkhead=fr.Bulkhead(20, max_wait=0.5, name="psp-acme"),
    retry=fr.retry(on=(ConnectionError, TimeoutError), attempts=3,
                   wait=fr.full_jitter(initial=0.01, maximum=0.1), deadline=5,
                   idempotent=False, key_argument="idempotency_key"),
    breaker=fr.CircuitBreaker("fastapi-psp-acme", backend=config.backend, minimum_calls=10),
    timeout=2.0,
)
_ids = itertools.count(1)
_charges: dict[str, dict[str, Any]] = {}  # the PSP's own dedup, by its Idempotency-Key


@psp_policy
async def psp_charge(amount: int, *, idempotency_key: str) -> dict[str, Any]:
    """Stands in for the PSP's HTTP API (see httpx_psp_client.py for a real client)."""
    if idempotency_key not in _charges:
        _charges[idempotency_key] = {"id": f"ch_{next(_ids)}", "amount": amount}
    return _charges[idempotency_key]


class ChargeIn(BaseModel):
    amount: int  # minor units


def current_merchant(x_merchant: Annotated[str | None, Header()] = None) -> str:
    """A stand-in for real authentication (a bearer token, a session): the merchant's id."""
    if not x_merchant:
        raise HTTPException(401, "authenticate with X-Merchant")
    return x_merchant


app = FastAPI(title="payments")
install(app, config)  # problem+json refusals, the app's backend, per-route idempotency
per_merchant = RateLimit("5/second", name="merchant",
                         key=lambda request: request.headers.get("x-merchant"))
# claimed after current_merchant ran: the record belongs to the authenticated merchant
charge_once = Idempotent(store, principal=current_merchant, required=True)


@app.get("/healthz")
async def healthz() -> dict[str, bool]:
    return {"ok": True}


@app.post("/charges", status_code=201, dependencies=[Depends(per_merchant)])
async def charge(body: ChargeIn,
                 ctx: Annotated[fr.IdempotencyContext, Depends(charge_once)]) -> dict[str, Any]:
    try:
        result = await psp_charge(body.amount, idempotency_key=ctx.downstream_key("charge"))
    except fr.CircuitOpen as exc:
        raise HTTPException(503, "PSP unavailable",
                            headers={"Retry-After": str(round(exc.retry_after))}) from exc
    return {"id": result["id"], "amount": result["amount"], "status": "succeeded"}


async def main() -> None:
    run = uuid.uuid4().hex[:8]  # this run's merchants and keys
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://payments") as client:
        headers = {"x-merchant": f"m-42-{run}", "idempotency-key": "order-1001"}
        first = await client.post("/charges", json={"amount": 2500}, headers=headers)
        again = await client.post("/charges", json={"amount": 2500}, headers=headers)
        print("charge:", first.status_code, first.json())
        print("retry with the same key:", again.status_code, again.json(),
              "replayed:", again.headers.get("idempotent-replayed"))
        other = await client.post("/charges", json={"amount": 9999}, headers=headers)
        print("same key, other body:", other.status_code, other.json()["title"])
        anonymous = await client.post("/charges", json={"amount": 1},
                                      headers={"idempotency-key": "order-1001"})
        print("no merchant:", anonymous.status_code, "(nothing claimed)")
        print("health check, no key needed:", (await client.get("/healthz")).status_code)
        statuses = [(await client.post("/charges", json={"amount": 100}, headers={
            "x-merchant": f"m-7-{run}", "idempotency-key": f"k{i}"})).status_code
            for i in range(7)]
        print("m-7 sends 7 charges in a burst:", statuses)
        assert first.json() == again.json()
        assert other.status_code == 422
        assert anonymous.status_code == 401
        assert len(_charges) == 1 + statuses.count(201)
        assert 429 in statuses


if __name__ == "__main__":
    asyncio.run(main())
