"""Backoff waits for :func:`~fintech_resilience.retry`: how long to wait before retry number *n*.

Every strategy is a tenacity wait strategy (a :class:`tenacity.wait.wait_base`), so it composes
with tenacity's own waits and with plain callables the way tenacity's do::

    fr.full_jitter(initial=0.1, maximum=5) + tenacity.wait_fixed(0.05)

A strategy is called with tenacity's ``RetryCallState``; ``attempt_number`` is the number of the
attempt that just failed (1 before the first retry). All values are seconds (floats) and every
strategy stays within ``[0, maximum]``.

* :func:`exponential` - ``min(maximum, initial * multiplier ** (n - 1))``, no randomness.
* :func:`full_jitter` - uniform in ``[0, exponential(n)]`` (AWS "full jitter"; the default).
* :func:`equal_jitter` - half of ``exponential(n)`` plus a uniform draw in the other half.
* :func:`decorrelated_jitter` - uniform in ``[initial, previous_wait * multiplier]``, capped.
* :func:`constant` - the same wait every time.

Pass ``rng=random.Random(seed)`` to make the jitter reproducible in tests.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Final

from tenacity.wait import wait_base

from ..errors import ConfigurationError

if TYPE_CHECKING:
    from tenacity import RetryCallState

__all__ = [
    "Backoff",
    "constant",
    "decorrelated_jitter",
    "equal_jitter",
    "exponential",
    "full_jitter",
]

#: Exponents above this cannot change a capped wait (2**64 dwarfs any maximum) and would
#: overflow floats.
_MAX_EXPONENT: Final = 64


def _seconds(value: object, what: str, *, allow_zero: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise ConfigurationError(f"{what} must be a number of seconds; got {value!r}")
    if value < 0 or (not allow_zero and value == 0) or value == float("inf"):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigurationError(
            f"{what} must be a finite number of seconds {bound}; got {value!r}")
    return float(value)


class Backoff(wait_base):
    """Base of the exponential family: validated ``initial``, ``maximum`` and ``multiplier``."""

    __slots__ = ("_random", "initial", "maximum", "multiplier")

    def __init__(self, initial: float = 0.1, maximum: float = 10.0, multiplier: float = 2.0,
                 *, rng: random.Random | None = None) -> None:
        self.initial = _seconds(initial, "initial")
        self.maximum = _seconds(maximum, "maximum")
        if self.maximum < self.initial:
            raise ConfigurationError(
                f"maximum ({maximum!r}) must be >= initial ({initial!r}): write e.g."
                f" initial=0.1, maximum=5"
            )
        if isinstance(multiplier, bool) or not isinstance(multiplier, int | float) or not (
            1 <= multiplier < float("inf")
        ):
            raise ConfigurationError(
                f"multiplier must be a number >= 1 (2 doubles each wait); got {multiplier!r}"
            )
        self.multiplier = float(multiplier)
        self._random = rng.random if rng is not None else random.random

    def ceiling(self, attempt: int) -> float:
        """The un-jittered wait after failed attempt ``attempt`` (1-based), capped."""
        exponent = min(max(attempt, 1) - 1, _MAX_EXPONENT)
        return min(self.maximum, self.initial * self.multiplier**exponent)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(initial={self.initial!r}, maximum={self.maximum!r},"
                f" multiplier={self.multiplier!r})")


# Lower-case class names on purpose: they read like tenacity's ``wait_exponential`` & co.
class exponential(Backoff):
    """Wait ``min(maximum, initial * multiplier ** (n - 1))`` seconds before retry *n*."""

    def __call__(self, retry_state: RetryCallState) -> float:
        return self.ceiling(retry_state.attempt_number)


class full_jitter(Backoff):
    """Wait a uniform random time in ``[0, exponential(n)]`` (mean: half the ceiling).

    Spreads retries of many clients evenly, so they do not hit a recovering dependency in waves.
    """

    def __call__(self, retry_state: RetryCallState) -> float:
        return self.ceiling(retry_state.attempt_number) * self._random()


class equal_jitter(Backoff):
    """Wait ``exponential(n) / 2`` plus a uniform random time in ``[0, exponential(n) / 2]``."""

    def __call__(self, retry_state: RetryCallState) -> float:
        half = self.ceiling(retry_state.attempt_number) / 2
        return half + half * self._random()


class decorrelated_jitter(Backoff):
    """Wait uniform in ``[initial, previous_wait * multiplier]``, capped at ``maximum``.

    The previous wait is read from the retry state (``upcoming_sleep``), so one strategy object
    is safe to share between threads and tasks. The multiplier defaults to 3 (as in AWS's
    "decorrelated jitter").
    """

    def __init__(self, initial: float = 0.1, maximum: float = 10.0, multiplier: float = 3.0,
                 *, rng: random.Random | None = None) -> None:
        super().__init__(initial, maximum, multiplier, rng=rng)

    def __call__(self, retry_state: RetryCallState) -> float:
        previous = retry_state.upcoming_sleep if retry_state.attempt_number > 1 else 0.0
        high = max(self.initial, previous * self.multiplier)
        return min(self.maximum, self.initial + (high - self.initial) * self._random())


class constant(wait_base):
    """Wait the same ``seconds`` before every retry."""

    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = _seconds(seconds, "seconds")

    def __call__(self, retry_state: RetryCallState) -> float:
        return self.seconds

    def __repr__(self) -> str:
        return f"constant({self.seconds!r})"
