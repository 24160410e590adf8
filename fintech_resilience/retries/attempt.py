"""One logical call under a retry, and one attempt of it.

:class:`Attempt` is what the wrapped code sees (:func:`current_attempt`); :class:`AttemptContext`
is the attempt the drivers run - the decorator's loop and ``fr.retrying`` blocks alike - as a
``with`` block: it makes the attempt current, opens its span, and catches its outcome for the
decision core (an ``Exception`` is caught, anything else - cancellation, ``KeyboardInterrupt`` -
propagates).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from ..core import telemetry
from ..core.clock import Clock
from ..core.outcomes import Outcome

if TYPE_CHECKING:
    from opentelemetry.trace import Span

__all__ = ["SPAN_NAME", "Attempt", "AttemptContext", "Call", "current_attempt"]

#: The span of one attempt (``telemetry.Span.RETRY_ATTEMPT``).
SPAN_NAME: Final = telemetry.Span.RETRY_ATTEMPT


class Attempt:
    """The attempt running now: its number, the call's idempotency key and deadline.

    Read it inside the wrapped function with :func:`current_attempt`; ``fr.retrying`` blocks
    get it from their loop.
    """

    __slots__ = ("_clock", "deadline_at", "idempotency_key", "number")

    def __init__(self, number: int, idempotency_key: str | None, deadline_at: float | None,
                 clock: Clock) -> None:
        #: 1 for the first attempt.
        self.number = number
        #: The same key on every attempt of one call (None when the call has none).
        self.idempotency_key = idempotency_key
        #: The call's deadline on ``clock.monotonic()``'s scale, or None.
        self.deadline_at = deadline_at
        self._clock = clock

    def remaining(self) -> float | None:
        """Seconds left until the call's overall deadline (never negative), or None."""
        if self.deadline_at is None:
            return None
        return max(0.0, self.deadline_at - self._clock.monotonic())

    def __repr__(self) -> str:
        key = "set" if self.idempotency_key else "none"
        return f"<Attempt number={self.number} idempotency_key={key}>"


#: The running attempt as a plain tuple ``(number, key, deadline_at, clock)``: cheap to set on
#: the fast path; :func:`current_attempt` builds the :class:`Attempt` only when someone asks.
AttemptTuple = tuple[int, str | None, float | None, Clock]
CURRENT: contextvars.ContextVar[AttemptTuple | None] = contextvars.ContextVar(
    "fintech_resilience.attempt", default=None)


def current_attempt() -> Attempt | None:
    """The :class:`Attempt` running in this context, or None outside ``fr.retry``."""
    running = CURRENT.get()
    return None if running is None else Attempt(*running)


@dataclass(slots=True)
class Call:
    """One logical call: what every attempt shares."""

    fn: Callable[..., Any] | None
    """What each attempt calls (None for a ``fr.retrying`` block)."""
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    key: str | None
    started: float
    deadline_at: float | None
    clock: Clock
    name: str
    """Labels the call's telemetry, log lines and hook details."""
    origin: Callable[..., Any] | None = None
    """The user's function (tenacity callbacks see it as ``retry_state.fn``)."""
    spans: bool = True
    """False when the caller opens each attempt's span itself (the HTTP client edges)."""


class AttemptContext(Attempt):
    """An attempt of a retried call, run as ``with attempt:``.

    In a ``for attempt in fr.retrying(...)`` block, put the work inside ``with attempt:``; an
    exception raised there is caught and handed to the retry decision (which retries or
    re-raises it when the loop moves on). ``attempt.set_result(value)`` reports a result for the
    ``on_result`` rule.
    """

    __slots__ = ("_call", "_result", "_span", "_token", "_wait", "outcome")

    _span: tuple[contextlib.AbstractContextManager[Span | None], Span] | None

    def __init__(self, call: Call, number: int, wait: float) -> None:
        super().__init__(number, call.key, call.deadline_at, call.clock)
        self._call = call
        self._wait = wait
        self._result: Any = None
        self._span = None
        self._token: contextvars.Token[AttemptTuple | None] | None = None
        #: What the attempt did, once its ``with`` block ended (None before).
        self.outcome: Outcome | None = None

    def set_result(self, value: Any) -> None:
        """Report the block's result (for ``on_result`` and ``RetryError.last``)."""
        self._result = value

    def __enter__(self) -> AttemptContext:
        self._token = CURRENT.set((self.number, self.idempotency_key, self.deadline_at,
                                   self._clock))
        if self._call.spans and telemetry.active():
            manager = attempt_span(self._call.name, self.number, self._wait)
            span = manager.__enter__()
            if span is None:  # not recording: nothing to mark
                manager.__exit__(None, None, None)
            else:
                self._span = (manager, span)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: object) -> bool:
        if exc is None:
            self.outcome = Outcome(self._result, attempt=self.number)
        elif isinstance(exc, Exception):
            self.outcome = Outcome(exception=exc, attempt=self.number)
        span, self._span = self._span, None
        try:
            if span is not None:
                if self.outcome is not None:
                    end_span(span[1], self.outcome)
                span[0].__exit__(None, None, None)
        finally:
            if self._token is not None:
                CURRENT.reset(self._token)
                self._token = None
        return self.outcome is not None and self.outcome.exception is not None


@contextlib.contextmanager
def attempt_span(name: str, number: int, wait: float) -> Iterator[Span | None]:
    """The ``resilience.retry.attempt`` span of one attempt (None when not recording)."""
    attributes: dict[str, str | int | float] = {
        telemetry.Attr.PATTERN: telemetry.Pattern.RETRY, telemetry.Attr.NAME: name,
        telemetry.Attr.ATTEMPT: number, telemetry.Attr.WAIT: wait}
    with telemetry.tracer.start_as_current_span(
            SPAN_NAME, attributes=attributes, record_exception=False,
            set_status_on_exception=False) as span:
        yield span if span.is_recording() else None


def end_span(span: Span, outcome: Outcome) -> None:
    """Mark an attempt's span with its outcome, ``error.type`` and status."""
    exc = outcome.exception
    span.set_attribute(telemetry.Attr.OUTCOME, telemetry.Decision.SUCCESS if exc is None
                       else telemetry.Decision.FAILURE)
    telemetry.set_error(span, exc, telemetry.status_of(outcome.result))
