"""Hostile or unusual input at the HTTP edges: framing headers, forwarding headers, stored
envelopes, WSGI status lines and the rate limiter's local fallback - through real frameworks."""

from __future__ import annotations

import os
from typing import Any

import httpx
import pytest
import servers
from flask import Flask
from flask import request as flask_request
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from werkzeug.test import Client

from fintech_resilience import MemoryBackend, RateLimiter, RedisBackend
from fintech_resilience.asgi import IdempotencyMiddleware, RateLimitMiddleware
from fintech_resilience.edges.ratelimit_http import QUOTA_EXCEEDED
from fintech_resilience.idempotency import IdempotencyStore
from fintech_resilience.idempotency.crypto import AesGcmCipher, DecryptionError
from fintech_resilience.keys import client_ip, principal_or_ip
from fintech_resilience.testing import ManualClock
from fintech_resilience.wsgi import IdempotencyMiddleware as WsgiIdempotency
from fintech_resilience.wsgi import RateLimitMiddleware as WsgiRateLimit

SECRET = b"edge-input-secret-0123456789"
BASE = "https://fintech-resilience.dev/problems/"
HUGE = "9" * 5000  # past int()'s 4300-digit limit for str -> int


def starlette_app(store: IdempotencyStore, runs: list[bytes]) -> Any:
    async def charge(request: Request) -> JSONResponse:
        runs.append(await request.body())
        return JSONResponse({"ok": True}, status_code=201)

    app = Starlette(routes=[Route("/charges", charge, methods=["POST"])])
    return IdempotencyMiddleware(app, store=store, scope=lambda scope: "alice")


def flask_app(store: IdempotencyStore, runs: list[bytes]) -> Flask:
    app = Flask(__name__)

    @app.post("/charges")
    def charge() -> Any:
        runs.append(flask_request.get_data())
        return {"ok": True}, 201

    app.wsgi_app = WsgiIdempotency(  # type: ignore[method-assign]
        app.wsgi_app, store=store, scope=lambda environ: "alice")
    return app


# --- Content-Length ---------------------------------------------------------------------------
@pytest.mark.parametrize("length", [HUGE, "0" * 4999 + "2", "²", "٣", "1_0", "-1", "+5"])
async def test_asgi_a_malformed_content_length_is_400_and_never_runs(length: str) -> None:
    runs: list[bytes] = []
    store = IdempotencyStore(MemoryBackend(), secret=SECRET)
    transport = httpx.ASGITransport(app=starlette_app(store, runs))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        r = await c.post("/charges", content=b"{}",
                         headers=[(b"idempotency-key", b"k"),
                                  (b"content-length", length.encode())])
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"] == BASE + "invalid-content-length"
    assert runs == []


@pytest.mark.parametrize("length", [HUGE, "²", "٣", "1_0", "-1"])
def test_wsgi_a_malformed_content_length_is_400_and_never_runs(length: str) -> None:
    runs: list[bytes] = []
    store = IdempotencyStore(MemoryBackend(), secret=SECRET)
    c = flask_app(store, runs).test_client()
    r = c.post("/charges", data=b"{}", headers={"Idempotency-Key": "k"},
               environ_overrides={"CONTENT_LENGTH": length})
    assert r.status_code == 400
    assert r.json is not None and r.json["type"] == BASE + "invalid-content-length"
    assert runs == []


def test_a_well_formed_content_length_still_works_and_too_large_is_still_413() -> None:
    runs: list[bytes] = []
    store = IdempotencyStore(MemoryBackend(), secret=SECRET)
    app = flask_app(store, runs)
    app.wsgi_app.max_body_bytes = 10  # type: ignore[attr-defined]
    c = app.test_client()
    ok = c.post("/charges", data=b"{}", headers={"Idempotency-Key": "k"})
    big = c.post("/charges", data=b"x" * 11, headers={"Idempotency-Key": "k2"})
    assert (ok.status_code, big.status_code) == (201, 413)
    assert runs == [b"{}"]


def test_django_a_content_length_of_superscript_two_is_400() -> None:
    import test_django  # noqa: F401 - configures Django settings
    from django.http import HttpResponse
    from django.test import RequestFactory, override_settings

    from fintech_resilience.django import IdempotencyMiddleware as DjangoIdempotency

    runs: list[str] = []

    def view(request: Any) -> HttpResponse:
        runs.append("ran")
        return HttpResponse("ok", status=201)

    store = IdempotencyStore(MemoryBackend(), secret=SECRET)
    with override_settings(FINTECH_RESILIENCE={"IDEMPOTENCY": {"STORE": store,
                                                               "GLOBAL_SCOPE": True}}):
        middleware = DjangoIdempotency(view)
        for length in ("²", HUGE):
            request = RequestFactory().post("/charges", data=b"{}",
                                            content_type="application/json",
                                            headers={"Idempotency-Key": "k"})
            request.META["CONTENT_LENGTH"] = length
            response = middleware(request)
            assert response.status_code == 400
    assert runs == []


# --- X-Forwarded-For ---------------------------------------------------------------------------
NETS = [__import__("ipaddress").ip_network("10.0.0.0/8")]


def test_when_every_hop_is_trusted_the_peer_is_the_client_never_the_leftmost_hop() -> None:
    assert str(client_ip("10.0.0.2", "10.0.0.7, 10.0.0.1", NETS)) == "10.0.0.2"
    assert str(client_ip("10.0.0.2", "10.9.9.9", NETS)) == "10.0.0.2"


async def test_an_internal_client_cannot_rotate_its_rate_limit_key_through_trusted_addresses(
        ) -> None:
    limiter = RateLimiter("3/minute", backend=MemoryBackend(), name="api", clock=ManualClock())

    async def ok(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = RateLimitMiddleware(Starlette(routes=[Route("/r", ok)]), limiter=limiter,
                              key=principal_or_ip(trusted_proxies=["10.0.0.0/8", "127.0.0.0/8"]))
    transport = httpx.ASGITransport(app=app, client=("10.0.0.2", 5000))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        codes = [(await client.get("/r", headers={"X-Forwarded-For": f"10.66.0.{i}, 10.0.0.1"}))
                 .status_code for i in range(5)]
    assert codes == [200, 200, 200, 429, 429]


def test_a_unix_socket_proxy_with_only_trusted_hops_keys_by_the_hop_it_wrote() -> None:
    key = principal_or_ip(trusted_proxies=["unix", "10.0.0.0/8"])
    environ = {"REQUEST_METHOD": "GET", "HTTP_X_FORWARDED_FOR": "10.9.9.9, 10.0.0.3"}
    assert key(environ) == "ip:10.0.0.3"


# --- the encryption envelope -------------------------------------------------------------------
def test_every_truncation_of_an_envelope_is_a_decryption_error() -> None:
    cipher = AesGcmCipher({"2025-07": os.urandom(32)})
    envelope = cipher.encrypt(b"stored response", b"record")
    for end in range(len(envelope)):
        with pytest.raises(DecryptionError):
            cipher.decrypt(envelope[:end], b"record")
    assert cipher.decrypt(envelope, b"record") == b"stored response"


# --- WSGI reason phrases ----------------------------------------------------------------------
def test_a_wsgi_replay_of_201_carries_the_reason_phrase_created() -> None:
    runs: list[bytes] = []
    store = IdempotencyStore(MemoryBackend(), secret=SECRET)
    c = Client(flask_app(store, runs))
    first = c.post("/charges", data=b"{}", headers={"Idempotency-Key": "k"})
    again = c.post("/charges", data=b"{}", headers={"Idempotency-Key": "k"})
    assert first.status == "201 CREATED"  # Flask's own line
    assert again.status == "201 Created"
    assert again.headers["Idempotent-Replayed"] == "true"
    assert runs == [b"{}"]


# --- the rate limiter's local fallback ---------------------------------------------------------
def _ok_wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def test_local_fallback_over_its_limit_answers_429_with_the_rate_limit_fields(
        fresh_redis: servers.RedisServer) -> None:
    backend = RedisBackend.from_url(fresh_redis.url, timeout=0.2)
    limiter = RateLimiter("2/minute", backend=backend, name="api", on_backend_error="local",
                          clock=ManualClock())
    c = Client(WsgiRateLimit(_ok_wsgi, limiter=limiter))
    fresh_redis.kill()
    codes = [c.get("/r") for _ in range(3)]
    backend.close()
    assert [r.status_code for r in codes] == [200, 200, 429]
    refused = codes[2]
    assert refused.headers["Content-Type"] == "application/problem+json"
    assert refused.json is not None and refused.json["type"] == QUOTA_EXCEEDED
    assert refused.headers["RateLimit-Policy"] == '"api";q=2;w=60'
    assert refused.headers["RateLimit"] == '"api";r=0;t=30'
    assert refused.headers["Retry-After"] == "30"
