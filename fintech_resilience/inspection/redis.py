"""What the operator commands read from Redis: live state, record details, server checks.

Everything here is read-only except through the patterns' own operator APIs
(:meth:`CircuitBreaker.force_open` and friends, :meth:`IdempotencyStore.forget`), which
:mod:`fintech_resilience.cli` calls. Keys are found with ``SCAN`` (never ``KEYS``) on every
primary, with the patterns of :mod:`fintech_resilience.core.storage_keys`:

* ``<ns>:cb:{<name>}`` - a circuit breaker (hash), ``<ns>:rb:{<name>}`` - a retry budget (hash),
* ``<ns>:rl.<algorithm>:{<name>:<digest>}:<window seconds>`` - a rate-limit counter,
* ``<ns>:cc:{<name>:<digest>}`` - a concurrency limiter's leases (sorted set),
* ``<ns>:idem:{<store>:<digest>}`` - an idempotency record (hash),
* ``<ns>:audit:{<stream>}`` - an audit stream.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

from ..backends.redis import RedisBackend, script
from ..backends.resolve import redact_url
from ..breaker.state import BreakerState

__all__ = ["Finding", "RedisOps", "idempotency_record", "redact_url", "status"]

US = 1_000_000
SCAN_COUNT = 1000
_TAGGED = re.compile(r"^[^{]*\{([^}]*)\}")


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _num(value: Any, default: float = 0.0) -> float:
    if value is None:
        return default
    try:
        return float(_text(value))
    except ValueError:
        return default


def tag(key: str) -> str:
    """The part of a key between its first ``{`` and ``}`` (the hash tag)."""
    match = _TAGGED.match(key)
    return match.group(1) if match else key


class RedisOps:
    """A connection for operator commands: the backend, its sync client and its primaries."""

    def __init__(self, url: str, *, timeout: float = 2.0) -> None:
        self.url = url
        self.backend = RedisBackend.from_url(url, timeout=timeout, connect_timeout=timeout)
        self.client = self.backend.client
        self.topology = self.backend.topology
        if self.topology == "cluster":
            self.nodes = [n.redis_connection for n in self.client.get_primaries()]
        else:
            self.nodes = [self.client]

    def ping(self) -> None:
        """Raise (redis-py's error) unless every primary answers."""
        for node in self.nodes:
            node.ping()

    def close(self) -> None:
        """Close the connections."""
        self.backend.close()

    def scan(self, pattern: str) -> Iterator[tuple[Any, str]]:
        """``(node, key)`` for every key matching ``pattern`` on every primary."""
        for node in self.nodes:
            for key in node.scan_iter(match=pattern, count=SCAN_COUNT):
                yield node, _text(key)

    def now_us(self) -> int:
        """The server's clock (``TIME``), in microseconds."""
        seconds, micros = self.nodes[0].time()
        return int(seconds) * US + int(micros)

    def exists(self, key: str) -> bool:
        """Whether ``key`` exists (routed to its slot on a Cluster)."""
        return bool(self.client.exists(key))


def _hashes(ops: RedisOps, pattern: str,
            fields: tuple[str, ...]) -> Iterator[tuple[str, list[Any]]]:
    """``(key, values)`` of every hash matching ``pattern``, read in pipelines per node."""
    batch: dict[int, tuple[Any, list[str]]] = {}
    for node, key in ops.scan(pattern):
        entry = batch.setdefault(id(node), (node, []))
        entry[1].append(key)
        if len(entry[1]) >= SCAN_COUNT:
            yield from _read(entry[0], entry[1], fields)
            entry[1].clear()
    for node, keys in batch.values():
        yield from _read(node, keys, fields)


def _read(node: Any, keys: list[str], fields: tuple[str, ...]) -> Iterator[tuple[str, list[Any]]]:
    if not keys:
        return
    pipe = node.pipeline(transaction=False)
    for key in keys:
        pipe.hmget(key, *fields)
    yield from zip(keys, pipe.execute(), strict=True)


def breaker_row(name: str, values: list[Any], now: int) -> dict[str, Any]:
    """One breaker as ``status`` shows it (``values``: st, ov, gen, until, n, f, s, trips)."""
    st, ov = int(_num(values[0])), int(_num(values[1]))
    state = BreakerState(ov or st)
    until = _num(values[3])
    retry_after = max(0.0, (until - now) / US) if state is BreakerState.OPEN else 0.0
    return {"name": name, "state": state.name, "generation": int(_num(values[2])),
            "calls": int(_num(values[4])), "failures": int(_num(values[5])),
            "slow_calls": int(_num(values[6])), "consecutive_trips": int(_num(values[7])),
            "retry_after": round(retry_after, 3)}


BREAKER_FIELDS = ("st", "ov", "gen", "until", "n", "f", "s", "trips")
RECORD_FIELDS = ("st", "lu", "fen", "ca", "co", "res")


def record_state(values: list[Any], now: int) -> tuple[str, float]:
    """``(state, seconds)`` of an idempotency record: in_progress (lease left),
    outcome_unknown (since the lease expired), completed (age), or free (released)."""
    st = _text(values[0]) if values[0] is not None else ""
    if st == "p":
        lease_until = _num(values[1])
        if lease_until > now:
            return "in_progress", (lease_until - now) / US
        return "outcome_unknown", (now - lease_until) / US
    if st == "c":
        return "completed", (now - _num(values[4], now)) / US
    return "free", 0.0


def status(ops: RedisOps, namespace: str, limit: int) -> dict[str, Any]:
    """Everything ``fintech-resilience status`` shows, as one JSON-friendly dict."""
    now = ops.now_us()
    breakers = sorted((breaker_row(tag(key), values, now)
                       for key, values in _hashes(ops, f"{namespace}:cb:*", BREAKER_FIELDS)),
                      key=lambda row: row["name"])
    budgets = [{"name": name, "tokens": tokens} for name, tokens in sorted(
        (tag(key), round(_num(values[0]) / US, 3))
        for key, values in _hashes(ops, f"{namespace}:rb:*", ("tokens",)))]
    limits: Counter[tuple[str, str]] = Counter()
    for _node, key in ops.scan(f"{namespace}:rl.*"):
        algorithm = key.split(":", 2)[1][3:]
        limits[(tag(key).split(":", 1)[0], algorithm)] += 1
    concurrency: defaultdict[str, dict[str, int]] = defaultdict(lambda: {"keys": 0, "held": 0})
    for node, key in ops.scan(f"{namespace}:cc:*"):
        row = concurrency[tag(key).split(":", 1)[0]]
        row["keys"] += 1
        row["held"] += int(node.zcount(key, now, "+inf"))
    stores: defaultdict[str, Counter[str]] = defaultdict(Counter)
    in_flight: list[dict[str, Any]] = []
    for key, values in _hashes(ops, f"{namespace}:idem:*", RECORD_FIELDS[:5]):
        store, _, key_hash = tag(key).partition(":")
        state, seconds = record_state(values, now)
        stores[store][state] += 1
        if state in ("in_progress", "outcome_unknown") and len(in_flight) < limit:
            in_flight.append({"store": store, "key_hash": key_hash, "record_key": key,
                              "state": state, "seconds": round(seconds, 3),
                              "fencing_token": int(_num(values[2]))})
    streams = []
    for node, key in ops.scan(f"{namespace}:audit:*"):
        if _text(node.type(key)) == "stream":
            streams.append({"stream": tag(key), "entries": int(node.xlen(key))})
    return {
        "redis": redact_url(ops.url), "topology": ops.topology, "namespace": namespace,
        "breakers": breakers, "retry_budgets": budgets,
        "rate_limits": [{"name": n, "algorithm": a, "active_keys": c}
                        for (n, a), c in sorted(limits.items())],
        "concurrency": [{"name": n, **row} for n, row in sorted(concurrency.items())],
        "idempotency": {"stores": {s: dict(c) for s, c in sorted(stores.items())},
                        "in_flight": sorted(in_flight, key=lambda r: -r["seconds"])},
        "audit_streams": sorted(streams, key=lambda row: row["stream"]),
    }


def idempotency_record(ops: RedisOps, record_key: str) -> dict[str, Any] | None:
    """What an operator may see of one record - never its body, owner token or fingerprint."""
    values = ops.client.hmget(record_key, *RECORD_FIELDS)
    if not ops.exists(record_key):
        return None
    now = ops.now_us()
    state, seconds = record_state(values, now)
    store, _, key_hash = tag(record_key).partition(":")
    info: dict[str, Any] = {"record_key": record_key, "store": store, "key_hash": key_hash,
                            "state": state, "fencing_token": int(_num(values[2])),
                            "ttl": round(max(0, int(ops.client.pttl(record_key))) / 1000, 3)}
    if state in ("in_progress", "outcome_unknown"):
        info["lease_left" if state == "in_progress" else "lease_expired_ago"] = round(seconds, 3)
    if values[3] is not None:
        info["claimed_ago"] = round((now - _num(values[3])) / US, 3)
    if state == "completed":
        info["completed_ago"] = round(seconds, 3)
        info["response"] = _response_summary(values[5])
    return info


def _response_summary(raw: Any) -> dict[str, Any]:
    """Kind, status and size of a stored response (see ``idempotency.record``); no body."""
    data = raw if isinstance(raw, bytes) else _text(raw or "").encode()
    if not data:
        return {"stored": False}
    if data[0] == 2:
        return {"stored": True, "encrypted": True, "bytes": len(data)}
    if data[0] != 1 or len(data) < 5:
        return {"stored": True, "format": "unknown", "bytes": len(data)}
    size = int.from_bytes(data[1:5], "big")
    try:
        header = json.loads(data[5:5 + size])
    except ValueError:
        return {"stored": True, "format": "unknown", "bytes": len(data)}
    return {"stored": True, "encrypted": False, "kind": header.get("kind"),
            "status": header.get("status"), "replayable": header.get("replayable"),
            "redacted": header.get("redacted", False), "body_bytes": len(data) - 5 - size}


@dataclass(frozen=True, slots=True)
class Finding:
    """One line of ``fintech-resilience check``: ``level`` is ok, info, warn or error."""

    name: str
    level: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        """JSON form."""
        return {"name": self.name, "level": self.level, "detail": self.detail}


def script_names() -> list[str]:
    """Every atomic operation the library ships (``backends/lua/*.lua``)."""
    folder = resources.files("fintech_resilience.backends").joinpath("lua")
    return sorted(p.name[:-4] for p in folder.iterdir()
                  if p.name.endswith(".lua") and not p.name.startswith("_"))  # _*: fragments


def check(ops: RedisOps, *, load_scripts: bool = False,
          max_skew: float = 1.0) -> list[Finding]:
    """The server checks of ``fintech-resilience check``."""
    found: list[Finding] = []
    infos = [node.info("server") for node in ops.nodes]
    versions = sorted({str(i.get("redis_version", "?")) for i in infos})
    major = min(int(v.split(".")[0]) if v[0].isdigit() else 0 for v in versions)
    where = f"{len(ops.nodes)} primaries" if ops.topology == "cluster" else ops.topology
    found.append(Finding("version", "ok" if major >= 6 else "error",
                         f"Redis {', '.join(versions)} ({where})"
                         + ("" if major >= 6 else "; Redis 6 or newer is required")))
    policies = []
    try:
        policies = ops.backend.eviction_policies()
    except Exception as exc:  # CONFIG may be disabled (managed services)
        found.append(Finding("eviction", "warn", f"cannot read maxmemory-policy ({exc}); make"
                             " sure it is noeviction where idempotency records live"))
    if policies:
        risky = sorted({p for p in policies if p != "noeviction"})
        found.append(Finding(
            "eviction", "warn" if risky else "ok",
            f"maxmemory-policy {', '.join(sorted(set(policies)))}"
            + (": Redis may evict idempotency records under memory pressure (a retried charge"
               " would then run twice); set maxmemory-policy noeviction" if risky else "")))
    if ops.topology == "cluster":
        raw = ops.nodes[0].execute_command("CLUSTER INFO")
        text = _text(raw) if not isinstance(raw, dict) else "\n".join(
            f"{k}:{v}" for k, v in raw.items())
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        ok_slots = int(fields.get("cluster_slots_ok", "0"))
        healthy = fields.get("cluster_state", "").strip() == "ok" and ok_slots == 16384
        found.append(Finding("cluster", "ok" if healthy else "error",
                             f"cluster_state {fields.get('cluster_state', '?').strip()},"
                             f" {ok_slots}/16384 slots served by {len(ops.nodes)} primaries"))
    names = script_names()
    shas = [script(n)[0] for n in names]
    missing = 0
    for node in ops.nodes:
        present = node.script_exists(*shas)
        for name, there in zip(names, present, strict=True):
            if not there:
                missing += 1
                if load_scripts:
                    node.script_load(script(name)[1])
    total = len(shas) * len(ops.nodes)
    if missing == 0:
        found.append(Finding("scripts", "ok", f"{total}/{total} scripts cached"))
    elif load_scripts:
        found.append(Finding("scripts", "ok", f"loaded {missing} missing scripts;"
                             f" {total}/{total} cached now"))
    else:
        found.append(Finding("scripts", "info", f"{total - missing}/{total} scripts cached; the"
                             " others load on first use (one extra round trip each, e.g. after"
                             " a restart or failover); --load-scripts loads them now"))
    worst = 0.0
    for node in ops.nodes:
        before = time.time()
        seconds, micros = node.time()
        after = time.time()
        skew = int(seconds) + int(micros) / US - (before + after) / 2
        worst = max(worst, abs(skew))
    found.append(Finding(
        "clock", "ok" if abs(worst) <= max_skew else "warn",
        f"client and Redis clocks differ by {worst * 1000:.1f} ms"
        + ("" if abs(worst) <= max_skew else
           "; decisions use Redis TIME, but audit records and logs use this host's clock:"
           " fix NTP")))
    return found
