"""The span of one outbound HTTP attempt, as OpenTelemetry's HTTP client conventions describe it.

Every attempt - the first one and each resend - is a CLIENT span named after the method
(``POST``; ``HTTP`` for a method outside the standard ones, then ``http.request.method`` is
``_OTHER`` and ``http.request.method_original`` the method sent), with ``http.request.method``,
``server.address``, ``server.port`` (the scheme's default when the URL has none), ``url.full``,
``http.response.status_code``, ``http.request.resend_count`` (resends only) and ``error.type``
(the status code for 400 and above, else the exception's class). The status is ERROR for an
exception or a status of 400 and above, unset otherwise (``telemetry.set_error``).

``url.full`` never carries credentials or data: no user info, every query value replaced by
``REDACTED``, card numbers in the path (and in query parameter names) masked by
:meth:`Redactor.pci() <fintech_resilience.Redactor.pci>`; no fragment. The span also names the
policy (``resilience.name``) and, under a retry, the attempt (``resilience.pattern`` ``retry``,
``resilience.retry.attempt``), with its ``resilience.outcome``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from opentelemetry import trace as _trace

from ..core import telemetry
from ..core.outcomes import Outcome, Verdict
from ..core.redaction import Redactor
from ..retries.attempt import current_attempt

if TYPE_CHECKING:
    from .outbound import Plan

__all__ = ["KNOWN_METHODS", "attempt_span", "end_span", "redacted_url"]

#: The methods the HTTP conventions know (others are reported as ``_OTHER``).
KNOWN_METHODS: Final = frozenset({"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH",
                                  "POST", "PUT", "TRACE", "QUERY"})
DEFAULT_PORTS: Final = {"http": 80, "https": 443}
REDACTED: Final = "REDACTED"
_REDACTOR: Final = Redactor.pci()


def _masked(text: str, safe: str) -> str:
    """``text`` (percent-encoded) with card numbers masked, re-encoded only if it changed."""
    decoded = unquote(text)
    masked = _REDACTOR.redact_text(decoded)
    return text if masked == decoded else quote(masked, safe=safe + "*")


def redacted_url(url: str) -> str:
    """``url`` as ``url.full`` may show it: no user info, no query values, no fragment, card
    numbers masked."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    query = "&".join(
        f"{_masked(name, '')}={REDACTED}" if sep else _masked(name, "")
        for name, sep, _value in (item.partition("=") for item in parts.query.split("&") if item))
    return urlunsplit((parts.scheme, netloc, _masked(parts.path, "/"), query, ""))


@contextlib.contextmanager
def attempt_span(plan: Plan) -> Iterator[Any]:
    """The CLIENT span of one attempt of ``plan``'s request (None when not recording)."""
    method = plan.method if plan.method in KNOWN_METHODS else None
    attrs: dict[str, str | int] = {
        telemetry.Attr.HTTP_METHOD: method or "_OTHER",
        telemetry.Attr.SERVER_ADDRESS: plan.host,
        telemetry.Attr.NAME: plan.name,
        telemetry.Attr.PATTERN: telemetry.Pattern.POLICY if plan.retry is None
        else telemetry.Pattern.RETRY,
    }
    port = plan.port if plan.port is not None else DEFAULT_PORTS.get(plan.scheme)
    if port is not None:
        attrs[telemetry.Attr.SERVER_PORT] = port
    if method is None:
        attrs[telemetry.Attr.HTTP_METHOD_ORIGINAL] = plan.method
    attempt = current_attempt() if plan.retry is not None else None
    if attempt is not None:
        attrs[telemetry.Attr.ATTEMPT] = attempt.number
        if attempt.number > 1:
            attrs[telemetry.Attr.HTTP_RESEND_COUNT] = attempt.number - 1
    with telemetry.tracer.start_as_current_span(
            method or "HTTP", kind=_trace.SpanKind.CLIENT, attributes=attrs,
            record_exception=False, set_status_on_exception=False) as span:
        if not span.is_recording():
            yield None
            return
        span.set_attribute(telemetry.Attr.URL_FULL, redacted_url(plan.url))
        yield span


def end_span(span: Any, outcome: Outcome, verdict: Verdict) -> None:
    """Mark the attempt's span with its answer (or exception), outcome and status."""
    status = telemetry.status_of(outcome.result) if outcome.exception is None else None
    if status is not None:
        span.set_attribute(telemetry.Attr.HTTP_STATUS, status)
    failed = verdict is Verdict.FAILURE or outcome.exception is not None
    span.set_attribute(telemetry.Attr.OUTCOME, telemetry.Decision.FAILURE if failed
                       else telemetry.Decision.SUCCESS)
    telemetry.set_error(span, outcome.exception, status, client=True)
