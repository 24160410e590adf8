"""OpenTelemetry's HTTP client conventions at the outbound edges, and consistent span statuses,
with the OpenTelemetry SDK installed (in-memory exporters) in a fresh interpreter: providers
are process-global, so other test files keep running without an SDK.

Each scenario runs httpx (sync and async) and requests against a flaky local server."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from fintech_resilience.edges.outbound_spans import redacted_url

TESTS = Path(__file__).resolve().parent
PAN = "4111111111111111"

SETUP = """
    import asyncio, json, sys
    sys.path.insert(0, TESTS)
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter, reader = InMemorySpanExporter(), InMemoryMetricReader()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))

    import httpx, requests
    import fintech_resilience as fr
    from fintech_resilience.core import telemetry
    from fintech_resilience.httpx import AsyncResilientTransport, ResilientTransport
    from fintech_resilience.requests import ResilientAdapter
    from test_outbound import FlakyServer
    assert telemetry.refresh()

    def spans():
        out = [{"name": s.name, "kind": s.kind.name, "status": s.status.status_code.name,
                "description": s.status.description, "attributes": dict(s.attributes or {}),
                "events": [(e.name, dict(e.attributes or {})) for e in s.events]}
               for s in exporter.get_finished_spans()]
        exporter.clear()
        return out

    def points(metric):
        return [(dict(p.attributes), p.value)
                for rm in reader.get_metrics_data().resource_metrics
                for sm in rm.scope_metrics for m in sm.metrics if m.name == metric
                for p in m.data.data_points]
"""


def run(code: str) -> Any:
    script = textwrap.dedent(SETUP) + textwrap.dedent(code)
    out = subprocess.run([sys.executable, "-W", "error", "-c",
                          script.replace("TESTS", repr(str(TESTS)))],
                         capture_output=True, text=True, timeout=90, check=False, cwd=TESTS)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def clients() -> dict[str, Any]:
    """Every client sends the same three requests under a retrying policy; the spans each
    produced."""
    return run(f"""
        policy = fr.Policy(name="psp", retry=fr.retry(attempts=3, wait=0))
        result = {{}}
        with FlakyServer() as server:
            path = "/v1/cards/{PAN}/verify"
            server.script(path, 503, 200)
            server.script("/v1/missing", 404)
            url = f"http://merchant:s3cret@127.0.0.1:{{server.port}}{{path}}?amount=1999&cvv=123"
            missing = server.url("/v1/missing")
            down = "http://127.0.0.1:9/v1/charges"  # the discard port: refused

            with httpx.Client(transport=ResilientTransport(policy=policy)) as c:
                c.get(url); c.post(missing, content=b"{{}}")
                try:
                    c.request("PURGE", down)
                except httpx.ConnectError:
                    pass
            result["httpx"] = spans()
            server.script(path, 503, 200)

            async def main():
                async with httpx.AsyncClient(transport=AsyncResilientTransport(
                        policy=policy)) as c:
                    await c.get(url); await c.post(missing, content=b"{{}}")
                    try:
                        await c.request("PURGE", down)
                    except httpx.ConnectError:
                        pass
            asyncio.run(main())
            result["httpx-async"] = spans()
            server.script(path, 503, 200)

            with requests.Session() as s:
                s.mount("http://", ResilientAdapter(policy=policy))
                s.get(url, timeout=5); s.post(missing, data=b"{{}}", timeout=5)
                try:
                    s.request("PURGE", down, timeout=5)
                except requests.ConnectionError:
                    pass
            result["requests"] = spans()
            result["port"] = server.port
        print(json.dumps(result))
    """)


@pytest.mark.parametrize("name", ["httpx", "httpx-async", "requests"])
def test_each_attempt_is_a_client_span_named_after_the_method(clients: dict[str, Any],
                                                              name: str) -> None:
    spans = clients[name]
    port = clients["port"]
    assert [(s["name"], s["kind"]) for s in spans] == [
        ("GET", "CLIENT"), ("GET", "CLIENT"), ("POST", "CLIENT")] + [("HTTP", "CLIENT")] * 3
    first, second, missing, down = (s["attributes"] for s in spans[:4])
    for attrs in (first, second):
        assert attrs["http.request.method"] == "GET"
        assert (attrs["server.address"], attrs["server.port"]) == ("127.0.0.1", port)
        assert attrs["url.full"] == (f"http://127.0.0.1:{port}/v1/cards/************1111/verify"
                                     "?amount=REDACTED&cvv=REDACTED")
        assert attrs["resilience.name"] == "psp"
    assert (first["http.response.status_code"], first["error.type"]) == (503, "503")
    assert "http.request.resend_count" not in first
    assert (second["http.response.status_code"], second["http.request.resend_count"]) == (200, 1)
    assert "error.type" not in second
    assert (missing["http.response.status_code"], missing["error.type"]) == (404, "404")
    # an unknown method, and a connection that was refused
    assert (down["http.request.method"], down["http.request.method_original"]) == (
        "_OTHER", "PURGE")
    assert down["server.port"] == 9 and "http.response.status_code" not in down
    assert down["error.type"] == ("ConnectionError" if name == "requests" else "ConnectError")
    # refused before anything was sent: resent even though PURGE is not idempotent
    assert [s["attributes"].get("http.request.resend_count") for s in spans[3:]] == [None, 1, 2]


@pytest.mark.parametrize("name", ["httpx", "httpx-async", "requests"])
def test_span_status_is_error_for_exceptions_and_4xx_5xx_answers_only(clients: dict[str, Any],
                                                                     name: str) -> None:
    spans = clients[name]
    assert [s["status"] for s in spans] == ["ERROR", "UNSET", "ERROR", "ERROR", "ERROR", "ERROR"]
    # an answer's status carries no description; an exception's names its type, never its text
    assert [s["description"] for s in spans] == [None, None, None] + [
        spans[3]["attributes"]["error.type"]] * 3


@pytest.mark.parametrize("name", ["httpx", "httpx-async", "requests"])
def test_no_credentials_card_number_or_query_value_reaches_the_spans(clients: dict[str, Any],
                                                                    name: str) -> None:
    text = json.dumps(clients[name])
    for secret in ("s3cret", "merchant", PAN, "1999", "cvv=123"):
        assert secret not in text, secret


def test_retry_metrics_and_spans_are_labelled_with_the_functions_qualified_name() -> None:
    result = run("""
        calls = []

        @fr.retry(on=ValueError, wait=0)
        def fetch_rates():
            calls.append(1)
            if len(calls) < 2:
                raise ValueError("stale")
            return "rates"

        class Psp:
            @fr.retry(on=ValueError, wait=0, log_level=None)
            async def capture(self):
                calls.append(2)
                if calls.count(2) < 2:
                    raise ValueError("busy")

        fetch_rates()
        asyncio.run(Psp().capture())
        retries = points("resilience.retries")
        attempts = [(s["attributes"]["resilience.name"], s["status"]) for s in spans()
                    if s["name"] == "resilience.retry.attempt"]
        print(json.dumps({"retries": retries, "attempts": attempts}))
    """)
    assert sorted(result["retries"], key=str) == sorted([
        [{"resilience.pattern": "retry", "resilience.name": "__main__.fetch_rates"}, 1],
        [{"resilience.pattern": "retry", "resilience.name": "__main__.Psp.capture"}, 1],
    ], key=str)
    assert result["attempts"] == [["__main__.fetch_rates", "ERROR"],
                                  ["__main__.fetch_rates", "UNSET"],
                                  ["__main__.Psp.capture", "ERROR"],
                                  ["__main__.Psp.capture", "UNSET"]]


def test_policy_call_spans_are_error_for_exceptions_and_5xx_results() -> None:
    result = run("""
        class Response:
            def __init__(self, status_code):
                self.status_code = status_code

        def reset():
            raise ConnectionResetError("card 4111")

        policy = fr.Policy(name="psp")
        policy.call(Response, 200)
        policy.call(Response, 404)
        policy.call(Response, 503)
        try:
            policy.call(reset)
        except ConnectionResetError:
            pass
        print(json.dumps([(s["status"], s["description"], s["attributes"].get("error.type"))
                          for s in spans() if s["name"] == "resilience.call"]))
    """)
    assert result == [["UNSET", None, None], ["UNSET", None, None], ["ERROR", None, "503"],
                      ["ERROR", "ConnectionResetError", "ConnectionResetError"]]


@pytest.mark.parametrize(("url", "shown"), [
    ("https://api.psp.example/v1/charges", "https://api.psp.example/v1/charges"),
    ("https://u:p@api.psp.example:8443/x?a=1&b=&c#frag", "https://api.psp.example:8443/x"
                                                         "?a=REDACTED&b=REDACTED&c"),
    (f"https://psp.example/cards/{PAN[:4]}%20{PAN[4:8]}%20{PAN[8:12]}%20{PAN[12:]}",
     "https://psp.example/cards/****%20****%20****%201111"),
    (f"https://psp.example/pay?{PAN}=1", "https://psp.example/pay?************1111=REDACTED"),
])
def test_url_full_is_redacted(url: str, shown: str) -> None:
    assert redacted_url(url) == shown
