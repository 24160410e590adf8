"""Wire fintech_resilience to the OpenTelemetry SDK and a Prometheus exporter.

    pip install "fintech-resilience[otel]" opentelemetry-exporter-prometheus

    python examples/otel_prometheus.py            # serve /metrics on :9464, print spans; Ctrl-C
    python examples/otel_prometheus.py --once     # one run, then print the Prometheus text
    python examples/otel_prometheus.py --console  # in-memory exporters only: print spans+metrics

The scenario: a 2/second rate limiter hit three times and a chaos-wrapped PSP call (injected
latency, then an injected timeout), all inside one ``checkout`` span, plus one audit record that
carries the span's trace id. With ``--console`` the exporters are the SDK's in-memory ones, so the
example runs without the Prometheus package.
"""

from __future__ import annotations

import argparse
import contextlib
import time

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

RESOURCE = Resource.create({"service.name": "payments-api"})


def install(reader: MetricReader) -> InMemorySpanExporter:
    """Install SDK providers: spans to an in-memory exporter, metrics to ``reader``."""
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider(resource=RESOURCE)
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(MeterProvider(resource=RESOURCE, metric_readers=[reader]))
    return spans


def scenario() -> None:
    """One checkout: rate limit decisions, injected faults, an audit record."""
    # imported after the providers are installed (also works before: telemetry is lazy)
    from fintech_resilience import RateLimiter, chaos
    from fintech_resilience.audit import AuditLog, LoggingSink

    limiter = RateLimiter("2/second", name="payments")
    audit = AuditLog([LoggingSink()])
    psp = chaos.inject(latency=0.05, exception=TimeoutError, error_rate=1.0,
                       dependency="psp-acme", seed=1, enabled=True)(lambda: "charged")
    with trace.get_tracer("payments-api").start_as_current_span("checkout"):
        for _ in range(3):
            decision = limiter.acquire("merchant:42")
            if not decision.allowed:
                audit.record("ratelimit.limit_hit", resource="ratelimit:payments",
                             principal="merchant:42", outcome="failure")
        with contextlib.suppress(TimeoutError):
            psp()


def print_spans(spans: InMemorySpanExporter) -> None:
    for span in spans.get_finished_spans():
        print(f"span {span.name}  trace={span.context.trace_id:032x}")
        for event in span.events:
            attrs = ", ".join(f"{k}: {v}" for k, v in (event.attributes or {}).items())
            print(f"  event {event.name}  {{{attrs}}}")


def print_metrics(reader: InMemoryMetricReader) -> None:
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:  # type: ignore[union-attr]
                    attrs = ", ".join(f"{k}={v}" for k, v in point.attributes.items())
                    print(f"metric {metric.name} {{{attrs}}} = {point.value}")  # type: ignore[union-attr]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--console", action="store_true", help="in-memory exporters only")
    parser.add_argument("--once", action="store_true", help="print Prometheus text and exit")
    parser.add_argument("--port", type=int, default=9464)
    args = parser.parse_args()
    if args.console:
        reader = InMemoryMetricReader()
        spans = install(reader)
        scenario()
        print_spans(spans)
        print_metrics(reader)
        return
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import REGISTRY, generate_latest, start_http_server

    spans = install(PrometheusMetricReader())
    if args.once:
        scenario()
        print_spans(spans)
        text = generate_latest(REGISTRY).decode()
        print("\n".join(line for line in text.splitlines() if "resilience" in line))
        return
    start_http_server(args.port)
    print(f"serving Prometheus metrics on http://localhost:{args.port}/metrics; Ctrl-C to stop")
    try:
        while True:
            scenario()
            print_spans(spans)
            spans.clear()
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
