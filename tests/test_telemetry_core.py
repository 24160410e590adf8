"""The telemetry core of a decision, in fresh interpreters (OTel providers are process-global)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap


def run(code: str) -> dict:
    out = subprocess.run([sys.executable, "-W", "error", "-c", textwrap.dedent(code)],
                         capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_with_no_sdk_nothing_is_recorded_and_nothing_fails():
    result = run("""
        import json
        from opentelemetry import trace
        import fintech_resilience as fr
        from fintech_resilience.core import telemetry
        rl = fr.RateLimiter("2/minute", name="quiet")
        with telemetry.tracer.start_as_current_span("request") as span:
            decisions = [rl.acquire("m").allowed for _ in range(3)]
            recording = span.is_recording()
        print(json.dumps({"active": telemetry.active(), "decisions": decisions,
                          "recording": recording}))
    """)
    assert result == {"active": False, "decisions": [True, True, False], "recording": False}


def test_with_the_sdk_each_decision_is_a_span_event_and_a_counter_point():
    result = run("""
        import json
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

        import fintech_resilience as fr
        from fintech_resilience.core import telemetry
        rl = fr.RateLimiter("2/minute", name="loud")
        with trace.get_tracer("app").start_as_current_span("POST /charges"):
            for _ in range(3):
                rl.acquire("merchant-7", cost=1)
        span = exporter.get_finished_spans()[0]
        events = [(e.name, dict(e.attributes)) for e in span.events]
        points = []
        for rm in reader.get_metrics_data().resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name == telemetry.Metric.DECISIONS:
                        points += [(sm.scope.name, sm.scope.version, dict(p.attributes), p.value)
                                   for p in m.data.data_points]
        print(json.dumps({"active": telemetry.active(), "events": events, "points": points,
                          "version": fr.__version__}))
    """)
    assert result["active"] is True
    events = result["events"]
    assert [name for name, _ in events] == ["resilience.decision"] * 3
    assert [a["resilience.decision"] for _, a in events] == ["allow", "allow", "deny"]
    first = events[0][1]
    assert first["resilience.pattern"] == "ratelimit" and first["resilience.name"] == "loud"
    assert first["resilience.ratelimit.policy"] == "2/minute"
    assert first["resilience.ratelimit.algorithm"] == "gcra"
    assert all("merchant-7" not in json.dumps(a) for _, a in events)  # keys never leave
    points = {p[2]["resilience.decision"]: (p[0], p[1], p[2], p[3]) for p in result["points"]}
    assert points["allow"][3] == 2 and points["deny"][3] == 1
    assert points["allow"][0] == "fintech_resilience" and points["allow"][1] == result["version"]
    # metric attributes stay low-cardinality: pattern, name, decision
    assert set(points["deny"][2]) == {"resilience.pattern", "resilience.name",
                                      "resilience.decision"}


def test_attribute_names_live_in_one_module():
    from fintech_resilience.core import telemetry

    names = [v for k, v in vars(telemetry.Attr).items() if k.isupper()]
    assert len(names) == len(set(names))
    # OpenTelemetry semantic conventions
    semconv = {"error.type", "http.response.status_code", "http.request.method",
               "http.request.resend_count", "server.address", "server.port",
               "http.request.method_original", "url.full"}
    assert all(n.startswith("resilience.") or n in semconv for n in names), names


def test_an_sdk_installed_after_decisions_is_noticed_within_the_check_interval():
    """No provider at the first decision; one installed later is seen once the check interval
    has passed (the clock is driven, not slept), or at once through refresh()."""
    result = run("""
        import json
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        import fintech_resilience as fr
        from fintech_resilience.core import telemetry
        from fintech_resilience.testing import ManualClock
        clock = ManualClock(100.0)
        telemetry._providers.clock = clock.monotonic
        rl = fr.RateLimiter("5/minute", name="late")
        rl.acquire("m")
        before = telemetry.active()
        reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        rl.acquire("m")
        within = telemetry.active()
        clock.advance(telemetry.CHECK_INTERVAL)
        rl.acquire("m")
        after = telemetry.active()
        points = [p.value for rm in reader.get_metrics_data().resource_metrics
                  for sm in rm.scope_metrics for m in sm.metrics
                  if m.name == telemetry.Metric.DECISIONS for p in m.data.data_points]
        print(json.dumps({"before": before, "within": within, "after": after,
                          "points": points}))
    """)
    assert result == {"before": False, "within": False, "after": True, "points": [1]}
