"""One rate notation everywhere: ``"10/s"``, ``"100/min"`` and ``"10/second"`` mean the same in
RateLimiter, the decorators, FastAPI, Flask, the Django middleware and the DRF throttle."""

from __future__ import annotations

import warnings

import pytest
import test_django  # configures Django settings once for the session
from django.test import Client, override_settings
from fastapi import Depends, FastAPI
from flask import Flask

import fintech_resilience as fr
from fintech_resilience.django import drf_rate
from fintech_resilience.fastapi import RateLimit
from fintech_resilience.flask import Resilience
from fintech_resilience.keys import principal_or_ip
from fintech_resilience.ratelimit.rates import parse_limits

with warnings.catch_warnings():  # starlette 1.x warns that its test client wants httpx2
    warnings.filterwarnings("ignore", message=".*httpx2")
    from fastapi.testclient import TestClient

SAME = [("10/s", "10/second"), ("10/sec", "10/second"), ("100/min", "100/minute"),
        ("100/m", "100/minute"), ("5/h", "5/hour"), ("5/hr", "5/hour"), ("1000/d", "1000/day"),
        ("10/2s", "10/2 seconds"), ("10 per sec", "10 per second"),
        ("10/s; 1000/d", "10/second; 1000/day"), ("10/S", "10/second")]


@pytest.mark.parametrize(("short", "written"), SAME)
def test_short_units_parse_as_the_units_they_abbreviate(short: str, written: str) -> None:
    assert parse_limits(short) == parse_limits(written)


def test_full_unit_names_keep_their_meaning() -> None:
    from fintech_resilience.ratelimit.rates import expand_units

    assert expand_units("1/month") == "1/month"  # DRF would read any "m..." word as a minute
    assert parse_limits("1/month")[0].period == 30 * 86400
    assert drf_rate("1/month") == "1/month"


@pytest.mark.parametrize("bad", ["10/x", "10/ss", "ten/s", "10/", "/s"])
def test_unknown_units_are_refused_at_construction_everywhere(bad: str) -> None:
    with pytest.raises(fr.ConfigurationError, match="cannot parse rate limit"):
        fr.RateLimiter(bad)
    with pytest.raises(fr.ConfigurationError):
        RateLimit(bad)
    with pytest.raises(fr.ConfigurationError):
        Resilience(Flask(__name__)).limit(bad)(lambda: "x")


def test_rate_limiter_and_its_decorator() -> None:
    limiter = fr.RateLimiter("2/min", backend=fr.MemoryBackend(), name="short")
    assert [limiter.acquire("k").allowed for _ in range(3)] == [True, True, False]
    assert limiter.acquire("other").headers()["RateLimit-Policy"] == '"short";q=2;w=60'

    @limiter.limit(key=lambda who: who)
    def pay(who: str) -> str:
        return who

    assert pay("m") == "m"
    pay("m")
    with pytest.raises(fr.RateLimited):
        pay("m")


def test_fastapi_dependency() -> None:
    app = FastAPI()
    limit = RateLimit("2/min", backend=fr.MemoryBackend(), name="pay",
                      key=principal_or_ip(principal_header="X-User"))

    @app.post("/pay", dependencies=[Depends(limit)])
    async def pay() -> dict[str, bool]:
        return {"ok": True}

    client = TestClient(app)
    codes = [client.post("/pay", headers={"X-User": "a"}) for _ in range(3)]
    assert [r.status_code for r in codes] == [200, 200, 429]
    assert codes[0].headers["RateLimit-Policy"] == '"pay";q=2;w=60'


def test_flask_extension_default_and_view_limits() -> None:
    app = Flask(__name__)
    resilience = Resilience(app, backend=fr.MemoryBackend(), default_limits="3/min",
                            key=principal_or_ip(principal_header="X-User"))

    @app.post("/pay")
    @resilience.limit("2/m", name="pay")
    def pay() -> str:
        return "ok"

    client = app.test_client()
    codes = [client.post("/pay", headers={"X-User": "a"}) for _ in range(3)]
    assert [r.status_code for r in codes] == [200, 200, 429]
    assert codes[0].headers["RateLimit-Policy"] == '"default";q=3;w=60, "pay";q=2;w=60'


def test_django_middleware_and_drf_throttle() -> None:
    config = {"BACKEND": fr.MemoryBackend(), "RATE_LIMIT": {"LIMITS": "2/min"}}
    with override_settings(ROOT_URLCONF="test_django", MIDDLEWARE=test_django.MIDDLEWARE,
                           FINTECH_RESILIENCE=config):
        codes = [Client().get("/r", headers={"X-User": "a"}) for _ in range(3)]
    assert [r.status_code for r in codes] == [200, 200, 429]
    assert codes[0]["RateLimit-Policy"] == '"django";q=2;w=60'
    drf = {"DEFAULT_THROTTLE_RATES": {"payments": "2/min"}}
    with override_settings(ROOT_URLCONF="test_django", REST_FRAMEWORK=drf, MIDDLEWARE=[],
                           FINTECH_RESILIENCE={"BACKEND": fr.MemoryBackend()}):
        throttled = [Client().post("/api/payments", headers={"X-User": "a"}).status_code
                     for _ in range(3)]
    assert throttled == [200, 200, 429]
