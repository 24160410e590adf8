"""Test mode's state: set through :mod:`fintech_resilience.testing`, read by the retry loop.

Process-wide (:func:`set_test_mode`) or for a block in one thread (:func:`mode_block`, which
wins while it runs). In test mode retry waits are zero and, when ``attempts`` is set, each retried
call makes that many attempts (``cap=True``: at most that many).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import ConfigurationError

__all__ = ["TestMode", "attempts_under_test", "current", "is_test_mode", "mode_block",
           "set_test_mode"]


@dataclass(frozen=True, slots=True)
class TestMode:
    """What test mode changes: waits off (``on``) and the attempts of every retried call."""

    __test__ = False  # not a pytest test class

    on: bool = False
    #: attempts each retried call makes in test mode (None: as configured)
    attempts: int | None = None
    #: True: ``attempts`` caps the configured attempts instead of replacing them
    cap: bool = False


_OFF = TestMode()
_global: list[TestMode] = [_OFF]
_local = threading.local()


def _mode(on: bool, attempts: int | None, cap: bool) -> TestMode:
    if attempts is not None and (isinstance(attempts, bool) or not isinstance(attempts, int)
                                 or attempts < 1):
        raise ConfigurationError(f"attempts must be an int >= 1 or None; got {attempts!r}")
    return TestMode(bool(on), attempts, bool(cap)) if on else _OFF


def current() -> TestMode:
    """The test mode in force here: this thread's :func:`mode_block`, else the process's."""
    mode: TestMode | None = getattr(_local, "mode", None)
    return mode if mode is not None else _global[0]


def set_test_mode(on: bool = True, *, attempts: int | None = None, cap: bool = False) -> None:
    """Turn test mode on or off for the whole process (see :mod:`fintech_resilience.testing`)."""
    _global[0] = _mode(on, attempts, cap)


def is_test_mode() -> bool:
    """True while test mode is on (process-wide or inside :func:`mode_block` in this thread)."""
    return current().on


@contextlib.contextmanager
def mode_block(on: bool = True, *, attempts: int | None = None,
               cap: bool = False) -> Iterator[None]:
    """Test mode for the block (this thread), then the previous setting again
    (``fintech_resilience.testing.test_mode``)."""
    previous = getattr(_local, "mode", None)
    _local.mode = _mode(on, attempts, cap)
    try:
        yield
    finally:
        _local.mode = previous


mode_block.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def attempts_under_test(configured: int) -> int:
    """The attempts a retried call configured with ``configured`` makes now."""
    mode = current()
    if not mode.on or mode.attempts is None:
        return configured
    return min(configured, mode.attempts) if mode.cap else mode.attempts
