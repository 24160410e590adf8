"""OpenTelemetry for every pattern: one tracer, one meter, attribute names in one place.

With no OpenTelemetry SDK configured, telemetry costs one check of two module globals per
decision: :func:`active` is false until the application installs a tracer or meter provider, and
nothing else runs. Once an SDK is installed (at any time, also after limiters were created), each
decision adds one event to the current span (only if that span is recording) and one point to the
``resilience.decisions`` counter.

Metric attributes are low-cardinality only (pattern, name, decision, state): never a key, a
principal or an amount.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final

from opentelemetry import metrics as _metrics_api
from opentelemetry import trace as _trace
from opentelemetry.metrics import _internal as _metrics_internal

from ._version import __version__

__all__ = [
    "INSTRUMENTATION_NAME",
    "Attr",
    "Event",
    "Metric",
    "active",
    "emit_decision",
    "logger",
    "meter",
    "tracer",
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
    ERROR_TYPE: Final = "error.type"


class Event:
    """Span event names."""

    DECISION: Final = "resilience.decision"
    BACKEND_FALLBACK: Final = "resilience.backend.fallback"
    BREAKER_TRANSITION: Final = "resilience.breaker.transition"
    RETRY: Final = "resilience.retry"
    IDEMPOTENCY: Final = "resilience.idempotency"


class Metric:
    """Metric instrument names."""

    DECISIONS: Final = "resilience.decisions"
    BACKEND_FALLBACKS: Final = "resilience.backend.fallbacks"
    BREAKER_TRANSITIONS: Final = "resilience.breaker.transitions"
    RETRIES: Final = "resilience.retries"
    CALL_DURATION: Final = "resilience.call.duration"


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


def active() -> bool:
    """True once the application installed an OpenTelemetry tracer or meter provider."""
    return (
        _trace._TRACER_PROVIDER is not None
        or _metrics_internal._METER_PROVIDER is not None
    )


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
