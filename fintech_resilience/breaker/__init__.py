"""The circuit breaker: :class:`CircuitBreaker` (``circuit``) over its pure state machine
(``state``)."""

from .circuit import CircuitBreaker, Listener
from .state import BreakerState, CountWindow, TimeWindow, Transition, View

__all__ = ["BreakerState", "CircuitBreaker", "CountWindow", "Listener", "TimeWindow",
           "Transition", "View"]
