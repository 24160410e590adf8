"""Memory twins of ``breaker_*.lua``: the breaker's hash is a dict, arithmetic step for step.

Field names and meanings are documented in ``backends/lua/breaker_record.lua``. Probe permits are
a dict ``token -> lease expiry (us)`` instead of the ``token=expiry;`` string Redis stores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from . import memory_op

if TYPE_CHECKING:
    from ..memory import MemoryStore


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _state(h: dict[str, Any]) -> int:
    ov: int = h.get("ov", 0)
    return ov if ov else int(h.get("st", 0))


def _reply(h: dict[str, Any], now: float, granted: int, from_: int, ra: float = 0.0) -> list[int]:
    state = _state(h)
    if state == 1 and h.get("until", 0) > now:
        ra = h["until"] - now
    return [state, int(h.get("gen", 0)), math.floor(ra + 0.5), granted, from_,
            int(h.get("n", 0)), int(h.get("f", 0)), int(h.get("s", 0))]


def _save(store: MemoryStore, key: str, h: dict[str, Any], ttl_ms: Any, now_us: int) -> None:
    store.set(key, h, int(ttl_ms) * 1000, now_us)


@memory_op("breaker_acquire")
def acquire(store: MemoryStore, keys: Sequence[str], args: Sequence[Any], now_us: int) -> list[int]:
    now = float(now_us)
    key = keys[0]
    token = _text(args[1])
    hoc = float(args[2])
    lease = float(args[3])
    h: dict[str, Any] = store.get(key, now_us) or {}
    st = h.get("st", 0)
    ov = h.get("ov", 0)
    gen = h.get("gen", 0)
    hn = h.get("hn", 0)
    granted = 0
    from_ = -1
    ra = 0.0
    changed = False
    probes: dict[str, float] = {}
    if ov == 3:
        granted = 0
    elif ov in (4, 5) or st == 0:
        granted = 1
    else:
        if st == 1:
            if now < h.get("until", 0):
                ra = h["until"] - now
            else:
                st = 2
                gen += 1
                from_ = 1
                hn = 0
                changed = True
        if st == 2:
            live = 0
            earliest = -1.0
            if from_ == -1 and "probes" in h:
                for tok, exp in h["probes"].items():
                    if exp > now:
                        probes[tok] = exp
                        live += 1
                        if earliest < 0 or exp < earliest:
                            earliest = exp
                    else:
                        changed = True
            if live + hn < hoc:
                probes[token] = now + lease
                granted = 1
                changed = True
            elif earliest >= 0:
                ra = earliest - now
    reply_h = h
    if changed:
        h = dict(h)
        h.update(st=st, gen=gen, hn=hn, probes=probes)
        if from_ == 1:
            h.pop("hf", None)
            h.pop("hw", None)
        _save(store, key, h, args[4], now_us)
        reply_h = h
    state = ov if ov else st
    return [state, int(gen), math.floor(ra + 0.5), granted, from_, int(reply_h.get("n", 0)),
            int(reply_h.get("f", 0)), int(reply_h.get("s", 0))]


@memory_op("breaker_control")
def control(store: MemoryStore, keys: Sequence[str], args: Sequence[Any], now_us: int) -> list[int]:
    now = float(now_us)
    key = keys[0]
    op = int(args[1])
    h: dict[str, Any] = store.get(key, now_us) or {}
    before = _state(h)
    if op == 1:
        h = {"st": 0, "gen": h.get("gen", 0) + 1}
        _save(store, key, h, args[2], now_us)
    elif op >= 2 and h.get("ov", 0) != op + 1:
        h = dict(h)
        h.update(st=h.get("st", 0), ov=op + 1, gen=h.get("gen", 0) + 1)
        _save(store, key, h, args[2], now_us)
    after = _state(h)
    return _reply(h, now, 0, before if after != before else -1)


def _trip(store: MemoryStore, key: str, h: dict[str, Any], to: int, now: float, now_us: int,
          args: Sequence[Any]) -> dict[str, Any]:
    """The ``transition(to)`` of ``breaker_record.lua``: a fresh hash (window and probes go)."""
    trips = h.get("trips", 0)
    if to == 1:
        trips += 1
        dur = float(args[11])
        maxb = float(args[13])
        mult = float(args[12])
        for _ in range(2, trips + 1):
            dur = dur * mult
            if dur >= maxb:
                break
        if dur > maxb:
            dur = maxb
        until = now + dur
    else:
        trips = 0
        until = 0.0
    new = {"st": to, "gen": h.get("gen", 0) + 1, "until": until, "trips": trips}
    ov = h.get("ov", 0)
    if ov:
        new["ov"] = ov
    _save(store, key, new, args[15], now_us)
    return new


@memory_op("breaker_record")
def record(store: MemoryStore, keys: Sequence[str], args: Sequence[Any], now_us: int) -> list[int]:
    # the breaker's hot path (one call per protected call in CLOSED): kept flat on purpose
    now = float(now_us)
    key = keys[0]
    # mutated in place: the backend's lock is held for the whole operation
    entry = store.entry(key, now_us)
    h: dict[str, Any] = entry[0] if entry is not None else {}
    get = h.get
    st = get("st", 0)
    ov = get("ov", 0)
    gen = get("gen", 0)
    verdict = int(args[3])
    fail = 1 if verdict == 2 else 0
    slow = 0 if verdict == 0 else int(args[4])
    from_ = -1

    if ov == 3 or ov == 4 or int(args[1]) != gen:
        return _reply(h, now, 1, from_)

    if ov == 0 and st == 2:
        frate = float(args[9])
        srate = float(args[10])
        hoc = float(args[14])
        token = _text(args[2])
        probes = get("probes")
        if token == "" or probes is None or token not in probes:
            return _reply(h, now, 1, from_)
        probes = {t: e for t, e in probes.items() if t != token}
        hn = get("hn", 0)
        hf = get("hf", 0)
        hw = get("hw", 0)
        if verdict != 0:
            hn += 1
            hf += fail
            hw += slow
        if hf / hoc >= frate or hw / hoc >= srate:
            from_ = st
            h = _trip(store, key, h, 1, now, now_us, args)
        elif hn >= hoc:
            from_ = st
            h = _trip(store, key, h, 0, now, now_us, args)
        else:
            h.update(probes=probes, hn=hn, hf=hf, hw=hw)
            _save(store, key, h, args[15], now_us)
        return _reply(h, now, 1, from_)

    if verdict == 0 or (st != 0 and ov != 5):
        return _reply(h, now, 1, from_)

    size = int(args[6])
    n = get("n", 0)
    f = get("f", 0)
    s = get("s", 0)
    if int(args[5]) == 1:
        # the count window's slots r<i> (1 + failure + 2 * slow) as one preallocated ring
        seq = get("seq", 0)
        ring = get("ring")
        if ring is None or len(ring) < size:  # a new window, or a larger size configured
            ring = h["ring"] = [*(ring or ()), *[0] * (size - len(ring or ()))]
        old = ring[seq]
        if old > 0:
            n -= 1
            f -= (old - 1) % 2
            s -= (old - 1) // 2
        ring[seq] = 1 + fail + 2 * slow
        h["seq"] = (seq + 1) % size
    else:
        b = math.floor(now / float(args[7]))
        last = get("last", b)
        if b > last:
            steps = min(b - last, size)
            for j in range(1, steps + 1):
                i = (last + j) % size
                n -= h.pop(f"c{i}", 0)
                f -= h.pop(f"e{i}", 0)
                s -= h.pop(f"w{i}", 0)
            last = b
        i = last % size
        h[f"c{i}"] = get(f"c{i}", 0) + 1
        if fail:
            h[f"e{i}"] = get(f"e{i}", 0) + 1
        if slow:
            h[f"w{i}"] = get(f"w{i}", 0) + 1
        h["last"] = last
    n += 1
    f += fail
    s += slow
    if ov == 0 and n >= int(args[8]) and (f / n >= float(args[9]) or s / n >= float(args[10])):
        from_ = st
        h = _trip(store, key, h, 1, now, now_us, args)
        return _reply(h, now, 1, from_)
    h["st"] = st
    h["gen"] = gen
    h["n"] = n
    h["f"] = f
    h["s"] = s
    ttl_us = int(args[15]) * 1000
    if entry is None:
        store.set(key, h, ttl_us, now_us)
    else:
        entry[1] = now_us + max(ttl_us, 1)
    # CLOSED or METRICS_ONLY, no transition: no break, so retry_after is 0
    return [ov if ov else st, int(gen), 0, 1, -1, int(n), int(f), int(s)]
