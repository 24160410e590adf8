"""Telemetry with an OpenTelemetry SDK: a scripted scenario produces exactly the names documented in
docs/telemetry.md (rows marked "built"); no PAN reaches span or metric attributes; without an SDK
nothing is recorded and nothing fails.

The SDK providers are process-global and can be set only once per process: this module installs
them for its own tests and restores the "no SDK" state afterwards (see ``_install``), so other test
files run as without an SDK. Patterns that join the scenario add a step to STEPS.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import metrics, trace
from opentelemetry.metrics import _internal as metrics_internal
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import ProxyTracer
from opentelemetry.util._once import Once

from fintech_resilience import RateLimiter, RedisBackend, telemetry
from fintech_resilience._chaos_asgi import ChaosMiddleware
from fintech_resilience.audit import AuditLog, AuditRecord, CallbackSink
from fintech_resilience.chaos import Rule, inject
from fintech_resilience.redaction import luhn_valid
from fintech_resilience.testing import ManualClock

DOCS = Path(__file__).resolve().parent.parent / "docs" / "telemetry.md"


@dataclass
class Sdk:
    spans: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer: trace.Tracer

    def metric_points(self) -> dict[tuple[str, tuple[tuple[str, Any], ...]], float]:
        """Cumulative value per (metric, attributes) since the SDK was installed."""
        out: dict[tuple[str, tuple[tuple[str, Any], ...]], float] = {}
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                if scope.scope.name != telemetry.INSTRUMENTATION_NAME:
                    continue
                for metric in scope.metrics:
                    for point in metric.data.data_points:  # type: ignore[union-attr]
                        key = (metric.name, tuple(sorted(point.attributes.items())))
                        out[key] = point.value  # type: ignore[union-attr]
        return out


def _install() -> tuple[Sdk, Callable[[], None]]:
    """Install SDK providers (global, as an application would); return an uninstaller.

    OpenTelemetry lets a process set its providers once. So that other test files keep running
    without an SDK, the uninstaller puts the API's globals and the library's proxies back to the
    "no SDK installed" state when this module is done (private OTel API, tests only).
    """
    if trace._TRACER_PROVIDER is not None or metrics_internal._METER_PROVIDER is not None:
        pytest.fail("an OpenTelemetry provider was installed before this module; run it alone")
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)

    def uninstall() -> None:
        trace._TRACER_PROVIDER = None
        trace._TRACER_PROVIDER_SET_ONCE = Once()
        metrics_internal._METER_PROVIDER = None
        metrics_internal._METER_PROVIDER_SET_ONCE = Once()
        proxy_provider = metrics_internal._PROXY_METER_PROVIDER
        proxy_provider._real_meter_provider = None
        for meter in proxy_provider._meters:
            meter._real_meter = None
            for instrument in meter._instruments:
                instrument._real_instrument = None
        for name, module in list(sys.modules.items()):
            if name.startswith("fintech_resilience"):
                for value in list(vars(module).values()):
                    if isinstance(value, ProxyTracer):
                        value._real_tracer = None
        tracer_provider.shutdown()
        meter_provider.shutdown()
        assert not telemetry.active()

    return Sdk(spans, reader, tracer_provider.get_tracer("tests")), uninstall


@pytest.fixture(scope="module")
def sdk() -> Iterator[Sdk]:
    installed, uninstall = _install()
    yield installed
    uninstall()


@pytest.fixture
def fresh(sdk: Sdk) -> Sdk:
    sdk.spans.clear()
    return sdk


# -- the documented table --------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    kind: str
    name: str
    emitter: str
    attributes: frozenset[str]
    built: bool


def documented() -> list[Row]:
    rows = []
    for line in DOCS.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 5 or cells[0] not in ("event", "metric", "span"):
            continue
        name = re.findall(r"`([^`]+)`", cells[1])[0]
        attributes = frozenset(re.findall(r"`([a-z_.]+)`", cells[3]))
        rows.append(Row(cells[0], name, cells[2], attributes, cells[4] == "built"))
    return rows


# -- the scenario ----------------------------------------------------------------------------------
def step_ratelimit() -> None:
    limiter = RateLimiter("2/second", name="payments", clock=ManualClock(1_700_000_000.0))
    for _ in range(3):
        limiter.acquire("merchant:4111111111111111")


def step_backend_fallback() -> None:
    dead = RedisBackend.from_url("redis://127.0.0.1:1/0", timeout=0.2)
    limiter = RateLimiter("2/second", name="fallback", backend=dead, on_backend_error="allow")
    limiter.acquire("k")


def step_chaos_callable() -> None:
    psp = inject(latency=0.05, error_rate=1.0, exception=TimeoutError, dependency="psp-acme",
                 enabled=True, seed=1, sleep=lambda s: None)(lambda: "ok")
    with pytest.raises(TimeoutError):
        psp()


def step_chaos_http() -> None:
    import asyncio

    async def app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover - not reached
        raise AssertionError

    async def noop(message: Any) -> None:
        return None

    async def receive() -> dict[str, Any]:
        return {"type": "http.request"}

    mw = ChaosMiddleware(app, rules=[Rule(status=503, route="/pay")], enabled=True, name="api")
    asyncio.run(mw({"type": "http", "path": "/pay", "method": "POST"}, receive, noop))


STEPS: list[Callable[[], None]] = [
    step_ratelimit, step_backend_fallback, step_chaos_callable, step_chaos_http,
]
#: Emitters covered by STEPS; rows of other emitters are pending until their step is added.
COVERED = {"ratelimit", "every pattern (BackendGuard)", "chaos"}


def test_the_scenario_emits_exactly_the_documented_names_and_attributes(fresh: Sdk) -> None:
    audit_seen: list[AuditRecord] = []
    audit = AuditLog([CallbackSink(audit_seen.append)])
    before = fresh.metric_points()
    with fresh.tracer.start_as_current_span("checkout") as span:
        for step in STEPS:
            step()
        audit.record("ratelimit.limit_hit", resource="ratelimit:payments", outcome="failure")
    after = fresh.metric_points()
    [exported] = [s for s in fresh.spans.get_finished_spans() if s.name == "checkout"]

    rows = documented()
    events = {(r.name): r for r in rows if r.kind == "event" and r.built}
    seen_events = {e.name for e in exported.events}
    assert seen_events == set(events)
    for event in exported.events:
        assert set(event.attributes or {}) <= events[event.name].attributes, event.name
    ratelimit = [e.attributes for e in exported.events
                 if (e.attributes or {}).get("resilience.pattern") == "ratelimit"]
    assert [a["resilience.decision"] for a in ratelimit if a["resilience.name"] == "payments"] == [
        "allow", "allow", "deny"]
    faults = sorted((a["resilience.name"], a["resilience.chaos.fault"]) for a in
                    (e.attributes for e in exported.events)
                    if a and a.get("resilience.pattern") == "chaos")
    assert faults == [("api", "status"), ("psp-acme", "exception"), ("psp-acme", "latency")]

    metric_rows = {r.name: r for r in rows if r.kind == "metric" and r.built}
    changed = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
    assert {name for name, _ in changed} == set(metric_rows)
    for name, attrs in changed:
        assert {k for k, _ in attrs} <= metric_rows[name].attributes, name
    assert changed[("resilience.decisions", (("resilience.decision", "allow"),
                                             ("resilience.name", "payments"),
                                             ("resilience.pattern", "ratelimit")))] == 2
    assert changed[("resilience.decisions", (("resilience.decision", "deny"),
                                             ("resilience.name", "payments"),
                                             ("resilience.pattern", "ratelimit")))] == 1
    assert changed[("resilience.chaos.injected", (("resilience.chaos.fault", "latency"),
                                                  ("resilience.name", "psp-acme"),
                                                  ("resilience.pattern", "chaos")))] == 1
    # every documented built row is covered by the scenario
    assert all(r.emitter in COVERED for r in rows if r.built)
    # audit records carry the ids of the span they were made in
    ctx = span.get_span_context()
    assert audit_seen[0].trace_id == format(ctx.trace_id, "032x")
    assert audit_seen[0].span_id == format(ctx.span_id, "016x")


def test_every_telemetry_name_is_in_the_documented_table() -> None:
    names = {r.name for r in documented()}
    for holder in (telemetry.Event, telemetry.Metric):
        for attr, value in vars(holder).items():
            if not attr.startswith("_"):
                assert value in names, value
    text = DOCS.read_text()
    for attr, value in vars(telemetry.Attr).items():
        if not attr.startswith("_"):
            assert f"`{value}`" in text, value


# -- no PAN in span or metric attributes -----------------------------------------------------------
def _pan(body: str) -> str:
    return body + next(str(d) for d in range(10) if luhn_valid(body + str(d)))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(st.text("0123456789", min_size=15, max_size=15).map(_pan),
       st.sampled_from(["{}", "{} ", "x-{}", "{}:cvv=123"]))
def test_no_pan_reaches_span_or_metric_attributes(fresh: Sdk, pan: str, shape: str) -> None:
    key = shape.format(pan)
    fresh.spans.clear()
    with fresh.tracer.start_as_current_span("op"):
        limiter = RateLimiter("1/second", name="cards", clock=ManualClock(1_700_000_000.0))
        limiter.acquire(key)
        limiter.acquire(key)
        wrapped = inject(error_rate=1.0, dependency="psp", enabled=True,
                         principal=lambda k: k, principals={key})(lambda k: k)
        with pytest.raises(ConnectionError):
            wrapped(key)
        AuditLog([CallbackSink(lambda r: None)]).record("e", resource=f"ratelimit:{key}",
                                                        principal=key)
    texts = []
    for span in fresh.spans.get_finished_spans():
        texts += [str(v) for v in (span.attributes or {}).values()]
        for event in span.events:
            texts += [str(v) for v in (event.attributes or {}).values()]
    for name, attrs in fresh.metric_points():
        texts += [name, *(str(v) for _, v in attrs)]
    assert texts
    assert not any(pan in t for t in texts)



# -- without an SDK --------------------------------------------------------------------------------
def test_without_an_sdk_nothing_is_recorded_and_nothing_fails() -> None:
    script = textwrap.dedent("""
        import asyncio
        from opentelemetry import trace
        from fintech_resilience import RateLimiter, telemetry
        from fintech_resilience._chaos_asgi import ChaosMiddleware
        from fintech_resilience.audit import AuditLog, CallbackSink
        from fintech_resilience.chaos import Rule, inject

        assert not telemetry.active()
        seen = []
        with trace.get_tracer("t").start_as_current_span("x") as span:
            assert not span.is_recording()
            limiter = RateLimiter("1/second", name="p")
            assert limiter.acquire("k").allowed and not limiter.acquire("k").allowed
            wrapped = inject(error_rate=1.0, enabled=True, latency=0.01)(lambda: 1)
            try:
                wrapped()
            except ConnectionError:
                pass
            else:
                raise SystemExit("no fault injected")
            rec = AuditLog([CallbackSink(seen.append)]).record("e", resource="r")
        assert rec.trace_id == "" and seen == [rec]
        assert not telemetry.active()
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-W", "error", "-c", script], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
