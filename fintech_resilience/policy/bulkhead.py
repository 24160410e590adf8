"""Bulkheads: at most ``max_concurrent`` calls to a dependency at once, with a bounded wait.

* **Local** (default): one limit per :class:`Bulkhead` object, shared by every thread *and* every
  event loop of the process. Waiters queue in FIFO order; a freed slot is handed straight to the
  oldest waiter (no stampede), whether it is a thread or a task.
* **Distributed** (``limiter=fr.ConcurrencyLimiter(...)`` or ``backend=...``): slots are leases in
  the backend, so the limit holds across every process and host. A waiter polls for a slot until
  ``max_wait`` runs out. A slot whose holder died frees itself when its lease expires; set the
  lease longer than the longest call (e.g. above the policy's timeout).

When no slot is free within ``max_wait`` seconds (0 = do not wait), :class:`BulkheadFull` is
raised.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Final, ParamSpec, TypeVar

from ..backends.resolve import BackendSpec
from ..core import hooks, telemetry
from ..core import storage_keys as _keys
from ..core.clock import SYSTEM_CLOCK, Clock
from ..core.decorate import inside
from ..errors import BulkheadFull, ConfigurationError
from ..ratelimit.concurrency import ConcurrencyLimiter, Slot

__all__ = ["Bulkhead"]

P = ParamSpec("P")
R = TypeVar("R")
#: Longest pause between two polls of a distributed bulkhead (seconds).
POLL_INTERVAL: Final = 0.02


class _Waiter:
    """A thread or a task waiting for a local slot."""

    __slots__ = ("cancelled", "event", "future", "granted", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self.granted = False
        self.cancelled = False
        self.loop = loop
        self.future: asyncio.Future[None] | None = loop.create_future() if loop else None
        self.event = None if loop else threading.Event()

    def wake(self) -> None:
        if self.event is not None:
            self.event.set()
        elif self.loop is not None and self.future is not None:
            future = self.future
            with contextlib.suppress(RuntimeError):  # the waiter's loop is closed: it is gone
                self.loop.call_soon_threadsafe(
                    lambda: None if future.done() else future.set_result(None))


class Bulkhead:
    """Caps concurrent calls to one dependency; a decorator and a (sync/async) context manager.

    :param max_concurrent: calls allowed inside at once.
    :param max_wait: seconds a caller may wait for a slot (default 0: fail at once).
    :param name: shown in errors and telemetry; also the distributed slot key.
    :param limiter: a :class:`~fintech_resilience.ConcurrencyLimiter` to make the bulkhead
        distributed (its ``limit`` must equal ``max_concurrent``), or
    :param backend: a backend (or a URL) to build one on (``lease`` seconds per slot, default
        30).
    :param clock: time source for a distributed bulkhead's waits (tests).
    :param on_refusal: called with a :class:`~fintech_resilience.core.hooks.Refusal` each time
        no slot is free within ``max_wait`` (a hook that raises is logged; the refusal stands).
    """

    def __init__(self, max_concurrent: int, *, max_wait: float = 0.0, name: str = "default",
                 limiter: ConcurrencyLimiter | None = None, backend: BackendSpec = None,
                 lease: float = 30.0, clock: Clock | None = None,
                 on_refusal: hooks.RefusalHook | None = None) -> None:
        if isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int) or (
                max_concurrent < 1):
            raise ConfigurationError(
                f"max_concurrent must be an int >= 1; got {max_concurrent!r}")
        if isinstance(max_wait, bool) or not isinstance(max_wait, int | float) or not (
                0 <= max_wait < float("inf")):
            raise ConfigurationError(
                f"max_wait must be a finite number of seconds >= 0 (0 = do not wait);"
                f" got {max_wait!r}")
        hooks.check(on_refusal, "on_refusal")
        if limiter is not None and backend is not None:
            raise ConfigurationError("pass either limiter= or backend=, not both")
        if limiter is not None and limiter.limit != max_concurrent:
            raise ConfigurationError(
                f"the limiter allows {limiter.limit} calls but max_concurrent is"
                f" {max_concurrent}: make them equal")
        self.max_concurrent = max_concurrent
        self.max_wait = float(max_wait)
        self.name = _keys.validate_name(name)
        self.clock: Clock = clock or SYSTEM_CLOCK
        if backend is not None:
            limiter = ConcurrencyLimiter(max_concurrent, backend=backend, name=self.name,
                                         lease=lease, clock=clock)
        self.limiter = limiter
        self.on_refusal = on_refusal
        self._lock = threading.Lock()
        self._in_use = 0
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._held: contextvars.ContextVar[tuple[Slot | None, ...]] = contextvars.ContextVar(
            f"fr.bulkhead.{self.name}", default=())

    @property
    def in_use(self) -> int:
        """Calls inside a local bulkhead now (distributed: this process's view is not kept)."""
        return self._in_use

    # --- local: decisions under the lock, waits in the drivers -----------------------------

    def _enter(self, loop: asyncio.AbstractEventLoop | None) -> _Waiter | bool:
        """Take a slot (True), refuse (False), or return a queued waiter to wait on."""
        with self._lock:
            if self._in_use < self.max_concurrent and not self._waiters:
                self._in_use += 1
                return True
            if self.max_wait <= 0:
                return False
            waiter = _Waiter(loop)
            self._waiters.append(waiter)
            return waiter

    def _settle(self, waiter: _Waiter) -> bool:
        """After a wait ended: True if the slot was handed over, else leave the queue."""
        with self._lock:
            if waiter.granted:
                return True
            waiter.cancelled = True
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
            return False

    def _leave(self) -> None:
        with self._lock:
            while self._waiters:
                waiter = self._waiters.popleft()
                if not waiter.cancelled:
                    waiter.granted = True  # the slot passes on: in_use stays the same
                    waiter.wake()
                    return
            self._in_use -= 1

    def _full(self) -> BulkheadFull:
        if telemetry.active():
            telemetry.emit_decision(telemetry.Pattern.BULKHEAD, self.name,
                                    telemetry.Decision.DENY)
        error = BulkheadFull(self.name, self.max_concurrent)
        if self.on_refusal is not None:
            hooks.notify(self.on_refusal, hooks.Refusal(
                telemetry.Pattern.BULKHEAD, self.name, error, None), f"bulkhead {self.name!r}",
                "on_refusal")
        return error

    def _acquire_local(self) -> None:
        entered = self._enter(None)
        if entered is True:
            return
        if entered is False:
            raise self._full()
        assert entered.event is not None
        entered.event.wait(self.max_wait)
        if not self._settle(entered):
            raise self._full()

    async def _aacquire_local(self) -> None:
        entered = self._enter(asyncio.get_running_loop())
        if entered is True:
            return
        if entered is False:
            raise self._full()
        assert entered.future is not None
        try:
            await asyncio.wait_for(asyncio.shield(entered.future), self.max_wait)
        except TimeoutError:
            pass
        except BaseException:
            if self._settle(entered):  # cancelled after the slot was handed over: pass it on
                self._leave()
            raise
        if not self._settle(entered):
            raise self._full()

    # --- distributed: poll the ConcurrencyLimiter until max_wait runs out --------------------

    def _next_pause(self, slot: Slot, waited: float) -> float | None:
        """Seconds to pause before polling again, or None when max_wait is used up."""
        left = self.max_wait - waited
        if left <= 0:
            return None
        return min(POLL_INTERVAL, max(slot.retry_after, 0.001), left)

    def _acquire_distributed(self, limiter: ConcurrencyLimiter) -> Slot:
        start = self.clock.monotonic()
        while True:
            slot = limiter.try_acquire(self.name)
            if slot.acquired:
                return slot
            pause = self._next_pause(slot, self.clock.monotonic() - start)
            if pause is None:
                raise self._full()
            self.clock.sleep(pause)

    async def _aacquire_distributed(self, limiter: ConcurrencyLimiter) -> Slot:
        start = self.clock.monotonic()
        while True:
            slot = await limiter.atry_acquire(self.name)
            if slot.acquired:
                return slot
            pause = self._next_pause(slot, self.clock.monotonic() - start)
            if pause is None:
                raise self._full()
            await self.clock.asleep(pause)

    # --- public surface -----------------------------------------------------------------------

    def acquire(self) -> Slot | None:
        """Take a slot, waiting up to ``max_wait``; returns what :meth:`release` needs."""
        if self.limiter is not None:
            return self._acquire_distributed(self.limiter)
        self._acquire_local()
        return None

    async def aacquire(self) -> Slot | None:
        """Async twin of :meth:`acquire`."""
        if self.limiter is not None:
            return await self._aacquire_distributed(self.limiter)
        await self._aacquire_local()
        return None

    def release(self, slot: Slot | None = None) -> None:
        """Give back the slot :meth:`acquire` returned."""
        if slot is not None and self.limiter is not None:
            self.limiter.release(slot)
        elif self.limiter is None:
            self._leave()

    async def arelease(self, slot: Slot | None = None) -> None:
        """Async twin of :meth:`release`."""
        if slot is not None and self.limiter is not None:
            await self.limiter.arelease(slot)
        elif self.limiter is None:
            self._leave()

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Hold a slot for the ``with`` block, or raise :class:`BulkheadFull`."""
        slot = self.acquire()
        try:
            yield
        finally:
            self.release(slot)

    @contextlib.asynccontextmanager
    async def ahold(self) -> AsyncIterator[None]:
        """Async twin of :meth:`hold`."""
        slot = await self.aacquire()
        try:
            yield
        finally:
            await self.arelease(slot)

    def __enter__(self) -> Bulkhead:
        slot = self.acquire()
        self._held.set((*self._held.get(), slot))
        return self

    def __exit__(self, *exc: object) -> None:
        held = self._held.get()
        self._held.set(held[:-1])
        self.release(held[-1])

    async def __aenter__(self) -> Bulkhead:
        slot = await self.aacquire()
        self._held.set((*self._held.get(), slot))
        return self

    async def __aexit__(self, *exc: object) -> None:
        held = self._held.get()
        self._held.set(held[:-1])
        await self.arelease(held[-1])

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        """Decorate a function or coroutine function."""
        return inside(fn, self.hold, self.ahold)

    def __repr__(self) -> str:
        kind = "distributed" if self.limiter is not None else "local"
        return (f"Bulkhead({self.max_concurrent}, max_wait={self.max_wait}, name={self.name!r},"
                f" {kind})")
