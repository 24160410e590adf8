"""The circuit breaker's pure parts: states, windows, validated settings, and the local gate.

No I/O here. The shared state machine itself runs atomically in the backend
(``backends/lua/breaker_*.lua`` and their memory twins); this module turns settings into script
arguments, replies into a :class:`View`, and decides from the view - without a round trip - whether
a call may run, must ask the backend first, or is rejected locally.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Final, NamedTuple

from ..errors import ConfigurationError

__all__ = ["BreakerState", "CountWindow", "Gate", "Settings", "TimeWindow", "Transition", "View"]

US: Final = 1_000_000


class BreakerState(enum.IntEnum):
    """States of a circuit breaker. The last three are set by operators and hold until reset."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2
    FORCED_OPEN = 3
    DISABLED = 4
    METRICS_ONLY = 5

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class CountWindow:
    """Judge the dependency on its last ``size`` calls (1-10,000)."""

    size: int

    def __post_init__(self) -> None:
        if type(self.size) is not int or not 1 <= self.size <= 10_000:
            raise ConfigurationError(
                "CountWindow(size) takes a whole number of calls from 1 to 10000;"
                f" got {self.size!r}"
            )


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """Judge the dependency on the calls of the last ``seconds`` seconds.

    The window is kept in ``buckets`` buckets (default: one per second, at most 60), so it slides
    by one bucket at a time: with 1-second buckets it covers the current second and the
    ``seconds - 1`` before it.
    """

    seconds: float
    buckets: int | None = None

    def __post_init__(self) -> None:
        if (isinstance(self.seconds, bool) or not isinstance(self.seconds, int | float)
                or not 0 < self.seconds <= 86_400 or math.isnan(self.seconds)):
            raise ConfigurationError(
                "TimeWindow(seconds) takes a duration from 0 to 86400 seconds;"
                f" got {self.seconds!r}"
            )
        if self.buckets is not None and (type(self.buckets) is not int
                                         or not 1 <= self.buckets <= 1000):
            raise ConfigurationError(
                f"TimeWindow(buckets=) takes a whole number from 1 to 1000; got {self.buckets!r}"
            )

    @property
    def slots(self) -> int:
        """Number of buckets."""
        if self.buckets is not None:
            return self.buckets
        return max(1, min(60, math.ceil(self.seconds)))

    @property
    def bucket_us(self) -> int:
        """Width of one bucket in microseconds."""
        return max(1, round(self.seconds * US / self.slots))


Window = CountWindow | TimeWindow


@dataclass(frozen=True, slots=True)
class Transition:
    """A change of a breaker's state, passed to listeners.

    ``caused_here`` is True when this process's call (or operator command) made the transition;
    False when this process only learned of it from a backend reply. Telemetry (span event,
    metric, log line) is emitted only where ``caused_here`` is True, so each transition is
    reported once across all processes.
    """

    name: str
    previous: BreakerState
    state: BreakerState
    caused_here: bool
    retry_after: float


class View(NamedTuple):
    """What this process last learned from the backend about the breaker."""

    state: BreakerState
    gen: int
    #: monotonic time until which a locally known OPEN / FORCED_OPEN is trusted
    until: float
    retry_after: float
    #: monotonic time the break ends (OPEN), as far as this process knows
    ends: float = 0.0
    calls: int = 0
    failures: int = 0
    slow_calls: int = 0


class Gate(enum.Enum):
    """What to do before a call, decided from the :class:`View` alone."""

    RUN = "run"          # go: the breaker is known to let calls through
    ASK = "ask"          # one breaker_acquire round trip decides
    REJECT = "reject"    # known OPEN: reject without a round trip


def gate(view: View | None, now: float, ask_every_call: bool) -> Gate:
    """Decide locally; only OPEN/FORCED_OPEN reject without asking, only until ``view.until``."""
    if view is None:
        return Gate.ASK
    state = view.state
    if state is BreakerState.HALF_OPEN:
        return Gate.ASK
    if state is BreakerState.OPEN or state is BreakerState.FORCED_OPEN:
        return Gate.REJECT if now < view.until else Gate.ASK
    return Gate.ASK if ask_every_call else Gate.RUN


def _seconds(name: str, value: object, *, zero: bool = False) -> float:
    ok = (not isinstance(value, bool) and isinstance(value, int | float)
          and not math.isnan(value) and (value >= 0 if zero else value > 0)
          and value <= 30 * 86_400)
    if not ok:
        bound = ">= 0" if zero else "> 0"
        raise ConfigurationError(f"{name} must be a number of seconds {bound}; got {value!r}")
    return float(value)  # type: ignore[arg-type]


def _rate(name: str, value: object) -> float:
    if (isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value)
            or not 0 < value <= 1):
        raise ConfigurationError(
            f"{name} is a fraction of calls in (0, 1], e.g. 0.5 for 50 %; got {value!r}"
        )
    return float(value)


@dataclass(frozen=True, slots=True)
class Settings:
    """Validated breaker settings, converted once into the record script's arguments."""

    window: Window
    minimum_calls: int
    failure_rate: float
    slow_call_rate: float
    slow_call_duration: float | None
    break_duration: float
    break_duration_multiplier: float
    max_break_duration: float
    half_open_calls: int
    probe_lease: float
    refresh_interval: float

    @classmethod
    def build(cls, *, window: object, minimum_calls: object, failure_rate: object,
              slow_call_rate: object, slow_call_duration: object, break_duration: object,
              break_duration_multiplier: object, max_break_duration: object,
              half_open_calls: object, probe_lease: object, refresh_interval: object) -> Settings:
        """Validate every setting; raise :class:`ConfigurationError` saying what to write."""
        if not isinstance(window, CountWindow | TimeWindow):
            raise ConfigurationError(
                f"window must be CountWindow(100) or TimeWindow(seconds=60); got {window!r}"
            )
        if type(minimum_calls) is not int or minimum_calls < 1:
            raise ConfigurationError(
                f"minimum_calls must be a whole number >= 1; got {minimum_calls!r}"
            )
        if isinstance(window, CountWindow) and minimum_calls > window.size:
            raise ConfigurationError(
                f"minimum_calls ({minimum_calls}) cannot exceed the CountWindow size"
                f" ({window.size}): the breaker could never trip"
            )
        brk = _seconds("break_duration", break_duration)
        mult = break_duration_multiplier
        if isinstance(mult, bool) or not isinstance(mult, int | float) or not 1 <= mult <= 100:
            raise ConfigurationError(
                "break_duration_multiplier must be a number from 1 (no growth) to 100;"
                f" got {mult!r}"
            )
        cap = (max(brk, 300.0) if max_break_duration is None
               else _seconds("max_break_duration", max_break_duration))
        if cap < brk:
            raise ConfigurationError(
                f"max_break_duration ({cap}) must be >= break_duration ({brk})"
            )
        if type(half_open_calls) is not int or not 1 <= half_open_calls <= 1000:
            raise ConfigurationError(
                f"half_open_calls must be a whole number from 1 to 1000; got {half_open_calls!r}"
            )
        slow = (None if slow_call_duration is None
                else _seconds("slow_call_duration", slow_call_duration))
        return cls(window, minimum_calls, _rate("failure_rate", failure_rate),
                   _rate("slow_call_rate", slow_call_rate), slow, brk, float(mult), cap,
                   half_open_calls, _seconds("probe_lease", probe_lease),
                   _seconds("refresh_interval", refresh_interval, zero=True))

    @property
    def ttl_ms(self) -> int:
        """How long idle breaker state is kept: a day, or longer if the settings need it."""
        span = (self.window.seconds if isinstance(self.window, TimeWindow) else 0.0)
        return math.ceil(max(86_400.0, 2 * (span + self.max_break_duration + self.probe_lease))
                         * 1000)

    def record_tail(self) -> tuple[int | float, ...]:
        """ARGV[6:] of ``breaker_record``."""
        w = self.window
        kind, slots, bucket = ((1, w.size, 0) if isinstance(w, CountWindow)
                               else (2, w.slots, w.bucket_us))
        return (kind, slots, bucket, self.minimum_calls, self.failure_rate, self.slow_call_rate,
                round(self.break_duration * US), self.break_duration_multiplier,
                round(self.max_break_duration * US), self.half_open_calls, self.ttl_ms)

    def acquire_tail(self) -> tuple[int, int, int]:
        """ARGV[3:] of ``breaker_acquire``."""
        return (self.half_open_calls, round(self.probe_lease * US), self.ttl_ms)


_STATES: Final = dict(enumerate(BreakerState))


def view_from(reply: list[int], now: float, refresh_interval: float) -> View:
    """Turn a script reply ``{state, gen, retry_after_us, ...}`` into a :class:`View`."""
    state = _STATES[reply[0]]
    retry_after = int(reply[2]) / US
    until = now
    if state is BreakerState.OPEN:
        until = now + min(retry_after, refresh_interval)
    elif state is BreakerState.FORCED_OPEN:
        retry_after = refresh_interval
        until = now + refresh_interval
    return View(state, int(reply[1]), until, retry_after, now + retry_after, int(reply[5]),
                int(reply[6]), int(reply[7]))
