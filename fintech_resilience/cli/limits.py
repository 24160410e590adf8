"""``fintech-resilience limit show|reset NAME KEY``: one key of one rate limiter, in Redis.

KEY is the key as the application passes it to the limiter (``merchant:42``, a card
fingerprint, ``p:alice`` as :func:`~fintech_resilience.keys.principal_or_ip` makes it); it is
hashed into the storage key as the limiter does it (``core/storage_keys``), and only its hash is
printed or audited.

* With ``--limits SPEC`` (and ``--algorithm``, default ``gcra``) the command builds the
  limiter: ``show`` prints each limit's remaining quota and reset time (the limiter's ``stats``:
  one read-only script), ``reset`` forgets exactly the keys of those limits (its ``reset``).
* Without, it finds what is stored for the key with ``SCAN`` on every primary - every algorithm
  and window, whatever the limits were: ``show`` prints it (GCRA: how long until the bucket is
  full again; windows: the counts), ``reset`` forgets all of it (the ``ratelimit_reset`` script).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from ..audit import log as _audit
from ..core import storage_keys
from ..inspection.redis import RedisOps, _num
from ..ratelimit.accounting import reset_record
from ..ratelimit.limiter import RateLimiter

__all__ = ["limit_command", "limit_lines"]

US = 1_000_000


def _stored(ops: RedisOps, namespace: str, name: str, key: str) -> list[str]:
    """Every storage key of ``key`` under limiter ``name``: any algorithm, any window."""
    pattern = storage_keys.user_key(namespace, "rl.*", name, key) + ":*"
    return sorted(found for _node, found in ops.scan(pattern))


def _describe(ops: RedisOps, stored: list[str]) -> list[dict[str, Any]]:
    """What each stored key holds, read on the server's clock."""
    now = ops.now_us()
    rows = []
    for found in stored:
        algorithm = found.split(":", 2)[1].removeprefix("rl.")
        window = int(found.rsplit(":", 1)[1])
        row: dict[str, Any] = {"algorithm": algorithm, "window": window, "storage_key": found}
        if algorithm == "gcra":
            tat = _num(ops.client.get(found), now)
            row["full_in"] = round(max(0.0, tat - now) / US, 3)
        else:
            w, c, p = ops.client.hmget(found, "w", "c", "p")
            index = now // (window * US)
            stored_index = int(_num(w, -2))
            current = _num(c) if stored_index >= index else 0.0
            if algorithm == "sliding_window":
                previous = (_num(p) if stored_index >= index
                            else _num(c) if stored_index == index - 1 else 0.0)
                row["previous"] = int(previous)
            row["count"] = int(current)
        row["ttl"] = round(max(0, int(ops.client.pttl(found))) / 1000, 3)
        rows.append(row)
    return rows


def limit_command(args: argparse.Namespace, ops: RedisOps, audit: _audit.AuditLog | None,
                  actor: str) -> dict[str, Any]:
    """Run ``limit show|reset``; the result as a JSON-friendly dict. Raises
    ConfigurationError for bad input and LookupError when nothing is stored for the key."""
    name = storage_keys.validate_name(args.name, "limiter name")
    key_hash = storage_keys.digest(args.key)  # refuses an empty or oversized key
    result: dict[str, Any] = {"ok": True, "name": name, "key_hash": key_hash,
                              "action": args.action}
    if args.limits:
        limiter = RateLimiter(args.limits, backend=ops.backend, algorithm=args.algorithm,
                              name=name, namespace=args.namespace, on_backend_error="raise",
                              audit=audit)
        exact = limiter.storage_keys(args.key)
        result["stored"] = bool(ops.client.exists(*exact))
        result["limits"] = [
            {"policy": st.policy, "limit": st.limit, "window": int(st.window),
             "remaining": st.remaining, "reset_after": round(st.reset_after, 3)}
            for st in limiter.stats(args.key)]
        if args.action == "reset":
            if not result["stored"]:
                raise LookupError(f"nothing stored for this key under {args.algorithm} limiter"
                                  f" {name!r} with limits {args.limits!r}")
            limiter.reset(args.key, actor=actor)
        return result
    stored = _stored(ops, args.namespace, name, args.key)
    if not stored:
        raise LookupError(f"nothing stored for this key under rate limiter {name!r} (never"
                          " limited, expired, or another name or namespace)")
    result["stored"] = _describe(ops, stored)
    if args.action == "reset":
        ops.backend.run("ratelimit_reset", stored, (0,))
        if audit is not None:
            audit.record(_audit.EventType.OPERATOR_OVERRIDE,
                         **reset_record(name, actor, args.key))
    return result


def limit_lines(result: dict[str, Any]
                ) -> tuple[str, str, tuple[str, ...], list[Sequence[Any]]]:
    """The title, table title, header and rows ``limit`` prints."""
    title = f"rate limiter {result['name']!r}, key hash {result['key_hash']}"
    reset = result["action"] == "reset"
    if reset:
        title = f"reset {title}: its whole quota is available again"
    if "limits" in result:
        table = "before the reset" if reset else (
            "limits" if result["stored"] else "limits (nothing stored: the whole quota)")
        limits: list[Sequence[Any]] = [
            (row["policy"], row["limit"], row["remaining"], f"{row['reset_after']}s")
            for row in result["limits"]]
        return title, table, ("POLICY", "LIMIT", "REMAINING", "RESET_AFTER"), limits
    rows: list[Sequence[Any]] = []
    for row in result["stored"]:
        if row["algorithm"] == "gcra":
            state = f"full again in {row['full_in']}s"
        elif row["algorithm"] == "sliding_window":
            state = f"count {row['count']}, previous window {row['previous']}"
        else:
            state = f"count {row['count']}"
        rows.append((row["algorithm"], f"{row['window']}s", state, f"{row['ttl']}s"))
    table = "forgotten state" if reset else "stored state"
    return title, table, ("ALGORITHM", "WINDOW", "STATE", "TTL"), rows
