"""Memory twins of ``ratelimit_*.lua``: the same double-precision arithmetic, step for step."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from math import ceil, floor
from typing import TYPE_CHECKING, Any

from . import memory_binder, memory_op

if TYPE_CHECKING:
    from ..base import Arg, BoundOp
    from ..memory import MemoryStore


def _ceil_ms_us(us: float) -> int:
    """A TTL as Redis would store it: whole milliseconds (ceil), back in microseconds."""
    return math.ceil(us / 1000) * 1000


def gcra_limit(store: MemoryStore, key: str, now_us: int, cost: float, interval: float,
               tau: float, admit: bool = True) -> list[int]:
    """One GCRA limit: ``[allowed, retry_after_us, remaining, reset_after_us]``, the TAT
    advanced if the cost conforms and ``admit`` is true (false only checks).

    A key lives until 1 s past its TAT, in whole milliseconds (as the script's ``PX``), so an
    expired entry's TAT is behind ``now`` and reads as no state.
    """
    now = float(now_us)
    entry = store.data.get(key)
    tat = now if entry is None or entry[0] < now else entry[0]
    increment = interval * cost
    if increment > tau:
        allowed, retry = 0, -1
    else:
        # 1 microsecond of tolerance absorbs the rounding of fractional emission intervals
        wait = (tat - now) + increment - tau
        if wait >= 1.0:
            allowed, retry = 0, floor(wait + 0.5)
        else:
            allowed, retry = 1, 0
            if admit:
                tat += increment
                ttl = (ceil((tat - now) / 1000) + 1000) * 1000
                if entry is None:
                    store.set(key, tat, ttl, now_us)
                else:
                    entry[0] = tat
                    entry[1] = now_us + ttl
    remaining = floor((tau - (tat - now)) / interval + 1e-6)
    return [allowed, retry, remaining if remaining > 0 else 0, floor(tat - now + 0.5)]


@memory_op("ratelimit_gcra")
def gcra(store: MemoryStore, keys: Sequence[str], args: Sequence[Any], now_us: int) -> list[int]:
    cost = float(args[1])
    if len(keys) == 1:
        return gcra_limit(store, keys[0], now_us, cost, float(args[2]), float(args[3]))
    # several limits, all or nothing: check every one, then admit at each if all conform
    limits = [(key, float(args[2 * i + 2]), float(args[2 * i + 3])) for i, key in enumerate(keys)]
    replies = [gcra_limit(store, key, now_us, cost, t, tau, admit=False) for key, t, tau in limits]
    allowed = all(reply[0] for reply in replies)
    if allowed:
        replies = [gcra_limit(store, key, now_us, cost, t, tau) for key, t, tau in limits]
    waits = [reply[1] for reply in replies]
    out = [int(allowed), -1 if -1 in waits else max(waits)]
    for reply in replies:
        out += reply[2:]
    return out


@memory_binder("ratelimit_gcra")
def bind_gcra(store: MemoryStore, lock: threading.Lock,
              now_us: Callable[[], int] | None) -> BoundOp:
    """``ratelimit_gcra`` as a limiter runs it on every call: one limit (the usual limiter) goes
    straight to :func:`gcra_limit`, several to :func:`gcra`.

    This is the zero-config default's rate-limit decision, so what every call would repeat is
    done here once: the lock's methods are looked up once (a ``with`` statement looks them up on
    every call) and real time is read without a call of the backend's own."""
    acquire, release = lock.acquire, lock.release
    time_ns = time.time_ns

    def run(keys: Sequence[str], args: Sequence[Arg]) -> Any:
        now = args[0] or (time_ns() // 1000 if now_us is None else now_us())
        if len(keys) != 1:
            with lock:
                return gcra(store, keys, args, now)  # type: ignore[arg-type]  # ARGV[1] is int
        acquire()
        try:
            return gcra_limit(store, keys[0], now, args[1], args[2], args[3])  # type: ignore[arg-type]
        finally:
            release()

    return run


@memory_op("ratelimit_sliding_window")
def sliding_window(
    store: MemoryStore, keys: Sequence[str], args: Sequence[Any], now_us: int
) -> list[int]:
    now = float(now_us)
    cost = float(args[1])
    state: list[tuple[float, float, float, float]] = []
    allowed = 1
    retry = 0
    for i, key in enumerate(keys):
        limit = float(args[2 * i + 2])
        window = float(args[2 * i + 3])
        index = float(math.floor(now / window))
        elapsed = now - index * window
        w, c, p = store.get(key, now_us) or (None, 0.0, 0.0)
        if w is not None and w > index:
            index = w
            elapsed = 0.0
        if w != index:
            p = c if w == index - 1 else 0.0
            c = 0.0
        state.append((index, elapsed, c, p))
        estimate = p * (window - elapsed) / window + c
        if estimate + cost > limit + limit * 1e-12:
            allowed = 0
            if cost > limit:
                wait = -1
            elif c + cost <= limit:
                wait = math.ceil(window - (limit - c - cost) * window / p - elapsed)
            else:
                wait = math.ceil((window - elapsed) + (window - (limit - cost) * window / c))
            if wait == 0:
                wait = 1
            if wait < 0:
                retry = -1
            elif retry >= 0 and wait > retry:
                retry = wait
    out = [allowed, retry]
    for i, key in enumerate(keys):
        limit = float(args[2 * i + 2])
        window = float(args[2 * i + 3])
        index, elapsed, c, p = state[i]
        if allowed:
            c = c + cost
            store.set(key, (index, c, p), _ceil_ms_us(3 * window - elapsed), now_us)
        remaining = math.floor(limit - (p * (window - elapsed) / window + c) + limit * 1e-12)
        reset = 2 * window - elapsed if c > 0 else (window - elapsed if p > 0 else 0.0)
        out.append(max(remaining, 0))
        out.append(int(reset))
    return out


@memory_op("ratelimit_fixed_window")
def fixed_window(
    store: MemoryStore, keys: Sequence[str], args: Sequence[Any], now_us: int
) -> list[int]:
    now = float(now_us)
    cost = float(args[1])
    state: list[tuple[float, float, float]] = []
    allowed = 1
    retry = 0.0
    for i, key in enumerate(keys):
        limit = float(args[2 * i + 2])
        window = float(args[2 * i + 3])
        index = float(math.floor(now / window))
        w, c = store.get(key, now_us) or (None, 0.0)
        if w is not None and w > index:
            index = w
        if w != index:
            c = 0.0
        reset = (index + 1) * window - now
        state.append((index, c, reset))
        if c + cost > limit:
            allowed = 0
            if cost > limit:
                retry = -1.0
            elif retry >= 0 and reset > retry:
                retry = reset
    out = [allowed, int(retry)]
    for i, key in enumerate(keys):
        limit = float(args[2 * i + 2])
        window = float(args[2 * i + 3])
        index, c, reset = state[i]
        if allowed:
            c = c + cost
            store.set(key, (index, c), _ceil_ms_us(reset + window), now_us)
        out.append(max(int(limit - c), 0))
        out.append(int(reset))
    return out
