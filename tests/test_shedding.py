"""Priority load shedding: critical traffic keeps its reserved share, the others are shed first."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route
from test_asgi_ratelimit import serve_asgi
from test_wsgi_ratelimit import serve_wsgi

from fintech_resilience import wsgi
from fintech_resilience.edges.asgi.shedding import LoadSheddingMiddleware
from fintech_resilience.edges.ratelimit_http import TEMPORARY_REDUCED_CAPACITY
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
    for middleware in (LoadSheddingMiddleware, wsgi.LoadSheddingMiddleware):
        with pytest.raises(ConfigurationError, match=message):
            middleware(lambda *a: None, **kwargs)  # type: ignore[arg-type]


# -- WSGI ------------------------------------------------------------------------------------


class ThreadGate:
    """Holds every request inside the WSGI app (one server thread each) until opened."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.inside = 0
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            self.inside += 1
        assert self.open.wait(30), "the gate was never opened"

    def until(self, count: int) -> None:
        deadline = time.monotonic() + 30
        while self.inside < count:
            assert time.monotonic() < deadline, f"{self.inside} of {count} requests arrived"
            time.sleep(0.005)


def flask_app(gate: ThreadGate, **options: Any) -> Any:
    from flask import Flask

    app = Flask("shedding")

    @app.route("/v1/payments", methods=["POST"])
    @app.route("/v1/reports")
    @app.route("/v1/other")
    def held() -> str:
        gate.wait()
        return "done"

    app.wsgi_app = wsgi.LoadSheddingMiddleware(app.wsgi_app, **options)  # type: ignore[method-assign]
    return app


def test_wsgi_threads_on_a_real_server_shed_reporting_first_and_keep_the_reserve():
    gate = ThreadGate()
    app = flask_app(gate, **OPTIONS)
    layer = app.wsgi_app
    with serve_wsgi(app) as url, ThreadPoolExecutor(12) as pool, \
            httpx.Client(base_url=url, timeout=30) as client:
        held = [pool.submit(client.get, "/v1/reports") for _ in range(5)]
        gate.until(5)
        shed_report = client.get("/v1/reports")
        held += [pool.submit(client.get, "/v1/other") for _ in range(3)]
        gate.until(8)
        shed_default = client.get("/v1/other")
        held += [pool.submit(client.post, "/v1/payments") for _ in range(2)]
        gate.until(10)
        shed_payment = client.post("/v1/payments")
        assert layer.in_flight == 10
        gate.open.set()
        finished = [future.result() for future in held]
        after = client.get("/v1/reports")
    assert [r.status_code for r in finished] == [200] * 10
    for refused in (shed_report, shed_default, shed_payment):
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert refused.headers["content-type"] == "application/problem+json"
        assert int(refused.headers["content-length"]) == len(refused.content)
        assert refused.json()["type"] == TEMPORARY_REDUCED_CAPACITY
    assert layer.shed == {"reporting": 1, "default": 1, "critical": 1}
    assert after.status_code == 200 and layer.in_flight == 0


def test_wsgi_slot_is_held_until_the_response_is_closed_and_freed_on_errors():
    closed: list[str] = []

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            yield from (b"a", b"b")

        def close(self) -> None:
            closed.append("closed")

    def inner(environ: dict, start_response: Any) -> Any:
        if environ["PATH_INFO"] == "/boom":
            raise RuntimeError("handler failed")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Body()

    seen: list[Any] = []
    layer = wsgi.LoadSheddingMiddleware(
        inner, max_in_flight=1, reserved=0.0,
        classify=lambda environ: seen.append(environ["PATH_INFO"]) or "critical")
    statuses: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        statuses.append(status)
        return lambda data: None

    environ = {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": "/stream"}
    with pytest.raises(RuntimeError):
        layer({**environ, "PATH_INFO": "/boom"}, start_response)
    assert layer.in_flight == 0
    streaming = layer(environ, start_response)
    assert b"".join(streaming) == b"ab" and layer.in_flight == 1  # iterated, not yet closed
    refused = layer(environ, start_response)
    assert statuses[-1] == "503 Service Unavailable"
    assert json.loads(b"".join(refused))["status"] == 503
    streaming.close()  # type: ignore[attr-defined]
    streaming.close()  # type: ignore[attr-defined]  # a second close frees nothing more
    assert closed == ["closed", "closed"] and layer.in_flight == 0
    assert b"".join(layer(environ, start_response)) == b"ab"
    assert seen == ["/boom", "/stream", "/stream", "/stream"]
    assert layer.shed == {"critical": 1}
