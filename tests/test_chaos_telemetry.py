"""Telemetry with an OpenTelemetry SDK: a scripted scenario produces exactly the names documented in
docs/telemetry.md (rows marked "built"); no PAN reaches span or metric attributes; without an SDK
nothing is recorded and nothing fails.

The SDK providers are process-global and can be set only once per process: this module installs
them for its own tests and restores the "no SDK" state afterwards (see ``_install``), so other test
files run as without an SDK. Patterns that join the scenario add a step to STEPS.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping
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
from opentelemetry.trace import ProxyTracer, SpanKind
from opentelemetry.util._once import Once

from fintech_resilience import RateLimiter
from fintech_resilience.audit import AuditLog, CallbackSink
from fintech_resilience.backends.memory import MemoryBackend
from fintech_resilience.chaos import inject
from fintech_resilience.core import telemetry
from fintech_resilience.core.redaction import Redactor, luhn_valid
from fintech_resilience.edges.asgi.idempotency import IdempotencyMiddleware
from fintech_resilience.edges.asgi.ratelimit import RateLimitMiddleware
from fintech_resilience.idempotency import IdempotencyStore
from fintech_resilience.testing import ManualClock

DOCS = Path(__file__).resolve().parent.parent / "docs" / "telemetry.md"
TOUR = Path(__file__).resolve().parent.parent / "examples" / "telemetry_tour.py"


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
                        out[key] = (point.count if hasattr(point, "bucket_counts")
                                    else point.value)
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
    assert telemetry.refresh()  # noticed now, not within telemetry.CHECK_INTERVAL

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
        assert not telemetry.refresh()

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

    @property
    def patterns(self) -> frozenset[str]:
        """The ``resilience.pattern`` values of the row ("*" for every pattern)."""
        if "every pattern" in self.emitter:
            return frozenset({"*"})
        return frozenset(p.split("(")[0].strip() for p in self.emitter.split(","))

    def covers(self, pattern: str | None) -> bool:
        return "*" in self.patterns or pattern in self.patterns


def documented() -> list[Row]:
    rows = []
    for line in DOCS.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 5 or cells[0] not in ("event", "metric", "span", "attributes"):
            continue
        name = re.findall(r"`([^`]+)`", cells[1])[0]
        attributes = frozenset(re.findall(r"`([a-z_.]+)`", cells[3]))
        rows.append(Row(cells[0], name, cells[2], attributes, cells[4] == "built"))
    return rows


def _row(rows: list[Row], kind: str, name: str, attrs: Mapping[str, Any]) -> Row:
    """The documented row an emitted item belongs to (by kind, name and pattern)."""
    found = [r for r in rows if r.kind == kind and r.name == name
             and r.covers(attrs.get("resilience.pattern"))]
    assert len(found) == 1, (kind, name, dict(attrs), found)
    return found[0]


# -- the scenario (shared with examples/telemetry_tour.py, which renders docs/telemetry-run.md) ----
def _load_tour() -> Any:
    spec = importlib.util.spec_from_file_location("telemetry_tour", TOUR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["telemetry_tour"] = module
    spec.loader.exec_module(module)
    return module


tour = _load_tour()
STEPS: list[Callable[[ManualClock], None]] = tour.STEPS
#: Emitters covered by STEPS (every row of docs/telemetry.md is built and covered).
COVERED = {"ratelimit", "concurrency", "breaker", "retry", "retry_budget", "bulkhead", "timeout",
           "policy", "idempotency", "shedding", "chaos", "*"}


def test_the_scenario_emits_exactly_the_documented_names_and_attributes(fresh: Sdk) -> None:
    before = fresh.metric_points()
    records = tour.scenario(STEPS)
    after = fresh.metric_points()
    spans = fresh.spans.get_finished_spans()
    rows = documented()
    assert all(r.built for r in rows)
    assert set().union(*(r.patterns for r in rows)) <= COVERED
    seen: set[Row] = set()

    for span in spans:
        attrs = dict(span.attributes or {})
        if span.name.startswith("resilience."):
            row = _row(rows, "span", span.name, attrs)
        elif span.kind is SpanKind.CLIENT:  # an outbound HTTP attempt, named after its method
            row = _row(rows, "span", "{method}", attrs)
        elif "resilience.pattern" in attrs:
            row = _row(rows, "attributes", "current span", attrs)
        else:
            row = None
        if row is not None:
            assert set(attrs) <= row.attributes, (span.name, attrs)
            seen.add(row)
        for event in span.events:
            event_attrs = dict(event.attributes or {})
            row = _row(rows, "event", event.name, event_attrs)
            assert set(event_attrs) <= row.attributes, (event.name, event_attrs)
            if row.patterns != {"*"}:
                assert event_attrs["resilience.pattern"] in row.patterns
            seen.add(row)

    changed = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
    gauges = {k: v for k, v in after.items() if k[0] == "resilience.breaker.state"}
    for name, attrs in [*changed, *gauges]:
        mapping = dict(attrs)
        row = _row(rows, "metric", name, mapping)
        assert set(mapping) <= row.attributes, (name, mapping)
        seen.add(row)
    # every documented row was emitted by the scenario, and nothing else was
    assert seen == set(rows), set(rows) - seen

    # ... with the values the scenario implies
    def decisions(pattern: str, name: str) -> list[Any]:
        return [e.attributes["resilience.decision"] for s in spans for e in s.events
                if e.name == "resilience.decision" and e.attributes
                and e.attributes["resilience.pattern"] == pattern
                and e.attributes["resilience.name"] == name]

    assert decisions("ratelimit", "payments") == ["allow", "allow", "deny"]
    assert decisions("concurrency", "psp-slots") == ["allow", "deny"]
    assert decisions("breaker", "psp-acme") == ["reject"]
    assert decisions("retry_budget", "psp-budget") == ["allow", "deny"]
    assert decisions("retry", "psp-retry-budget") == ["budget_exhausted"]
    assert decisions("bulkhead", "psp-pool") == ["deny"]
    assert decisions("timeout", "capture") == ["expired"]
    assert decisions("idempotency", "refunds") == ["executed", "completed", "replayed",
                                                   "mismatch"]
    assert decisions("idempotency", "payments-http") == ["executed", "completed", "replayed"]
    assert decisions("ratelimit", "api") == ["allow", "deny"]
    assert decisions("ratelimit", "api-wsgi") == ["allow", "deny"]
    transitions = [(e.attributes["resilience.breaker.previous_state"],
                    e.attributes["resilience.breaker.state"])
                   for s in spans for e in s.events
                   if e.name == "resilience.breaker.transition" and e.attributes]
    assert transitions == [("CLOSED", "OPEN"), ("OPEN", "HALF_OPEN"), ("HALF_OPEN", "CLOSED"),
                           ("CLOSED", "FORCED_OPEN"), ("FORCED_OPEN", "CLOSED")]
    attempts = [(s.attributes["resilience.name"], s.attributes["resilience.retry.attempt"],
                 s.attributes["resilience.outcome"])
                for s in spans if s.name == "resilience.retry.attempt" and s.attributes]
    assert attempts == [("psp-retry", 1, "failure"), ("psp-retry", 2, "success"),
                        ("psp-retry-budget", 1, "failure"), ("psp-retry-budget", 2, "failure")]
    http = [(s.name, s.status.status_code.name, dict(s.attributes or {})) for s in spans
            if s.kind is SpanKind.CLIENT]
    assert [(name, status, a["http.request.method"], a["server.address"], a["server.port"],
             a["url.full"], a["http.response.status_code"], a.get("http.request.resend_count"),
             a.get("error.type"), a["resilience.name"], a["resilience.retry.attempt"],
             a["resilience.outcome"]) for name, status, a in http] == [
        ("GET", "ERROR", "GET", "psp.example", 443, "https://psp.example/v1/charges/ch_1", 503,
         None, "503", "psp-http", 1, "failure"),
        ("GET", "UNSET", "GET", "psp.example", 443, "https://psp.example/v1/charges/ch_1", 200,
         1, None, "psp-http", 2, "success")]
    calls = sorted((s.attributes["resilience.outcome"], s.attributes.get("error.type", ""))
                   for s in spans if s.name == "resilience.call" and s.attributes)
    assert calls == [("failure", "Timeout"), ("success", "")]

    def point(metric: str, **attrs: str) -> float:
        key = (metric, tuple(sorted({f"resilience.{k}": v for k, v in attrs.items()}.items())))
        return changed.get(key, 0)

    assert point("resilience.decisions", decision="allow", name="payments",
                 pattern="ratelimit") == 2
    assert point("resilience.retries", name="psp-retry", pattern="retry") == 1
    assert point("resilience.retries", name="psp-retry-budget", pattern="retry") == 1
    assert point("resilience.retries", name="psp-http", pattern="retry") == 1
    assert changed[("resilience.call.duration", (
        ("error.type", "ConnectionError"), ("resilience.name", "psp-acme"),
        ("resilience.outcome", "failure"), ("resilience.pattern", "breaker")))] == 2
    assert gauges[("resilience.breaker.state", (
        ("resilience.breaker.state", "CLOSED"), ("resilience.name", "psp-acme"),
        ("resilience.pattern", "breaker")))] == 1
    assert gauges[("resilience.breaker.state", (
        ("resilience.breaker.state", "OPEN"), ("resilience.name", "psp-acme"),
        ("resilience.pattern", "breaker")))] == 0

    # the audit trail of the same run: every money-relevant decision, once
    assert [(r.event_type, r.resource, r.principal, r.outcome, r.origination)
            for r in records] == [
        ("ratelimit.limit_hit", "ratelimit:payments", "system", "failure", "worker-1"),
        ("breaker.transition", "breaker:psp-acme", "system", "success", "worker-1"),
        ("breaker.transition", "breaker:psp-acme", "system", "success", "worker-1"),
        ("breaker.transition", "breaker:psp-acme", "system", "success", "worker-1"),
        ("breaker.transition", "breaker:psp-acme", "system", "success", "worker-1"),
        ("operator.override", "breaker:psp-acme", "ops:alice", "success", "worker-1"),
        ("breaker.transition", "breaker:psp-acme", "system", "success", "worker-1"),
        ("operator.override", "breaker:psp-acme", "ops:alice", "success", "worker-1"),
        ("retry_budget.exhausted", "retry_budget:psp-budget", "system", "failure", "worker-1"),
        ("idempotency.replay", "idempotency:refunds", "merchant:42", "success", "worker-1"),
        ("idempotency.mismatch", "idempotency:refunds", "merchant:42", "failure", "worker-1"),
        ("idempotency.replay", "idempotency:payments-http", "merchant:42", "success",
         "203.0.113.7"),
        ("ratelimit.limit_hit", "ratelimit:api", "anonymous", "failure", "203.0.113.7"),
        ("ratelimit.limit_hit", "ratelimit:api-wsgi", "anonymous", "failure", "198.51.100.4"),
    ]
    # audit records carry the ids of the span they were made in
    [checkout] = [s for s in spans if s.name == "checkout"]
    assert records[0].trace_id == format(checkout.context.trace_id, "032x")
    assert records[0].span_id == format(checkout.context.span_id, "016x")
    for rec in records:
        assert rec.trace_id == records[0].trace_id
        assert "order-7" not in rec.canonical().decode() and "rf_1" not in rec.canonical().decode()


def test_the_rendered_run_in_the_docs_is_up_to_date() -> None:
    """docs/telemetry-run.md is what examples/telemetry_tour.py renders (fresh interpreter)."""
    result = subprocess.run([sys.executable, "-W", "error", str(TOUR), "--check"],
                            capture_output=True, text=True, timeout=90, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    text = (DOCS.parent / "telemetry-run.md").read_text()
    assert "| `resilience.breaker.state` | gauge |" in text
    assert "`idempotency.replay`" in text and "order-7" not in text


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
        # the HTTP edges, with the PAN as principal and as idempotency key
        scope = tour._http("POST", "/payments", [(b"idempotency-key", key.strip().encode())])
        scope["state"] = {"principal": key}
        limited = RateLimitMiddleware(tour._ok_app, limiter=RateLimiter(
            "1/minute", name="edge", clock=ManualClock(1_700_000_000.0)))
        assert [tour._asgi(limited, scope) for _ in range(2)] == [201, 429]
        store = IdempotencyStore(MemoryBackend(), name="edge", redactor=Redactor.pci())
        idem = IdempotencyMiddleware(tour._ok_app, store=store,
                                     scope=lambda s: s["state"]["principal"])
        assert [tour._asgi(idem, scope, b"{}") for _ in range(2)] == [201, 201]
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
        from fintech_resilience import RateLimiter
        from fintech_resilience.core import telemetry
        from fintech_resilience.edges.asgi.chaos import ChaosMiddleware
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

        # the whole tour through every pattern and edge: same decisions, same audit trail
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("telemetry_tour", TOUR)
        tour = importlib.util.module_from_spec(spec)
        sys.modules["telemetry_tour"] = tour
        spec.loader.exec_module(tour)
        records = tour.scenario()
        assert len(records) == 14 and all(r.trace_id == "" for r in records), records
        assert not telemetry.active()
        assert not telemetry._breakers or all(
            b.known_state is not None for b in telemetry._breakers)
        print("ok")
    """).replace("TOUR", repr(str(TOUR)))
    result = subprocess.run([sys.executable, "-W", "error", "-c", script], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
