"""Timeouts: cancellation for async code, a deadline the call can read for sync code.

**Async** (``async def`` functions, ``async with``): the call is cancelled when the limit passes
(``asyncio.timeout``) and :class:`~fintech_resilience.Timeout` is raised in its place.

**Sync**: Python cannot safely interrupt a running thread, and abandoning a worker thread that
is still talking to a PSP would leave a charge running behind the caller's back. So a sync call
runs to its end in the caller's thread; if it *returned* after the limit, its late result is
discarded and :class:`~fintech_resilience.Timeout` is raised (an exception it raised is passed on
unchanged). To actually bound a sync call, give the limit to the I/O underneath:
:func:`time_remaining` returns the seconds left (the tighter of this timeout and a retry
deadline), which the HTTP edges use as their socket timeout.

Either way a :class:`~fintech_resilience.Timeout` means *unknown outcome*: the request may have
reached the server, so :func:`~fintech_resilience.retry` retries it only for idempotent
operations or under the same idempotency key.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, ParamSpec, TypeVar, cast

from ..core import telemetry
from ..core.clock import SYSTEM_CLOCK, Clock
from ..core.decorate import inside
from ..errors import ConfigurationError, Timeout
from ..retries.core import current_attempt

__all__ = ["TimeLimit", "time_remaining", "timeout"]

P = ParamSpec("P")
R = TypeVar("R")

_ACTIVE: contextvars.ContextVar[tuple[object, ...]] = contextvars.ContextVar(
    "fintech_resilience.timeouts", default=())
_DEADLINE: contextvars.ContextVar[tuple[float, Clock] | None] = contextvars.ContextVar(
    "fintech_resilience.deadline", default=None)


def time_remaining() -> float | None:
    """Seconds left before the innermost timeout or retry deadline (never negative), or None."""
    left: float | None = None
    limit = _DEADLINE.get()
    if limit is not None:
        left = max(0.0, limit[0] - limit[1].monotonic())
    attempt = current_attempt()
    retry_left = attempt.remaining() if attempt is not None else None
    if retry_left is not None and (left is None or retry_left < left):
        left = retry_left
    return left


class TimeLimit:
    """A time limit of ``seconds``: a decorator, ``with`` (sync) and ``async with`` (async).

    Build it with :func:`timeout`.
    """

    __slots__ = ("clock", "name", "seconds")

    def __init__(self, seconds: float, *, name: str = "call", clock: Clock | None = None) -> None:
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not (
                0 < seconds < float("inf")):
            raise ConfigurationError(
                f"timeout must be a positive, finite number of seconds; got {seconds!r}")
        self.seconds = float(seconds)
        self.name = name
        self.clock: Clock = clock or SYSTEM_CLOCK

    def _expired(self, seconds: float) -> Timeout:
        if telemetry.active():
            telemetry.emit_decision(telemetry.Pattern.TIMEOUT, self.name,
                                    telemetry.Decision.EXPIRED)
        return Timeout(f"{self.name}: no answer within {seconds:.3f}s")

    @contextlib.contextmanager
    def limit(self, seconds: float | None = None) -> Iterator[None]:
        """Sync: run the block; raise :class:`Timeout` afterwards if it overran ``seconds``."""
        seconds = self.seconds if seconds is None else seconds
        start = self.clock.monotonic()
        token = _DEADLINE.set((start + seconds, self.clock))
        try:
            yield
        finally:
            _DEADLINE.reset(token)
        if self.clock.monotonic() - start > seconds:
            raise self._expired(seconds)

    @contextlib.asynccontextmanager
    async def alimit(self, seconds: float | None = None) -> AsyncIterator[None]:
        """Async: cancel the block after ``seconds`` and raise :class:`Timeout` instead."""
        seconds = self.seconds if seconds is None else seconds
        token = _DEADLINE.set((self.clock.monotonic() + seconds, self.clock))
        scope = asyncio.timeout(seconds)
        try:
            async with scope:
                yield
        except TimeoutError:
            if scope.expired():  # ours: asyncio turned the cancellation into TimeoutError
                raise self._expired(seconds) from None
            raise
        finally:
            _DEADLINE.reset(token)

    def __enter__(self) -> TimeLimit:
        cm = self.limit()
        cm.__enter__()
        _ACTIVE.set((*_ACTIVE.get(), cm))
        return self

    def __exit__(self, *exc: Any) -> bool | None:
        stack = _ACTIVE.get()
        _ACTIVE.set(stack[:-1])
        return cast(contextlib.AbstractContextManager[None], stack[-1]).__exit__(*exc)

    async def __aenter__(self) -> TimeLimit:
        cm = self.alimit()
        await cm.__aenter__()
        _ACTIVE.set((*_ACTIVE.get(), cm))
        return self

    async def __aexit__(self, *exc: Any) -> bool | None:
        stack = _ACTIVE.get()
        _ACTIVE.set(stack[:-1])
        return await cast(contextlib.AbstractAsyncContextManager[None], stack[-1]).__aexit__(*exc)

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        """Decorate a function (overrun reported afterwards) or a coroutine function
        (cancelled)."""
        return inside(fn, self.limit, self.alimit)

    def __repr__(self) -> str:
        return f"timeout({self.seconds!r})"


def timeout(seconds: float, *, name: str = "call", clock: Clock | None = None) -> TimeLimit:
    """A time limit of ``seconds`` for a call: ``@fr.timeout(2.0)`` on sync or async functions.

    Async calls are cancelled at the limit; sync calls are checked when they return (see the
    module docstring). Raises :class:`~fintech_resilience.Timeout` (a ``TimeoutError``).
    """
    return TimeLimit(seconds, name=name, clock=clock)
