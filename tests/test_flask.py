"""Flask: Resilience(app) / init_app, app-wide limits and per-view decorators."""

from __future__ import annotations

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
