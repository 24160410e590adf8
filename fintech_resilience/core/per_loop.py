"""A value per running event loop, held weakly: a finished loop takes its value with it."""

from __future__ import annotations

import asyncio
import weakref
from typing import Generic, TypeVar

__all__ = ["PerLoop"]

T = TypeVar("T")


class PerLoop(Generic[T]):
    """``loop -> value`` without keeping any loop alive; the loop asked last is answered without
    a dictionary lookup (the common case: one loop per process or thread). Values must not refer
    to their loop (a timer handle, a task, a future), or the loop is never collected."""

    __slots__ = ("_last", "_values")

    def __init__(self) -> None:
        self._values: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T] = (
            weakref.WeakKeyDictionary())
        self._last: tuple[weakref.ref[asyncio.AbstractEventLoop], T] | None = None

    def get(self, loop: asyncio.AbstractEventLoop) -> T | None:
        last = self._last
        if last is not None and last[0]() is loop:
            return last[1]
        value = self._values.get(loop)
        if value is not None:
            self._last = (weakref.ref(loop), value)
        return value

    def set(self, loop: asyncio.AbstractEventLoop, value: T) -> None:
        self._values[loop] = value
        self._last = (weakref.ref(loop), value)

    def pop(self, loop: asyncio.AbstractEventLoop) -> T | None:
        """Forget ``loop``'s value and return it."""
        self._last = None
        return self._values.pop(loop, None)
