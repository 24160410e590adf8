"""Per event loop: the backend's lanes, and releasing them when the loop closes.

asyncio tells nobody that a loop closes: ``asyncio.run`` cancels the loop's tasks first, but a
loop driven by ``run_until_complete`` and ``close()`` just stops, and whatever was opened for it
would stay open - and keep the loop alive. :func:`when_closed` therefore wraps the loop's own
``close`` (on the loop object; the class is untouched): the callbacks run on the loop, which can
still run, and then the loop closes as it would have. ``asyncio.run``, ``asyncio.Runner`` and
pytest-asyncio close their loops with ``close()`` too, so this one path serves all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from ._lane import Lane

__all__ = ["LoopState", "when_closed"]

logger = logging.getLogger("fintech_resilience")

Callback = Callable[[asyncio.AbstractEventLoop], Awaitable[None]]
_CALLBACKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[Callback]] = (
    weakref.WeakKeyDictionary())


class LoopState:
    """What a backend holds for one event loop."""

    __slots__ = ("client", "lanes", "opening", "refused_until")

    def __init__(self) -> None:
        self.lanes: dict[str, Lane] = {}  # by node address
        self.opening: dict[str, asyncio.Future[Lane]] = {}
        self.refused_until: dict[str, float] = {}
        self.client: Any = None  # redis-py's asyncio client, made on demand (async_client())

    def close_lanes(self) -> None:
        for lane in self.lanes.values():
            lane.close()
        self.lanes.clear()


def when_closed(loop: asyncio.AbstractEventLoop, callback: Callback) -> bool:
    """Run ``await callback(loop)`` when ``loop.close()`` is called, before it closes. False
    when the loop's ``close`` cannot be wrapped (the callback then never runs)."""
    callbacks = _CALLBACKS.get(loop)
    if callbacks is None:
        try:
            # the wrapper holds the loop weakly: no reference cycle through the loop's __dict__
            loop.close = _Closer(weakref.ref(loop))  # type: ignore[method-assign]
        except (AttributeError, TypeError):
            return False
        callbacks = _CALLBACKS[loop] = []
    callbacks.append(callback)
    return True


class _Closer:
    __slots__ = ("loop",)

    def __init__(self, loop: weakref.ref[asyncio.AbstractEventLoop]) -> None:
        self.loop = loop

    def __call__(self) -> None:
        loop = self.loop()
        if loop is None:  # pragma: no cover - a caller holds the loop while calling close()
            return
        if loop.is_running() or loop.is_closed():
            type(loop).close(loop)  # raises ("cannot close a running event loop") or nothing
            return
        del loop.close  # from now on, the class's own
        callbacks = _CALLBACKS.pop(loop, [])
        try:
            loop.run_until_complete(_run_all(loop, callbacks))
        finally:
            loop.close()


async def _run_all(loop: asyncio.AbstractEventLoop, callbacks: list[Callback]) -> None:
    for callback in callbacks:
        try:
            await callback(loop)
        except Exception as exc:  # the loop closes regardless
            logger.debug("releasing a closed event loop's Redis connections: %r", exc)
    # aborted transports close their sockets on the loop's next iterations
    for _ in range(2):
        await asyncio.sleep(0)


async def suppress_errors(awaitable: Awaitable[Any]) -> None:
    """Await ``awaitable``, ignoring its errors (closing what may already be broken)."""
    with contextlib.suppress(Exception):
        await awaitable
