"""Memory twins of ``ratelimit_*_adjust.lua`` (peek, hit, refund) and ``ratelimit_reset.lua``:
the same double-precision arithmetic as the scripts, step for step.

Each adjust operation reads every limit's state, judges whether ``cost`` fits now (``verdict``),
applies the mode - ``peek`` writes nothing, ``hit`` counts ``cost`` whether or not it fits,
``refund`` gives ``cost`` back - and answers ``[allowed, retry_after_us, remaining_1,
reset_after_us_1, ...]`` like the acquire operations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from . import memory_op
from .ratelimit import _ceil_ms_us

if TYPE_CHECKING:
    from ..memory import MemoryStore


def _limits(args: Sequence[Any], count: int) -> list[tuple[float, float]]:
    """The two parameters of each limit (``ARGV[2i+2]``, ``ARGV[2i+3]``)."""
    return [(float(args[2 * i + 3]), float(args[2 * i + 4])) for i in range(count)]


def _keep(store: MemoryStore, key: str, value: Any, now_us: int) -> None:
    """Replace a live key's value and keep its expiry (as ``HSET`` on an existing hash)."""
    entry = store.entry(key, now_us)
    if entry is not None:
        entry[0] = value


# -- GCRA ------------------------------------------------------------------------------------------
def _gcra_verdict(tats: list[float], limits: list[tuple[float, float]], now: float,
                  cost: float) -> tuple[int, int]:
    allowed, retry = 1, 0.0
    for tat, (interval, tau) in zip(tats, limits, strict=True):
        increment = interval * cost
        if increment > tau:
            allowed, retry = 0, -1.0
        else:
            # 1 microsecond of tolerance absorbs the rounding of fractional emission intervals
            wait = (tat - now) + increment - tau
            if wait >= 1.0:
                allowed = 0
                if retry >= 0 and wait > retry:
                    retry = wait
    return allowed, (math.floor(retry + 0.5) if retry > 0 else int(retry))


def _set_tat(store: MemoryStore, key: str, tat: float, now: float, now_us: int) -> None:
    store.set(key, tat, (math.ceil((tat - now) / 1000) + 1000) * 1000, now_us)


@memory_op("ratelimit_gcra_adjust")
def gcra_adjust(store: MemoryStore, keys: Sequence[str], args: Sequence[Any],
                now_us: int) -> list[int]:
    now = float(now_us)
    mode, cost = args[1], float(args[2])
    limits = _limits(args, len(keys))
    tats = []
    for key in keys:
        entry = store.data.get(key)  # an expired entry's TAT is behind now: no state
        tats.append(now if entry is None or entry[0] < now else entry[0])
    allowed, retry = _gcra_verdict(tats, limits, now, cost)
    if mode == "hit":
        for i, key in enumerate(keys):
            interval, tau = limits[i]
            tats[i] = min(tats[i] + interval * cost, now + 2 * tau)
            _set_tat(store, key, tats[i], now, now_us)
        retry = _gcra_verdict(tats, limits, now, cost)[1]
    elif mode == "refund":
        for i, key in enumerate(keys):
            tat = tats[i] - limits[i][0] * cost
            if tat > now:
                _set_tat(store, key, tat, now, now_us)
            else:
                tat = now
                store.delete(key)
            tats[i] = tat
        allowed, retry = 1, 0
    out = [allowed, retry]
    for tat, (interval, tau) in zip(tats, limits, strict=True):
        remaining = math.floor((tau - (tat - now)) / interval + 1e-6)
        out += [remaining if remaining > 0 else 0, math.floor(tat - now + 0.5)]
    return out


# -- fixed window ----------------------------------------------------------------------------------
@memory_op("ratelimit_fixed_window_adjust")
def fixed_window_adjust(store: MemoryStore, keys: Sequence[str], args: Sequence[Any],
                        now_us: int) -> list[int]:
    now = float(now_us)
    mode, cost = args[1], float(args[2])
    limits = _limits(args, len(keys))
    state: list[list[float]] = []  # per limit: [window index, count, reset_after_us]
    for key, (_limit, window) in zip(keys, limits, strict=True):
        index = float(math.floor(now / window))
        w, c = store.get(key, now_us) or (None, 0.0)
        if w is not None and w > index:
            index = w
        if w != index:
            c = 0.0
        state.append([index, c, (index + 1) * window - now])

    def verdict() -> tuple[int, float]:
        allowed, retry = 1, 0.0
        for (limit, _window), (_index, c, reset) in zip(limits, state, strict=True):
            if c + cost > limit:
                allowed = 0
                if cost > limit:
                    retry = -1.0
                elif retry >= 0 and reset > retry:
                    retry = reset
        return allowed, retry

    allowed, retry = verdict()
    if mode == "hit":
        for key, (_limit, window), s in zip(keys, limits, state, strict=True):
            s[1] += cost
            store.set(key, (s[0], s[1]), _ceil_ms_us(s[2] + window), now_us)
        retry = verdict()[1]
    elif mode == "refund":
        for key, s in zip(keys, state, strict=True):
            if s[1] > 0:
                s[1] = max(s[1] - cost, 0.0)
                _keep(store, key, (s[0], s[1]), now_us)
        allowed, retry = 1, 0.0
    out = [allowed, int(retry)]
    for (limit, _window), (_index, c, reset) in zip(limits, state, strict=True):
        out += [int(max(limit - c, 0.0)), int(reset)]
    return out


# -- sliding window --------------------------------------------------------------------------------
def _sliding_wait(limit: float, window: float, elapsed: float, c: float, p: float,
                  cost: float) -> int:
    """Microseconds until ``cost`` fits the sliding window (-1: never), as the scripts say."""
    if cost > limit:
        return -1
    if c + cost <= limit:
        wait = math.ceil(window - (limit - c - cost) * window / p - elapsed)
    else:
        wait = math.ceil((window - elapsed) + (window - (limit - cost) * window / c))
    return 1 if wait == 0 else wait


@memory_op("ratelimit_sliding_window_adjust")
def sliding_window_adjust(store: MemoryStore, keys: Sequence[str], args: Sequence[Any],
                          now_us: int) -> list[int]:
    now = float(now_us)
    mode, cost = args[1], float(args[2])
    limits = _limits(args, len(keys))
    state: list[list[float]] = []  # per limit: [window index, elapsed, current, previous]
    for key, (_limit, window) in zip(keys, limits, strict=True):
        index = float(math.floor(now / window))
        elapsed = now - index * window
        w, c, p = store.get(key, now_us) or (None, 0.0, 0.0)
        if w is not None and w > index:
            index = w
            elapsed = 0.0
        if w != index:
            p = c if w == index - 1 else 0.0
            c = 0.0
        state.append([index, elapsed, c, p])

    def verdict() -> tuple[int, int]:
        allowed, retry = 1, 0
        for (limit, window), (_index, elapsed, c, p) in zip(limits, state, strict=True):
            estimate = p * (window - elapsed) / window + c
            if estimate + cost > limit + limit * 1e-12:
                allowed = 0
                wait = _sliding_wait(limit, window, elapsed, c, p, cost)
                if wait < 0:
                    retry = -1
                elif retry >= 0 and wait > retry:
                    retry = wait
        return allowed, retry

    allowed, retry = verdict()
    if mode == "hit":
        for key, (_limit, window), s in zip(keys, limits, state, strict=True):
            s[2] += cost
            store.set(key, (s[0], s[2], s[3]), _ceil_ms_us(3 * window - s[1]), now_us)
        retry = verdict()[1]
    elif mode == "refund":
        for key, s in zip(keys, state, strict=True):
            if s[2] > 0 or s[3] > 0:
                c = max(s[2] - cost, 0.0)
                s[3] = max(s[3] - (cost - (s[2] - c)), 0.0)
                s[2] = c
                _keep(store, key, (s[0], s[2], s[3]), now_us)
        allowed, retry = 1, 0
    out = [allowed, retry]
    for (limit, window), (_index, elapsed, c, p) in zip(limits, state, strict=True):
        remaining = math.floor(limit - (p * (window - elapsed) / window + c) + limit * 1e-12)
        reset = 2 * window - elapsed if c > 0 else (window - elapsed if p > 0 else 0.0)
        out += [max(remaining, 0), int(reset)]
    return out


@memory_op("ratelimit_reset")
def reset(store: MemoryStore, keys: Sequence[str], args: Sequence[Any], now_us: int) -> None:
    for key in keys:
        store.delete(key)
