"""Memory twins of ``breaker_*.lua``: the breaker's hash is a dict, arithmetic step for step.

Field names and meanings are documented in ``backends/lua/breaker_record.lua``. Probe permits are
a dict ``token -> lease expiry (us)`` instead of the ``token=expiry;`` string Redis stores.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from . import memory_op

if TYPE_CHECKING:
    from ..memory import MemoryBackend, MemoryStore


class CountRing:
    """A count window: ``size`` slots (0 empty, else 1 + failure + 2 * slow) and their totals.

    The Redis hash's ``r<i>`` fields, ``seq``, ``n``, ``f`` and ``s`` as one object. Slots are
    taken from an atomic counter (``take() % size`` is the slot Redis calls ``seq``), so the
    lock-free success path of :func:`closed_success_bound` and the general operation, which holds
    the backend's lock, never take the same slot at once. Slots and totals change only under the
    lock.
    """

    __slots__ = ("f", "n", "ring", "s", "size", "take")

    def __init__(self, size: int) -> None:
        self.size = size
        self.ring = [0] * size
        self.take: Callable[[], int] = itertools.count().__next__
        self.n = self.f = self.s = 0

    def resize(self, size: int, seq: int) -> None:
        """Another window size configured: slot ``seq`` is in use, the next is ``seq + 1``."""
        if len(self.ring) < size:
            self.ring += [0] * (size - len(self.ring))
        self.size = size
        self.take = itertools.count(seq + 1).__next__

    def replace(self, seq: int, value: int) -> None:
        """Put the outcome ``value`` in slot ``seq``; the one it replaces leaves the totals."""
        ring = self.ring
        old = ring[seq]
        ring[seq] = value
        if old:
            self.n -= 1
            self.f -= (old - 1) % 2
            self.s -= (old - 1) // 2
        self.n += 1
        self.f += (value - 1) % 2
        self.s += (value - 1) // 2


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _state(h: dict[str, Any]) -> int:
    ov: int = h.get("ov", 0)
    return ov if ov else int(h.get("st", 0))


def _counts(h: dict[str, Any]) -> list[int]:
    """Calls, failures and slow calls in the window."""
    cw: CountRing | None = h.get("cw")
    if cw is not None:
        return [cw.n, cw.f, cw.s]
    return [int(h.get("n", 0)), int(h.get("f", 0)), int(h.get("s", 0))]


def _reply(h: dict[str, Any], now: float, granted: int, from_: int, ra: float = 0.0) -> list[int]:
    state = _state(h)
    if state == 1 and h.get("until", 0) > now:
        ra = h["until"] - now
    return [state, int(h.get("gen", 0)), math.floor(ra + 0.5), granted, from_, *_counts(h)]


#: the "TTL" of a hash with an override (FORCED_OPEN, DISABLED, METRICS_ONLY): it holds until
#: reset, as the scripts' PERSIST (over 2,000 years, in microseconds)
FOREVER_US = 1 << 56


def _ttl_us(h: dict[str, Any], ttl_ms: Any) -> int:
    return FOREVER_US if h.get("ov") else int(ttl_ms) * 1000


def _save(store: MemoryStore, key: str, h: dict[str, Any], ttl_ms: Any, now_us: int) -> None:
    store.set(key, h, _ttl_us(h, ttl_ms), now_us)


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
    return [state, int(gen), math.floor(ra + 0.5), granted, from_, *_counts(reply_h)]


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
    if int(args[5]) == 1:
        cw = get("cw")
        if cw is None:
            cw = h["cw"] = CountRing(size)
        seq = cw.take() % cw.size
        if cw.size != size:  # another size configured: continue from here, as Redis does
            cw.resize(size, seq)
        cw.replace(seq, 1 + fail + 2 * slow)
        n, f, s = cw.n, cw.f, cw.s
    else:
        n = get("n", 0) + 1
        f = get("f", 0) + fail
        s = get("s", 0) + slow
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
        h["n"] = n
        h["f"] = f
        h["s"] = s
    if ov == 0 and n >= int(args[8]) and (f / n >= float(args[9]) or s / n >= float(args[10])):
        from_ = st
        h = _trip(store, key, h, 1, now, now_us, args)  # a fresh hash: the window goes
        return _reply(h, now, 1, from_)
    h["st"] = st
    h["gen"] = gen
    ttl_us = _ttl_us(h, args[15])
    if entry is None:
        store.set(key, h, ttl_us, now_us)
    else:
        entry[1] = now_us + max(ttl_us, 1)
    # CLOSED or METRICS_ONLY, no transition: no break, so retry_after is 0
    return [ov if ov else st, int(gen), 0, 1, -1, int(n), int(f), int(s)]


def closed_success_bound(backend: MemoryBackend, key: str, size: int, ttl_ms: int,
                         now_us: Callable[[], int] | None) -> Callable[[int], bool]:
    """``breaker_record`` of a plain success in CLOSED, bound to one breaker's key.

    ``record(gen)`` counts a success (not slow) of generation ``gen`` exactly as :func:`record`
    would and returns True, or counts nothing and returns False when the general operation must
    decide: the key is missing or expired, the generation moved on, the state is not plain
    CLOSED, or the count window is not full yet (a success can then trip the breaker by reaching
    ``minimum_calls``). In a full window a success can only lower the rates, so it never trips.

    The common case takes no lock and reads no clock: the call's slot comes from the window's
    atomic counter, a success landing on a success changes nothing else, and the key's expiry is
    checked and renewed on every 16th call only (so a breaker making fewer than 16 calls a day
    forgets its window after a day; Redis renews it on every call). Only when the outcome leaving
    the window was a failure or a slow call are the totals corrected, under the backend's lock.
    """
    store = backend.store
    data = store.data
    lock = backend.lock
    clock = backend.clock_for(now_us)
    time_ns = time.time_ns
    ttl_us = max(ttl_ms * 1000, 1)

    def record(gen: int) -> bool:
        entry = data.get(key)
        if entry is None:
            return False  # the general path creates it
        h = entry[0]
        cw: CountRing | None = h.get("cw")
        # a hash with a count window is CLOSED or has an override (METRICS_ONLY)
        if cw is None or h["gen"] != gen or "ov" in h or cw.size != size or cw.n < size:
            return False
        i = cw.take()
        if not i & 15:
            now = time_ns() // 1000 if clock is None else clock()
            if entry[1] <= now:
                with lock:  # expired: drop it, so the general path starts afresh
                    store.entry(key, now)
                return False
            entry[1] = now + ttl_us
        seq = i % size
        if cw.ring[seq] != 1:
            with lock:
                cw.replace(seq, 1)
        return True

    return record


def seed(backend: MemoryBackend, key: str, state: int, gen: int, *, break_ends_us: int,
         counts: Sequence[int], counts_at_us: int, window: Sequence[float], ttl_ms: int,
         now_us: int) -> None:
    """Make ``backend``'s breaker hash say what a breaker's last reply said.

    The per-process fallback of ``on_backend_error="local"`` then goes on from the state the
    process knew instead of from a fresh CLOSED breaker: OPEN stays open until
    ``break_ends_us``; an override (FORCED_OPEN, DISABLED, METRICS_ONLY) holds; HALF_OPEN admits
    ``half_open_calls`` fresh probes; CLOSED and METRICS_ONLY keep the window's ``counts``
    (calls, failures, slow calls). A time window holds them in the bucket of ``counts_at_us``,
    when they were learned, so they leave the window no earlier than they would have.
    ``window`` is ``(kind, slots, bucket_us)`` as in ``breaker_record``'s arguments 6-8; times
    are in the backend's microseconds.
    """
    h: dict[str, Any] = {"st": 0, "gen": gen}
    if state == 1:
        h.update(st=1, until=float(break_ends_us), trips=1)
    elif state == 2:
        h["st"] = 2
    elif state >= 3:
        h["ov"] = state
    kind, slots, bucket_us = (int(x) for x in window)
    n = min(int(counts[0]), slots) if kind == 1 else int(counts[0])
    f, s = min(int(counts[1]), n), min(int(counts[2]), n)
    if state in (0, 5) and kind == 1:
        ring = h["cw"] = CountRing(slots)
        for i in range(n):
            ring.replace(i, 1 + int(i < f) + 2 * int(i < s))
        ring.take = itertools.count(n).__next__
    elif state in (0, 5) and n:
        bucket = counts_at_us // bucket_us
        if now_us // bucket_us - bucket < slots:  # not yet out of the window
            i = bucket % slots
            h.update(last=bucket, n=n, f=f, s=s)
            h[f"c{i}"], h[f"e{i}"], h[f"w{i}"] = n, f, s
    with backend.lock:
        _save(backend.store, key, h, ttl_ms, now_us)
