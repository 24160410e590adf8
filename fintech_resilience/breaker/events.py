"""What a circuit breaker tells the outside world: per-call events, transitions, the log line.

Three hooks, each a plain callable, each costing nothing when unset:

* ``listeners=[fn]`` - every :class:`~fintech_resilience.Transition` this process sees (the
  ones it caused and the ones it learned from the backend), as pybreaker's ``state_change``;
* ``on_call=fn`` - a :class:`CallEvent` for every call: ``SUCCESS``, ``FAILURE``, ``IGNORED``
  (neutral: counted for neither side) or ``REJECTED`` (refused while open), with its duration
  and whether it was slow - resilience4j's ``onSuccess`` / ``onError`` / ``onIgnoredError`` /
  ``onCallNotPermitted`` and pybreaker's ``success`` / ``failure`` in one stream;
* ``on_refusal=fn`` - a :class:`~fintech_resilience.core.hooks.Refusal` for every rejected call,
  the same hook the rate limiter and the bulkhead offer.

A hook that raises is logged and the call goes on. Transitions are also logged (WARNING for
OPEN / FORCED_OPEN, INFO otherwise), counted in telemetry and audited (``breaker.transition``),
once, by the process causing them.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..audit import log as _audit
from ..core import hooks, telemetry
from ..errors import CircuitOpen
from .state import BreakerState, Transition

if TYPE_CHECKING:
    from .circuit import CircuitBreaker

__all__ = ["CallEvent", "CallHook", "CallKind", "Listener", "announce", "called", "refused",
           "report_transition"]

#: A transition listener.
Listener = Callable[[Transition], object]


class CallKind(enum.Enum):
    """How a call through a breaker went, as its verdict counts."""

    SUCCESS = "success"
    FAILURE = "failure"
    IGNORED = "ignored"
    """Neutral (``neutral=`` / ``ignore=`` rules, cancellation): counted for neither side."""
    REJECTED = "rejected"
    """Refused without running: the breaker is open (``exception`` is the ``CircuitOpen``)."""

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class CallEvent:
    """What ``on_call`` hooks receive after every call through a breaker."""

    name: str
    """The breaker's name."""
    kind: CallKind
    duration: float
    """Seconds the call ran (0 for a rejected call)."""
    slow: bool
    """The call took at least ``slow_call_duration`` seconds."""
    exception: BaseException | None = None
    """What the call raised; for a rejected call, the :class:`~fintech_resilience.CircuitOpen`."""
    result: Any = None
    """What the call returned (None for ``with breaker:`` blocks)."""


class CallHook(Protocol):
    """An ``on_call`` hook."""

    def __call__(self, event: CallEvent, /) -> object: ...


def report_transition(transition: Transition) -> None:
    """One log line, and (with an SDK installed) one metric point and one span event."""
    level = (logging.WARNING if transition.state in (BreakerState.OPEN, BreakerState.FORCED_OPEN)
             else logging.INFO)
    if transition.state is BreakerState.OPEN:  # only OPEN ends by itself, after the break
        telemetry.logger.log(level, "circuit breaker %r: %s -> %s (retry_after=%.3fs)",
                             transition.name, transition.previous.name, transition.state.name,
                             transition.retry_after)
    else:
        telemetry.logger.log(level, "circuit breaker %r: %s -> %s", transition.name,
                             transition.previous.name, transition.state.name)
    if telemetry.active():
        telemetry.emit_transition(transition.name, transition.state.name,
                                  transition.previous.name)


def _owner(breaker: CircuitBreaker) -> str:
    return f"circuit breaker {breaker.name!r}"


def announce(breaker: CircuitBreaker, transition: Transition) -> None:
    """A transition this process saw: reported and audited where it was caused, then given to
    every listener."""
    if transition.caused_here:
        report_transition(transition)
        log = breaker._audit_log()
        if log is not None:  # in an event loop: written by a task on it (arecord)
            _audit.emit_soon(log, log.build(
                _audit.EventType.BREAKER_TRANSITION, resource=f"breaker:{breaker.name}",
                details={"from": transition.previous.name, "to": transition.state.name}))
    for listener in breaker.listeners:
        hooks.notify(listener, transition, _owner(breaker), "listener")


def called(breaker: CircuitBreaker, kind: CallKind, duration: float, slow: bool,
           exception: BaseException | None, result: Any) -> None:
    """A call went through: its event to ``on_call`` (set)."""
    assert breaker.on_call is not None
    hooks.notify(breaker.on_call, CallEvent(breaker.name, kind, duration, slow, exception,
                                            result), _owner(breaker), "on_call")


def refused(breaker: CircuitBreaker, error: CircuitOpen) -> CircuitOpen:
    """A rejection, as the hooks see it (if any are set); returns ``error`` to raise."""
    if breaker.on_refusal is not None:
        hooks.notify(breaker.on_refusal, hooks.Refusal(
            telemetry.Pattern.BREAKER, breaker.name, error, error.retry_after), _owner(breaker),
            "on_refusal")
    if breaker.on_call is not None:
        called(breaker, CallKind.REJECTED, 0.0, False, error, None)
    return error
