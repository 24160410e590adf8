"""IdempotencyMiddleware on real Starlette/FastAPI (ASGI) and Flask (WSGI) apps."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from flask import Flask
from flask import request as flask_request
from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from fintech_resilience import MemoryBackend, RedisBackend
from fintech_resilience.asgi import IdempotencyMiddleware
from fintech_resilience.backends.base import Backend
from fintech_resilience.errors import ConfigurationError
from fintech_resilience.idempotency import IdempotencyStore, current_idempotency
from fintech_resilience.testing import ManualClock
from fintech_resilience.wsgi import IdempotencyMiddleware as WsgiIdempotencyMiddleware

SECRET = b"http-test-secret-0123456789"
BASE = "https://fintech-resilience.dev/problems/"


def principal(scope: dict[str, Any]) -> str | None:
    """Stands in for an authentication middleware: the principal from a test header."""
    for name, value in scope["headers"]:
        if name == b"x-user":
            return value.decode()
    return None


class Handler:
    def __init__(self) -> None:
        self.calls: list[bytes] = []
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()
        self.clock: ManualClock | None = None

    async def charge(self, request: StarletteRequest) -> Response:
        body = await request.body()
        self.calls.append(body)
        self.entered.set()
        ctx = current_idempotency()
        if self.gate is not None:
            await self.gate.wait()
        if self.clock is not None:
            self.clock.advance(60.0)  # the lease runs out while the handler works
        if body == b"fail":
            return JSONResponse({"error": "psp down"}, status_code=502)
        if body == b"crash":
            raise RuntimeError("bug")
        response = JSONResponse({"charge": len(self.calls), "fencing": ctx and ctx.fencing_token},
                                status_code=201)
        response.set_cookie("session", "s3cr3t")
        response.headers["Location"] = "/charges/1"
        response.headers["X-Internal"] = "do-not-replay"
        return response

    async def stream(self, request: StarletteRequest) -> Response:
        self.calls.append(b"stream")

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(10):
                yield bytes([65 + i]) * 100

        return StreamingResponse(chunks(), media_type="text/plain")


def starlette_app(store: IdempotencyStore, handler: Handler, **options: Any) -> Any:
    app = Starlette(routes=[Route("/charges", handler.charge, methods=["POST", "GET"]),
                            Route("/stream", handler.stream, methods=["POST"])])
    options.setdefault("scope", principal)
    return IdempotencyMiddleware(app, store=store, **options)


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def post(c: httpx.AsyncClient, key: str | None, body: bytes = b'{"amount":100}',
         user: str = "alice", path: str = "/charges") -> Any:
    headers = {"x-user": user}
    if key is not None:
        headers["Idempotency-Key"] = key
    return c.post(path, content=body, headers=headers)


def problem_type(r: httpx.Response) -> str:
    assert r.headers["content-type"] == "application/problem+json"
    return str(r.json()["type"]).removeprefix(BASE)


@pytest.fixture
def store(backend: Backend) -> IdempotencyStore:
    return IdempotencyStore(backend, secret=SECRET, lease=30, ttl=3600)


async def test_first_request_runs_duplicates_replay_byte_identical_with_safe_headers(
        store: IdempotencyStore) -> None:
    handler = Handler()
    async with client(starlette_app(store, handler)) as c:
        first = await post(c, "key-1")
        again = await post(c, "key-1")
        third = await post(c, "key-1")
    assert first.status_code == 201 and "set-cookie" in first.headers
    assert len(handler.calls) == 1
    for r in (again, third):
        assert r.status_code == 201
        assert r.content == first.content
        assert r.headers["idempotent-replayed"] == "true"
        assert r.headers["location"] == "/charges/1"
        assert r.headers["content-type"] == "application/json"
        assert "set-cookie" not in r.headers and "x-internal" not in r.headers
    assert "idempotent-replayed" not in first.headers


async def test_same_key_different_body_is_422_and_other_principal_gets_its_own_record(
        store: IdempotencyStore) -> None:
    handler = Handler()
    async with client(starlette_app(store, handler)) as c:
        first = await post(c, "k")
        mismatch = await post(c, "k", body=b'{"amount":999}')
        bob = await post(c, "k", user="bob")
        query = await c.post("/charges?x=1", content=b'{"amount":100}',
                             headers={"x-user": "alice", "Idempotency-Key": "k"})
    assert mismatch.status_code == 422
    assert problem_type(mismatch) == "idempotency-key-mismatch"
    assert query.status_code == 422
    assert bob.status_code == 201 and "idempotent-replayed" not in bob.headers
    assert bob.json()["charge"] == 2 != first.json()["charge"]
    assert len(handler.calls) == 2


async def test_duplicate_while_in_flight_gets_409_with_retry_after(
        store: IdempotencyStore) -> None:
    handler = Handler()
    handler.gate = asyncio.Event()
    async with client(starlette_app(store, handler)) as c:
        first = asyncio.ensure_future(post(c, "k"))
        await handler.entered.wait()
        busy = await post(c, "k")
        handler.gate.set()
        done = await first
    assert busy.status_code == 409
    assert problem_type(busy) == "idempotency-request-in-progress"
    assert int(busy.headers["retry-after"]) >= 1
    assert done.status_code == 201


async def test_5xx_and_exceptions_release_the_key(store: IdempotencyStore) -> None:
    handler = Handler()
    async with client(starlette_app(store, handler)) as c:
        assert (await post(c, "k", body=b"fail")).status_code == 502
        assert (await post(c, "k", body=b"fail")).status_code == 502
        with pytest.raises(RuntimeError):
            await post(c, "k2", body=b"crash")
        with pytest.raises(RuntimeError):
            await post(c, "k2", body=b"crash")
    assert handler.calls == [b"fail", b"fail", b"crash", b"crash"]


async def test_lease_lost_while_running_gives_outcome_unknown(backend: Backend,
                                                              clock: ManualClock) -> None:
    store = IdempotencyStore(backend, secret=SECRET, lease=30, ttl=3600, clock=clock,
                             renew=False)
    handler = Handler()
    handler.clock = clock
    async with client(starlette_app(store, handler)) as c:
        first = await post(c, "k")
        handler.clock = None
        retry = await post(c, "k")
    assert first.status_code == 201  # the work happened; the client gets its answer
    assert retry.status_code == 409
    assert problem_type(retry) == "idempotency-outcome-unknown"
    assert len(handler.calls) == 1


@pytest.mark.parametrize(("key", "expected"), [
    (None, "idempotency-key-missing"),
    ("", "idempotency-key-invalid"),
    ("x" * 256, "idempotency-key-invalid"),
    ("caf\u00e9", "idempotency-key-invalid"),
    ("tab\there", "idempotency-key-invalid"),
])
async def test_bad_keys_get_400(key: str | None, expected: str) -> None:
    store = IdempotencyStore(MemoryBackend(), secret=SECRET)
    handler = Handler()
    app = starlette_app(store, handler, required=True)
    scope_headers = [(b"x-user", b"alice")]
    if key is not None:
        scope_headers.append((b"idempotency-key", key.encode("latin-1")))
    status, body = await raw_call(app, scope_headers)
    assert status == 400
    assert json.loads(body)["type"] == BASE + expected
    assert handler.calls == []


async def test_header_injection_and_repeated_keys_are_refused() -> None:
    store = IdempotencyStore(MemoryBackend(), secret=SECRET)
    handler = Handler()
    app = starlette_app(store, handler)
    for headers in ([(b"idempotency-key", b"a\r\nSet-Cookie: x=1")],
                    [(b"idempotency-key", b"a"), (b"idempotency-key", b"b")]):
        status, _ = await raw_call(app, [(b"x-user", b"alice"), *headers])
        assert status == 400
    status, _ = await raw_call(app, [(b"x-user", b"alice"), (b"idempotency-key", b"x" * 255)])
    assert status == 201
    status, _ = await raw_call(app, [(b"x-user", b"alice"), (b"idempotency-key", b'"x"')])
    assert status == 201  # the draft's quoted form names the same key as x


async def raw_call(app: Any, headers: list[tuple[bytes, bytes]], body: bytes = b"{}",
                   method: str = "POST", scope_type: str = "http") -> tuple[int, bytes]:
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": scope_type, "method": method, "path": "/charges", "raw_path": b"/charges",
             "root_path": "", "query_string": b"", "headers": headers, "scheme": "http",
             "server": ("test", 80), "client": ("127.0.0.1", 1), "asgi": {"version": "3.0"},
             "http_version": "1.1"}
    await app(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


async def test_missing_key_passes_through_when_not_required_and_other_methods_too() -> None:
    store = IdempotencyStore(MemoryBackend(), secret=SECRET)
    handler = Handler()
    async with client(starlette_app(store, handler)) as c:
        assert (await post(c, None)).status_code == 201
        assert (await post(c, None)).status_code == 201
        r = await c.get("/charges", headers={"Idempotency-Key": "k", "x-user": "a"})
        assert r.status_code == 201
    assert len(handler.calls) == 3


async def test_non_http_scopes_pass_through_untouched() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    mw = IdempotencyMiddleware(app, store=IdempotencyStore(MemoryBackend()), global_scope=True)
    await mw({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    await mw({"type": "websocket", "headers": []}, None, None)  # type: ignore[arg-type]
    assert seen == ["lifespan", "websocket"]


async def test_huge_bodies_get_413_and_never_run() -> None:
    store = IdempotencyStore(MemoryBackend(), secret=SECRET)
    handler = Handler()
    async with client(starlette_app(store, handler, max_body_bytes=1000)) as c:
        declared = await post(c, "k", body=b"x" * 1001)

        async def chunked() -> AsyncIterator[bytes]:
            for _ in range(20):
                yield b"y" * 100

        streamed = await c.post("/charges", content=chunked(),
                                headers={"x-user": "a", "Idempotency-Key": "k2"})
        fits = await post(c, "k3", body=b"z" * 1000)
    assert declared.status_code == 413 and streamed.status_code == 413
    assert problem_type(declared) == "idempotency-request-too-large"
    assert fits.status_code == 201
    assert len(handler.calls) == 1


async def test_streamed_response_above_the_bound_is_not_replayable(
        store: IdempotencyStore) -> None:
    handler = Handler()
    async with client(starlette_app(store, handler, max_response_bytes=500)) as c:
        first = await post(c, "k", path="/stream")
        again = await post(c, "k", path="/stream")
        small = starlette_app(store, handler, max_response_bytes=10_000)
    async with client(small) as c2:
        kept = await post(c2, "k-small", path="/stream")
        kept_again = await post(c2, "k-small", path="/stream")
    assert first.status_code == 200 and len(first.content) == 1000
    assert again.status_code == 409
    assert problem_type(again) == "idempotency-response-not-replayable"
    assert kept_again.content == kept.content and kept_again.headers["idempotent-replayed"]
    assert handler.calls == [b"stream", b"stream"]


async def test_store_down_answers_503_with_retry_after(fresh_redis: Any) -> None:
    red = RedisBackend.from_url(fresh_redis.url, timeout=0.2)
    store = IdempotencyStore(red, secret=SECRET, unavailable_retry_after=2.0)
    handler = Handler()
    fresh_redis.kill()
    async with client(starlette_app(store, handler)) as c:
        r = await post(c, "k")
    assert r.status_code == 503 and r.headers["retry-after"] == "2"
    assert problem_type(r) == "idempotency-store-unavailable"
    assert handler.calls == []
    await red.aclose()


async def test_redis_killed_mid_request_never_executes_twice(fresh_redis: Any) -> None:
    red = RedisBackend.from_url(fresh_redis.url, timeout=0.2)
    store = IdempotencyStore(red, secret=SECRET)
    handler = Handler()
    handler.gate = asyncio.Event()
    async with client(starlette_app(store, handler)) as c:
        first = asyncio.ensure_future(post(c, "k"))
        await handler.entered.wait()
        fresh_redis.kill()
        handler.gate.set()
        answered = await first
        retry = await post(c, "k")
    assert answered.status_code == 201  # the charge happened: its answer goes out
    assert retry.status_code == 503  # while the store is down, nothing runs again
    assert len(handler.calls) == 1
    await red.aclose()


async def test_redis_paused_mid_request_then_resumed_reports_the_record(fresh_redis: Any) -> None:
    red = RedisBackend.from_url(fresh_redis.url, timeout=0.2, cooldown=0.0)
    store = IdempotencyStore(red, secret=SECRET)
    handler = Handler()
    handler.gate = asyncio.Event()
    async with client(starlette_app(store, handler)) as c:
        first = asyncio.ensure_future(post(c, "k"))
        await handler.entered.wait()
        fresh_redis.pause()
        handler.gate.set()
        answered = await first  # completion timed out: the record stays in progress
        during = await post(c, "k")
        fresh_redis.resume()
        after = await post(c, "k")
    assert answered.status_code == 201
    assert during.status_code == 503
    assert after.status_code == 409  # still in flight (lease): never a second execution
    assert len(handler.calls) == 1
    await red.aclose()


def test_middleware_refuses_to_run_without_a_scope() -> None:
    store = IdempotencyStore(MemoryBackend())
    with pytest.raises(ConfigurationError, match="scope"):
        IdempotencyMiddleware(Starlette(), store=store)
    with pytest.raises(ConfigurationError, match="scope"):
        WsgiIdempotencyMiddleware(Flask(__name__), store=store)


async def test_fastapi_app(store: IdempotencyStore) -> None:
    app = FastAPI()
    calls: list[int] = []

    @app.post("/payments", status_code=201)
    async def pay(request: Request) -> dict[str, Any]:
        calls.append(1)
        return {"id": f"pay_{len(calls)}", "body": (await request.json())["amount"]}

    app.add_middleware(IdempotencyMiddleware, store=store,  # type: ignore[arg-type]
                       scope=principal, methods=("POST",), required=True)
    async with client(app) as c:
        rs = [await post(c, "k", path="/payments") for _ in range(3)]
        missing = await post(c, None, path="/payments")
    assert [r.status_code for r in rs] == [201, 201, 201]
    assert rs[1].content == rs[0].content == rs[2].content
    assert missing.status_code == 400 and calls == [1]


# --- Flask (WSGI) ---------------------------------------------------------------------------------
def flask_app(store: IdempotencyStore, calls: list[bytes], **options: Any) -> Flask:
    app = Flask(__name__)

    @app.post("/charges")
    def charge() -> Any:
        body = flask_request.get_data()
        calls.append(body)
        if body == b"fail":
            return {"error": "psp"}, 503
        if body == b"big":
            return "B" * 5000, 200
        response = app.make_response(({"charge": len(calls)}, 201))
        response.set_cookie("session", "s3cr3t")
        return response

    options.setdefault("scope", lambda environ: environ.get("HTTP_X_USER"))
    app.wsgi_app = WsgiIdempotencyMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, store=store, **options)
    return app


def test_flask_replays_and_rejects_like_the_asgi_middleware(store: IdempotencyStore) -> None:
    calls: list[bytes] = []
    c = flask_app(store, calls, max_body_bytes=100, max_response_bytes=1000).test_client()

    def send(key: str | None, body: bytes = b"{}", user: str = "alice") -> Any:
        headers = {"X-User": user}
        if key is not None:
            headers["Idempotency-Key"] = key
        return c.post("/charges", data=body, headers=headers)

    first, again = send("k"), send("k")
    assert first.status_code == again.status_code == 201
    assert again.data == first.data and again.headers["Idempotent-Replayed"] == "true"
    assert "Set-Cookie" in first.headers and "Set-Cookie" not in again.headers
    assert send("k", b'{"a":2}').status_code == 422
    assert send("k", user="bob").status_code == 201
    assert send("x" * 256).status_code == 400
    assert send("").status_code == 400
    assert send("k2", b"x" * 101).status_code == 413
    assert send("k3", b"fail").status_code == 503 and send("k3", b"fail").status_code == 503
    big = send("k4", b"big")
    assert big.status_code == 200 and len(big.data) == 5000
    not_replayable = send("k4", b"big")
    assert not_replayable.status_code == 409
    assert not_replayable.json["type"] == BASE + "idempotency-response-not-replayable"
    assert calls == [b"{}", b"{}", b"fail", b"fail", b"big"]


def test_flask_store_down_answers_503(fresh_redis: Any) -> None:
    red = RedisBackend.from_url(fresh_redis.url, timeout=0.2)
    store = IdempotencyStore(red, secret=SECRET)
    calls: list[bytes] = []
    c = flask_app(store, calls).test_client()
    fresh_redis.kill()
    r = c.post("/charges", data=b"{}", headers={"X-User": "a", "Idempotency-Key": "k"})
    assert r.status_code == 503 and r.headers["Retry-After"] == "1"
    assert calls == []
    red.close()
