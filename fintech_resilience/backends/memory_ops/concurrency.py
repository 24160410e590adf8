"""Memory twins of ``concurrency_*.lua``: leases in a dict token -> expiry (microseconds)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from . import memory_op

if TYPE_CHECKING:
    from ..memory import MemoryStore


def _token(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _live(store: MemoryStore, key: str, now: int) -> dict[bytes, float]:
    leases: dict[bytes, float] = store.get(key, now) or {}
    for token in [t for t, expiry in leases.items() if expiry <= now]:
        del leases[token]
    return leases


@memory_op("concurrency_acquire")
def acquire(store: MemoryStore, keys: Sequence[str], args: Sequence[Any], now: int) -> list[int]:
    limit, lease, token = int(args[1]), float(args[2]), _token(args[3])
    leases = _live(store, keys[0], now)
    held = token in leases
    if held or len(leases) < limit:
        leases[token] = now + lease
        store.set(keys[0], leases, math.ceil(lease / 1000) * 1000, now)
        return [1, len(leases), 0]
    return [0, len(leases), math.ceil(min(leases.values()) - now)]


@memory_op("concurrency_release")
def release(store: MemoryStore, keys: Sequence[str], args: Sequence[Any], now: int) -> list[int]:
    leases = _live(store, keys[0], now)
    released = 1 if leases.pop(_token(args[1]), None) is not None else 0
    if not leases:
        store.delete(keys[0])
    return [released, len(leases)]


@memory_op("concurrency_renew")
def renew(store: MemoryStore, keys: Sequence[str], args: Sequence[Any], now: int) -> list[int]:
    lease, token = float(args[1]), _token(args[2])
    leases = store.get(keys[0], now) or {}
    expiry = leases.get(token, 0.0)
    if expiry <= now:
        leases.pop(token, None)
        return [0]
    leases[token] = now + lease
    ttl = math.ceil(lease / 1000) * 1000
    if store.ttl_us(keys[0], now) < ttl:
        store.expire(keys[0], ttl, now)
    return [1]
