"""Waiting for a permit: ``acquire(key, max_wait=seconds)`` instead of being refused at once.

A refused caller sleeps the decision's ``retry_after`` (plus a random jitter) and asks again,
until it is admitted or the next admission could not come within ``max_wait``: a decision whose
``retry_after`` is longer than the time left (or infinite) is answered at once, without sleeping.
Each attempt is an ordinary decision (one backend round trip). Nothing is reserved while a caller
waits, so a waiter that is cancelled or times out has consumed nothing.

Waiters are not queued: when several wait on one key, each wakes when its decision said a
permit would be free, and all but the first go back to sleep. The jitter (a fraction of each
wait, ``wait_jitter`` of the limiter) spreads their wake-ups so they do not ask at the same
instant; to bound the number of waiters, put a Bulkhead or ConcurrencyLimiter in front.

:class:`Patience` decides (pure: no sleeping, no I/O); :func:`wait` and :func:`await_` are its
sync and async drivers.
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable

from ..core.clock import Clock
from ..errors import ConfigurationError
from .decision import Decision

#: The shortest sleep between two decisions: a refusal that names no wait (an
#: ``on_backend_error="deny"`` limiter with ``deny_retry_after=0``) is not retried in a busy loop.
MIN_PAUSE = 0.001

__all__ = ["MIN_PAUSE", "Patience", "await_", "check_jitter", "check_max_wait", "wait"]


def check_max_wait(max_wait: object) -> float:
    """``max_wait`` in seconds: a finite number >= 0, else ConfigurationError."""
    if isinstance(max_wait, bool) or not isinstance(max_wait, int | float) or not (
            0 <= max_wait < math.inf):
        raise ConfigurationError(
            f"max_wait is the most seconds to wait for a permit (a finite number >= 0);"
            f" got {max_wait!r}"
        )
    return float(max_wait)


def check_jitter(jitter: object) -> float:
    """``wait_jitter``: a fraction between 0 and 1, else ConfigurationError."""
    if isinstance(jitter, bool) or not isinstance(jitter, int | float) or not 0 <= jitter <= 1:
        raise ConfigurationError(
            f"wait_jitter is a fraction of each wait between 0 and 1 (0.1: up to 10 % longer);"
            f" got {jitter!r}"
        )
    return float(jitter)


class Patience:
    """When a refused caller decides again, and when it gives up.

    :param max_wait: seconds the caller may wait in all, from ``start``.
    :param jitter: each sleep is ``retry_after * (1 + jitter * r)``, ``r`` uniform in [0, 1),
        never past the deadline.
    :param start: the clock's ``monotonic()`` when the first decision was taken.
    """

    __slots__ = ("deadline", "jitter", "random")

    def __init__(self, max_wait: float, jitter: float, start: float,
                 rand: Callable[[], float] = random.random) -> None:
        self.deadline = start + max_wait
        self.jitter = jitter
        self.random = rand

    def pause(self, decision: Decision, now: float) -> float | None:
        """Seconds to sleep before deciding again, or None: answer with ``decision``."""
        if decision.allowed:
            return None
        wait = decision.retry_after
        left = self.deadline - now
        if left <= 0 or wait > left:  # cannot be admitted in time (inf: never)
            return None
        return min(max(wait, MIN_PAUSE) * (1 + self.jitter * self.random()), left)


def wait(patience: Patience, decision: Decision, decide: Callable[[], Decision],
         clock: Clock) -> Decision:
    """Sleep and decide again until ``patience`` says to answer (sync driver)."""
    while (pause := patience.pause(decision, clock.monotonic())) is not None:
        clock.sleep(pause)
        decision = decide()
    return decision


async def await_(patience: Patience, decision: Decision,
                 decide: Callable[[], Awaitable[Decision]], clock: Clock) -> Decision:
    """Async twin of :func:`wait` (sleeps with ``clock.asleep``)."""
    while (pause := patience.pause(decision, clock.monotonic())) is not None:
        await clock.asleep(pause)
        decision = await decide()
    return decision
