"""The ASGI and WSGI rate-limit middlewares with limits per request (per plan) and count_when
(count only some responses): through Starlette, Werkzeug, uvicorn and wsgiref."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from test_asgi_ratelimit import FakeAuth, asgi_client, serve_asgi
from test_wsgi_ratelimit import serve_wsgi, with_auth
from werkzeug.test import Client

from fintech_resilience import ConfigurationError, MemoryBackend, RateLimiter
from fintech_resilience.edges.asgi.ratelimit import RateLimitMiddleware
from fintech_resilience.edges.ratelimit_http import Rule
from fintech_resilience.edges.wsgi.ratelimit import RateLimitMiddleware as WsgiRateLimit
from fintech_resilience.testing import ManualClock

PLANS = {"free": "2/minute", "pro": "5/minute"}
PLAN_OF = {"alice": "free", "bob": "pro", "carol": "enterprise"}  # enterprise: not limited


def plan_limits(request: Any) -> str | None:
    """The limits of the caller's plan, from the ASGI scope or the WSGI environ."""
    if "type" in request:  # an ASGI scope
        principal = request.get("state", {}).get("principal")
    else:  # a WSGI environ
        principal = request.get("fintech_resilience.principal")
    return PLANS.get(PLAN_OF.get(principal, "free"))


def declined(status: int) -> bool:
    return status == 402


release = asyncio.Event()


async def charge(request: Request) -> PlainTextResponse:
    if request.query_params.get("wait"):
        await release.wait()
    if request.query_params.get("raise"):
        raise RuntimeError("the PSP adapter crashed")
    status = int(request.query_params.get("status", "200"))
    return PlainTextResponse("declined" if status == 402 else "ok", status_code=status)


def starlette_app(**options: Any) -> Starlette:
    return Starlette(routes=[Route("/charge", charge, methods=["GET", "POST"])], middleware=[
        Middleware(FakeAuth), Middleware(RateLimitMiddleware, **options)])


def limiter(spec: Any, backend: Any = None, **kw: Any) -> RateLimiter:
    kw.setdefault("name", "api")
    return RateLimiter(spec, backend=backend or MemoryBackend(), clock=ManualClock(),
                       on_backend_error="raise", **kw)


class TestLimitsPerRequest:
    async def test_each_plan_gets_its_limits_and_its_policy_field(self, backend):
        app = starlette_app(rules=[Rule(limiter("1000/minute", backend), limits=plan_limits)])
        async with asgi_client(app) as client:
            runs = {who: [await client.get("/charge", headers={"x-api-key": who})
                          for _ in range(6)] for who in ("alice", "bob", "carol")}
        assert [r.status_code for r in runs["alice"]] == [200, 200] + [429] * 4
        assert [r.status_code for r in runs["bob"]] == [200] * 5 + [429]
        assert [r.status_code for r in runs["carol"]] == [200] * 6  # a plan without the limit
        assert runs["alice"][0].headers["ratelimit-policy"] == '"api";q=2;w=60'
        assert runs["bob"][0].headers["ratelimit-policy"] == '"api";q=5;w=60'
        assert runs["alice"][0].headers["ratelimit"] == '"api";r=1;t=30'
        assert runs["alice"][2].headers["ratelimit-policy"] == '"api";q=2;w=60'
        assert "ratelimit" not in runs["carol"][0].headers

    async def test_the_middleware_s_own_limiter_takes_limits_too(self):
        app = starlette_app(limiter=limiter("1000/minute"), limits=plan_limits)
        async with asgi_client(app) as client:
            codes = [(await client.get("/charge", headers={"x-api-key": "alice"})).status_code
                     for _ in range(3)]
        assert codes == [200, 200, 429]

    def test_limits_must_be_a_callable(self):
        with pytest.raises(ConfigurationError, match="callable"):
            Rule(limiter("1/minute"), limits="5/minute")  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="count_when"):
            Rule(limiter("1/minute"), count_when=402)  # type: ignore[arg-type]


class TestCountWhen:
    async def test_only_declines_count_and_the_fields_say_so(self, backend):
        declines = limiter("2/minute", backend, name="declines")
        app = starlette_app(rules=[Rule(declines, path="/charge", count_when=declined)])
        async with asgi_client(app) as client:
            async def call(status: int) -> httpx.Response:
                return await client.get(f"/charge?status={status}", headers={"x-api-key": "m"})

            paid = [await call(200) for _ in range(5)]
            first, second = await call(402), await call(402)
            blocked = await call(200)
        assert [r.status_code for r in paid] == [200] * 5
        # a paid charge got its unit back before the fields were sent: still 2 left
        assert {r.headers["ratelimit"] for r in paid} == {'"declines";r=2;t=0'}
        assert (first.status_code, first.headers["ratelimit"]) == (402, '"declines";r=1;t=30')
        assert (second.status_code, second.headers["ratelimit"]) == (402, '"declines";r=0;t=30')
        assert blocked.status_code == 429 and blocked.headers["retry-after"] == "30"
        assert declines.stats("p:m")[0].remaining == 0

    async def test_no_more_than_the_limit_is_ever_in_flight(self):
        """count_when reserves before the app runs: of 5 concurrent charges under a limit of
        2 declines, 2 run and 3 are refused at once - none could decline past the limit."""
        declines = limiter("2/minute", name="declines")
        app = starlette_app(rules=[Rule(declines, count_when=declined)])
        release.clear()
        async with asgi_client(app) as client:
            tasks = [asyncio.create_task(client.get("/charge?wait=1&status=402",
                                                    headers={"x-api-key": "m"}))
                     for _ in range(5)]
            first = []
            for finished in asyncio.as_completed(tasks):  # while two charges are held
                first.append((await finished).status_code)
                if len(first) == 3:
                    break
            release.set()
            codes = sorted(r.status_code for r in await asyncio.gather(*tasks))
        assert first == [429, 429, 429]
        assert codes == [402, 402, 429, 429, 429]

    async def test_an_app_that_raises_is_settled_as_a_500(self):
        counted = limiter("3/minute", name="errors")
        app = starlette_app(rules=[Rule(counted, count_when=lambda status: status >= 500)])
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            await client.get("/charge?raise=1", headers={"x-api-key": "m"})
            await client.get("/charge", headers={"x-api-key": "m"})
        assert counted.stats("p:m")[0].remaining == 2  # the crash counted, the 200 did not

        ignored = limiter("3/minute", name="declines")
        app = starlette_app(rules=[Rule(ignored, count_when=declined)])
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            await client.get("/charge?raise=1", headers={"x-api-key": "m"})
        assert ignored.stats("p:m")[0].remaining == 3

    def test_uvicorn_on_loopback(self):
        declines = limiter("1/minute", name="declines")
        app = starlette_app(rules=[Rule(declines, count_when=declined)])
        with serve_asgi(app) as url, httpx.Client(base_url=url) as http:
            codes = [http.get(f"/charge?status={s}", headers={"x-api-key": "m"}).status_code
                     for s in (200, 200, 402, 200)]
        assert codes == [200, 200, 402, 429]


def wsgi_charge(environ: dict, start_response: Any) -> Iterable[bytes]:
    query = dict(p.split("=") for p in environ.get("QUERY_STRING", "").split("&") if p)
    if query.get("raise"):
        raise RuntimeError("the PSP adapter crashed")
    status = int(query.get("status", "200"))
    start_response(f"{status} {'Payment Required' if status == 402 else 'OK'}",
                   [("Content-Type", "text/plain")])
    return [b"declined" if status == 402 else b"ok"]


class TestWsgi:
    def test_limits_per_request_and_count_when(self, backend):
        declines = limiter("2/minute", backend, name="declines")
        plans = limiter("1000/minute", backend, name="plans")
        app = with_auth(WsgiRateLimit(wsgi_charge, rules=[
            Rule(plans, limits=plan_limits), Rule(declines, count_when=declined)]))
        client = Client(app)

        def call(status: int, who: str = "bob") -> Any:
            return client.get(f"/charge?status={status}", headers={"X-Api-Key": who})

        paid = [call(200) for _ in range(2)]
        then = [call(402), call(402), call(200)]
        assert [r.status_code for r in paid] == [200] * 2
        assert paid[0].headers["RateLimit-Policy"] == '"plans";q=5;w=60, "declines";q=2;w=60'
        assert paid[1].headers["RateLimit"] == '"plans";r=3;t=12, "declines";r=2;t=0'
        assert [r.status_code for r in then] == [402, 402, 429]
        assert then[2].json["violated-policies"] == ["declines"]  # bob's plan had room left
        assert [call(200, "alice").status_code for _ in range(3)] == [200, 200, 429]

    def test_an_app_that_raises_is_settled_as_a_500(self):
        declines = limiter("2/minute", name="declines")
        client = Client(with_auth(WsgiRateLimit(wsgi_charge, rules=[
            Rule(declines, count_when=declined)])))
        with pytest.raises(RuntimeError):
            client.get("/charge?raise=1", headers={"X-Api-Key": "m"})
        assert declines.stats("p:m")[0].remaining == 2

    def test_wsgiref_on_loopback(self):
        declines = limiter("1/minute", name="declines")
        app = with_auth(WsgiRateLimit(wsgi_charge, rules=[Rule(declines, count_when=declined)]))
        with serve_wsgi(app) as url, httpx.Client(base_url=url) as http:
            codes = [http.get(f"/charge?status={s}", headers={"X-Api-Key": "m"}).status_code
                     for s in (200, 402, 200)]
        assert codes == [200, 402, 429]
