"""Priority load shedding: critical traffic keeps its reserved share, the others are shed first."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route
from test_asgi_ratelimit import serve_asgi

from fintech_resilience._asgi_shedding import LoadSheddingMiddleware
from fintech_resilience._ratelimit_http import TEMPORARY_REDUCED_CAPACITY
from fintech_resilience.errors import ConfigurationError


class Gate:
    """Holds every request inside the app until opened, so in-flight work is exact."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.inside = 0

    async def wait(self) -> None:
        self.inside += 1
        await self.open.wait()


def make_app(gate: Gate, **options: Any) -> Starlette:
    async def held(request: Request) -> PlainTextResponse:
        await gate.wait()
        return PlainTextResponse("done")

    async def boom(request: Request) -> PlainTextResponse:
        raise RuntimeError("handler failed")

    async def stream(request: Request) -> StreamingResponse:
        async def body() -> Any:
            yield b"a"
            await gate.wait()
            yield b"b"

        return StreamingResponse(body())

    routes = [Route("/v1/payments", held, methods=["POST"]), Route("/v1/reports", held),
              Route("/v1/other", held), Route("/boom", boom), Route("/stream", stream)]
    return Starlette(routes=routes, middleware=[Middleware(LoadSheddingMiddleware, **options)])


def shedder(app: Starlette) -> LoadSheddingMiddleware:
    layer = app.middleware_stack or app.build_middleware_stack()
    app.middleware_stack = layer
    while not isinstance(layer, LoadSheddingMiddleware):
        layer = layer.app
    return layer


async def until(predicate: Any) -> None:
    for _ in range(2000):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


OPTIONS = {"max_in_flight": 10, "routes": [("/v1/payments", "critical"),
                                           (re.compile(r"^/v1/rep"), "reporting")],
           "shares": {"reporting": 0.5}}


async def test_reporting_is_shed_first_then_default_while_payments_keep_the_reserve():
    gate = Gate()
    app = make_app(gate, **OPTIONS)
    layer = shedder(app)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as client:
        held = [asyncio.create_task(client.get("/v1/reports")) for _ in range(5)]
        await until(lambda: gate.inside == 5)
        shed_report = await client.get("/v1/reports")
        held += [asyncio.create_task(client.get("/v1/other")) for _ in range(3)]
        await until(lambda: gate.inside == 8)
        shed_default = await client.get("/v1/other")
        held += [asyncio.create_task(client.post("/v1/payments")) for _ in range(2)]
        await until(lambda: gate.inside == 10)
        shed_payment = await client.post("/v1/payments")
        assert layer.in_flight == 10
        gate.open.set()
        finished = await asyncio.gather(*held)
        after = await client.get("/v1/reports")
    assert [r.status_code for r in finished] == [200] * 10
    for refused in (shed_report, shed_default, shed_payment):
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["type"] == TEMPORARY_REDUCED_CAPACITY
        assert refused.json()["status"] == 503
    assert layer.shed == {"reporting": 1, "default": 1, "critical": 1}
    assert after.status_code == 200 and layer.in_flight == 0


async def test_slots_are_returned_after_errors_and_held_while_streaming():
    gate = Gate()
    app = make_app(gate, max_in_flight=1, reserved=0.0, classify=lambda scope: "critical")
    layer = shedder(app)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/boom")).status_code == 500
        assert layer.in_flight == 0
        streaming = asyncio.create_task(client.get("/stream"))
        await until(lambda: gate.inside == 1)
        assert (await client.get("/v1/other")).status_code == 503
        gate.open.set()
        assert (await streaming).content == b"ab"
    assert layer.in_flight == 0


async def test_non_http_scopes_pass_untouched_and_are_not_counted():
    seen: list[Any] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope["type"], receive, send))

    layer = LoadSheddingMiddleware(inner, max_in_flight=1)
    layer.in_flight = 1  # full: HTTP would be shed

    async def receive() -> dict:
        return {}

    async def send(message: Any) -> None:
        return None

    for kind in ("websocket", "lifespan"):
        await layer({"type": kind}, receive, send)
    assert seen == [("websocket", receive, send), ("lifespan", receive, send)]


def test_real_uvicorn_sheds_reporting_under_load_and_serves_payments():
    gate_open = asyncio.Event  # created inside the server loop below
    state: dict[str, Any] = {}

    async def held(request: Request) -> PlainTextResponse:
        state.setdefault("event", gate_open())
        state["inside"] = state.get("inside", 0) + 1
        await state["event"].wait()
        return PlainTextResponse("done")

    async def release(request: Request) -> PlainTextResponse:
        state["event"].set()
        return PlainTextResponse("released")

    app = Starlette(routes=[Route("/v1/reports", held), Route("/v1/payments", held,
                                                               methods=["POST"]),
                            Route("/release", release)],
                    middleware=[Middleware(LoadSheddingMiddleware, max_in_flight=4,
                                           routes=[("/v1/payments", "critical"),
                                                   ("/release", "critical"),
                                                   ("/v1/reports", "reporting")],
                                           shares={"reporting": 0.5})])

    async def scenario(url: str) -> tuple[list[int], int, int]:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            reports = [asyncio.create_task(client.get("/v1/reports")) for _ in range(2)]
            # the server runs on another thread's loop: poll its counter
            while state.get("inside", 0) < 2:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            shed = (await client.get("/v1/reports")).status_code
            payment = asyncio.create_task(client.post("/v1/payments"))
            while state.get("inside", 0) < 3:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            await client.get("/release")
            done = [r.status_code for r in await asyncio.gather(*reports)]
            return done, shed, (await payment).status_code

    with serve_asgi(app) as url:
        done, shed, paid = asyncio.run(scenario(url))
    assert done == [200, 200] and shed == 503 and paid == 200


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"max_in_flight": 0}, "max_in_flight"),
    ({"max_in_flight": 5, "reserved": 1.0}, "reserved"),
    ({"max_in_flight": 5, "shares": {"reporting": 0}}, "shares"),
    ({"max_in_flight": 5, "routes": ["/v1/payments"]}, "routes are"),
    ({"max_in_flight": 5, "retry_after": 0}, "retry_after"),
])
def test_bad_configuration_says_what_to_write(kwargs, message):
    with pytest.raises(ConfigurationError, match=message):
        LoadSheddingMiddleware(lambda *a: None, **kwargs)  # type: ignore[arg-type]
