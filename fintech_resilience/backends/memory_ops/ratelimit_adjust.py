"""Memory twins of ``ratelimit_*_adjust.lua`` (peek, hit, refund) and ``ratelimit_reset.lua``:
the same double-precision arithmetic as the scripts, step for step.

Each adjust operation reads every limit's state, judges whether ``cost`` fits now (the verdict),
applies the mode - ``peek`` writes nothing, ``hit`` counts ``cost`` whether or not it fits,
``refund`` gives ``cost`` back - and answers ``[allowed, retry_after_us, remaining_1,
reset_after_us_1, ...]`` like the acquire operations, with each algorithm's steps
(:class:`~.ratelimit.Algorithm`) as the scripts share ``_<algorithm>.lua`` and ``_ratelimit.lua``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from . import memory_op
from .ratelimit import (
    FIXED_WINDOW,
    SLIDING_WINDOW,
    Algorithm,
    Params,
    limit_params,
    reply,
    verdict,
)

if TYPE_CHECKING:
    from ..memory import MemoryStore


def adjust(alg: Algorithm, store: MemoryStore, keys: Sequence[str], args: Sequence[Any],
           now_us: int) -> list[int]:
    """``args[1]`` is the mode, ``args[2]`` the cost; 'hit' answers the wait for the next
    ``cost`` after it, 'refund' answers allowed = 1."""
    mode, cost = args[1], float(args[2])
    limits = limit_params(args, 3, len(keys))
    state = [alg.read(store, key, params, now_us)
             for key, params in zip(keys, limits, strict=True)]
    allowed, retry = verdict(alg, limits, state, cost, now_us)
    if mode == "hit":
        for key, params, s in zip(keys, limits, state, strict=True):
            alg.hit(store, key, params, s, cost, now_us)
        retry = verdict(alg, limits, state, cost, now_us)[1]
    elif mode == "refund":
        for key, params, s in zip(keys, limits, state, strict=True):
            alg.refund(store, key, params, s, cost, now_us)
        allowed, retry = 1, 0
    return reply(alg, limits, state, allowed, retry, now_us)


class _Gcra(Algorithm):
    """``_gcra.lua`` for peek, hit and refund (admission is ``ratelimit.gcra``): a limit's state
    is ``[tat]``, its theoretical arrival time no earlier than now; the store holds the TAT."""

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
        return math.floor(wait + 0.5) if wait >= 1.0 else None

    def hit(self, store: MemoryStore, key: str, params: Params, s: list[float], cost: float,
            now_us: int) -> None:
        # the debt is capped at twice the tolerance
        interval, tau = params
        now = float(now_us)
        s[0] = min(s[0] + interval * cost, now + 2 * tau)
        _set_tat(store, key, s[0], now, now_us)

    def refund(self, store: MemoryStore, key: str, params: Params, s: list[float], cost: float,
               now_us: int) -> None:
        now = float(now_us)
        tat = s[0] - params[0] * cost
        if tat > now:
            _set_tat(store, key, tat, now, now_us)
        else:
            tat = now
            store.delete(key)
        s[0] = tat

    def reply(self, s: list[float], params: Params, now_us: int) -> tuple[int, int]:
        interval, tau = params
        now = float(now_us)
        remaining = math.floor((tau - (s[0] - now)) / interval + 1e-6)
        return (remaining if remaining > 0 else 0), math.floor(s[0] - now + 0.5)


def _set_tat(store: MemoryStore, key: str, tat: float, now: float, now_us: int) -> None:
    store.set(key, tat, (math.ceil((tat - now) / 1000) + 1000) * 1000, now_us)


_GCRA = _Gcra()


@memory_op("ratelimit_gcra_adjust")
def gcra_adjust(store: MemoryStore, keys: Sequence[str], args: Sequence[Any],
                now_us: int) -> list[int]:
    return adjust(_GCRA, store, keys, args, now_us)


@memory_op("ratelimit_fixed_window_adjust")
def fixed_window_adjust(store: MemoryStore, keys: Sequence[str], args: Sequence[Any],
                        now_us: int) -> list[int]:
    return adjust(FIXED_WINDOW, store, keys, args, now_us)


@memory_op("ratelimit_sliding_window_adjust")
def sliding_window_adjust(store: MemoryStore, keys: Sequence[str], args: Sequence[Any],
                          now_us: int) -> list[int]:
    return adjust(SLIDING_WINDOW, store, keys, args, now_us)


@memory_op("ratelimit_reset")
def reset(store: MemoryStore, keys: Sequence[str], args: Sequence[Any], now_us: int) -> None:
    for key in keys:
        store.delete(key)
