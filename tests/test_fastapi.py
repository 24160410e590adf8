"""FastAPI: Depends(RateLimit(...)) with no ``request`` parameter in the endpoint."""

from __future__ import annotations

import warnings

import httpx
from fastapi import BackgroundTasks, Depends, FastAPI
from fastapi.responses import PlainTextResponse, StreamingResponse
from pydantic import BaseModel
from test_asgi_ratelimit import serve_asgi

from fintech_resilience import MemoryBackend
from fintech_resilience.edges.ratelimit_http import QUOTA_EXCEEDED
from fintech_resilience.fastapi import RateLimit, RateLimitExceeded, install
from fintech_resilience.keys import principal_or_ip
from fintech_resilience.ratelimit.limiter import Decision, RateLimiter
from fintech_resilience.testing import ManualClock

with warnings.catch_warnings():  # starlette 1.x warns that its test client wants httpx2
    warnings.filterwarnings("ignore", message=".*httpx2")
    from fastapi.testclient import TestClient


class PaymentIn(BaseModel):
    amount: int


events: list[str] = []


def make_app(clock: ManualClock, *, problem: bool = True) -> FastAPI:
    app = FastAPI()
    if problem:
        install(app)
    backend = MemoryBackend()
    per_route = RateLimit("2/minute", backend=backend, clock=clock,
                          key=principal_or_ip(principal_header="X-User"))

    @app.post("/payments", dependencies=[Depends(per_route)])
    async def pay(body: PaymentIn) -> dict[str, int]:
        return {"paid": body.amount}

    @app.get("/refunds", dependencies=[Depends(per_route)])
    def refunds() -> dict[str, str]:
        return {"ok": "refunds"}

    shared = RateLimit(RateLimiter("3/minute", name="reports", backend=backend, clock=clock))

    @app.get("/reports")
    async def reports(decision: Decision | None = Depends(shared)) -> dict[str, int]:  # noqa: B008
        assert decision is not None
        return {"remaining": decision.remaining}

    @app.get("/raw", dependencies=[Depends(shared)])
    async def raw(tasks: BackgroundTasks) -> PlainTextResponse:
        tasks.add_task(events.append, "bg-ran")
        return PlainTextResponse("raw")

    @app.get("/stream", dependencies=[Depends(shared)])
    async def stream() -> StreamingResponse:
        async def body():  # type: ignore[no-untyped-def]
            yield b"a"
            yield b"b"

        return StreamingResponse(body())

    return app


def test_limits_per_principal_without_a_request_parameter():
    clock = ManualClock()
    with TestClient(make_app(clock)) as client:
        alice = [client.post("/payments", json={"amount": 100}, headers={"X-User": "alice"})
                 for _ in range(3)]
        bob = client.post("/payments", json={"amount": 5}, headers={"X-User": "bob"})
    assert [r.status_code for r in alice] == [200, 200, 429]
    assert alice[0].json() == {"paid": 100} and bob.status_code == 200
    policy = alice[0].headers["ratelimit-policy"]
    assert policy.startswith('"payments-') and policy.endswith('";q=2;w=60')
    assert alice[0].headers["ratelimit"].endswith('";r=1;t=30')
    assert alice[2].headers["retry-after"] == "30"


def test_refusal_is_problem_json_with_install_and_native_json_without():
    clock = ManualClock()
    with TestClient(make_app(clock)) as client:
        for _ in range(4):
            refused = client.get("/reports")
        ok_before = client.get("/refunds")
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["type"] == QUOTA_EXCEEDED
    assert refused.json()["violated-policies"] == ["reports"]
    assert refused.headers["ratelimit"] == '"reports";r=0;t=20'
    assert ok_before.status_code == 200  # another route: its own limiter
    with TestClient(make_app(ManualClock(), problem=False)) as client:
        for _ in range(4):
            plain = client.get("/reports")
    assert plain.status_code == 429
    assert plain.headers["content-type"] == "application/json"
    assert plain.json() == {"detail": "Quota exceeded; retry in 20 second(s)."}
    assert plain.headers["retry-after"] == "20"


def test_decision_reaches_the_endpoint_streaming_and_background_tasks_work():
    events.clear()
    with TestClient(make_app(ManualClock())) as client:
        first = client.get("/reports")
        raw = client.get("/raw")
        streamed = client.get("/stream")
        refused = client.get("/stream")
    assert first.json() == {"remaining": 2}
    assert first.headers["ratelimit"] == '"reports";r=2;t=20'
    assert raw.text == "raw" and events == ["bg-ran"]
    # FastAPI drops dependency fields from a Response the endpoint returns itself (documented)
    assert "ratelimit" not in raw.headers
    assert streamed.content == b"ab"
    assert refused.status_code == 429 and refused.headers["ratelimit"] == '"reports";r=0;t=20'


async def test_the_exception_carries_the_decision_and_headers():
    limit = RateLimit(RateLimiter("1/minute", name="x", backend=MemoryBackend(),
                                  clock=ManualClock()), key=lambda request: "k")
    app = FastAPI()
    caught: list[RateLimitExceeded] = []

    @app.exception_handler(RateLimitExceeded)
    async def handler(request, exc):  # type: ignore[no-untyped-def]
        caught.append(exc)
        return PlainTextResponse("custom", status_code=exc.status_code, headers=exc.headers)

    @app.get("/", dependencies=[Depends(limit)])
    async def index() -> str:
        return "ok"

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as client:
        assert (await client.get("/")).status_code == 200
        refused = await client.get("/")
    assert refused.text == "custom" and refused.headers["retry-after"] == "60"
    assert caught[0].decision.allowed is False and caught[0].decision.policy == "1/minute"
    assert caught[0].headers == {"RateLimit-Policy": '"x";q=1;w=60', "RateLimit": '"x";r=0;t=60',
                                 "Retry-After": "60"}


def test_real_uvicorn_serves_limits_on_loopback():
    with serve_asgi(make_app(ManualClock())) as url, httpx.Client(base_url=url) as client:
        codes = [client.post("/payments", json={"amount": 1}, headers={"X-User": "u"})
                 .status_code for _ in range(3)]
    assert codes == [200, 200, 429]


def test_limits_per_plan_from_the_request():
    """slowapi's dynamic limits: a callable of the request, resolved per request."""
    plans = {"alice": "2/minute", "bob": "3/minute"}  # no plan: not limited
    app = FastAPI()
    install(app)
    per_plan = RateLimit(lambda request: plans.get(request.headers.get("X-User", "")),
                         backend=MemoryBackend(), clock=ManualClock(),
                         key=principal_or_ip(principal_header="X-User"))

    @app.get("/quotes", dependencies=[Depends(per_plan)])
    async def quotes() -> dict[str, bool]:
        return {"ok": True}

    with TestClient(app) as client:
        alice = [client.get("/quotes", headers={"X-User": "alice"}) for _ in range(3)]
        bob = [client.get("/quotes", headers={"X-User": "bob"}) for _ in range(4)]
        staff = [client.get("/quotes", headers={"X-User": "staff"}) for _ in range(5)]
    assert [r.status_code for r in alice] == [200, 200, 429]
    assert [r.status_code for r in bob] == [200, 200, 200, 429]
    assert [r.status_code for r in staff] == [200] * 5
    assert alice[0].headers["ratelimit-policy"].endswith('";q=2;w=60')
    assert bob[0].headers["ratelimit-policy"].endswith('";q=3;w=60')
    assert "ratelimit" not in staff[0].headers
    named = RateLimit(lambda request: "1/minute", name="quotes")
    assert repr(named).startswith("RateLimit(<function")


def test_counting_only_declines_is_the_middleware_s_job_under_fastapi():
    """A dependency cannot see the response: count_when is a Rule option of the ASGI
    middleware, which FastAPI takes as it is (HTTPException answers included)."""
    from fastapi import HTTPException

    from fintech_resilience.asgi import RateLimitMiddleware, Rule

    declines = RateLimiter("2/minute", name="declines", backend=MemoryBackend(),
                           clock=ManualClock())
    app = FastAPI()
    app.add_middleware(RateLimitMiddleware, key=principal_or_ip(principal_header="X-User"),
                       rules=[Rule(declines, path="/charges", methods=["POST"],
                                   count_when=lambda status: status == 402)])

    @app.post("/charges")
    async def create_charge(body: PaymentIn) -> dict[str, int]:
        if body.amount > 1000:
            raise HTTPException(402, "card declined")
        return {"charged": body.amount}

    with TestClient(app) as client:
        def charge(amount: int) -> int:
            return client.post("/charges", json={"amount": amount},
                               headers={"X-User": "u"}).status_code

        codes = [charge(10), charge(10), charge(5000), charge(10), charge(5000), charge(10)]
    assert codes == [200, 200, 402, 200, 402, 429]
