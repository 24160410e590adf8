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
    from ..base import BoundOp
    from ..memory import MemoryStore


def _ceil_ms_us(us: float) -> int:
    """A TTL as Redis would store it: whole milliseconds (ceil), back in microseconds."""
    return math.ceil(us / 1000) * 1000


@memory_op("ratelimit_gcra")
def gcra(store: MemoryStore, keys: Sequence[str], args: Sequence[Any], now_us: int) -> list[int]:
    return acquire(GCRA, store, keys, args, now_us)


@memory_binder("ratelimit_gcra")
def bind_gcra(store: MemoryStore, lock: threading.Lock,
              now_us: Callable[[], int] | None) -> BoundOp:
    """``ratelimit_gcra`` as a limiter runs it on every call. This is the zero-config default's
    rate-limit decision, so the usual case - one limit - is :class:`Gcra`'s read, wait, take and
    reply fused into this one function (the same arithmetic, checked against the steps by
    ``tests/test_memory_backend.py``); several limits go through :func:`gcra`. The lock's
    methods are looked up once here (a ``with`` statement looks them up on every call).

    A key lives until 1 s past its TAT, in whole milliseconds (as the script's ``PX``), so an
    expired entry's TAT is behind ``now`` and reads as no state.
    """
    acquire_lock, release_lock = lock.acquire, lock.release
    time_ns = time.time_ns
    data = store.data

    def run(keys: Sequence[str], args: Sequence[Any]) -> Any:
        # args: the time (0: the backend's), the cost, then each limit's interval and tau
        now_at = args[0] or (time_ns() // 1000 if now_us is None else now_us())
        if len(keys) != 1:
            with lock:
                return gcra(store, keys, args, now_at)
        key, now = keys[0], float(now_at)
        increment = args[2] * args[1]
        tau = args[3]
        acquire_lock()
        try:
            entry = data.get(key)
            tat = now if entry is None or entry[0] < now else entry[0]
            if increment > tau:
                allowed, retry = 0, -1
            else:
                # 1 microsecond of tolerance absorbs the rounding of fractional intervals
                wait = (tat - now) + increment - tau
                if wait >= 1.0:
                    allowed, retry = 0, floor(wait + 0.5)
                else:
                    allowed, retry = 1, 0
                    tat += increment
                    ttl = (ceil((tat - now) / 1000) + 1000) * 1000
                    if entry is None:
                        store.set(key, tat, ttl, now_at)
                    else:
                        entry[0] = tat
                        entry[1] = now_at + ttl
        finally:
            release_lock()
        remaining = floor((tau - (tat - now)) / args[2] + 1e-6)
        return [allowed, retry, remaining if remaining > 0 else 0, floor(tat - now + 0.5)]

    return run


Params = tuple[float, float]
"""A limit's two parameters: its limit and window, or its emission interval and tolerance."""


def keep(store: MemoryStore, key: str, value: Any, now_us: int) -> None:
    """Replace a live key's value and keep its expiry (as ``HSET`` on an existing hash)."""
    entry = store.entry(key, now_us)
    if entry is not None:
        entry[0] = value


class Algorithm:
    """One limit's steps of a rate-limit algorithm, as its ``_<name>.lua`` fragment defines them;
    :func:`acquire` and ``ratelimit_adjust.adjust`` apply them to every limit of a call as
    ``_ratelimit.lua`` does. ``s`` is a limit's state, which the steps update in place."""

    def read(self, store: MemoryStore, key: str, params: Params, now_us: int) -> list[float]:
        """The state of the limit stored at ``key``."""
        raise NotImplementedError

    def wait(self, s: list[float], params: Params, cost: float, now_us: int) -> float | None:
        """None when ``cost`` fits now, else the microseconds until it does (-1: never)."""
        raise NotImplementedError

    def take(self, store: MemoryStore, key: str, params: Params, s: list[float], cost: float,
             now_us: int) -> None:
        """Consume an admitted ``cost`` and store it."""
        raise NotImplementedError

    def hit(self, store: MemoryStore, key: str, params: Params, s: list[float], cost: float,
            now_us: int) -> None:
        """Consume ``cost`` whether or not it fits, and store it."""
        self.take(store, key, params, s, cost, now_us)

    def refund(self, store: MemoryStore, key: str, params: Params, s: list[float], cost: float,
               now_us: int) -> None:
        """Give ``cost`` back and store it."""
        raise NotImplementedError

    def reply(self, s: list[float], params: Params, now_us: int) -> tuple[int, int]:
        """Remaining and reset_after_us."""
        raise NotImplementedError


def limit_params(args: Sequence[Any], offset: int, count: int) -> list[Params]:
    """Each limit's parameters, limit i's at ``args[offset + 2i]`` and ``args[offset + 2i + 1]``."""
    return [(float(args[offset + 2 * i]), float(args[offset + 2 * i + 1])) for i in range(count)]


def verdict(alg: Algorithm, limits: list[Params], state: list[list[float]], cost: float,
            now_us: int) -> tuple[int, float]:
    """Whether ``cost`` fits every limit now (1 or 0), and the longest wait until it does
    (-1: never)."""
    allowed, retry = 1, 0.0
    for params, s in zip(limits, state, strict=True):
        wait = alg.wait(s, params, cost, now_us)
        if wait is not None:
            allowed = 0
            if wait < 0:
                retry = -1
            elif retry >= 0 and wait > retry:
                retry = wait
    return allowed, retry


def reply(alg: Algorithm, limits: list[Params], state: list[list[float]], allowed: int,
          retry: float, now_us: int) -> list[int]:
    """``[allowed, retry_after_us (-1 = never), remaining_1, reset_after_us_1, ...]``."""
    out = [allowed, int(retry)]
    for params, s in zip(limits, state, strict=True):
        out += alg.reply(s, params, now_us)
    return out


def acquire(alg: Algorithm, store: MemoryStore, keys: Sequence[str], args: Sequence[Any],
            now_us: int) -> list[int]:
    """``cost`` (``args[1]``) admitted under every limit or none."""
    cost = float(args[1])
    limits = limit_params(args, 2, len(keys))
    state = [alg.read(store, key, params, now_us)
             for key, params in zip(keys, limits, strict=True)]
    allowed, retry = verdict(alg, limits, state, cost, now_us)
    if allowed:
        for key, params, s in zip(keys, limits, state, strict=True):
            alg.take(store, key, params, s, cost, now_us)
    return reply(alg, limits, state, allowed, retry, now_us)


class SlidingWindow(Algorithm):
    """``_sliding_window.lua``: a limit's state is ``[window index, elapsed, current,
    previous]``, the counts rolled forward to the window ``now`` falls in; the store holds
    ``(w, c, p)``."""

    def read(self, store: MemoryStore, key: str, params: Params, now_us: int) -> list[float]:
        now = float(now_us)
        window = params[1]
        index = float(math.floor(now / window))
        elapsed = now - index * window
        w, c, p = store.get(key, now_us) or (None, 0.0, 0.0)
        # a request stamped before the stored window is judged at that window's start
        if w is not None and w > index:
            index = w
            elapsed = 0.0
        if w != index:
            p = c if w == index - 1 else 0.0
            c = 0.0
        return [index, elapsed, c, p]

    def wait(self, s: list[float], params: Params, cost: float, now_us: int) -> float | None:
        limit, window = params
        _index, elapsed, c, p = s
        estimate = p * (window - elapsed) / window + c
        if estimate + cost > limit + limit * 1e-12:
            if cost > limit:
                wait = -1
            elif c + cost <= limit:
                wait = math.ceil(window - (limit - c - cost) * window / p - elapsed)
            else:
                wait = math.ceil((window - elapsed) + (window - (limit - cost) * window / c))
            return 1 if wait == 0 else wait
        return None

    def take(self, store: MemoryStore, key: str, params: Params, s: list[float], cost: float,
             now_us: int) -> None:
        # the key lives one window longer than the two it describes (late stamped requests)
        s[2] += cost
        store.set(key, (s[0], s[2], s[3]), _ceil_ms_us(3 * params[1] - s[1]), now_us)

    def refund(self, store: MemoryStore, key: str, params: Params, s: list[float], cost: float,
               now_us: int) -> None:
        # from the current window's count, then from the previous one's, never below 0
        if s[2] > 0 or s[3] > 0:
            c = max(s[2] - cost, 0.0)
            s[3] = max(s[3] - (cost - (s[2] - c)), 0.0)
            s[2] = c
            keep(store, key, (s[0], s[2], s[3]), now_us)

    def reply(self, s: list[float], params: Params, now_us: int) -> tuple[int, int]:
        limit, window = params
        _index, elapsed, c, p = s
        remaining = math.floor(limit - (p * (window - elapsed) / window + c) + limit * 1e-12)
        reset = 2 * window - elapsed if c > 0 else (window - elapsed if p > 0 else 0.0)
        return max(remaining, 0), int(reset)


class FixedWindow(Algorithm):
    """``_fixed_window.lua``: a limit's state is ``[window index, count, reset_after_us]``; the
    store holds ``(w, c)``."""

    def read(self, store: MemoryStore, key: str, params: Params, now_us: int) -> list[float]:
        now = float(now_us)
        window = params[1]
        index = float(math.floor(now / window))
        w, c = store.get(key, now_us) or (None, 0.0)
        # a request stamped in an older window than the stored one counts against the newer
        if w is not None and w > index:
            index = w
        if w != index:
            c = 0.0
        return [index, c, (index + 1) * window - now]

    def wait(self, s: list[float], params: Params, cost: float, now_us: int) -> float | None:
        # the rest of the window, never negative: the window's end rounds to no earlier than now
        limit = params[0]
        if s[1] + cost > limit:
            return -1.0 if cost > limit else s[2]
        return None

    def take(self, store: MemoryStore, key: str, params: Params, s: list[float], cost: float,
             now_us: int) -> None:
        # the key lives one window past its own: a request stamped before the boundary that
        # arrives late still counts against the window it was stamped in
        s[1] += cost
        store.set(key, (s[0], s[1]), _ceil_ms_us(s[2] + params[1]), now_us)

    def refund(self, store: MemoryStore, key: str, params: Params, s: list[float], cost: float,
               now_us: int) -> None:
        if s[1] > 0:
            s[1] = max(s[1] - cost, 0.0)
            keep(store, key, (s[0], s[1]), now_us)

    def reply(self, s: list[float], params: Params, now_us: int) -> tuple[int, int]:
        return int(max(params[0] - s[1], 0.0)), int(s[2])  # a hit may count past the limit


class Gcra(Algorithm):
    """``_gcra.lua``: a limit's state is ``[tat]``, its theoretical arrival time no earlier
    than now; the store holds the TAT. :func:`bind_gcra` fuses these steps for one limit."""

    def read(self, store: MemoryStore, key: str, params: Params, now_us: int) -> list[float]:
        now = float(now_us)
        entry = store.data.get(key)  # an expired entry's TAT is behind now: no state
        return [now if entry is None or entry[0] < now else entry[0]]

    def wait(self, s: list[float], params: Params, cost: float, now_us: int) -> float | None:
        # rounded to the nearest microsecond (rounding never reorders two limits' waits)
        interval, tau = params
        increment = interval * cost
        if increment > tau:
            return -1
        # 1 microsecond of tolerance absorbs the rounding of fractional emission intervals
        wait = (s[0] - float(now_us)) + increment - tau
        return floor(wait + 0.5) if wait >= 1.0 else None

    def take(self, store: MemoryStore, key: str, params: Params, s: list[float], cost: float,
             now_us: int) -> None:
        s[0] += params[0] * cost
        _set_tat(store, key, s[0], now_us)

    def hit(self, store: MemoryStore, key: str, params: Params, s: list[float], cost: float,
            now_us: int) -> None:
        # the debt is capped at twice the tolerance
        interval, tau = params
        s[0] = min(s[0] + interval * cost, float(now_us) + 2 * tau)
        _set_tat(store, key, s[0], now_us)

    def refund(self, store: MemoryStore, key: str, params: Params, s: list[float], cost: float,
               now_us: int) -> None:
        now = float(now_us)
        tat = s[0] - params[0] * cost
        if tat > now:
            _set_tat(store, key, tat, now_us)
        else:
            tat = now
            store.delete(key)
        s[0] = tat

    def reply(self, s: list[float], params: Params, now_us: int) -> tuple[int, int]:
        interval, tau = params
        now = float(now_us)
        remaining = floor((tau - (s[0] - now)) / interval + 1e-6)
        return (remaining if remaining > 0 else 0), floor(s[0] - now + 0.5)


def _set_tat(store: MemoryStore, key: str, tat: float, now_us: int) -> None:
    """Store a TAT; the key lives 1 s past it, in whole milliseconds (the script's ``PX``)."""
    store.set(key, tat, (ceil((tat - float(now_us)) / 1000) + 1000) * 1000, now_us)


GCRA = Gcra()
SLIDING_WINDOW = SlidingWindow()
FIXED_WINDOW = FixedWindow()


@memory_op("ratelimit_sliding_window")
def sliding_window(
    store: MemoryStore, keys: Sequence[str], args: Sequence[Any], now_us: int
) -> list[int]:
    return acquire(SLIDING_WINDOW, store, keys, args, now_us)


@memory_op("ratelimit_fixed_window")
def fixed_window(
    store: MemoryStore, keys: Sequence[str], args: Sequence[Any], now_us: int
) -> list[int]:
    return acquire(FIXED_WINDOW, store, keys, args, now_us)
