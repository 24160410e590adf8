"""OpenTelemetry for every pattern: one tracer, one meter, attribute names in one place.

With no OpenTelemetry SDK configured, telemetry costs one clock read per decision: :func:`active`
is false until the application installs a tracer or meter provider, and nothing else runs. It
asks OpenTelemetry's API at the first decision and then at most once a second while no provider
is installed, so an SDK installed later (also after limiters were created) is noticed within a
second (:func:`refresh` asks at once). From then on each decision adds one event to the current
span (only if that span is recording) and one point to the ``resilience.decisions`` counter.

Metric attributes are low-cardinality only (pattern, name, decision, state): never a key, a
principal or an amount. Durations are float seconds (unit ``s``).

This module is the single place of every name the library emits: attribute names (:class:`Attr`),
span event names (:class:`Event`), span names (:class:`Span`), metric instruments
(:class:`Metric`), and the values of ``resilience.pattern`` (:class:`Pattern`) and the common
values of ``resilience.decision`` (:class:`Decision`). docs/telemetry.md is the table of them.
"""

from __future__ import annotations

import contextlib
import logging
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final, Protocol

from opentelemetry import metrics as _metrics_api
from opentelemetry import trace as _trace
from opentelemetry.metrics import CallbackOptions, Observation

from .._version import __version__

__all__ = [
    "INSTRUMENTATION_NAME",
    "Attr",
    "Decision",
    "Event",
    "Metric",
    "Pattern",
    "Span",
    "active",
    "call_span",
    "emit_decision",
    "emit_fallback",
    "emit_retry",
    "emit_transition",
    "error_type",
    "logger",
    "mark_result",
    "meter",
    "record_call",
    "refresh",
    "set_error",
    "status_of",
    "tracer",
    "watch_breaker",
]

INSTRUMENTATION_NAME: Final = "fintech_resilience"

logger = logging.getLogger("fintech_resilience")


class Attr:
    """Span, event and metric attribute names (all under ``resilience.*``, plus ``error.type``)."""

    PATTERN: Final = "resilience.pattern"
    NAME: Final = "resilience.name"
    DECISION: Final = "resilience.decision"
    ALGORITHM: Final = "resilience.ratelimit.algorithm"
    POLICY: Final = "resilience.ratelimit.policy"
    LIMIT: Final = "resilience.ratelimit.limit"
    REMAINING: Final = "resilience.ratelimit.remaining"
    RESET_AFTER: Final = "resilience.ratelimit.reset_after"
    RETRY_AFTER: Final = "resilience.retry_after"
    COST: Final = "resilience.cost"
    SHADOW: Final = "resilience.shadow"
    BACKEND: Final = "resilience.backend"
    FALLBACK: Final = "resilience.backend.fallback"
    STATE: Final = "resilience.breaker.state"
    PREVIOUS_STATE: Final = "resilience.breaker.previous_state"
    ATTEMPT: Final = "resilience.retry.attempt"
    WAIT: Final = "resilience.retry.wait"
    OUTCOME: Final = "resilience.outcome"
    KEY_HASH: Final = "resilience.key.hash"
    FENCING_TOKEN: Final = "resilience.idempotency.fencing_token"  # noqa: S105 - a name
    CHAOS_FAULT: Final = "resilience.chaos.fault"
    CHAOS_LATENCY: Final = "resilience.chaos.latency"
    CHAOS_RULE: Final = "resilience.chaos.rule"
    ERROR_TYPE: Final = "error.type"
    # OpenTelemetry semantic-convention names (HTTP client attempts, chaos HTTP faults)
    HTTP_STATUS: Final = "http.response.status_code"
    HTTP_METHOD: Final = "http.request.method"
    HTTP_METHOD_ORIGINAL: Final = "http.request.method_original"
    HTTP_RESEND_COUNT: Final = "http.request.resend_count"
    SERVER_ADDRESS: Final = "server.address"
    SERVER_PORT: Final = "server.port"
    URL_FULL: Final = "url.full"


class Event:
    """Span event names."""

    DECISION: Final = "resilience.decision"
    BACKEND_FALLBACK: Final = "resilience.backend.fallback"
    BREAKER_TRANSITION: Final = "resilience.breaker.transition"
    RETRY: Final = "resilience.retry"
    CHAOS_INJECTED: Final = "resilience.chaos.injected"


class Span:
    """Span names (the library's own spans: protected outbound calls)."""

    RETRY_ATTEMPT: Final = "resilience.retry.attempt"
    CALL: Final = "resilience.call"


class Metric:
    """Metric instrument names."""

    DECISIONS: Final = "resilience.decisions"
    BACKEND_FALLBACKS: Final = "resilience.backend.fallbacks"
    BREAKER_TRANSITIONS: Final = "resilience.breaker.transitions"
    BREAKER_STATE: Final = "resilience.breaker.state"
    RETRIES: Final = "resilience.retries"
    CALL_DURATION: Final = "resilience.call.duration"
    CHAOS_INJECTED: Final = "resilience.chaos.injected"


class Pattern:
    """Values of ``resilience.pattern``."""

    RATELIMIT: Final = "ratelimit"
    CONCURRENCY: Final = "concurrency"
    BREAKER: Final = "breaker"
    RETRY: Final = "retry"
    RETRY_BUDGET: Final = "retry_budget"
    BULKHEAD: Final = "bulkhead"
    TIMEOUT: Final = "timeout"
    POLICY: Final = "policy"
    IDEMPOTENCY: Final = "idempotency"
    SHEDDING: Final = "shedding"
    CHAOS: Final = "chaos"


class Decision:
    """Common values of ``resilience.decision`` (idempotency adds its claim/store outcomes)."""

    ALLOW: Final = "allow"
    DENY: Final = "deny"
    SHADOW_DENY: Final = "shadow_deny"
    REJECT: Final = "reject"
    BUDGET_EXHAUSTED: Final = "budget_exhausted"
    EXPIRED: Final = "expired"
    SUCCESS: Final = "success"
    FAILURE: Final = "failure"


tracer = _trace.get_tracer(INSTRUMENTATION_NAME, __version__)
meter = _metrics_api.get_meter(INSTRUMENTATION_NAME, __version__)

decisions_counter = meter.create_counter(
    Metric.DECISIONS, unit="{decision}", description="Decisions taken by resilience patterns"
)
fallbacks_counter = meter.create_counter(
    Metric.BACKEND_FALLBACKS,
    unit="{decision}",
    description="Decisions taken by an on_backend_error policy because the backend failed",
)
transitions_counter = meter.create_counter(
    Metric.BREAKER_TRANSITIONS, unit="{transition}",
    description="Circuit breaker state transitions (counted once, by the process causing them)",
)
retries_counter = meter.create_counter(
    Metric.RETRIES, unit="{retry}", description="Retries started (attempts after the first)"
)
injected_counter = meter.create_counter(
    Metric.CHAOS_INJECTED, unit="{fault}", description="Faults injected by fintech_resilience chaos"
)
#: Bucket boundaries (seconds) for call durations: 1 ms .. 30 s.
DURATION_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                           5.0, 10.0, 30.0)
call_duration = meter.create_histogram(
    Metric.CALL_DURATION, unit="s",
    description="Duration of calls protected by a breaker or a policy",
    explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
)


#: Seconds between two questions to OpenTelemetry's API while no provider is installed.
CHECK_INTERVAL: Final = 1.0


class _Providers:
    """Whether the application installed a tracer or meter provider, as last asked."""

    __slots__ = ("clock", "installed", "next_check")

    def __init__(self) -> None:
        self.installed = False
        self.next_check = 0.0
        self.clock = time.monotonic


_providers = _Providers()


def active() -> bool:
    """True once the application installed an OpenTelemetry tracer or meter provider.

    OpenTelemetry's API answers that in about a microsecond, more than a decision costs, so it is
    asked at most once every :data:`CHECK_INTERVAL` seconds while no provider is installed. Once
    one is, the answer stays true: OpenTelemetry does not let an installed provider be replaced.
    """
    if _providers.installed:
        return True
    if _providers.clock() < _providers.next_check:
        return False
    return refresh()


def refresh() -> bool:
    """Ask OpenTelemetry now whether a tracer or meter provider is installed (tests that install
    one and expect the very next decision to be traced call this first); returns the answer."""
    tracing = not isinstance(_trace.get_tracer_provider(), _trace.ProxyTracerProvider)
    # the API's stand-in meter provider has nothing to shut down; every real one does
    metering = callable(getattr(_metrics_api.get_meter_provider(), "shutdown", None))
    _providers.installed = tracing or metering
    _providers.next_check = _providers.clock() + CHECK_INTERVAL
    return _providers.installed


def emit_decision(
    pattern: str, name: str, decision: str, attributes: Mapping[str, Any] | None = None
) -> None:
    """Count one decision and add it as an event to the current span (if recording).

    Call it only when :func:`active` is true; it does the work unconditionally.
    """
    labels = {Attr.PATTERN: pattern, Attr.NAME: name, Attr.DECISION: decision}
    decisions_counter.add(1, labels)
    span = _trace.get_current_span()
    if span.is_recording():
        if attributes:
            labels.update(attributes)
        span.add_event(Event.DECISION, labels)


def emit_fallback(pattern: str, name: str, policy: str, error: BaseException) -> None:
    """Count one decision taken by an ``on_backend_error`` policy."""
    labels = {
        Attr.PATTERN: pattern,
        Attr.NAME: name,
        Attr.FALLBACK: policy,
        Attr.ERROR_TYPE: type(error).__qualname__,
    }
    fallbacks_counter.add(1, labels)
    span = _trace.get_current_span()
    if span.is_recording():
        span.add_event(Event.BACKEND_FALLBACK, labels)


class _Breaker(Protocol):
    name: str

    @property
    def known_state(self) -> Any: ...


_breakers: weakref.WeakSet[Any] = weakref.WeakSet()


def watch_breaker(breaker: _Breaker) -> None:
    """Report ``breaker``'s state on the ``resilience.breaker.state`` gauge while it lives."""
    _breakers.add(breaker)


def _observe_breakers(options: CallbackOptions) -> Iterable[Observation]:
    """1 for the state each breaker of this process last learned, 0 for the other states."""
    known: dict[str, Any] = {}
    for breaker in list(_breakers):
        state = breaker.known_state
        if state is not None:
            known[breaker.name] = state
    for name, state in sorted(known.items()):
        for member in type(state):
            yield Observation(1 if member is state else 0, {
                Attr.PATTERN: Pattern.BREAKER, Attr.NAME: name, Attr.STATE: member.name})


breaker_state_gauge = meter.create_observable_gauge(
    Metric.BREAKER_STATE, callbacks=[_observe_breakers], unit="{state}",
    description="1 for the state a circuit breaker is in (as this process last learned), else 0",
)


def emit_transition(name: str, state: str, previous: str) -> None:
    """Count one breaker transition and add it as an event to the current span (if recording).

    Call it only when :func:`active` is true, from the process that caused the transition.
    """
    attrs = {Attr.PATTERN: Pattern.BREAKER, Attr.NAME: name, Attr.STATE: state,
             Attr.PREVIOUS_STATE: previous}
    transitions_counter.add(1, attrs)
    span = _trace.get_current_span()
    if span.is_recording():
        span.add_event(Event.BREAKER_TRANSITION, attrs)


def emit_retry(name: str, attempt: int, wait: float, error: BaseException | None) -> None:
    """Count one retry (``attempt`` failed; the next one starts after ``wait`` seconds) and add
    a ``resilience.retry`` event to the current span. Call it only when :func:`active` is true."""
    labels = {Attr.PATTERN: Pattern.RETRY, Attr.NAME: name}
    retries_counter.add(1, labels)
    span = _trace.get_current_span()
    if span.is_recording():
        attrs: dict[str, Any] = {**labels, Attr.ATTEMPT: attempt, Attr.WAIT: wait}
        if error is not None:
            attrs[Attr.ERROR_TYPE] = error_type(error)
        span.add_event(Event.RETRY, attrs)


def record_call(pattern: str, name: str, duration: float, error: BaseException | None) -> None:
    """One point on the ``resilience.call.duration`` histogram (seconds). Call it only when
    :func:`active` is true."""
    attrs = {Attr.PATTERN: pattern, Attr.NAME: name,
             Attr.OUTCOME: Decision.SUCCESS if error is None else Decision.FAILURE}
    if error is not None:
        attrs[Attr.ERROR_TYPE] = error_type(error)
    call_duration.record(duration, attrs)


@contextlib.contextmanager
def call_span(pattern: str, name: str) -> Iterator[Any]:
    """A ``resilience.call`` span around a protected call, and its point on the
    ``resilience.call.duration`` histogram; marks ``resilience.outcome``, ``error.type`` and the
    status (:func:`set_error`; the exception propagates). Use it only when :func:`active` is
    true."""
    with tracer.start_as_current_span(
            Span.CALL, attributes={Attr.PATTERN: pattern, Attr.NAME: name},
            record_exception=False, set_status_on_exception=False) as span:
        started = time.perf_counter()
        try:
            yield span
        except BaseException as exc:
            record_call(pattern, name, time.perf_counter() - started, exc)
            if span.is_recording():
                span.set_attribute(Attr.OUTCOME, Decision.FAILURE)
                set_error(span, exc)
            raise
        record_call(pattern, name, time.perf_counter() - started, None)
        if span.is_recording():
            span.set_attribute(Attr.OUTCOME, Decision.SUCCESS)


def error_type(error: BaseException) -> str:
    """The ``error.type`` of an exception: its own ``error_type`` text when it has one (an HTTP
    failure names its status code, as the HTTP conventions write it), else its class name."""
    named = getattr(error, "error_type", None)
    return named if isinstance(named, str) else type(error).__qualname__


def mark_result(span: Any, result: Any) -> Any:
    """Mark a recording span whose call returned ``result`` (an HTTP answer of 500 or more is
    an error, :func:`set_error`); returns ``result``."""
    if span.is_recording():
        set_error(span, None, status_of(result))
    return result


def status_of(result: Any) -> int | None:
    """The HTTP status code of a result (``status_code``: httpx, requests; ``status``: aiohttp,
    urllib3), or None when it is not a response."""
    status = getattr(result, "status_code", None)
    if status is None:
        status = getattr(result, "status", None)
    return status if isinstance(status, int) and not isinstance(status, bool) else None


def set_error(span: Any, error: BaseException | None, status: int | None = None, *,
              client: bool = False) -> None:
    """Mark a recording span as failed, the same way on every span the library makes: an
    exception sets ``error.type`` (:func:`error_type`) and the status ERROR (described by the
    error type only: a message may hold card data); so does an HTTP status of 500 or more - and
    of 400 or more on a CLIENT span, per the HTTP conventions - with ``error.type`` the status
    code. Anything else leaves the status unset."""
    if error is not None:
        kind = error_type(error)
        span.set_attribute(Attr.ERROR_TYPE, kind)
        span.set_status(_trace.Status(_trace.StatusCode.ERROR, kind))
    elif status is not None and status >= (400 if client else 500):
        span.set_attribute(Attr.ERROR_TYPE, str(status))
        span.set_status(_trace.Status(_trace.StatusCode.ERROR))
