"""A FastAPI payments API: per-merchant rate limits, idempotent charges, a protected PSP call.

    python examples/fastapi_payments.py          # drives the API in-process and prints
    uvicorn examples.fastapi_payments:app        # serve it (pip install uvicorn), then
    curl -X POST localhost:8000/charges -H 'X-Merchant: m-1' -H 'Idempotency-Key: k1' \
         -H 'Content-Type: application/json' -d '{"amount": 100}'


With ``FINTECH_RESILIENCE_REDIS_URL`` set, every pattern shares its state through that Redis.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from typing import Any

import httpx
from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel

import fintech_resilience as fr
from fintech_resilience.asgi import RateLimitMiddleware
from fintech_resilience.fastapi import idempotency_context, install, install_idempotency

URL = os.environ.get("FINTECH_RESILIENCE_REDIS_URL") or None
backend: fr.Backend = fr.RedisBackend.from_url(URL) if URL else fr.MemoryBackend()
store = fr.IdempotencyStore(backend, secret=os.environ.get("IDEMPOTENCY_SECRET",
                                                           "dev-only-secret-32-bytes-long!!"))

psp_policy = fr.Policy(
    name="psp-acme",
    bulkhead=fr.Bulkhead(20, max_wait=0.5, name="psp-acme"),
    retry=fr.retry(on=(ConnectionError, TimeoutError), attempts=3,
                   wait=fr.full_jitter(initial=0.01, maximum=0.1), deadline=5,
                   idempotent=False, key_argument="idempotency_key"),
    breaker=fr.CircuitBreaker("psp-acme", backend=backend, minimum_calls=10),
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


app = FastAPI(title="payments")
install(app)  # library refusals answer as RFC 9457 problem+json
# middleware added later runs first: idempotency sits inside authentication and the rate limit
install_idempotency(app, store, scope=lambda scope: scope["state"]["principal"],
                    methods=("POST",), required=True)
app.add_middleware(RateLimitMiddleware,
                   limiter=fr.RateLimiter("5/second", name="merchant", backend=backend),
                   key=lambda scope: scope["state"]["principal"], exempt_paths=["/healthz"])


class Authenticate:
    """A stand-in for real authentication (pure ASGI): ``X-Merchant`` is the principal."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            merchant = dict(scope["headers"]).get(b"x-merchant", b"anon").decode()
            scope.setdefault("state", {})["principal"] = merchant
        await self.app(scope, receive, send)


app.add_middleware(Authenticate)  # added last: runs first


@app.get("/healthz")
async def healthz() -> dict[str, bool]:
    return {"ok": True}


@app.post("/charges", status_code=201)
async def charge(body: ChargeIn,
                 ctx: Any = Depends(idempotency_context)) -> dict[str, Any]:  # noqa: B008
    try:
        result = await psp_charge(body.amount, idempotency_key=ctx.downstream_key("charge"))
    except fr.CircuitOpen as exc:
        raise HTTPException(503, "PSP unavailable",
                            headers={"Retry-After": str(round(exc.retry_after))}) from exc
    return {"id": result["id"], "amount": result["amount"], "status": "succeeded"}


async def main() -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://payments") as client:
        headers = {"x-merchant": "m-42", "idempotency-key": "order-1001"}
        first = await client.post("/charges", json={"amount": 2500}, headers=headers)
        again = await client.post("/charges", json={"amount": 2500}, headers=headers)
        print("charge:", first.status_code, first.json())
        print("retry with the same key:", again.status_code, again.json(),
              "replayed:", again.headers.get("idempotent-replayed"))
        other = await client.post("/charges", json={"amount": 9999}, headers=headers)
        print("same key, other body:", other.status_code, other.json()["title"])
        statuses = [(await client.post("/charges", json={"amount": 100}, headers={
            "x-merchant": "m-7", "idempotency-key": f"k{i}"})).status_code for i in range(7)]
        print("m-7 sends 7 charges in a burst:", statuses)
        assert first.json() == again.json()
        assert len(_charges) == 1 + statuses.count(201)
        assert 429 in statuses


if __name__ == "__main__":
    asyncio.run(main())
