"""Holding a claim while its handler runs: the lease is renewed every ``lease / 3`` seconds, by
one background thread per store for sync handlers and by timer callbacks on the running event
loop for async ones."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import TYPE_CHECKING

from ..errors import BackendUnavailable
from .context import _CURRENT, Claim, IdempotencyContext

if TYPE_CHECKING:
    from .store import IdempotencyStore

__all__ = ["Holding", "LoopRenewer", "ThreadRenewer"]


class ThreadRenewer:
    """One daemon thread per store renews every running sync claim each ``lease / 3`` seconds
    (real time); it exits after a few idle seconds and restarts on demand."""

    _IDLE_EXIT = 5.0

    def __init__(self, store: IdempotencyStore) -> None:
        self.store = store
        self.interval = store.lease / 3
        self._due: dict[int, tuple[Claim, float]] = {}
        self._cond = threading.Condition()
        self._running = False

    def add(self, claim: Claim) -> None:
        with self._cond:
            self._due[id(claim)] = (claim, time.monotonic() + self.interval)
            self._cond.notify()
            if not self._running:
                self._running = True
                threading.Thread(target=self._loop, name="fr-idempotency-renewer",
                                 daemon=True).start()

    def remove(self, claim: Claim) -> None:
        with self._cond:
            self._due.pop(id(claim), None)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    now = time.monotonic()
                    if not self._due:
                        if not self._cond.wait(self._IDLE_EXIT) and not self._due:
                            self._running = False
                            return
                        continue
                    next_at = min(at for _, at in self._due.values())
                    if next_at <= now:
                        break
                    self._cond.wait(next_at - now)
                due = [c for c, at in self._due.values() if at <= now]
                for claim in due:
                    self._due[id(claim)] = (claim, now + self.interval)
            for claim in due:
                try:
                    ok = self.store.renew(claim)
                except BackendUnavailable:
                    continue  # the next tick tries again; the lease may still be alive
                if not ok:
                    self.remove(claim)


class Holding:
    """The context of :meth:`IdempotencyStore.holding`, for ``with`` and ``async with``."""

    __slots__ = ("claim", "lease", "store", "token")

    def __init__(self, store: IdempotencyStore, claim: Claim) -> None:
        self.store = store
        self.claim = claim
        self.lease: ThreadRenewer | LoopRenewer | None = None

    def _enter(self) -> IdempotencyContext:
        ctx = self.store._context(self.claim)
        self.token = _CURRENT.set(ctx)
        return ctx

    def _renews(self) -> bool:
        return self.store.renew_leases and not self.claim.fallback

    def __enter__(self) -> IdempotencyContext:
        if self._renews():
            self.lease = self.store._thread_renewer()
            self.lease.add(self.claim)
        return self._enter()

    async def __aenter__(self) -> IdempotencyContext:
        if self._renews():
            self.lease = self.store._loop_renewer()
            self.lease.add(self.claim)
        return self._enter()

    def __exit__(self, *exc_info: object) -> None:
        if self.lease is not None:
            self.lease.remove(self.claim)
        _CURRENT.reset(self.token)

    async def __aexit__(self, *exc_info: object) -> None:
        self.__exit__()


class LoopRenewer:
    """One per store and event loop: renews every running async claim of the store each
    ``lease / 3`` seconds, with one timer armed while claims run (so a fast handler costs two
    dict operations, no timer of its own). Renewals of one tick run concurrently in one task.
    It keeps no reference to its loop (the store finds it by a weak one), so a finished loop
    can be collected."""

    __slots__ = ("armed", "due", "interval", "store", "tasks")

    def __init__(self, store: IdempotencyStore) -> None:
        self.store = store
        self.interval = store.lease / 3
        self.due: dict[int, tuple[Claim, float]] = {}
        self.armed = False  # a _tick is scheduled (its handle is not kept: it refers to the loop)
        self.tasks: set[asyncio.Task[None]] = set()

    def add(self, claim: Claim) -> None:
        loop = asyncio.get_running_loop()
        self.due[id(claim)] = (claim, loop.time() + self.interval)
        if not self.armed:
            self.armed = True
            loop.call_later(self.interval, self._tick)

    def remove(self, claim: Claim) -> None:
        self.due.pop(id(claim), None)

    def _tick(self) -> None:
        self.armed = False
        if not self.due:
            return  # nothing runs: the next add() arms the timer again
        loop = asyncio.get_running_loop()
        now = loop.time()
        due = [claim for claim, at in self.due.values() if at <= now]
        for claim in due:
            self.due[id(claim)] = (claim, now + self.interval)
        if due:
            task = loop.create_task(self._renew(due))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        self.armed = True
        loop.call_at(min(at for _, at in self.due.values()), self._tick)

    async def _renew(self, claims: list[Claim]) -> None:
        await asyncio.gather(*(self._renew_one(claim) for claim in claims))

    async def _renew_one(self, claim: Claim) -> None:
        if id(claim) not in self.due:
            return  # finished meanwhile: its record is completed or released
        try:
            ok = await self.store.arenew(claim)
        except BackendUnavailable:
            return  # the next tick tries again; the lease may still be alive
        if not ok:
            self.remove(claim)
