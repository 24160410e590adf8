"""Helpers for tests: a manual clock and a test mode that turns waits off.

>>> from fintech_resilience.testing import ManualClock, test_mode
>>> clock = ManualClock()
>>> with test_mode():
...     pass  # retries inside this block do not sleep
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from .core.clock import ManualClock

__all__ = ["ManualClock", "is_test_mode", "reset_default_backend", "set_test_mode", "test_mode"]

_state = threading.local()
_global = {"on": False}


def set_test_mode(on: bool = True) -> None:
    """Turn test mode on or off for the whole process: retry waits and backoffs become zero."""
    _global["on"] = bool(on)


def is_test_mode() -> bool:
    """True while test mode is on (process-wide or inside :func:`test_mode` in this thread)."""
    return _global["on"] or getattr(_state, "on", False)


@contextlib.contextmanager
def test_mode(on: bool = True) -> Iterator[None]:  # noqa: PT028 - not a test
    """Turn test mode on for the block (this thread), then restore the previous value."""
    previous = getattr(_state, "on", False)
    _state.on = on
    try:
        yield
    finally:
        _state.on = previous


def reset_default_backend() -> None:
    """Forget all state of the patterns that were given no backend (the process-wide
    :class:`~fintech_resilience.MemoryBackend`): limits, breakers, budgets, slots, audit
    streams and idempotency records. Call it between tests that use the zero-config default."""
    from .backends.memory import default_backend

    default_backend().clear()


test_mode.__test__ = False  # type: ignore[attr-defined]  # not a pytest test
