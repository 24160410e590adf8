"""Memory twin of ``retrybudget_update.lua``: the same integer micro-token arithmetic."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from . import memory_op

if TYPE_CHECKING:
    from ..memory import MemoryStore


@memory_op("retrybudget_update")
def update(store: MemoryStore, keys: Sequence[str], args: Sequence[Any], now_us: int) -> list[int]:
    now = float(now_us)
    deposits, ratio, cap = float(args[1]), float(args[2]), float(args[3])
    withdraw, rate, floor_cap = int(args[4]), float(args[5]), float(args[6])
    state: dict[str, float] | None = store.get(keys[0], now_us)
    tokens = state["tokens"] if state else 0.0
    floor = state["floor"] if state else floor_cap
    at = state["at"] if state else now
    if now > at:
        floor = floor + math.floor((now - at) * rate / 1000000)
        at = now
    floor = min(floor, floor_cap)
    tokens = min(tokens + deposits * ratio, cap)
    granted = 0
    if withdraw == 1:
        if tokens >= 1000000:
            tokens -= 1000000
            granted = 1
        elif floor >= 1000000:
            floor -= 1000000
            granted = 2
    store.set(keys[0], {"tokens": tokens, "floor": floor, "at": at}, int(args[7]) * 1000, now_us)
    return [granted, int(tokens), int(floor)]
