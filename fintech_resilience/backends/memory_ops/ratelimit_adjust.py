"""Memory twins of ``ratelimit_*_adjust.lua`` (peek, hit, refund) and ``ratelimit_reset.lua``:
the same double-precision arithmetic as the scripts, step for step.

Each adjust operation reads every limit's state, judges whether ``cost`` fits now (the verdict),
applies the mode - ``peek`` writes nothing, ``hit`` counts ``cost`` whether or not it fits,
``refund`` gives ``cost`` back - and answers ``[allowed, retry_after_us, remaining_1,
reset_after_us_1, ...]`` like the acquire operations, with each algorithm's steps
(:class:`~.ratelimit.Algorithm`) as the scripts share ``_<algorithm>.lua`` and ``_ratelimit.lua``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from . import memory_op
from .ratelimit import (
    FIXED_WINDOW,
    GCRA,
    SLIDING_WINDOW,
    Algorithm,
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


@memory_op("ratelimit_gcra_adjust")
def gcra_adjust(store: MemoryStore, keys: Sequence[str], args: Sequence[Any],
                now_us: int) -> list[int]:
    return adjust(GCRA, store, keys, args, now_us)


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
