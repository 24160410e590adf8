"""Memory twins of ``audit_append.lua`` and ``audit_read.lua``: a bounded stream of entries."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from . import memory_op

if TYPE_CHECKING:
    from ..memory import MemoryStore

# An entry: (ms, seq, {field: value}) in append order, like a Redis stream.
Entry = tuple[int, int, dict[bytes, bytes]]


def _b(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _id(entry: Entry) -> bytes:
    return b"%d-%d" % (entry[0], entry[1])


@memory_op("audit_append")
def append(store: MemoryStore, keys: Sequence[str], args: Sequence[Any], now: int) -> list[Any]:
    maxlen, ttl_ms, chained = int(args[1]), int(args[2]), _b(args[3]) == b"1"
    stream: deque[Entry] | None = store.get(keys[0], now)
    head = b""
    last_ms = last_seq = -1
    if stream:
        last_ms, last_seq, fields = stream[-1]
        head = fields.get(b"hash", b"")
    if chained and head != _b(args[4]):
        return [0, head]
    ms, seq = now // 1000, 0
    if ms <= last_ms:
        ms, seq = last_ms, last_seq + 1
    fields = {b"record": _b(args[5])}
    if chained:
        fields[b"prev_hash"] = _b(args[4])
        fields[b"hash"] = _b(args[6])
    if stream is None:
        stream = deque()
    entry = (ms, seq, fields)
    stream.append(entry)
    while len(stream) > maxlen:
        stream.popleft()
    store.set(keys[0], stream, ttl_ms * 1000, now)
    return [1, _id(entry)]


def _parse_id(value: bytes) -> tuple[int, int]:
    ms, _, seq = value.partition(b"-")
    return int(ms), int(seq or 0)


@memory_op("audit_read")
def read(store: MemoryStore, keys: Sequence[str], args: Sequence[Any], now: int) -> list[bytes]:
    after, count = _b(args[1]), int(args[2])
    stream: deque[Entry] = store.get(keys[0], now) or deque()
    start = (-1, -1) if after == b"-" else _parse_id(after)
    out: list[bytes] = []
    for entry in stream:
        if (entry[0], entry[1]) <= start:
            continue
        if len(out) >= 4 * count:
            break
        fields = entry[2]
        out += [_id(entry), fields.get(b"record", b""), fields.get(b"prev_hash", b""),
                fields.get(b"hash", b"")]
    return out
