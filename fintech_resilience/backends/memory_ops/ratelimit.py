"""Memory twins of ``ratelimit_*.lua``: the same double-precision arithmetic, step for step."""

from __future__ import annotations

import math
import time as _time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from . import memory_op

if TYPE_CHECKING:
    from ..memory import MemoryBackend, MemoryStore


def _ceil_ms_us(us: float) -> int:
    """A TTL as Redis would store it: whole milliseconds (ceil), back in microseconds."""
    return math.ceil(us / 1000) * 1000


@memory_op("ratelimit_gcra1")  # the one-limit script: the same operation
@memory_op("ratelimit_gcra")
def gcra(store: MemoryStore, keys: Sequence[str], args: Sequence[Any], now_us: int) -> list[int]:
    now = float(now_us)
    cost = float(args[1])
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


def gcra_one_bound(backend: MemoryBackend, interval: float, tau: float,
                   now_us: Callable[[], int] | None) -> Callable[[str, int], list[int]]:
    """``ratelimit_gcra`` for one limit on ``backend``, bound to its store and lock.

    The same reply as ``backend.run("ratelimit_gcra", [key], (0, cost, interval, tau))``, minus
    the script dispatch, the argument packing and the loops: the memory default's hottest path,
    kept flat (no helper calls) on purpose. ``now_us`` overrides the backend's clock (a
    limiter's ManualClock).

    Liberties invisible in replies: a key is kept until one second after its TAT (whole
    milliseconds are for Redis); an expired entry is not deleted first - its TAT is behind
    ``now`` (every expiry is after its TAT), which reads exactly as no state, and an admitted
    decision overwrites it in place; real time is ``time.time()`` in microseconds with its
    fraction (a caller's clock gives whole microseconds, as Redis ``TIME`` does).
    ``math.floor`` stands for Lua's, also where ``int()`` would do (it is the cheaper call).
    """
    store = backend.store
    data_get = store.data.get
    acquire, release = backend.lock.acquire, backend.lock.release
    clock = backend.clock_for(now_us)
    time = _time.time
    floor = math.floor

    def decide(key: str, cost: int) -> list[int]:
        now = time() * 1_000_000.0 if clock is None else float(clock())
        increment = interval * cost
        acquire()
        try:
            entry = data_get(key)
            tat = entry[0] if entry is not None else now
            if tat < now:
                tat = now
            if increment > tau:
                allowed, retry = 0, -1
            else:
                wait = (tat - now) + increment - tau
                if wait >= 1.0:
                    allowed, retry = 0, floor(wait + 0.5)
                else:
                    allowed, retry = 1, 0
                    tat = tat + increment
                    if entry is None:
                        now_us = floor(now)
                        store.set(key, tat, floor(tat) - now_us + 1_000_001, now_us)
                    else:
                        entry[0] = tat
                        entry[1] = floor(tat) + 1_000_001
        finally:
            release()
        remaining = floor((tau - (tat - now)) / interval + 1e-6)
        return [allowed, retry, remaining if remaining > 0 else 0, floor(tat - now + 0.5)]

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
