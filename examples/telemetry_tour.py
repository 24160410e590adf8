"""A scripted tour through every pattern and edge, with the telemetry and audit it produces.

    python examples/telemetry_tour.py            # print the spans, events, metrics and audit trail
    python examples/telemetry_tour.py --write    # (re)write docs/telemetry-run.md from a real run
    python examples/telemetry_tour.py --check    # exit 1 if docs/telemetry-run.md is out of date

It installs the OpenTelemetry SDK with in-memory exporters, runs :func:`scenario` inside one
``checkout`` span (a ``ManualClock`` drives every pattern, so the output is the same on every run),
and renders what the exporters saw as text. ``tests/test_chaos_telemetry.py`` runs the same
:func:`scenario` and checks every name against docs/telemetry.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from opentelemetry import trace

import fintech_resilience as fr
from fintech_resilience import (
    Bulkhead,
    CircuitBreaker,
    ConcurrencyLimiter,
    CountWindow,
    IdempotencyStore,
    MemoryBackend,
    Policy,
    RateLimiter,
    RetryBudget,
    idempotent,
    retry,
    timeout,
)
from fintech_resilience.asgi import (
    ChaosMiddleware,
    IdempotencyMiddleware,
    LoadSheddingMiddleware,
    RateLimitMiddleware,
)
from fintech_resilience.audit import AuditLog, AuditRecord, CallbackSink
from fintech_resilience.chaos import Rule, inject
from fintech_resilience.core import telemetry
from fintech_resilience.testing import ManualClock
from fintech_resilience.wsgi import RateLimitMiddleware as WsgiRateLimitMiddleware

DOC = Path(__file__).resolve().parent.parent / "docs" / "telemetry-run.md"
START = 1_700_000_000.0
#: A fixed demo secret, so key hashes are the same on every run (use os.urandom(32) for real).
SECRET = b"telemetry-tour-secret-0123456789"
#: Objects kept alive until the metrics are read (the breaker-state gauge observes live breakers).
KEEP: list[Any] = []


# -- the scenario ----------------------------------------------------------------------------------
def _asgi(app: Any, scope: dict[str, Any], body: bytes = b"") -> int:
    """Run one ASGI request to completion (on a new event loop); return the status."""
    status: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    asyncio.run(app(scope, receive, send))
    return status[0]


def _http(method: str, path: str, headers: Iterable[tuple[bytes, bytes]] = ()) -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "root_path": "", "query_string": b"",
            "headers": list(headers), "client": ("203.0.113.7", 50000)}


async def _ok_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 201,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"id":"pay_1"}'})


def step_ratelimit(clock: ManualClock) -> None:
    """2/second for one merchant, hit three times: allow, allow, deny (audited)."""
    limiter = RateLimiter("2/second", name="payments", clock=clock)
    for _ in range(3):
        limiter.acquire("merchant:42")


def step_backend_fallback(clock: ManualClock) -> None:
    """A limiter whose Redis is down decides by on_backend_error='allow'."""
    dead = fr.RedisBackend.from_url("redis://127.0.0.1:1/0", timeout=0.2)
    RateLimiter("2/second", name="fallback", backend=dead, on_backend_error="allow").acquire("k")


def step_concurrency(clock: ManualClock) -> None:
    """One slot: the second caller is refused."""
    limiter = ConcurrencyLimiter(1, name="psp-slots", backend=MemoryBackend(), clock=clock)
    slot = limiter.try_acquire("merchant:42")
    limiter.try_acquire("merchant:42")
    limiter.release(slot)


def step_breaker(clock: ManualClock) -> None:
    """Two failures trip it; a call is rejected; after the break one probe closes it; an operator
    forces it open and resets it."""
    breaker = CircuitBreaker("psp-acme", backend=MemoryBackend(), minimum_calls=2,
                             window=CountWindow(2), break_duration=10.0, half_open_calls=1,
                             clock=clock)
    KEEP.append(breaker)

    def fail() -> None:
        clock.advance(0.25)
        raise ConnectionError("psp down")

    def ok() -> str:
        clock.advance(0.05)
        return "ok"

    for _ in range(2):
        with contextlib.suppress(ConnectionError):
            breaker.call(fail)
    with contextlib.suppress(fr.CircuitOpen):
        breaker.call(ok)
    clock.advance(10.0)
    breaker.call(ok)
    breaker.force_open(actor="ops:alice")
    breaker.reset(actor="ops:alice")


def step_retry(clock: ManualClock) -> None:
    """A retry that succeeds on the second attempt, and one stopped by an empty retry budget."""
    calls = [0]

    def flaky() -> str:
        calls[0] += 1
        if calls[0] == 1:
            raise ConnectionError("reset by peer")
        return "ok"

    retry(attempts=3, wait=0.0, name="psp-retry", clock=clock).call(flaky)
    budget = RetryBudget("psp-budget", backend=MemoryBackend(), ratio=0.1, min_per_second=1.0,
                         clock=clock)

    def down() -> None:
        raise ConnectionError("psp down")

    with contextlib.suppress(fr.RetryBudgetExhausted):
        retry(attempts=5, wait=0.0, name="psp-retry-budget", budget=budget, clock=clock).call(down)


def step_http_client(clock: ManualClock) -> None:
    """An outbound httpx call under a retrying policy: a 503, then a 200 (same retry loop)."""
    import httpx

    from fintech_resilience.httpx import ResilientTransport

    answers = iter([503, 200])
    inner = httpx.MockTransport(lambda request: httpx.Response(next(answers)))
    policy = Policy(name="psp-http", retry=retry(attempts=2, wait=0.0, name="psp-http",
                                                 clock=clock))
    with httpx.Client(transport=ResilientTransport(inner, policy=policy)) as client:
        client.get("https://psp.example/v1/charges/ch_1")


def step_bulkhead(clock: ManualClock) -> None:
    """One slot held: the second caller is refused at once."""
    pool = Bulkhead(1, name="psp-pool")
    with pool:
        try:
            with pool:
                pass
        except fr.BulkheadFull:
            pass


def step_policy_timeout(clock: ManualClock) -> None:
    """A policy call that succeeds, and one whose attempt overruns its 1-second timeout."""
    policy = Policy(name="capture", timeout=timeout(1.0, name="capture", clock=clock))
    policy.call(lambda: "ok")

    def slow() -> str:
        clock.advance(2.0)
        return "late"

    with contextlib.suppress(fr.Timeout):
        policy.call(slow)


def step_idempotency(clock: ManualClock) -> None:
    """The decorator: executed, replayed, then the same key with another payload (mismatch)."""
    store = IdempotencyStore(MemoryBackend(clock=clock), name="refunds", clock=clock,
                             secret=SECRET)

    @idempotent(store, key=lambda p: p["id"], scope=lambda p: p["merchant"],
                fingerprint=lambda p: str(p["amount"]), route="refund")
    def refund(payment: dict[str, Any]) -> dict[str, Any]:
        return {"refunded": payment["amount"]}

    payment = {"id": "rf_1", "merchant": "merchant:42", "amount": 500}
    refund(payment)
    refund(payment)
    with contextlib.suppress(fr.IdempotencyKeyMismatch):
        refund({**payment, "amount": 900})


def step_idempotency_asgi(clock: ManualClock) -> None:
    """The ASGI middleware: the same POST twice; the second is replayed."""
    store = IdempotencyStore(MemoryBackend(clock=clock), name="payments-http",
                             clock=clock, secret=SECRET)
    app = IdempotencyMiddleware(_ok_app, store=store, scope=lambda s: "merchant:42")
    for _ in range(2):
        with telemetry.tracer.start_as_current_span("POST /payments"):
            _asgi(app, _http("POST", "/payments", [(b"idempotency-key", b"order-7"),
                                                   (b"content-type", b"application/json")]),
                  b'{"amount":500}')


def step_ratelimit_asgi(clock: ManualClock) -> None:
    """The ASGI rate-limit middleware: 1/minute per client; the second request gets 429."""
    limiter = RateLimiter("1/minute", name="api", backend=MemoryBackend(), clock=clock)
    app = RateLimitMiddleware(_ok_app, limiter=limiter)
    for _ in range(2):
        with telemetry.tracer.start_as_current_span("GET /balance"):
            _asgi(app, _http("GET", "/balance"))


def step_ratelimit_wsgi(clock: ManualClock) -> None:
    """The WSGI rate-limit middleware: 1/minute per client; the second request gets 429."""
    limiter = RateLimiter("1/minute", name="api-wsgi", backend=MemoryBackend(), clock=clock)

    def wsgi_app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    app = WsgiRateLimitMiddleware(wsgi_app, limiter=limiter)
    for _ in range(2):
        with telemetry.tracer.start_as_current_span("GET /statement"):
            list(app({"REQUEST_METHOD": "GET", "PATH_INFO": "/statement",
                      "REMOTE_ADDR": "198.51.100.4"}, _start_response))


def _start_response(status: str, headers: Any, exc_info: Any = None) -> Callable[[bytes], object]:
    return lambda data: None


def step_shedding(clock: ManualClock) -> None:
    """The load-shedding middleware admits a payment request."""
    app = LoadSheddingMiddleware(_ok_app, max_in_flight=4, routes=[("/payments", "critical")])
    _asgi(app, _http("POST", "/payments"))


def step_chaos(clock: ManualClock) -> None:
    """Chaos on a PSP call (latency + a timeout) and on an HTTP route (503)."""
    psp = inject(latency=0.05, error_rate=1.0, exception=TimeoutError, dependency="psp-acme",
                 enabled=True, seed=1, sleep=lambda s: None)(lambda: "ok")
    with contextlib.suppress(TimeoutError):
        psp()

    async def never(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover
        raise AssertionError("chaos answers first")

    _asgi(ChaosMiddleware(never, rules=[Rule(status=503, route="/pay")], enabled=True,
                          name="api"), _http("POST", "/pay"))


STEPS: list[Callable[[ManualClock], None]] = [
    step_ratelimit, step_backend_fallback, step_concurrency, step_breaker, step_retry,
    step_http_client, step_bulkhead, step_policy_timeout, step_idempotency, step_idempotency_asgi,
    step_ratelimit_asgi, step_ratelimit_wsgi, step_shedding, step_chaos,
]


def scenario(steps: Iterable[Callable[[ManualClock], None]] = STEPS) -> list[AuditRecord]:
    """Run the steps inside a ``checkout`` span with an audit log; return the audit records.

    Works with or without an SDK installed; the audit log is the process default meanwhile.
    """
    records: list[AuditRecord] = []
    clock = ManualClock(START)
    previous = fr.audit.get_default()
    fr.audit.set_default(AuditLog([CallbackSink(records.append)], clock=clock,
                                  origination="worker-1"))
    try:
        with telemetry.tracer.start_as_current_span("checkout"):
            for step in steps:
                step(clock)
    finally:
        fr.audit.set_default(previous)
    return records


# -- rendering -------------------------------------------------------------------------------------
def _value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _attrs(attributes: Any) -> str:
    return ", ".join(f"{k}={_value(v)}" for k, v in (attributes or {}).items())


def render(spans: list[Any], metrics: Any, records: list[AuditRecord]) -> str:
    """Spans (as a tree, with events), metric points and audit records as Markdown text."""
    by_parent: dict[int | None, list[Any]] = {}
    ids = {s.context.span_id for s in spans}
    for span in sorted(spans, key=lambda s: s.start_time or 0):
        parent = span.parent.span_id if span.parent and span.parent.span_id in ids else None
        by_parent.setdefault(parent, []).append(span)
    lines: list[str] = []

    def walk(parent: int | None, depth: int) -> None:
        for span in by_parent.get(parent, []):
            pad = "  " * depth
            lines.append(f"{pad}span {span.name}  {_attrs(span.attributes)}".rstrip())
            for event in span.events:
                lines.append(f"{pad}  event {event.name}  {_attrs(event.attributes)}")
            walk(span.context.span_id, depth + 1)

    walk(None, 0)
    out = ["## Spans and events", "", "```", *lines, "```", "", "## Metrics", "",
           "| Metric | Kind | Unit | Attributes | Value |", "| --- | --- | --- | --- | --- |"]
    rows = []
    for resource in metrics.resource_metrics if metrics else []:
        for scope in resource.scope_metrics:
            if scope.scope.name != telemetry.INSTRUMENTATION_NAME:
                continue
            for metric in scope.metrics:
                kind = type(metric.data).__name__.lower()
                for point in metric.data.data_points:
                    if hasattr(point, "bucket_counts"):
                        value = f"count={point.count}"
                    else:
                        value = _value(point.value)
                    rows.append(f"| `{metric.name}` | {kind} | `{metric.unit}` | "
                                f"{_attrs(dict(sorted(point.attributes.items())))} | {value} |")
    out += sorted(rows)
    out += ["", "## Audit records", "",
            "| event_type | resource | principal | outcome | origination | details |",
            "| --- | --- | --- | --- | --- | --- |"]
    for rec in records:
        details = ", ".join(f"{k}={v}" for k, v in rec.details.items())
        out.append(f"| `{rec.event_type}` | {rec.resource} | {rec.principal} | {rec.outcome} |"
                   f" {rec.origination} | {details} |")
    return "\n".join(out) + "\n"


HEADER = """# Telemetry of a real run

Generated by `python examples/telemetry_tour.py --write` (checked by
`tests/test_chaos_telemetry.py`): the OpenTelemetry SDK's in-memory exporters and a callback
audit sink after one scripted run through every pattern and edge - rate limiter, backend
fallback, concurrency limiter, breaker (trip, reject, probe, close, operator override), retry
(with a retry budget), bulkhead, policy with a timeout, idempotency (decorator and ASGI
middleware), ASGI and WSGI rate-limit middlewares, load shedding and chaos. Every name is
explained in [telemetry.md](telemetry.md); the audit fields in [audit.md](audit.md).

A `ManualClock` drives the patterns, so the output is identical on every run; histogram points
show their count only (their sums are real elapsed times). Metric values are cumulative over the
run. Note what is absent: no key, merchant id or amount in any metric attribute, and the
idempotency key only as its hash.

![Decisions per pattern in this run](_static/telemetry-run.png)

(The plot is drawn from the same in-memory metric reader by `--write --plot`, with matplotlib.)

"""


PLOT = DOC.parent / "_static" / "telemetry-run.png"


def plot(metrics: Any, path: Path) -> None:
    """A bar chart of the run's decisions per pattern and decision (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts: dict[str, float] = {}
    for resource in metrics.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name != telemetry.Metric.DECISIONS:
                    continue
                for point in metric.data.data_points:
                    attrs = point.attributes
                    label = f"{attrs[telemetry.Attr.PATTERN]}: {attrs[telemetry.Attr.DECISION]}"
                    counts[label] = counts.get(label, 0) + point.value
    labels = sorted(counts)
    fig, ax = plt.subplots(figsize=(8, 0.28 * len(labels) + 1.2))
    ax.barh(labels, [counts[label] for label in labels], color="#3b6ea5")
    ax.invert_yaxis()
    ax.set_xlabel("resilience.decisions (points in one scripted run)")
    ax.set_title("Decisions per pattern, from the in-memory metric reader")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(plot_to: Path | None = None) -> str:
    """Install the SDK (in-memory), run the scenario, and render the page (and the plot)."""
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    records = scenario()
    data = reader.get_metrics_data()
    if plot_to is not None:
        plot(data, plot_to)
    return HEADER + render(list(exporter.get_finished_spans()), data, records)


def main(argv: list[str]) -> int:
    page = run(PLOT if "--plot" in argv else None)
    if "--write" in argv:
        DOC.write_text(page)
        print(f"wrote {DOC}")
    elif "--check" in argv:
        if not DOC.exists() or DOC.read_text() != page:
            print(f"{DOC} is out of date: run python examples/telemetry_tour.py --write")
            return 1
        print("up to date")
    else:
        print(page)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
