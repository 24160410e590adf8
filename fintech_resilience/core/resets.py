"""What :func:`fintech_resilience.testing.reset` forgets.

Each module that keeps in-memory state registers the function that forgets it, when the module
is imported; modules never imported have nothing to forget.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["on_reset", "reset_all"]

_lock = threading.Lock()
_forgetters: list[Callable[[], None]] = []


def on_reset(forget: Callable[[], None]) -> Callable[[], None]:
    """Register ``forget`` (once) to run at every :func:`reset_all`; returns it (a decorator)."""
    with _lock:
        if forget not in _forgetters:
            _forgetters.append(forget)
    return forget


def reset_all() -> None:
    """Run every registered forgetter."""
    with _lock:
        forgetters = list(_forgetters)
    for forget in forgetters:
        forget()
