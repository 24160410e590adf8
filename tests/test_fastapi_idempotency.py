"""FastAPI: install_idempotency(app, store) and the idempotency_context dependency."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI

from fintech_resilience import MemoryBackend
from fintech_resilience.errors import ConfigurationError
from fintech_resilience.fastapi import idempotency_context, install_idempotency
from fintech_resilience.idempotency import IdempotencyContext, IdempotencyStore


def principal(scope: Any) -> str | None:
    return dict(scope["headers"]).get(b"x-user", b"").decode() or None


def make_app(calls: list[int], **options: Any) -> FastAPI:
    app = FastAPI()
    install_idempotency(app, IdempotencyStore(MemoryBackend()), scope=principal, **options)

    @app.post("/charges", status_code=201)
    async def charge(ctx: IdempotencyContext | None = Depends(idempotency_context)  # noqa: B008
                     ) -> dict[str, Any]:
        calls.append(1)
        if ctx is None:
            return {"charge": len(calls), "key": None}
        return {"charge": len(calls), "fencing": ctx.fencing_token,
                "key": ctx.downstream_key("psp")}

    return app


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_a_duplicate_is_replayed_and_the_endpoint_runs_once() -> None:
    calls: list[int] = []
    async with client(make_app(calls)) as c:
        headers = {"x-user": "alice", "Idempotency-Key": "order-1"}
        first = await c.post("/charges", json={"amount": 100}, headers=headers)
        again = await c.post("/charges", json={"amount": 100}, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    assert calls == [1] and first.json()["fencing"] >= 1
    assert len(first.json()["key"]) >= 16  # the derived key for the PSP call


async def test_without_a_key_the_context_is_none_and_nothing_is_stored() -> None:
    calls: list[int] = []
    async with client(make_app(calls)) as c:
        responses = [await c.post("/charges", json={}, headers={"x-user": "bob"})
                     for _ in range(2)]
    assert [r.json() for r in responses] == [{"charge": 1, "key": None},
                                            {"charge": 2, "key": None}]


async def test_required_keys_are_enforced() -> None:
    async with client(make_app([], required=True)) as c:
        missing = await c.post("/charges", json={}, headers={"x-user": "bob"})
    assert missing.status_code == 400


def test_bad_options_fail_at_install_not_at_the_first_request() -> None:
    with pytest.raises(ConfigurationError, match="scope"):
        install_idempotency(FastAPI(), IdempotencyStore(MemoryBackend()))
    with pytest.raises(ConfigurationError, match="methods"):
        install_idempotency(FastAPI(), IdempotencyStore(MemoryBackend()), scope=principal,
                            methods=())
