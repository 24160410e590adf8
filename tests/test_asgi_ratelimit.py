"""The pure ASGI RateLimitMiddleware: through Starlette's test client and a real uvicorn."""

from __future__ import annotations

import contextlib
import contextvars
import json
import re
import threading
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

with warnings.catch_warnings():  # starlette 1.x warns that its test client wants httpx2
    warnings.filterwarnings("ignore", message=".*httpx2")
    from starlette.testclient import TestClient

import servers

from fintech_resilience import MemoryBackend, RedisBackend
from fintech_resilience.edges.asgi.ratelimit import RateLimitMiddleware
from fintech_resilience.edges.ratelimit_http import QUOTA_EXCEEDED, TEMPORARY_REDUCED_CAPACITY, Rule
from fintech_resilience.keys import principal_or_ip
from fintech_resilience.ratelimit.limiter import RateLimiter
from fintech_resilience.testing import ManualClock

# RFC 9651 List of sf-string Items with Integer parameters, as the IETF draft uses them
SF_ITEM = r'"[\x20-\x21\x23-\x5b\x5d-\x7e]*"(?:;[a-z*][a-z0-9_.*-]*=\d{1,15})+'
SF_LIST = re.compile(rf"^{SF_ITEM}(?:, {SF_ITEM})*$")

request_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_var", default="")
endpoint_var: contextvars.ContextVar[str] = contextvars.ContextVar("endpoint_var", default="")


class FakeAuth:
    """A pure ASGI auth layer: the API key header becomes ``scope["state"]["principal"]``."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen_after: list[str] = []

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            api_key = dict(scope["headers"]).get(b"x-api-key")
            if api_key:
                scope.setdefault("state", {})["principal"] = api_key.decode()
            request_var.set("set-outside")
        await self.app(scope, receive, send)
        if scope["type"] == "http":
            self.seen_after.append(endpoint_var.get())


events: list[str] = []


async def plain(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def ctx(request: Request) -> PlainTextResponse:
    endpoint_var.set("set-in-endpoint")
    return PlainTextResponse(request_var.get())


async def stream(request: Request) -> StreamingResponse:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(3):
            yield f"chunk{i};".encode()

    return StreamingResponse(chunks(), media_type="text/plain")


async def background(request: Request) -> PlainTextResponse:
    return PlainTextResponse("queued", background=BackgroundTask(events.append, "bg-ran"))


async def ws_echo(websocket: WebSocket) -> None:
    await websocket.accept()
    text = await websocket.receive_text()
    await websocket.send_text(f"echo:{text}")
    await websocket.close()


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    events.append("startup")
    yield
    events.append("shutdown")


def make_app(**options: Any) -> Starlette:
    routes = [Route("/r", plain), Route("/payments", plain, methods=["POST"]),
              Route("/healthz", plain), Route("/ctx", ctx), Route("/stream", stream),
              Route("/bg", background), WebSocketRoute("/ws", ws_echo)]
    return Starlette(routes=routes, lifespan=lifespan, middleware=[
        Middleware(FakeAuth), Middleware(RateLimitMiddleware, **options)])


def limiter(spec: str, backend: Any = None, clock: ManualClock | None = None,
            **kw: Any) -> RateLimiter:
    kw.setdefault("name", "api")
    return RateLimiter(spec, backend=backend or MemoryBackend(), clock=clock or ManualClock(),
                       **kw)


def asgi_client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


@contextlib.contextmanager
def serve_asgi(app: Any) -> Iterator[str]:
    """Run ``app`` on a real uvicorn bound to 127.0.0.1 (a free port); yield its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", ws="none",
                            lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(500):
            if server.started:
                break
            threading.Event().wait(0.01)
        assert server.started, "uvicorn did not start"
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


class TestLimits:
    # on the test's own event loop (httpx's ASGI transport), so the Redis connections the
    # middleware opens are closed by the backend fixture on the loop that opened them
    async def test_limits_are_enforced_per_principal(self, backend, clock):
        app = make_app(limiter=limiter("3/minute", backend, clock))
        async with asgi_client(app) as client:
            alice = [(await client.get("/r", headers={"x-api-key": "alice"})).status_code
                     for _ in range(4)]
            bob = (await client.get("/r", headers={"x-api-key": "bob"})).status_code
        assert alice == [200, 200, 200, 429]
        assert bob == 200

    async def test_fields_are_exactly_as_the_ietf_draft_defines(self, backend, clock):
        app = make_app(limiter=limiter("3/minute", backend, clock))
        async with asgi_client(app) as client:
            got = [await client.get("/r", headers={"x-api-key": "m"}) for _ in range(4)]
            clock.advance(20)
            again = await client.get("/r", headers={"x-api-key": "m"})
        for response in got:
            assert response.headers["ratelimit-policy"] == '"api";q=3;w=60'
            assert SF_LIST.match(response.headers["ratelimit-policy"])
            assert SF_LIST.match(response.headers["ratelimit"])
        assert [r.headers["ratelimit"] for r in got] == [
            '"api";r=2;t=20', '"api";r=1;t=20', '"api";r=0;t=20', '"api";r=0;t=20']
        assert "retry-after" not in got[2].headers
        assert got[3].status_code == 429 and got[3].headers["retry-after"] == "20"
        assert again.status_code == 200 and again.headers["ratelimit"] == '"api";r=0;t=20'

    def test_refusal_is_a_valid_rfc9457_problem(self, clock):
        app = make_app(limiter=limiter("1/second", clock=clock))
        with TestClient(app) as client:
            client.get("/r")
            refused = client.get("/r")
        assert refused.status_code == 429
        assert refused.headers["content-type"] == "application/problem+json"
        assert int(refused.headers["content-length"]) == len(refused.content)
        body = refused.json()
        assert body["type"] == QUOTA_EXCEEDED
        assert body["status"] == 429
        assert isinstance(body["title"], str) and body["title"]
        assert body["detail"] == "Quota exceeded; retry in 1 second(s)."
        assert body["violated-policies"] == ["api"]
        assert set(body) == {"type", "title", "status", "detail", "violated-policies"}

    def test_several_limits_in_one_limiter_report_the_tightest(self, clock):
        app = make_app(limiter=limiter("2/second; 3/minute", clock=clock))
        with TestClient(app) as client:
            first = client.get("/r")
            clock.advance(1)
            client.get("/r")
            clock.advance(1)
            third = client.get("/r")
            clock.advance(1)
            refused = client.get("/r")
        policy = '"api-0";q=2;w=1, "api-1";q=3;w=60'
        assert first.headers["ratelimit-policy"] == policy
        assert first.headers["ratelimit"] == '"api-0";r=1;t=1'
        assert third.headers["ratelimit"] == '"api-1";r=0;t=18'
        assert refused.status_code == 429
        assert refused.json()["violated-policies"] == ["api-1"]
        assert refused.headers["retry-after"] == "17"

    def test_fields_on_allowed_responses_are_configurable(self, clock):
        quiet = make_app(limiter=limiter("1/minute", clock=clock), headers_on_allowed=False)
        with TestClient(quiet) as client:
            ok, refused = client.get("/r"), client.get("/r")
        assert "ratelimit" not in ok.headers and "ratelimit-policy" not in ok.headers
        assert refused.headers["ratelimit"] == '"api";r=0;t=60'
        none = make_app(limiter=limiter("1/minute", clock=clock), headers=False)
        with TestClient(none) as client:
            ok, refused = client.get("/r"), client.get("/r")
        assert "ratelimit" not in ok.headers
        assert "ratelimit" not in refused.headers and refused.headers["retry-after"] == "60"

    def test_shadow_mode_never_refuses_and_adds_nothing(self, clock):
        for options in ({"limiter": limiter("1/minute", clock=clock), "shadow": True},
                        {"limiter": limiter("1/minute", clock=clock, shadow=True)}):
            with TestClient(make_app(**options)) as client:
                responses = [client.get("/r") for _ in range(3)]
            assert [r.status_code for r in responses] == [200, 200, 200]
            assert all("ratelimit" not in r.headers for r in responses[1:])

    def test_rules_per_route_and_method_stop_at_the_first_refusal(self, clock):
        payments = limiter("1/minute", clock=clock, name="payments")
        api = limiter("100/minute", clock=clock, name="api")
        app = make_app(rules=[Rule(payments, methods=["POST"], path="/payments"), Rule(api)])
        with TestClient(app) as client:
            first = client.post("/payments")
            refused = client.post("/payments")
            get = client.get("/r")
        assert first.headers["ratelimit-policy"] == '"payments";q=1;w=60, "api";q=100;w=60'
        assert first.headers["ratelimit"] == '"payments";r=0;t=60, "api";r=99;t=1'
        assert refused.status_code == 429
        assert refused.json()["violated-policies"] == ["payments"]
        # the refused request did not consume the later rule
        assert get.headers["ratelimit"] == '"api";r=98;t=1'

    def test_exemptions(self, clock):
        app = make_app(limiter=limiter("1/minute", clock=clock), exempt_paths=["/healthz"],
                       exempt=lambda scope: scope["path"] == "/ctx",
                       key=lambda scope: None if scope.get("state", {}).get("principal") == "ops"
                       else "everyone")
        with TestClient(app) as client:
            assert client.get("/r").status_code == 200
            assert [client.get("/healthz").status_code for _ in range(3)] == [200] * 3
            assert client.get("/ctx").status_code == 200
            assert client.get("/r", headers={"x-api-key": "ops"}).status_code == 200
            assert client.get("/r").status_code == 429

    def test_backend_policy_deny_answers_503(self):
        dead = RedisBackend.from_url(f"redis://127.0.0.1:{servers.free_port()}", timeout=0.2)
        app = make_app(limiter=RateLimiter("5/second", backend=dead, name="api",
                                           on_backend_error="deny", deny_retry_after=3))
        with TestClient(app) as client:
            refused = client.get("/r")
        dead.close()
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "3"
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["type"] == TEMPORARY_REDUCED_CAPACITY
        assert "ratelimit" not in refused.headers


class TestTransparency:
    def test_websocket_and_lifespan_pass_untouched(self, clock):
        events.clear()
        lim = limiter("1/minute", clock=clock)
        with TestClient(make_app(limiter=lim)) as client:
            assert client.get("/r").status_code == 200
            for _ in range(3):
                with client.websocket_connect("/ws") as ws:
                    ws.send_text("hi")
                    assert ws.receive_text() == "echo:hi"
        assert events == ["startup", "shutdown"]

    async def test_non_http_scopes_reach_the_app_with_the_same_callables(self):
        seen: list[tuple[Any, Any, Any]] = []

        async def app(scope: Any, receive: Any, send: Any) -> None:
            seen.append((scope, receive, send))

        middleware = RateLimitMiddleware(app, limiter=limiter("1/minute"))

        async def receive() -> dict:
            return {}

        async def send(message: Any) -> None:
            return None

        for kind in ("websocket", "lifespan"):
            scope = {"type": kind}
            await middleware(scope, receive, send)
            assert seen[-1] == (scope, receive, send)
            assert seen[-1][1] is receive and seen[-1][2] is send

    def test_streaming_background_tasks_and_contextvars_still_work(self, clock):
        events.clear()
        app = make_app(limiter=limiter("10/minute", clock=clock))
        with TestClient(app) as client:
            streamed = client.get("/stream")
            bg = client.get("/bg")
            ctx_response = client.get("/ctx")
        assert streamed.text == "chunk0;chunk1;chunk2;"
        assert streamed.headers["ratelimit"] == '"api";r=9;t=6'
        assert bg.text == "queued" and "bg-ran" in events
        assert ctx_response.text == "set-outside"
        auth = app.middleware_stack
        while not isinstance(auth, FakeAuth):
            auth = auth.app
        assert auth.seen_after[-1] == "set-in-endpoint"


class TestRealServer:
    def test_uvicorn_on_loopback_limits_per_principal_with_fields(self):
        lim = RateLimiter("2/minute", name="api", backend=MemoryBackend())  # real time
        app = make_app(limiter=lim, key=principal_or_ip(trusted_proxies=["127.0.0.1/32"]))
        with serve_asgi(app) as url, httpx.Client(base_url=url) as client:
            codes = [client.get("/r", headers={"x-api-key": "alice"}) for _ in range(3)]
            bob = client.get("/r", headers={"x-api-key": "bob"})
            streamed = client.get("/stream", headers={"x-api-key": "carol"})
            # anonymous behind the trusted loopback proxy: keyed by the forwarded client
            anon = [client.get("/r", headers={"x-forwarded-for": f"6.6.6.{i}, 203.0.113.1"})
                    for i in range(3)]
            other = client.get("/r", headers={"x-forwarded-for": "203.0.113.2"})
        assert [r.status_code for r in codes] == [200, 200, 429]
        assert codes[0].headers["ratelimit-policy"] == '"api";q=2;w=60'
        assert codes[0].headers["ratelimit"] == '"api";r=1;t=30'
        assert codes[2].headers["content-type"] == "application/problem+json"
        assert json.loads(codes[2].content)["status"] == 429
        assert int(codes[2].headers["retry-after"]) in (29, 30)
        assert bob.status_code == 200
        assert streamed.text == "chunk0;chunk1;chunk2;"
        assert [r.status_code for r in anon] == [200, 200, 429]
        assert other.status_code == 200


class TestSpoofingOnRedis:
    async def test_spoofed_forwarded_for_from_an_untrusted_peer_is_one_redis_key(
            self, redis_url, clock):
        # a generous timeout and "raise": a stall of a loaded machine must not be mistaken for
        # the local fallback's own, separate 5/minute
        backend = RedisBackend.from_url(redis_url, timeout=5.0)
        middleware = RateLimitMiddleware(
            _ok_app, limiter=RateLimiter("5/minute", backend=backend, name="api", clock=clock,
                                         on_backend_error="raise"),
            key=principal_or_ip(trusted_proxies=["10.0.0.0/8"]))
        statuses = []
        for i in range(1000):
            statuses.append(await _call(middleware, "198.51.100.1", f"9.9.{i >> 8}.{i & 255}"))
        raw = backend_client(redis_url)
        assert len(raw.keys("*")) == 1
        # trusted proxy: distinct real clients are distinct keys, each with a window-bound TTL
        for i in range(300):
            await _call(middleware, "10.0.0.1", f"6.6.6.6, 203.0.{i >> 8}.{i & 255}")
        keys = raw.keys("*")
        ttls = [raw.pttl(k) for k in keys]
        raw.close()
        await backend.aclose()
        assert statuses.count(200) == 5 and statuses.count(429) == 995
        assert len(keys) == 1 + 300
        # every key leaves within its window (plus the script's 1 s safety margin)
        assert all(0 < ttl <= 61_000 for ttl in ttls)


def backend_client(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url)


async def _ok_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def _call(app: Any, peer: str, forwarded: str) -> int:
    scope = {"type": "http", "method": "GET", "path": "/", "client": (peer, 1),
             "headers": [(b"x-forwarded-for", forwarded.encode())]}
    status: list[int] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await app(scope, receive, send)
    return status[0]


@pytest.fixture(autouse=True)
def _no_leftover_events() -> Iterator[None]:
    yield
    events.clear()


def test_fields_of_several_limits_name_the_tightest_and_every_policy(clock):
    """``2/second; 3/minute`` (GCRA): the per-second limit is the tightest after one request
    (1 of 2 left, the next unit in 0.5 s -> t=1); after a second request within the same
    instant it has 0 left (a unit back in 0.5 s -> t=1); a third is refused."""
    lim = limiter("2/second; 3/minute", clock=clock, name="api")
    policy = '"api-0";q=2;w=1, "api-1";q=3;w=60'
    with TestClient(make_app(limiter=lim)) as client:
        first = client.get("/r")
        second = client.get("/r")
        third = client.get("/r")
    assert first.headers["ratelimit-policy"] == second.headers["ratelimit-policy"] == policy
    assert first.headers["ratelimit"] == '"api-0";r=1;t=1'
    assert second.headers["ratelimit"] == '"api-0";r=0;t=1'
    assert third.status_code == 429
    assert third.headers["ratelimit"] == '"api-0";r=0;t=1'
    assert third.headers["retry-after"] == "1"


def test_a_limiter_subclass_is_never_bypassed(clock):
    calls: list[Any] = []

    class Counting(RateLimiter):
        def acquire(self, key: Any, cost: int = 1) -> Any:
            calls.append(key)
            return super().acquire(key, cost)

    lim = Counting("5/minute", backend=MemoryBackend(), clock=clock, name="api")
    with TestClient(make_app(limiter=lim)) as client:
        response = client.get("/r")
    assert response.headers["ratelimit"] == '"api";r=4;t=12'
    assert len(calls) == 1
