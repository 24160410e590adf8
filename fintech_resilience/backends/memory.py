"""The in-process backend: the zero-configuration default.

State lives in one dictionary guarded by one lock, so it is safe for threads and for asyncio tasks
(operations never await). The number of keys is bounded: expired keys are swept incrementally, and
when the bound is reached the oldest key is evicted (counted in :attr:`MemoryBackend.evictions`).
Each operation is the Python twin of the Lua script of the same name and returns the same reply.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import ConfigurationError
from .base import Arg, Backend, BoundOp
from .memory_ops import MemoryOp, load_ops

__all__ = ["MemoryBackend", "MemoryStore", "default_backend"]

_SWEEP_BATCH = 8


class MemoryStore:
    """A bounded key-value store with per-key expiry, in microseconds of the caller's clock.

    Not locked itself: :class:`MemoryBackend` holds its lock around each whole operation.
    """

    __slots__ = ("data", "evictions", "max_keys")

    def __init__(self, max_keys: int) -> None:
        self.max_keys = max_keys
        self.evictions = 0
        #: key -> [value, expires_at_us]; every key has an expiry, as in Redis. Operations bound
        #: to one key read it directly; everything else goes through the methods below.
        self.data: OrderedDict[str, list[Any]] = OrderedDict()

    def __len__(self) -> int:
        return len(self.data)

    def get(self, key: str, now: int) -> Any:
        """The live value of ``key`` or None."""
        entry = self.data.get(key)
        if entry is None:
            return None
        if entry[1] <= now:
            del self.data[key]
            return None
        return entry[0]

    def entry(self, key: str, now: int) -> list[Any] | None:
        """The live ``[value, expires_at_us]`` entry of ``key`` (mutable in place) or None."""
        entry = self.data.get(key)
        if entry is not None and entry[1] <= now:
            del self.data[key]
            return None
        return entry

    def set(self, key: str, value: Any, ttl_us: int, now: int) -> None:
        """Store ``value`` under ``key``, expiring ``ttl_us`` microseconds after ``now``."""
        expires = now + max(int(ttl_us), 1)
        entry = self.data.get(key)
        if entry is not None:
            entry[0] = value
            entry[1] = expires
            return
        data = self.data
        if len(data) >= self.max_keys:
            self._make_room(now)
        data[key] = [value, expires]
        self._sweep(now, 1)

    def expire(self, key: str, ttl_us: int, now: int) -> None:
        """Reset the expiry of an existing key."""
        entry = self.data.get(key)
        if entry is not None:
            entry[1] = now + max(int(ttl_us), 1)

    def ttl_us(self, key: str, now: int) -> int:
        """Microseconds until ``key`` expires; -2 if it does not exist (as Redis PTTL)."""
        entry = self.data.get(key)
        if entry is None or entry[1] <= now:
            return -2
        return int(entry[1] - now)

    def delete(self, key: str) -> bool:
        """Remove ``key``; True if it existed."""
        return self.data.pop(key, None) is not None

    def clear(self) -> None:
        self.data.clear()

    def keys(self) -> list[str]:
        return list(self.data)

    def _sweep(self, now: int, batch: int) -> None:
        """Drop expired keys from the oldest end (amortised O(1) per write)."""
        data = self.data
        for _ in range(batch):
            key = next(iter(data), None)
            if key is None:
                return
            if data[key][1] <= now:
                del data[key]
            else:
                # a live key moves to the back, so the sweep reaches expired keys behind it
                data.move_to_end(key)

    def _make_room(self, now: int) -> None:
        self._sweep(now, _SWEEP_BATCH)
        data = self.data
        while len(data) >= self.max_keys:
            data.popitem(last=False)
            self.evictions += 1


class MemoryBackend(Backend):
    """Keeps state in this process: thread-safe, asyncio-safe, bounded, O(1) per decision.

    :param max_keys: at most this many keys are held; expired keys go first, then the oldest.
    :param clock: time source (seconds) used when a pattern does not pass its own time.
    """

    kind = "memory"
    can_fail = False

    def __init__(self, *, max_keys: int = 100_000, clock: Any = None) -> None:
        if isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 1:
            raise ConfigurationError(f"max_keys must be a positive int; got {max_keys!r}")
        self.store = MemoryStore(max_keys)
        #: held around each whole operation (operations bound to this backend take it too)
        self.lock = threading.Lock()
        self._ops: dict[str, MemoryOp] = load_ops()
        #: the clock given, or None for real time (:attr:`now_us` reads it)
        self.clock = clock
        #: the backend's time in microseconds, for operations whose caller passed none
        self.now_us: Callable[[], int] = (
            (lambda: round(clock.time() * 1_000_000)) if clock is not None
            else (lambda: time.time_ns() // 1000)
        )

    def clock_for(self, now_us: Callable[[], int] | None) -> Callable[[], int] | None:
        """The clock an operation bound to this backend reads: ``now_us`` (a caller's clock),
        else the backend's, else None - real time, which the operation reads inline (a call
        less on its hot path)."""
        if now_us is not None:
            return now_us
        return None if self.clock is None else self.now_us

    @property
    def evictions(self) -> int:
        """How many live keys were evicted to stay within ``max_keys``."""
        return self.store.evictions

    def __len__(self) -> int:
        return len(self.store)

    def _op(self, script: str) -> MemoryOp:
        try:
            return self._ops[script]
        except KeyError:
            raise ConfigurationError(f"unknown backend operation {script!r}") from None

    def run(self, script: str, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        op = self._op(script)
        now = args[0] or self.now_us()
        with self.lock:
            return op(self.store, keys, args, now)  # type: ignore[arg-type]  # ARGV[1] is int

    def bind(self, script: str) -> BoundOp:
        """The operation bound to this backend's store, lock and clock (no lookup per call)."""
        op, store, lock, clock = self._op(script), self.store, self.lock, self.clock
        time_ns = time.time_ns

        def run(keys: Sequence[str], args: Sequence[Arg]) -> Any:
            now = args[0] or (time_ns() // 1000 if clock is None
                              else round(clock.time() * 1_000_000))
            with lock:
                return op(store, keys, args, now)  # type: ignore[arg-type]  # ARGV[1] is int

        return run

    async def arun(self, script: str, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        return self.run(script, keys, args)

    def clear(self) -> None:
        """Forget every key (tests, operator reset)."""
        with self.lock:
            self.store.clear()

    def __repr__(self) -> str:
        return f"MemoryBackend(max_keys={self.store.max_keys}, keys={len(self.store)})"


_DEFAULT: MemoryBackend | None = None
_DEFAULT_LOCK = threading.Lock()


def default_backend() -> MemoryBackend:
    """The process-wide :class:`MemoryBackend` that patterns use when given no backend."""
    global _DEFAULT
    if _DEFAULT is None:
        with _DEFAULT_LOCK:
            if _DEFAULT is None:
                _DEFAULT = MemoryBackend()
    return _DEFAULT
