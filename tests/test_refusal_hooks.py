"""The on_refusal hook (Flask-Limiter's on_breach, for every pattern that refuses): rate
limiters (direct, decorated, shadow, backend down, behind a Starlette app), bulkheads (threads
and tasks), and the same hook through a Policy."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import fintech_resilience as fr
from fintech_resilience.backends.base import Backend
from fintech_resilience.edges.asgi.ratelimit import RateLimitMiddleware
from fintech_resilience.testing import ManualClock

CARD = "card-fp-7"


def limiter(backend: Backend, clock: ManualClock, **options: Any) -> fr.RateLimiter:
    return fr.RateLimiter("2/minute", backend=backend, clock=clock, name="cards", **options)


async def test_each_refused_decision_reaches_the_hook_with_key_and_retry_after(
        backend: Backend, clock: ManualClock) -> None:
    refusals: list[fr.Refusal] = []
    cards = limiter(backend, clock, on_refusal=refusals.append)
    allowed = [cards.acquire(CARD).allowed for _ in range(3)]
    allowed.append((await cards.aacquire(CARD)).allowed)
    assert allowed == [True, True, False, False]
    assert [(r.pattern, r.name, r.key, r.shadow) for r in refusals] == [
        ("ratelimit", "cards", CARD, False)] * 2
    first = refusals[0]
    assert isinstance(first.error, fr.RateLimited) and not first.error.decision.allowed
    assert first.retry_after == first.error.retry_after == pytest.approx(30.0)


def test_the_decorator_raises_after_the_hook_saw_the_refusal(backend: Backend,
                                                            clock: ManualClock) -> None:
    seen: list[str] = []
    cards = limiter(backend, clock, on_refusal=lambda r: seen.append(str(r.key)))

    @cards.limit(key=lambda card, amount: card)
    def charge(card: str, amount: int) -> str:
        return "charged"

    assert [charge(CARD, 1), charge(CARD, 2)] == ["charged", "charged"]
    with pytest.raises(fr.RateLimited):
        charge(CARD, 3)
    assert seen == [CARD]


def test_a_shadow_limiter_reports_what_it_would_have_refused(backend: Backend,
                                                            clock: ManualClock) -> None:
    refusals: list[fr.Refusal] = []
    cards = limiter(backend, clock, shadow=True, on_refusal=refusals.append)
    assert all(cards.acquire(CARD).allowed for _ in range(3))
    assert [(r.key, r.shadow) for r in refusals] == [(CARD, True)]


def test_admitted_decisions_never_call_the_hook(backend: Backend, clock: ManualClock) -> None:
    calls: list[fr.Refusal] = []
    cards = limiter(backend, clock, on_refusal=calls.append)
    cards.acquire("a")
    cards.acquire("b")
    assert calls == []


def test_a_refusal_by_the_backend_error_policy_is_a_refusal_too(clock: ManualClock) -> None:
    refusals: list[fr.Refusal] = []
    down = fr.RedisBackend.from_url("redis://127.0.0.1:1/0", timeout=0.05)
    cards = fr.RateLimiter("2/minute", backend=down, name="cards", on_backend_error="deny",
                           on_refusal=refusals.append)
    assert not cards.acquire(CARD).allowed
    assert [(r.key, r.error.decision.fallback) for r in refusals] == [  # type: ignore[attr-defined]
        (CARD, "deny")]


def test_a_hook_that_raises_is_logged_and_the_decision_stands(
        clock: ManualClock, caplog: pytest.LogCaptureFixture) -> None:
    def broken(_refusal: fr.Refusal) -> None:
        raise RuntimeError("alerting is down")

    cards = limiter(fr.MemoryBackend(), clock, on_refusal=broken)
    with caplog.at_level(logging.ERROR, "fintech_resilience"):
        assert [cards.acquire(CARD).allowed for _ in range(3)] == [True, True, False]
    assert [r.getMessage() for r in caplog.records] == [
        f"rate limiter 'cards': the on_refusal hook {broken.__qualname__} failed"]


async def test_refusals_at_an_asgi_edge_reach_the_limiters_hook(clock: ManualClock) -> None:
    refusals: list[fr.Refusal] = []

    async def pay(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    api = fr.RateLimiter("1/minute", backend=fr.MemoryBackend(), clock=clock, name="api",
                         on_refusal=refusals.append)
    app = Starlette(routes=[Route("/pay", pay, methods=["POST"])], middleware=[
        Middleware(RateLimitMiddleware, limiter=api, key=lambda scope: "merchant-42")])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://test") as client:
        statuses = [(await client.post("/pay")).status_code for _ in range(2)]
    assert statuses == [200, 429]
    assert [(r.pattern, r.name, r.key) for r in refusals] == [("ratelimit", "api", "merchant-42")]


def test_a_full_bulkhead_reports_each_refusal_from_any_thread() -> None:
    refusals: list[fr.Refusal] = []
    pool = fr.Bulkhead(1, name="psp-pool", on_refusal=refusals.append)
    inside, release = threading.Event(), threading.Event()

    def hold() -> None:
        with pool:
            inside.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert inside.wait(10)
    errors: list[BaseException] = []

    def knock() -> None:
        try:
            with pool:
                pass
        except fr.BulkheadFull as exc:
            errors.append(exc)

    knockers = [threading.Thread(target=knock) for _ in range(3)]
    for t in knockers:
        t.start()
    for t in knockers:
        t.join(10)
    release.set()
    holder.join(10)
    assert len(errors) == 3 and len(refusals) == 3
    assert {(r.pattern, r.name, r.retry_after, r.key) for r in refusals} == {
        ("bulkhead", "psp-pool", None, None)}
    assert {id(r.error) for r in refusals} == {id(e) for e in errors}


async def test_a_policy_reports_its_stages_refusals_through_their_hooks(
        clock: ManualClock) -> None:
    refusals: list[fr.Refusal] = []
    pool = fr.Bulkhead(1, name="psp-pool", on_refusal=refusals.append)
    policy = fr.Policy(name="psp", bulkhead=pool)
    started, release = asyncio.Event(), asyncio.Event()

    async def held() -> str:
        started.set()
        await release.wait()
        return "ok"

    first = asyncio.create_task(policy.acall(held))
    await started.wait()
    with pytest.raises(fr.BulkheadFull):
        await policy.acall(held)
    release.set()
    assert await first == "ok"
    assert [r.pattern for r in refusals] == ["bulkhead"]


def test_hooks_must_be_callable() -> None:
    with pytest.raises(fr.ConfigurationError, match="on_refusal must be a callable"):
        fr.RateLimiter("1/second", on_refusal="print")  # type: ignore[arg-type]
    with pytest.raises(fr.ConfigurationError, match="on_refusal must be a callable"):
        fr.Bulkhead(1, on_refusal=3)  # type: ignore[arg-type]
