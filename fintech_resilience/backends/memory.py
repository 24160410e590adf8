"""The in-process backend: the zero-configuration default.

State lives in two dictionaries guarded by one lock, so it is safe for threads and for asyncio
tasks (operations never await). Both are bounded and swept of expired keys incrementally.
Idempotency records live in their own (``max_records``): none is ever evicted, and when it is
full of live records a new claim is refused with :class:`~fintech_resilience.BackendFull`.
Everything else (limits, breakers, budgets, slots, audit streams) shares the other
(``max_keys``), where the oldest key is evicted when the bound is reached (counted in
:attr:`MemoryBackend.evictions`). Each operation is the Python twin of the Lua script of the same
name and returns the same reply.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from ..core import telemetry
from ..core.resets import on_reset
from ..errors import BackendFull, ConfigurationError
from .base import Arg, Backend, BoundOp
from .memory_ops import MemoryOp, binders, load_ops

__all__ = ["MemoryBackend", "MemoryStore", "default_backend"]

_SWEEP_BATCH = 8
#: expired keys looked for before a store that never evicts refuses a new one
_REFUSE_SWEEP = 64
#: operations whose keys live in MemoryBackend.records
_RECORD_OPS = "idempotency_"


class MemoryStore:
    """A bounded key-value store with per-key expiry, in microseconds of the caller's clock.

    Full, it evicts its oldest key for a new one - or, given ``refuse`` (what it holds, for the
    message), keeps every live key and raises :class:`~fintech_resilience.BackendFull`.
    Not locked itself: :class:`MemoryBackend` holds its lock around each whole operation.
    """

    __slots__ = ("data", "evictions", "full", "max_keys", "refusals", "refuse")

    def __init__(self, max_keys: int, *, refuse: str | None = None) -> None:
        self.max_keys = max_keys
        self.evictions = 0
        self.refuse = refuse
        self.refusals = 0
        #: refusing since the last new key went in (logged once per such episode)
        self.full = False
        #: key -> [value, expires_at_us]; every key has an expiry, as in Redis (a breaker
        #: override's is centuries away). Operations bound to one key read it directly;
        #: everything else goes through the methods below.
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
        if self.full:
            self.full = False
            telemetry.logger.warning("memory backend: room for new %s again", self.refuse)

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
        if self.refuse is not None:
            if len(data) >= self.max_keys:
                self._sweep(now, _REFUSE_SWEEP)
            if len(data) >= self.max_keys:
                self._refuse()
            return
        while len(data) >= self.max_keys:
            data.popitem(last=False)
            self.evictions += 1

    def _refuse(self) -> None:
        self.refusals += 1
        message = (f"memory backend full: {self.max_keys} {self.refuse} are live, the most it"
                   " holds; new ones are refused until some expire (none is ever evicted) -"
                   " raise MemoryBackend(max_records=...), lower the store's ttl, or use a"
                   " RedisBackend")
        if not self.full:
            self.full = True
            telemetry.logger.error("%s", message)
        raise BackendFull(message)


class MemoryBackend(Backend):
    """Keeps state in this process: thread-safe, asyncio-safe, bounded, O(1) per decision.

    :param max_keys: at most this many keys of rate limits, breakers, budgets, concurrency slots
        and audit streams are held; expired keys go first, then the oldest.
    :param max_records: at most this many idempotency records are held, apart from those keys:
        no record is ever evicted to make room; when this many are live, a new claim raises
        :class:`~fintech_resilience.BackendFull` (logged once until there is room again) and
        the store's ``on_backend_error`` applies (default ``"deny"``: HTTP 503).
    :param clock: time source (seconds) used when a pattern does not pass its own time.
    """

    kind = "memory"
    can_fail = False
    shared = False

    def __init__(self, *, max_keys: int = 100_000, max_records: int = 100_000,
                 clock: Any = None) -> None:
        for what, value in (("max_keys", max_keys), ("max_records", max_records)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{what} must be a positive int; got {value!r}")
        self.store = MemoryStore(max_keys)
        #: idempotency records, never evicted for other keys (see ``max_records``)
        self.records = MemoryStore(max_records, refuse="idempotency records")
        #: held around each whole operation (operations bound to this backend take it too)
        self.lock = threading.Lock()
        self._ops: dict[str, tuple[MemoryOp, MemoryStore]] = {
            name: (op, self.records if name.startswith(_RECORD_OPS) else self.store)
            for name, op in load_ops().items()}
        #: the clock given, or None for real time (:attr:`now_us` reads it)
        self.clock = clock
        #: the backend's time in microseconds, for operations whose caller passed none
        self.now_us: Callable[[], int] = (
            (lambda: round(clock.time() * 1_000_000)) if clock is not None
            else (lambda: time.time_ns() // 1000)
        )
        _LIVE.add(self)

    def breaker_success_counter(self, key: str, window_size: int, ttl_ms: int,
                                now_us: Callable[[], int] | None
                                ) -> Callable[[int], bool] | None:
        from .memory_ops.breaker import closed_success_bound

        return closed_success_bound(self, key, window_size, ttl_ms, now_us)

    def clock_for(self, now_us: Callable[[], int] | None) -> Callable[[], int] | None:
        """The clock an operation bound to this backend reads: ``now_us`` (a caller's clock),
        else the backend's, else None - real time, which the operation reads inline (a call
        less on its hot path)."""
        if now_us is not None:
            return now_us
        return None if self.clock is None else self.now_us

    @property
    def evictions(self) -> int:
        """How many live keys were evicted to stay within ``max_keys`` (never a record)."""
        return self.store.evictions

    @property
    def refusals(self) -> int:
        """How many new idempotency records were refused because ``max_records`` were live."""
        return self.records.refusals

    def __len__(self) -> int:
        return len(self.store) + len(self.records)

    def _op(self, script: str) -> tuple[MemoryOp, MemoryStore]:
        """The operation of ``script`` and the store its keys live in."""
        try:
            return self._ops[script]
        except KeyError:
            raise ConfigurationError(f"unknown backend operation {script!r}") from None

    def run(self, script: str, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        op, store = self._op(script)
        now = args[0] or self.now_us()
        with self.lock:
            return op(store, keys, args, now)  # type: ignore[arg-type]  # ARGV[1] is int

    def bind(self, script: str) -> BoundOp:
        """The operation bound to this backend's store, lock and clock (no lookup per call);
        an operation with a binder (``memory_ops.memory_binder``) prepares itself."""
        (op, store), lock, clock = self._op(script), self.lock, self.clock
        binder = binders().get(script)
        if binder is not None:
            return binder(store, lock, None if clock is None else self.now_us)
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
        """Forget every key and every record (tests, operator reset)."""
        with self.lock:
            self.store.clear()
            self.records.clear()
            self.records.full = False

    def __repr__(self) -> str:
        return (f"MemoryBackend(max_keys={self.store.max_keys}, keys={len(self.store)},"
                f" max_records={self.records.max_keys}, records={len(self.records)})")


_DEFAULT: MemoryBackend | None = None
_DEFAULT_LOCK = threading.Lock()
#: every memory backend alive in the process: fintech_resilience.testing.reset() clears them all
_LIVE: weakref.WeakSet[MemoryBackend] = weakref.WeakSet()


@on_reset
def _clear_all() -> None:
    for backend in list(_LIVE):
        backend.clear()


def default_backend() -> MemoryBackend:
    """The process-wide :class:`MemoryBackend` that patterns use when given no backend.

    One for every pattern: idempotency records are kept apart inside it (``max_records``), so
    no other pattern's keys can push a record out. :func:`fintech_resilience.testing.
    reset_default_backend` empties it between tests."""
    global _DEFAULT
    if _DEFAULT is None:
        with _DEFAULT_LOCK:
            if _DEFAULT is None:
                _DEFAULT = MemoryBackend()
    return _DEFAULT
