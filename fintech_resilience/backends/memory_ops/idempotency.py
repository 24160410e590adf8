"""Memory twins of ``idempotency_*.lua``: the record is a dict standing in for the Redis hash.

Fields as in the Lua scripts: ``st`` (``b"p"``/``b"c"``; absent = free), ``fp``, ``own``, ``lu``
(lease until, us), ``fen`` (fencing counter, kept across releases), ``res``, ``ca``, ``co``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from . import memory_op

if TYPE_CHECKING:
    from ..memory import MemoryStore

_RECORD_FIELDS = ("st", "fp", "own", "lu", "res", "ca", "co")


def _b(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return str(value).encode()


def _ttl(us: float) -> int:
    """A TTL as Redis stores it: whole milliseconds (ceil), back in microseconds."""
    return math.ceil(us / 1000) * 1000


def _extend(store: MemoryStore, key: str, lease: float, now: int) -> None:
    ttl = _ttl(lease)
    if store.ttl_us(key, now) < ttl:
        store.expire(key, ttl, now)


@memory_op("idempotency_claim")
def claim(store: MemoryStore, keys: Sequence[str], args: Sequence[Any], now_us: int) -> list[Any]:
    key = keys[0]
    now = float(now_us)
    fingerprint, owner, lease = _b(args[1]), _b(args[2]), float(args[3])
    record: dict[str, Any] | None = store.get(key, now_us)
    fen = record.get("fen", 0.0) if record is not None else 0.0
    if record is None or "st" not in record:
        fen = fen + 1
        fresh = {"st": b"p", "fp": fingerprint, "own": owner, "lu": now + lease, "fen": fen,
                 "ca": now}
        if record is None:
            store.set(key, fresh, _ttl(float(args[4])), now_us)
        else:
            record.clear()
            record.update(fresh)
            store.expire(key, _ttl(float(args[4])), now_us)
        return [1, int(fen), 0, 0]
    if record["fp"] != fingerprint:
        return [3, int(fen), 0, 0]
    if record["st"] == b"c":
        return [2, int(fen), record["res"], int(record["co"])]
    lu = record["lu"]
    if lu > now:
        return [4, int(fen), int(lu - now), 0]
    if _b(args[5]) == b"1":
        fen = fen + 1
        record.update({"own": owner, "lu": now + lease, "fen": fen})
        _extend(store, key, lease, now_us)
        return [1, int(fen), 1, 0]
    return [5, int(fen), 0, 0]


def _check(record: dict[str, Any] | None, owner: bytes, now: float) -> list[int] | None:
    """None if ``owner`` holds a live lease on the record, else the refusal reply."""
    if record is None or record.get("st") != b"p" or record.get("own") != owner:
        return [0, 1]
    if record["lu"] <= now:
        return [0, 2]
    return None


@memory_op("idempotency_complete")
def complete(store: MemoryStore, keys: Sequence[str], args: Sequence[Any],
             now_us: int) -> list[int]:
    record: dict[str, Any] | None = store.get(keys[0], now_us)
    refused = _check(record, _b(args[1]), float(now_us))
    if refused is not None or record is None:
        return refused or [0, 1]
    record.update({"st": b"c", "res": _b(args[2]), "co": float(now_us)})  # own, lu stay
    store.expire(keys[0], _ttl(float(args[3])), now_us)
    return [1, 0]


@memory_op("idempotency_release")
def release(store: MemoryStore, keys: Sequence[str], args: Sequence[Any],
            now_us: int) -> list[int]:
    record: dict[str, Any] | None = store.get(keys[0], now_us)
    if record is None or "st" not in record:
        return [0, 1]
    if _b(args[2]) != b"1":
        refused = _check(record, _b(args[1]), float(now_us))
        if refused is not None:
            return refused
    for name in _RECORD_FIELDS:
        record.pop(name, None)
    return [1, 0]


@memory_op("idempotency_renew")
def renew(store: MemoryStore, keys: Sequence[str], args: Sequence[Any], now_us: int) -> list[int]:
    record: dict[str, Any] | None = store.get(keys[0], now_us)
    refused = _check(record, _b(args[1]), float(now_us))
    if refused is not None or record is None:
        return refused or [0, 1]
    lease = float(args[2])
    record["lu"] = now_us + lease
    _extend(store, keys[0], lease, now_us)
    return [1, 0]
