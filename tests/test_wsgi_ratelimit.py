"""The WSGI RateLimitMiddleware: through Werkzeug's test client and a real wsgiref server."""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import httpx
import servers
from werkzeug.test import Client

from fintech_resilience import MemoryBackend, RedisBackend
from fintech_resilience.edges.ratelimit_http import QUOTA_EXCEEDED, TEMPORARY_REDUCED_CAPACITY, Rule
from fintech_resilience.edges.wsgi.ratelimit import RateLimitMiddleware
from fintech_resilience.keys import principal_or_ip
from fintech_resilience.ratelimit.limiter import RateLimiter
from fintech_resilience.testing import ManualClock

var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="")
closed: list[str] = []


class Streamed:
    """A response iterable with ``close``: the server must still call it through the middleware."""

    def __iter__(self) -> Iterator[bytes]:
        yield from (b"chunk0;", b"chunk1;", b"chunk2;")

    def close(self) -> None:
        closed.append("closed")


def app(environ: dict, start_response: Any) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Streamed()
    if path == "/ctx":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [var.get().encode()]
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-App", "1")])
    return [b"ok"]


def with_auth(inner: Any) -> Any:
    """An auth layer: the API key becomes ``environ["fintech_resilience.principal"]``."""
    def wrapper(environ: dict, start_response: Any) -> Iterable[bytes]:
        if environ.get("HTTP_X_API_KEY"):
            environ["fintech_resilience.principal"] = environ["HTTP_X_API_KEY"]
        var.set("set-outside")
        return inner(environ, start_response)
    return wrapper


def limiter(spec: str, backend: Any = None, clock: ManualClock | None = None,
            **kw: Any) -> RateLimiter:
    kw.setdefault("name", "api")
    return RateLimiter(spec, backend=backend or MemoryBackend(), clock=clock or ManualClock(),
                       **kw)


def client(**options: Any) -> Client:
    return Client(with_auth(RateLimitMiddleware(app, **options)))


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return None


@contextlib.contextmanager
def serve_wsgi(wsgi_app: Any) -> Iterator[str]:
    """Serve ``wsgi_app`` with wsgiref on 127.0.0.1 (a free port); yield its base URL."""
    server = make_server("127.0.0.1", 0, wsgi_app, server_class=_ThreadingServer,
                         handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


class TestLimits:
    def test_limits_are_enforced_per_principal_with_exact_fields(self, backend, clock):
        c = client(limiter=limiter("3/minute", backend, clock))
        alice = [c.get("/r", headers={"X-Api-Key": "alice"}) for _ in range(4)]
        bob = c.get("/r", headers={"X-Api-Key": "bob"})
        assert [r.status_code for r in alice] == [200, 200, 200, 429]
        assert [r.headers["RateLimit"] for r in alice] == [
            '"api";r=2;t=20', '"api";r=1;t=20', '"api";r=0;t=20', '"api";r=0;t=20']
        assert all(r.headers["RateLimit-Policy"] == '"api";q=3;w=60' for r in alice)
        assert alice[0].headers["X-App"] == "1"
        assert alice[3].headers["Retry-After"] == "20"
        assert bob.status_code == 200

    def test_refusal_is_a_valid_rfc9457_problem(self, clock):
        c = client(limiter=limiter("1/second", clock=clock))
        c.get("/r")
        refused = c.get("/r")
        assert refused.status == "429 Too Many Requests"
        assert refused.headers["Content-Type"] == "application/problem+json"
        assert int(refused.headers["Content-Length"]) == len(refused.data)
        assert refused.json == {
            "type": QUOTA_EXCEEDED, "status": 429,
            "title": "Request cannot be satisfied as assigned quota has been exceeded",
            "detail": "Quota exceeded; retry in 1 second(s).", "violated-policies": ["api"]}

    def test_options_match_the_asgi_twin(self, clock):
        quiet = client(limiter=limiter("1/minute", clock=clock), headers_on_allowed=False,
                       exempt_paths=["/healthz"])
        assert "RateLimit" not in quiet.get("/r").headers
        assert [quiet.get("/healthz").status_code for _ in range(3)] == [200] * 3
        assert quiet.get("/r").headers["RateLimit"] == '"api";r=0;t=60'
        shadow = client(limiter=limiter("1/minute", clock=clock), shadow=True)
        assert [shadow.get("/r").status_code for _ in range(3)] == [200] * 3
        payments = limiter("1/minute", clock=clock, name="payments")
        rules = client(rules=[Rule(payments, methods=["POST"], path="/payments")])
        assert rules.post("/payments").status_code == 200
        assert rules.post("/payments").status_code == 429
        assert rules.get("/payments").status_code == 200

    def test_backend_policy_deny_answers_503(self):
        dead = RedisBackend.from_url(f"redis://127.0.0.1:{servers.free_port()}", timeout=0.2)
        c = client(limiter=RateLimiter("5/second", backend=dead, name="api",
                                       on_backend_error="deny"))
        refused = c.get("/r")
        dead.close()
        assert refused.status == "503 Service Unavailable"
        assert refused.headers["Retry-After"] == "1"
        assert refused.json["type"] == TEMPORARY_REDUCED_CAPACITY

    def test_streaming_iterables_are_closed_and_context_flows(self, clock):
        closed.clear()
        c = client(limiter=limiter("5/minute", clock=clock))
        streamed = c.get("/stream")
        assert streamed.data == b"chunk0;chunk1;chunk2;"
        assert streamed.headers["RateLimit"] == '"api";r=4;t=12'
        streamed.close()  # the server's close() reaches the app's iterable
        assert closed == ["closed"]
        assert c.get("/ctx").data == b"set-outside"


class TestRealServer:
    def test_wsgiref_on_loopback_limits_per_client_behind_a_trusted_proxy(self):
        lim = RateLimiter("2/minute", name="api", backend=MemoryBackend())
        wsgi = with_auth(RateLimitMiddleware(
            app, limiter=lim, key=principal_or_ip(trusted_proxies=["127.0.0.0/8"])))
        with serve_wsgi(wsgi) as url, httpx.Client(base_url=url) as http:
            alice = [http.get("/r", headers={"x-api-key": "alice"}) for _ in range(3)]
            spoofed = [http.get("/r", headers={"x-forwarded-for": f"9.9.9.{i}, 203.0.113.1"})
                       for i in range(3)]
            other = http.get("/r", headers={"x-forwarded-for": "203.0.113.2"})
            streamed = http.get("/stream", headers={"x-api-key": "carol"})
        assert [r.status_code for r in alice] == [200, 200, 429]
        assert alice[0].headers["ratelimit"] == '"api";r=1;t=30'
        assert alice[2].headers["content-type"] == "application/problem+json"
        assert alice[2].json()["status"] == 429
        assert [r.status_code for r in spoofed] == [200, 200, 429]
        assert other.status_code == 200
        assert streamed.text == "chunk0;chunk1;chunk2;"

    def test_threads_share_one_limit(self):
        lim = RateLimiter("20/minute", name="api", backend=MemoryBackend())
        wsgi = RateLimitMiddleware(app, limiter=lim, key=lambda environ: "everyone")
        with serve_wsgi(wsgi) as url:
            codes: list[int] = []

            def hammer() -> None:
                with httpx.Client(base_url=url) as http:
                    codes.extend(http.get("/r").status_code for _ in range(10))

            threads = [threading.Thread(target=hammer) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert codes.count(200) == 20 and codes.count(429) == 20
