"""The circuit breaker: :class:`CircuitBreaker` (``circuit``) over its pure state machine
(``state``); listeners and per-call events (``events``)."""

from .circuit import CircuitBreaker
from .events import CallEvent, CallHook, CallKind, Listener
from .state import BreakerState, CountWindow, TimeWindow, Transition, View

__all__ = ["BreakerState", "CallEvent", "CallHook", "CallKind", "CircuitBreaker", "CountWindow",
           "Listener", "TimeWindow", "Transition", "View"]
