"""The in-memory default never forgets an idempotency record to make room.

``IdempotencyStore()`` and ``RateLimiter()`` without a backend share the process-wide
``MemoryBackend``. Its other keys (limits, breakers, budgets) are bounded by ``max_keys`` and the
oldest are evicted; idempotency records are kept apart, bounded by ``max_records``, and never
evicted: when they fill it, new claims are refused (``BackendFull``, the ``"deny"`` path: 503 on
the HTTP edges) with one log line, and every record already stored stays.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import fintech_resilience as fr
from fintech_resilience.asgi import IdempotencyMiddleware
from fintech_resilience.backends.memory import default_backend
from fintech_resilience.errors import BackendFull, BackendUnavailable
from fintech_resilience.idempotency.record import ClaimOutcome
from fintech_resilience.testing import ManualClock, reset_default_backend


@pytest.fixture
def clean_default() -> Iterator[None]:
    reset_default_backend()
    yield
    reset_default_backend()


def charger(store: fr.IdempotencyStore, runs: list[str]) -> Any:
    @fr.idempotent(store, key=lambda payment: payment["id"], scope=lambda payment: "merchant")
    def charge(payment: dict[str, Any]) -> dict[str, Any]:
        runs.append(payment["id"])
        return {"charged": payment["id"]}

    return charge


def test_a_flood_of_client_identities_never_evicts_a_completed_payment_on_the_default(
        clean_default: None) -> None:
    store = fr.IdempotencyStore()
    limiter = fr.RateLimiter("1000/day")  # a velocity limit: its keys live for hours
    runs: list[str] = []
    charge = charger(store, runs)
    # one request each from 150,000 distinct clients - more keys than the backend holds - and
    # a payment every 500 requests
    for client in range(150_000):
        limiter.acquire(f"ip:{client}")
        if client % 500 == 0:
            charge({"id": f"pay_{client}"})
    assert len(runs) == 300
    for client in range(0, 150_000, 500):  # every payment's retry
        assert charge({"id": f"pay_{client}"}) == {"charged": f"pay_{client}"}
    assert len(runs) == 300  # every retry was replayed: nobody was charged twice
    assert default_backend().evictions > 0  # the limiter's oldest keys went, as they may


def test_a_shared_memory_backend_at_its_key_bound_keeps_every_record() -> None:
    backend = fr.MemoryBackend(max_keys=100)
    store = fr.IdempotencyStore(backend)
    limiter = fr.RateLimiter("1000/day", backend=backend)
    runs: list[str] = []
    charge = charger(store, runs)
    for i in range(150):
        charge({"id": f"pay_{i}"})
        limiter.acquire(f"ip:{i}")
    for i in range(150):
        charge({"id": f"pay_{i}"})
    assert len(runs) == 150
    assert backend.evictions > 0


def test_a_full_record_store_refuses_new_claims_loudly_and_keeps_every_record(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock()
    backend = fr.MemoryBackend(max_records=100, clock=clock)
    store = fr.IdempotencyStore(backend, ttl=3600, clock=clock)
    runs: list[str] = []
    charge = charger(store, runs)
    for i in range(100):
        charge({"id": f"pay_{i}"})
    with caplog.at_level(logging.INFO, logger="fintech_resilience"):
        for i in range(100, 110):
            with pytest.raises(BackendFull, match="100 idempotency records"):
                charge({"id": f"pay_{i}"})
        for i in range(100):  # every stored record still replays
            assert charge({"id": f"pay_{i}"}) == {"charged": f"pay_{i}"}
    assert runs == [f"pay_{i}" for i in range(100)]  # the refused claims never ran
    full = [r for r in caplog.records
            if r.name == "fintech_resilience" and "backend full" in r.getMessage()]
    assert len(full) == 1 and full[0].levelno == logging.ERROR  # one line for the episode
    assert not [r for r in caplog.records if "backend recovered" in r.getMessage()]
    refused = [r.resilience for r in caplog.records
               if getattr(r, "resilience", {}).get("outcome") == "backend_unavailable"]
    assert len(refused) == 10  # and each refusal is in the audit trail
    assert backend.refusals == 10
    # records expire with their ttl: then there is room again
    clock.advance(3601)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="fintech_resilience"):
        assert charge({"id": "pay_200"}) == {"charged": "pay_200"}
    assert [r for r in caplog.records if "room for new idempotency records" in r.getMessage()]


def test_in_progress_records_are_kept_too_and_the_bound_holds_under_threads() -> None:
    backend = fr.MemoryBackend(max_records=100)
    store = fr.IdempotencyStore(backend, renew=False)
    executed: list[str] = []
    refused: list[str] = []
    claims: list[Any] = []
    lock = threading.Lock()

    def worker(w: int) -> None:
        for i in range(50):
            key = store.record_key(f"k{w}-{i}", scope="m")
            try:
                claim = store.claim(key, store.fingerprint(b""))
            except BackendFull:
                with lock:
                    refused.append(key)
                continue
            with lock:
                executed.append(key)
                claims.append(claim)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (len(executed), len(refused)) == (100, 300)
    for key in executed:  # every claim still holds its record: a duplicate is in progress
        assert store.claim(key, store.fingerprint(b"")).outcome is ClaimOutcome.IN_PROGRESS
    assert backend.evictions == 0


async def test_the_asgi_middleware_answers_503_when_the_record_store_is_full() -> None:
    backend = fr.MemoryBackend(max_records=2)
    store = fr.IdempotencyStore(backend)
    calls: list[int] = []

    async def pay(request: Request) -> JSONResponse:
        calls.append(1)
        return JSONResponse({"n": len(calls)}, status_code=201)

    app = IdempotencyMiddleware(Starlette(routes=[Route("/pay", pay, methods=["POST"])]),
                                store=store, global_scope=True)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://test") as client:
        answers = [await client.post("/pay", headers={"Idempotency-Key": f"k{i}"})
                   for i in range(3)]
        again = await client.post("/pay", headers={"Idempotency-Key": "k0"})
    assert [a.status_code for a in answers] == [201, 201, 503]
    assert answers[2].headers["content-type"] == "application/problem+json"
    assert "retry-after" in answers[2].headers
    assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
    assert len(calls) == 2


def test_backend_full_is_a_backend_unavailable() -> None:
    assert issubclass(BackendFull, BackendUnavailable)
    with pytest.raises(fr.ConfigurationError):
        fr.MemoryBackend(max_records=0)


def test_reset_default_backend_forgets_every_kind_of_state(clean_default: None) -> None:
    store = fr.IdempotencyStore()
    limiter = fr.RateLimiter("1/minute")
    runs: list[str] = []
    charge = charger(store, runs)
    charge({"id": "pay_1"})
    assert limiter.acquire("m").allowed and not limiter.acquire("m").allowed
    reset_default_backend()
    charge({"id": "pay_1"})
    assert runs == ["pay_1", "pay_1"]
    assert limiter.acquire("m").allowed
