"""The thin sync and async drivers of the retry decision core.

The core (:meth:`Retry._loop <fintech_resilience.retries.core.Retry._loop>`, a generator) yields
actions: ``(number, wait)`` to run attempt ``number``, :data:`WITHDRAW` to ask the retry budget,
or a float to sleep that many seconds. A driver executes the budget and sleep actions itself and
hands out each attempt as an :class:`~fintech_resilience.retries.attempt.AttemptContext`; the
``with attempt:`` block that runs it reports its outcome back to the core.

:class:`Steps` (sync) and :class:`AsyncSteps` differ only in awaiting the budget and the sleeps.
Both serve the decorator (``fr.retry``) and the block form (``fr.retrying``); when the loop ends,
``value`` holds what the call returns.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator, Iterator
from typing import TYPE_CHECKING, Any, Final

from ..core.outcomes import Outcome
from .attempt import AttemptContext, Call

if TYPE_CHECKING:
    from .core import Retry

__all__ = ["WITHDRAW", "AsyncSteps", "Steps"]

#: The action asking the retry budget for a retry (the driver sends back its answer).
WITHDRAW: Final = object()


class _Loop:
    """What both drivers share: the core's generator and the last attempt handed out."""

    __slots__ = ("_attempt", "_call", "_deposit", "_loop", "_retry", "value")

    def __init__(self, retry: Retry, call: Call, first: Outcome | None, deposit: bool) -> None:
        self._retry = retry
        self._call = call
        self._loop: Generator[Any, Any, Any] = retry._loop(call, first)
        self._attempt: AttemptContext | None = None
        self._deposit = deposit
        #: What the call returns, once the loop has ended.
        self.value: Any = None

    def _reply(self) -> Outcome | None:
        """The outcome of the attempt handed out last (a block that never entered its
        ``with attempt:`` and did not raise succeeded, with no result)."""
        attempt, self._attempt = self._attempt, None
        if attempt is None:
            return None
        return attempt.outcome or Outcome(attempt=attempt.number)

    def _hand_out(self, action: tuple[int, float]) -> AttemptContext:
        self._attempt = AttemptContext(self._call, *action)
        return self._attempt


class Steps(_Loop, Iterator[AttemptContext]):
    """Sync driver: iterate, and run each attempt as ``with attempt:``."""

    __slots__ = ()

    def __next__(self) -> AttemptContext:
        retry = self._retry
        if self._deposit:
            self._deposit = False
            if retry.budget is not None:
                retry.budget.deposit()
        reply: Any = self._reply()
        while True:
            try:
                action = self._loop.send(reply)
            except StopIteration as stop:
                self.value = stop.value
                raise StopIteration from None
            if action is WITHDRAW:
                reply = retry.budget.withdraw()  # type: ignore[union-attr]
            elif isinstance(action, float):
                self._call.clock.sleep(action)
                reply = None
            else:
                return self._hand_out(action)


class AsyncSteps(_Loop, AsyncIterator[AttemptContext]):
    """Async driver: ``async for`` it, and run each attempt as ``with attempt:``."""

    __slots__ = ()

    async def __anext__(self) -> AttemptContext:
        retry = self._retry
        if self._deposit:
            self._deposit = False
            if retry.budget is not None:
                await retry.budget.adeposit()
        reply: Any = self._reply()
        while True:
            try:
                action = self._loop.send(reply)
            except StopIteration as stop:
                self.value = stop.value
                raise StopAsyncIteration from None
            if action is WITHDRAW:
                reply = await retry.budget.awithdraw()  # type: ignore[union-attr]
            elif isinstance(action, float):
                await self._call.clock.asleep(action)
                reply = None
            else:
                return self._hand_out(action)
