"""Clocks. Every time-dependent decision takes a :class:`Clock`, so tests can drive time."""

from __future__ import annotations

import threading
import time
from typing import Protocol, runtime_checkable

__all__ = ["SYSTEM_CLOCK", "Clock", "ManualClock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """Where a pattern reads time: wall time for shared state, monotonic time for durations."""

    def time(self) -> float:
        """Seconds since the epoch (shared across hosts; Redis uses its own TIME instead)."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin, never going backwards (durations, timeouts)."""
        ...

    def sleep(self, seconds: float) -> None:
        """Block for ``seconds``."""
        ...

    async def asleep(self, seconds: float) -> None:
        """Wait ``seconds`` without blocking the event loop."""
        ...


class SystemClock:
    """The real clock."""

    __slots__ = ()

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        import asyncio

        await asyncio.sleep(max(seconds, 0.0))

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK = SystemClock()


class ManualClock:
    """A clock that moves only when told to; ``sleep`` advances it instead of waiting.

    When a pattern is given a ManualClock, it also passes that time to the backend, so Redis
    decisions follow the manual clock instead of the server's ``TIME``.

    >>> clock = ManualClock(1_000.0)
    >>> clock.advance(1.5)
    >>> clock.time()
    1001.5
    """

    __slots__ = ("_lock", "_now")

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()

    def time(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` (must not be negative)."""
        if seconds < 0:
            from ..errors import ConfigurationError

            raise ConfigurationError("ManualClock cannot go backwards; pass seconds >= 0")
        with self._lock:
            self._now += seconds

    def set(self, now: float) -> None:
        """Jump to an absolute time (seconds since the epoch)."""
        with self._lock:
            self._now = float(now)

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.advance(seconds)

    async def asleep(self, seconds: float) -> None:
        if seconds > 0:
            self.advance(seconds)

    def __repr__(self) -> str:
        return f"ManualClock({self._now!r})"
