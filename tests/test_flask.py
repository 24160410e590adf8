"""Flask: Resilience(app) / init_app, app-wide limits and per-view decorators."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from flask import Flask, Response, g, request, stream_with_context
from test_wsgi_ratelimit import serve_wsgi

from fintech_resilience import MemoryBackend
from fintech_resilience.edges.ratelimit_http import QUOTA_EXCEEDED
from fintech_resilience.errors import ConfigurationError
from fintech_resilience.flask import Resilience
from fintech_resilience.keys import principal_or_ip
from fintech_resilience.ratelimit.limiter import RateLimiter
from fintech_resilience.testing import ManualClock


def make_app(clock: ManualClock, *, factory: bool = False, **options: object) -> Flask:
    app = Flask(__name__)
    config = {"backend": MemoryBackend(), "clock": clock,
              "key": principal_or_ip(principal_header="X-User"), **options}
    if factory:  # the application-factory way
        resilience = Resilience(**config)  # type: ignore[arg-type]
        resilience.init_app(app)
    else:
        resilience = Resilience(app, **config)  # type: ignore[arg-type]

    @app.post("/payments")
    @resilience.limit("2/minute", name="payments")
    def pay() -> dict[str, str]:
        return {"user": request.headers.get("X-User", "")}

    @app.get("/async")
    @resilience.limit("1/minute", name="async-view")
    async def async_view() -> str:
        return "async ok"

    @app.get("/stream")
    @resilience.limit("5/minute", name="stream")
    def stream() -> Response:
        g.marker = "ctx"

        def body():  # type: ignore[no-untyped-def]
            yield "a"
            yield g.marker

        return Response(stream_with_context(body()))

    @app.get("/healthz")
    @resilience.exempt
    def health() -> str:
        return "up"

    @app.get("/costly")
    @resilience.limit("10/minute", name="costly", cost=lambda req: int(req.args["n"]))
    def costly() -> str:
        return "ok"

    return app


def test_per_view_limits_per_principal_with_exact_fields():
    client = make_app(ManualClock()).test_client()
    alice = [client.post("/payments", headers={"X-User": "alice"}) for _ in range(3)]
    bob = client.post("/payments", headers={"X-User": "bob"})
    assert [r.status_code for r in alice] == [200, 200, 429]
    assert alice[0].json == {"user": "alice"}
    assert alice[0].headers["RateLimit-Policy"] == '"payments";q=2;w=60'
    assert alice[0].headers["RateLimit"] == '"payments";r=1;t=30'
    refused = alice[2]
    assert refused.headers["Content-Type"] == "application/problem+json"
    assert refused.headers["Retry-After"] == "30"
    assert refused.json["type"] == QUOTA_EXCEEDED and refused.json["status"] == 429
    assert bob.status_code == 200


def test_app_wide_default_limits_combine_with_view_limits_and_exemptions():
    client = make_app(ManualClock(), factory=True, default_limits="3/minute").test_client()
    first = client.post("/payments", headers={"X-User": "u"})
    assert first.headers["RateLimit-Policy"] == '"default";q=3;w=60, "payments";q=2;w=60'
    assert first.headers["RateLimit"] == '"default";r=2;t=20, "payments";r=1;t=30'
    client.post("/payments", headers={"X-User": "u"})
    refused_by_view = client.post("/payments", headers={"X-User": "u"})
    assert refused_by_view.status_code == 429
    assert refused_by_view.json["violated-policies"] == ["payments"]
    assert refused_by_view.headers["RateLimit"] == '"default";r=0;t=20, "payments";r=0;t=30'
    refused_by_default = client.get("/stream", headers={"X-User": "u"})
    assert refused_by_default.status_code == 429
    assert refused_by_default.json["violated-policies"] == ["default"]
    assert [client.get("/healthz", headers={"X-User": "u"}).status_code
            for _ in range(3)] == [200] * 3


def test_async_views_streaming_cost_and_the_off_switch():
    app = make_app(ManualClock())
    client = app.test_client()
    assert client.get("/async").data == b"async ok"
    assert client.get("/async").status_code == 429
    streamed = client.get("/stream")
    assert streamed.data == b"actx" and streamed.headers["RateLimit"] == '"stream";r=4;t=12'
    assert client.get("/costly?n=7").headers["RateLimit"] == '"costly";r=3;t=6'
    assert client.get("/costly?n=4").status_code == 429
    app.config["RESILIENCE_ENABLED"] = False
    assert client.get("/async").status_code == 200


def test_real_wsgi_server_on_loopback():
    app = make_app(ManualClock())
    with serve_wsgi(app) as url, httpx.Client(base_url=url) as http:
        codes = [http.post("/payments", headers={"X-User": "x"}).status_code for _ in range(3)]
        streamed = http.get("/stream")
    assert codes == [200, 200, 429]
    assert streamed.text == "actx"


def test_configuration_errors():
    resilience = Resilience(backend=MemoryBackend())
    with pytest.raises(ConfigurationError, match="ready RateLimiter"):
        resilience.limit(RateLimiter("1/second", backend=MemoryBackend()), name="x")
    with pytest.raises(ConfigurationError, match="cannot parse"):
        resilience.limit("lots")(lambda: "x")


PLANS = {"alice": "2/minute", "bob": "3/minute"}


def plan_app(clock: ManualClock, **options: object) -> Flask:
    app = Flask(__name__)
    resilience = Resilience(app, backend=MemoryBackend(), clock=clock,
                            key=principal_or_ip(principal_header="X-User"), **options)

    @app.get("/quotes")
    @resilience.limit(lambda req: PLANS.get(req.headers.get("X-User", "")), name="quotes")
    def quotes() -> str:
        return "ok"

    @app.post("/charges")
    @resilience.limit("2/minute", name="declines", count_when=lambda status: status == 402)
    def charges() -> tuple[str, int]:
        if request.args.get("crash"):
            raise RuntimeError("the PSP adapter crashed")
        return ("declined", 402) if request.args.get("declined") else ("ok", 200)

    @app.post("/async-charges")
    @resilience.limit("1/minute", name="async-declines", count_when=lambda status: status == 402)
    async def async_charges() -> tuple[str, int]:
        return ("declined", 402) if request.args.get("declined") else ("ok", 200)

    return app


def test_limits_per_plan_from_the_request():
    """Flask-Limiter's dynamic limits: a callable of the request, resolved per request."""
    client = plan_app(ManualClock()).test_client()
    alice = [client.get("/quotes", headers={"X-User": "alice"}) for _ in range(3)]
    bob = [client.get("/quotes", headers={"X-User": "bob"}) for _ in range(4)]
    staff = [client.get("/quotes", headers={"X-User": "staff"}) for _ in range(4)]
    assert [r.status_code for r in alice] == [200, 200, 429]
    assert [r.status_code for r in bob] == [200, 200, 200, 429]
    assert [r.status_code for r in staff] == [200] * 4  # no plan: not limited
    assert alice[0].headers["RateLimit-Policy"] == '"quotes";q=2;w=60'
    assert bob[0].headers["RateLimit-Policy"] == '"quotes";q=3;w=60'


def test_default_limits_per_plan():
    app = plan_app(ManualClock(),
                      default_limits=lambda req: "1/minute" if req.headers.get("X-Trial") else None)
    client = app.test_client()
    trial = [client.get("/quotes", headers={"X-User": "bob", "X-Trial": "1"}).status_code
             for _ in range(2)]
    assert trial == [200, 429]
    assert client.get("/quotes", headers={"X-User": "bob"}).status_code == 200


def test_count_when_counts_only_declines_like_deduct_when():
    app = plan_app(ManualClock())
    client = app.test_client()

    def charge(query: str = "") -> Any:
        return client.post(f"/charges{query}", headers={"X-User": "u"})

    paid = [charge() for _ in range(3)]
    declined = [charge("?declined=1"), charge("?declined=1")]
    blocked = charge()
    assert [r.status_code for r in paid] == [200] * 3
    assert {r.headers["RateLimit"] for r in paid} == {'"declines";r=2;t=0'}
    assert [r.status_code for r in declined] == [402, 402]
    assert declined[1].headers["RateLimit"] == '"declines";r=0;t=30'
    assert blocked.status_code == 429
    async_paid = [client.post("/async-charges", headers={"X-User": "u"}).status_code
                  for _ in range(2)]
    async_declined = client.post("/async-charges?declined=1", headers={"X-User": "u"})
    assert async_paid == [200, 200] and async_declined.status_code == 402
    assert client.post("/async-charges", headers={"X-User": "u"}).status_code == 429


def test_a_crashed_view_is_settled_as_a_500():
    app = plan_app(ManualClock())
    client = app.test_client()
    assert client.post("/charges?crash=1", headers={"X-User": "u"}).status_code == 500
    app.testing = True  # the exception now reaches the test client: teardown settles
    with pytest.raises(RuntimeError):
        client.post("/charges?crash=1", headers={"X-User": "u"})
    # neither crash was a decline: both units came back
    assert [client.post("/charges?declined=1", headers={"X-User": "u"}).status_code
            for _ in range(3)] == [402, 402, 429]
