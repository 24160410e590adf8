"""Memory twins of ``ratelimit_*.lua``: the same double-precision arithmetic, step for step."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from . import memory_op

if TYPE_CHECKING:
    from ..memory import MemoryBackend, MemoryStore


def _ceil_ms_us(us: float) -> int:
    """A TTL as Redis would store it: whole milliseconds (ceil), back in microseconds."""
    return math.ceil(us / 1000) * 1000


@memory_op("ratelimit_gcra")
def gcra(store: MemoryStore, keys: Sequence[str], args: Sequence[Any], now_us: int) -> list[int]:
    # the hottest path of the library: kept flat (no helper calls) on purpose
    now = float(now_us)
    cost = float(args[1])
    if len(keys) == 1:
        return _gcra_one(store, keys[0], float(args[2]), float(args[3]), cost, now, now_us)
    entries = [store.entry(key, now_us) for key in keys]
    tats: list[float] = []
    allowed = 1
    retry = 0.0
    for i, entry in enumerate(entries):
        interval = float(args[2 * i + 2])
        tau = float(args[2 * i + 3])
        tat = entry[0] if entry is not None else 0.0
        if tat < now:
            tat = now
        tats.append(tat)
        increment = interval * cost
        if increment > tau:
            allowed = 0
            retry = -1.0
        else:
            # 1 microsecond of tolerance absorbs the rounding of fractional emission intervals
            wait = (tat - now) + increment - tau
            if wait >= 1:
                allowed = 0
                if retry >= 0 and wait > retry:
                    retry = wait
    out = [allowed, math.floor(retry + 0.5) if retry > 0 else (-1 if retry < 0 else 0)]
    for i, entry in enumerate(entries):
        interval = float(args[2 * i + 2])
        tau = float(args[2 * i + 3])
        tat = tats[i]
        if allowed:
            tat = tat + interval * cost
            ttl = (math.ceil((tat - now) / 1000) + 1000) * 1000
            if entry is None:
                store.set(keys[i], tat, ttl, now_us)
            else:
                entry[0] = tat
                entry[1] = now_us + ttl
        remaining = math.floor((tau - (tat - now)) / interval + 1e-6)
        out.append(remaining if remaining > 0 else 0)
        out.append(math.floor(tat - now + 0.5))
    return out


def _gcra_one(store: MemoryStore, key: str, interval: float, tau: float, cost: float,
              now: float, now_us: int) -> list[int]:
    """:func:`gcra` for a single limit, without the loops (same arithmetic, same reply).

    ``int()`` stands for ``math.floor`` where the value cannot be negative (or is clamped to 0).
    A state whose TAT is in the past means the same as no state, so the key is kept until one
    second after its TAT (whole milliseconds are for Redis).
    """
    entry = store.data.get(key)
    if entry is not None and entry[1] <= now_us:
        entry = None  # expired: store.set() below reuses the slot
    tat = entry[0] if entry is not None else 0.0
    if tat < now:
        tat = now
    increment = interval * cost
    if increment > tau:
        allowed, retry = 0, -1
    else:
        wait = (tat - now) + increment - tau
        if wait >= 1:
            allowed, retry = 0, int(wait + 0.5)
        else:
            allowed, retry = 1, 0
            tat = tat + increment
            if entry is None:
                store.set(key, tat, int(tat - now) + 1_000_001, now_us)
            else:
                entry[0] = tat
                entry[1] = int(tat) + 1_000_001
    remaining = int((tau - (tat - now)) / interval + 1e-6)
    return [allowed, retry, remaining if remaining > 0 else 0, int(tat - now + 0.5)]


def gcra_one_bound(backend: MemoryBackend, interval: float, tau: float,
                   now_us: Callable[[], int] | None) -> Callable[[str, int], list[int]]:
    """``ratelimit_gcra`` for one limit on ``backend``, bound to its store and lock.

    The same twin as ``backend.run("ratelimit_gcra", [key], (0, cost, interval, tau))``, minus
    the script dispatch and argument packing: the memory default's hottest path. ``now_us``
    overrides the backend's clock (a limiter's ManualClock).
    """
    store = backend.store
    acquire, release = backend.lock.acquire, backend.lock.release
    clock = backend.clock_for(now_us)
    time_ns = time.time_ns

    def decide(key: str, cost: int) -> list[int]:
        now = time_ns() // 1000 if clock is None else clock()
        acquire()
        try:
            return _gcra_one(store, key, interval, tau, cost, float(now), now)
        finally:
            release()

    return decide


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
        out.append(int(limit - c))
        out.append(int(reset))
    return out
