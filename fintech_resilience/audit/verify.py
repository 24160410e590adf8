"""Verifying an audit stream's hash chain, and the ``audit verify`` command (see ``audit``)."""

from __future__ import annotations

import argparse
import hmac
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any, Final

from ..backends.base import Backend
from ..backends.resolve import check_url, resolve_backend
from ..core import storage_keys as _keys
from ..errors import BackendUnavailable, ConfigurationError
from .record import AuditRecord, chain_hash, stream_key

__all__ = ["BrokenEntry", "VerifyReport", "verify_cli", "verify_stream"]

@dataclass(frozen=True, slots=True)
class BrokenEntry:
    """An entry that breaks the chain: its stream id and why."""

    id: str
    reason: str


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The result of :func:`verify_stream`.

    ``from_genesis`` is False when the oldest entry still present chains over an older one that
    is gone (trimmed by ``maxlen`` or expired): the chain is verified from there on.
    """

    checked: int
    broken: tuple[BrokenEntry, ...]
    head: str
    from_genesis: bool

    @property
    def ok(self) -> bool:
        """True when no entry breaks the chain."""
        return not self.broken


HASH_MISMATCH: Final = "hash mismatch: the record, prev_hash or hash of this entry was changed"
CHAIN_BREAK: Final = ("chain break: prev_hash is not the previous entry's hash (an entry before"
                      " this one was deleted, inserted or reordered)")
NOT_A_RECORD: Final = "not an audit record: the record field is missing or is not valid JSON"
HEAD_MISMATCH: Final = ("head mismatch: the newest entry is not the expected head (the newest"
                        " entries were removed or replaced)")


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def verify_stream(backend: Backend | str, *, stream: str = "audit", key: bytes | None = None,
                  namespace: str = _keys.DEFAULT_NAMESPACE, expected_head: str | None = None,
                  batch: int = 500) -> VerifyReport:
    """Check the hash chain of an audit stream written with ``RedisStreamSink(chain=True)``.

    Each entry's ``hash`` must equal :func:`chain_hash` over its ``prev_hash`` and record (with
    the same ``key``), and its ``prev_hash`` must equal the previous entry's ``hash``. A changed
    record or hash is reported at that entry; a deleted or inserted entry at the entry after the
    gap. Removing the newest entries leaves a valid chain: pass the head you saw last
    (``expected_head``, e.g. kept by a monitoring job) to detect that too. ``backend`` is a
    backend or its URL.
    """
    if not isinstance(backend, Backend):
        backend = resolve_backend(check_url(backend))
    key_name = stream_key(stream, namespace)
    broken: list[BrokenEntry] = []
    previous: str | None = None
    from_genesis = True
    checked = 0
    last_id = ""
    after = "-"
    while True:
        flat = backend.run("audit_read", [key_name], [0, after, batch])
        if not flat:
            break
        for i in range(0, len(flat), 4):
            entry_id, body, prev, digest = (_text(flat[i]), flat[i + 1], _text(flat[i + 2]),
                                            _text(flat[i + 3]))
            body = body if isinstance(body, bytes) else str(body).encode()
            checked += 1
            try:
                AuditRecord.from_json(body)
            except (ValueError, KeyError, TypeError):
                broken.append(BrokenEntry(entry_id, NOT_A_RECORD))
            else:
                if not hmac.compare_digest(chain_hash(prev, body, key), digest):
                    broken.append(BrokenEntry(entry_id, HASH_MISMATCH))
            if previous is None:
                from_genesis = prev == ""
            elif prev != previous:
                broken.append(BrokenEntry(entry_id, CHAIN_BREAK))
            previous = digest
            last_id = entry_id
        after = last_id
        if len(flat) < 4 * batch:
            break
    head = previous or ""
    if expected_head is not None and head != expected_head:
        broken.append(BrokenEntry(last_id, HEAD_MISMATCH))
    return VerifyReport(checked, tuple(broken), head, from_genesis)


def verify_cli(argv: Sequence[str] | None = None, *, out: IO[str] | None = None) -> int:
    """``fintech-resilience audit verify``: check a stream's hash chain; exit 0 if intact, 1 if
    broken, 2 on bad usage or when the backend cannot be reached.

    The HMAC key is read from an environment variable (``--key-env``, default
    ``FINTECH_RESILIENCE_AUDIT_KEY``; hex or raw text), never from the command line.
    """
    out = out if out is not None else sys.stdout
    parser = argparse.ArgumentParser(
        prog="fintech-resilience audit verify",
        description="Verify the hash chain of an audit stream written by RedisStreamSink.",
    )
    parser.add_argument("--redis", required=True, help="redis://, rediss://, redis+cluster://...")
    parser.add_argument("--stream", default="audit", help="stream name (default: audit)")
    parser.add_argument("--namespace", default=_keys.DEFAULT_NAMESPACE)
    parser.add_argument("--key-env", default="FINTECH_RESILIENCE_AUDIT_KEY",
                        help="environment variable holding the HMAC key (hex or text)")
    parser.add_argument("--expected-head", default=None, help="the head hash seen last time")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:
        return int(exc.code or 0) if isinstance(exc.code, int) else 2
    raw_key = os.environ.get(args.key_env)
    key: bytes | None = None
    if raw_key:
        try:
            key = bytes.fromhex(raw_key)
        except ValueError:
            key = raw_key.encode()
    from ..backends.redis import RedisBackend

    try:
        backend = RedisBackend.from_url(args.redis, timeout=5.0)
        try:
            report = verify_stream(backend, stream=args.stream, key=key,
                                   namespace=args.namespace, expected_head=args.expected_head)
        finally:
            backend.close()
    except (BackendUnavailable, ConfigurationError) as exc:
        print(f"error: {exc}", file=out)
        return 2
    if args.json:
        print(json.dumps({"ok": report.ok, "checked": report.checked, "head": report.head,
                          "from_genesis": report.from_genesis,
                          "broken": [{"id": b.id, "reason": b.reason} for b in report.broken]}),
              file=out)
    else:
        for entry in report.broken:
            print(f"BROKEN {entry.id}: {entry.reason}", file=out)
        state = "intact" if report.ok else f"{len(report.broken)} problem(s)"
        origin = "from genesis" if report.from_genesis else "from the oldest retained entry"
        print(f"{stream_key(args.stream, args.namespace)}: {report.checked} entries checked"
              f" {origin}, chain {state}; head {report.head or '-'}", file=out)
    return 0 if report.ok else 1

