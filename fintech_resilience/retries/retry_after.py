"""Reading "retry after" hints: ``Retry-After`` values (seconds or HTTP-date) and where they live.

:func:`parse_retry_after` turns a header value into seconds. :func:`default_retry_after` is the
default ``retry_after=`` hook of :func:`~fintech_resilience.retry`: it looks at the failed
attempt's exception (``exc.retry_after`` as on :class:`~fintech_resilience.RateLimited` and
:class:`~fintech_resilience.CircuitOpen`, or ``exc.response.headers["Retry-After"]`` as on httpx's
and requests' HTTP errors) or at the returned result (a response object with ``headers``).
"""

from __future__ import annotations

import math
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .core import Outcome

__all__ = ["default_retry_after", "parse_retry_after"]

#: Longer header values are not parsed (a header is attacker-controlled input).
_MAX_HEADER_LENGTH = 64


def parse_retry_after(value: Any, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value, or None if there is no usable value.

    ``value`` may be a number of seconds, a string of digits (``"120"``) or an HTTP-date
    (``"Wed, 21 Oct 2015 07:28:00 GMT"``), which is read against ``now`` (seconds since the epoch).
    Negative or past values give 0; garbage, NaN and infinities give None.
    """
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str | bytes):
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        text = text.strip()
        if not text or len(text) > _MAX_HEADER_LENGTH:
            return None
        if text.isascii() and text.isdigit():  # "²" and "٣" are digits to str, not to HTTP
            seconds = float(text)
        else:
            try:
                when = parsedate_to_datetime(text)
            except (TypeError, ValueError, IndexError):
                return None
            if when.tzinfo is None:  # RFC 9110 dates are GMT; a naive result means no zone given
                return None
            seconds = when.timestamp() - now
    else:
        return None
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(seconds, 0.0)


def _header(headers: Any) -> Any:
    getter = getattr(headers, "get", None)
    if getter is None:
        return None
    try:
        value = getter("Retry-After")
        if value is None:
            value = getter("retry-after")
    except Exception:
        return None
    return value


def default_retry_after(outcome: Outcome) -> Any:
    """The retry-after hint carried by a failed attempt (seconds, header text or None).

    Looks, in order, at ``exception.retry_after``, ``exception.response.headers``,
    ``exception.headers``, and, for results, ``result.headers``.
    """
    exc = outcome.exception
    if exc is not None:
        hint = getattr(exc, "retry_after", None)
        if hint is not None:
            return hint
        response = getattr(exc, "response", None)
        if response is not None:
            hint = _header(getattr(response, "headers", None))
            if hint is not None:
                return hint
        return _header(getattr(exc, "headers", None))
    return _header(getattr(outcome.result, "headers", None))
