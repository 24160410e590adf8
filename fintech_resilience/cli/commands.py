"""The ``fintech-resilience`` command: the demo, and live state for operators.

::

    fintech-resilience demo [--redis URL] [--seconds N] [--seed S] [--plain] [--json]
    fintech-resilience status                        [--redis URL] [--json]
    fintech-resilience breaker open|close|disable|metrics-only|reset NAME [--create]
    fintech-resilience idempotency show|forget KEY   [--store NAME] [--scope P --path /x ...]
    fintech-resilience limit show|reset NAME KEY     [--limits SPEC --algorithm A]
    fintech-resilience check [--load-scripts]
    fintech-resilience audit verify --stream audit   (see docs/audit.md)

Every operator command takes ``--redis URL`` (default: ``$FINTECH_RESILIENCE_REDIS_URL``),
``--namespace`` (default ``fr``) and ``--json``. Exit status: 0 done; 1 the name or record does not
exist, a check failed or the command was refused; 2 bad usage; 3 Redis cannot be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from .._version import __version__
from ..core import storage_keys as _keys

__all__ = ["EXIT_NOT_FOUND", "EXIT_OK", "EXIT_UNREACHABLE", "EXIT_USAGE", "main"]

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
ENV_URL = "FINTECH_RESILIENCE_REDIS_URL"
BREAKER_ACTIONS = {"open": "force_open", "close": "reset", "reset": "reset",
                   "disable": "disable", "metrics-only": "metrics_only"}
_HASH = re.compile(r"[0-9a-f]{32}")


class _Failure(Exception):
    """A command failed: print ``message`` and exit with ``code``."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fintech-resilience",
        description="Rate limits, circuit breakers, retries and idempotency keys for payment"
                    " services: the demo, and live state for operators.",
        epilog="exit status: 0 done; 1 not found, check failed or refused; 2 bad usage;"
               f" 3 Redis unreachable. --redis defaults to ${ENV_URL}.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="a payment API under a flaky PSP: every pattern, live",
                          description="Run a payment API with every pattern wired in, a PSP that"
                          " goes flaky, down and back, and a crowd of clients; then check the"
                          " invariants (exit 0 only if they hold).")
    demo.add_argument("--redis", metavar="URL", default=None,
                      help="run on this Redis (default: in memory)")
    demo.add_argument("--seconds", type=float, default=20.0, help="length of the run (20)")
    demo.add_argument("--seed", type=int, default=7, help="random seed of the load (7)")
    demo.add_argument("--plain", "--no-color", dest="plain", action="store_true",
                      help="plain lines, no colors or in-place updates")
    demo.add_argument("--json", action="store_true", help="print the report as JSON at the end")
    demo.set_defaults(handler=_demo)

    def ops(name: str, help_: str, description: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=description)
        p.add_argument("--redis", metavar="URL", default=None,
                       help=f"redis://, rediss://, redis+sentinel://, redis+cluster:// (default:"
                            f" ${ENV_URL})")
        p.add_argument("--namespace", default=_keys.DEFAULT_NAMESPACE,
                       help="key namespace of the patterns (default: fr)")
        p.add_argument("--timeout", type=float, default=2.0, help="seconds per Redis call (2)")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        return p

    status = ops("status", "breakers, limits, budgets and in-flight idempotency records",
                 "Show the live state kept in Redis (found with SCAN on every primary).")
    status.add_argument("--limit", type=int, default=20,
                        help="in-flight idempotency records listed (20)")
    status.set_defaults(handler=_status)

    breaker = ops("breaker", "open, close, disable or reset a circuit breaker everywhere",
                  "Change a circuit breaker's state for every process: open (FORCED_OPEN:"
                  " reject every call), disable (let every call through, count nothing),"
                  " metrics-only (count, never trip), close / reset (forget the window and any"
                  " override: CLOSED).")
    breaker.add_argument("action", choices=list(BREAKER_ACTIONS))
    breaker.add_argument("name", help="the breaker's name (CircuitBreaker(name=...))")
    breaker.add_argument("--create", action="store_true",
                         help="act even if no process has used this breaker yet")
    _audit_options(breaker)
    breaker.set_defaults(handler=_breaker)

    idem = ops("idempotency", "show or forget one idempotency record",
               "KEY is a record key (fr:idem:{store:hash}), a key hash from logs and audit"
               " records (32 hex digits, with --store), or the client's Idempotency-Key (with"
               " --scope, --path or --route, and the store's secret in --secret-env).")
    idem.add_argument("action", choices=["show", "forget"])
    idem.add_argument("key")
    idem.add_argument("--as", dest="kind", choices=["auto", "record", "hash", "client"],
                      default="auto", help="how to read KEY (default: guess)")
    idem.add_argument("--store", default="default", help="IdempotencyStore(name=...) (default)")
    idem.add_argument("--scope", help="the principal the key belongs to (client keys)")
    idem.add_argument("--method", default="POST", help="HTTP method of the request (POST)")
    idem.add_argument("--path", help="request path of an HTTP record, e.g. /v1/charges")
    idem.add_argument("--route", help="route of an @idempotent function (module.qualname);"
                                      " sets --method CALL")
    idem.add_argument("--secret-env", default="FINTECH_RESILIENCE_IDEMPOTENCY_SECRET",
                      metavar="VAR", help="environment variable holding the store's secret")
    idem.add_argument("--yes", action="store_true",
                      help="forget a record even while its lease is alive")
    idem.set_defaults(handler=_idempotency)

    limit = ops("limit", "show or reset one key of a rate limiter (unblock a merchant)",
                "KEY is the key the application passes to RateLimiter NAME (merchant:42, p:alice,"
                " ...): it is hashed as the limiter does. With --limits the limiter's own stats"
                " and keys; without, what is stored for the key under any algorithm and window"
                " (found with SCAN on every primary).")
    limit.add_argument("action", choices=["show", "reset"])
    limit.add_argument("name", help="the limiter's name (RateLimiter(name=...))")
    limit.add_argument("key", help="the key as the application passes it")
    limit.add_argument("--limits", metavar="SPEC",
                       help="the limiter's limits, e.g. '10/second; 1000/day': remaining quota"
                            " per limit, and a reset of exactly those keys")
    limit.add_argument("--algorithm", default="gcra",
                       choices=["gcra", "sliding_window", "fixed_window"],
                       help="the limiter's algorithm, with --limits (gcra)")
    _audit_options(limit)
    limit.set_defaults(handler=_limit)

    chk = ops("check", "server version, eviction policy, cluster slots, scripts, clock",
              "Check that Redis is fit to hold the patterns' state.")
    chk.add_argument("--load-scripts", action="store_true",
                     help="load the library's Lua scripts on every primary")
    chk.add_argument("--max-skew", type=float, default=1.0,
                     help="clock difference in seconds tolerated (1)")
    chk.set_defaults(handler=_check)

    audit = sub.add_parser("audit", help="verify an audit stream's hash chain",
                           description="fintech-resilience audit verify --redis URL --stream"
                                       " NAME [--json] (see docs/audit.md)", add_help=False)
    audit.add_argument("rest", nargs=argparse.REMAINDER)
    audit.set_defaults(handler=_audit)
    return parser


def _audit_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--actor", default=None,
                        help="who acts, for the audit record (default: the login name)")
    parser.add_argument("--audit-stream", default=None, metavar="STREAM",
                        help="also append an operator.override record to this audit stream")
    parser.add_argument("--audit-key-env", default="FINTECH_RESILIENCE_AUDIT_KEY", metavar="VAR",
                        help="environment variable holding the stream's HMAC chain key")


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None,
         err: TextIO | None = None) -> int:
    """Run the command line; return the exit status."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    try:
        args = _parser().parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler: Callable[[argparse.Namespace, TextIO], int] = args.handler
    library = logging.getLogger("fintech_resilience")
    if not library.handlers and not logging.getLogger().handlers:
        # the commands print what they did; the library's own log lines would repeat it
        library.addHandler(logging.NullHandler())
    try:
        return handler(args, out)
    except _Failure as exc:
        if getattr(args, "json", False):
            print(json.dumps({"ok": False, "error": str(exc)}), file=out)
        print(f"fintech-resilience: {exc}", file=err)
        return exc.code


# -- demo ------------------------------------------------------------------------------------------
def _demo(args: argparse.Namespace, out: TextIO) -> int:
    from .demo import run_demo

    if not 0 < args.seconds <= 600:
        raise _Failure("--seconds must be in (0, 600]", EXIT_USAGE)
    if args.redis:
        _connect(args.redis, 2.0).close()  # a clear error before the show starts
    live = False if args.plain else None
    report = asyncio.run(run_demo(redis_url=args.redis, seconds=args.seconds, seed=args.seed,
                                  out=out, live=live, color=live))
    if args.json:
        print(json.dumps(report.as_dict()), file=out)
    return EXIT_OK if report.ok else EXIT_NOT_FOUND


# -- operator commands -----------------------------------------------------------------------------
def _url(args: argparse.Namespace) -> str:
    url: str | None = args.redis or os.environ.get(ENV_URL)
    if not url:
        raise _Failure(f"no Redis given: pass --redis URL or set {ENV_URL}", EXIT_USAGE)
    return url


def _connect(url: str, timeout: float) -> Any:
    """A :class:`~fintech_resilience.inspection.redis.RedisOps` whose primaries all answered."""
    import redis.exceptions as rex

    from ..errors import BackendUnavailable, ConfigurationError
    from ..inspection.redis import RedisOps, redact_url

    try:
        ops = RedisOps(url, timeout=timeout)
        ops.ping()
    except ConfigurationError as exc:
        raise _Failure(str(exc), EXIT_USAGE) from exc
    except (rex.RedisError, rex.RedisClusterException, OSError, BackendUnavailable) as exc:
        raise _Failure(f"cannot reach Redis at {redact_url(url)}: {type(exc).__name__}: {exc}",
                       EXIT_UNREACHABLE) from exc
    return ops


def _run_ops(args: argparse.Namespace, body: Callable[[Any], int]) -> int:
    import redis.exceptions as rex

    from ..errors import BackendUnavailable
    from ..inspection.redis import redact_url

    url = _url(args)
    ops = _connect(url, args.timeout)
    try:
        return body(ops)
    except (rex.ConnectionError, rex.TimeoutError, rex.RedisClusterException, OSError,
            BackendUnavailable) as exc:
        raise _Failure(f"lost Redis at {redact_url(url)}: {type(exc).__name__}: {exc}",
                       EXIT_UNREACHABLE) from exc
    finally:
        ops.close()


def _status(args: argparse.Namespace, out: TextIO) -> int:
    from ..inspection.redis import status

    def body(ops: Any) -> int:
        report = status(ops, args.namespace, max(0, args.limit))
        if args.json:
            print(json.dumps(report), file=out)
        else:
            _print_status(report, out)
        return EXIT_OK

    return _run_ops(args, body)


def _table(out: TextIO, title: str, header: Sequence[str], rows: list[Sequence[Any]]) -> None:
    print(f"\n{title}", file=out)
    if not rows:
        print("  (none)", file=out)
        return
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for row in cells:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(),
              file=out)


def _print_status(report: dict[str, Any], out: TextIO) -> None:
    print(f"{report['redis']} ({report['topology']}), namespace {report['namespace']!r}", file=out)
    _table(out, "circuit breakers", ("NAME", "STATE", "CALLS", "FAILURES", "SLOW", "RETRY_AFTER"),
           [(b["name"], b["state"], b["calls"], b["failures"], b["slow_calls"],
             f"{b['retry_after']:.1f}s" if b["state"] == "OPEN" else "-")
            for b in report["breakers"]])
    _table(out, "rate limits", ("NAME", "ALGORITHM", "ACTIVE_KEYS"),
           [(r["name"], r["algorithm"], r["active_keys"]) for r in report["rate_limits"]])
    _table(out, "concurrency limits", ("NAME", "KEYS", "SLOTS_HELD"),
           [(r["name"], r["keys"], r["held"]) for r in report["concurrency"]])
    _table(out, "retry budgets", ("NAME", "TOKENS"),
           [(r["name"], r["tokens"]) for r in report["retry_budgets"]])
    stores = report["idempotency"]["stores"]
    states = ("in_progress", "outcome_unknown", "completed", "free")
    _table(out, "idempotency stores", ("STORE", *(s.upper() for s in states)),
           [(name, *(counts.get(s, 0) for s in states)) for name, counts in stores.items()])
    flight = report["idempotency"]["in_flight"]
    if flight:
        _table(out, "in-flight idempotency records", ("STORE", "KEY_HASH", "STATE", "FENCING",
                                                      "SECONDS"),
               [(r["store"], r["key_hash"], r["state"], r["fencing_token"],
                 f"{r['seconds']:.1f}") for r in flight])
    if report["audit_streams"]:
        _table(out, "audit streams", ("STREAM", "ENTRIES"),
               [(r["stream"], r["entries"]) for r in report["audit_streams"]])


def _audit_log(args: argparse.Namespace, backend: Any) -> Any:
    """The AuditLog operator commands write to (``--audit-stream``), or None."""
    if not args.audit_stream:
        return None
    from ..audit.log import AuditLog, RedisStreamSink

    raw = os.environ.get(args.audit_key_env)
    key = None
    if raw:
        try:
            key = bytes.fromhex(raw)
        except ValueError:
            key = raw.encode()
    sink = RedisStreamSink(backend, stream=args.audit_stream, namespace=args.namespace,
                           chain=True, key=key)
    return AuditLog([sink], on_sink_error="raise")


def _breaker(args: argparse.Namespace, out: TextIO) -> int:
    from ..breaker.circuit import CircuitBreaker
    from ..errors import ConfigurationError
    from ..inspection.redis import BREAKER_FIELDS, breaker_row, tag

    try:
        name = _keys.validate_name(args.name, "breaker name")
    except ConfigurationError as exc:
        raise _Failure(str(exc), EXIT_USAGE) from exc
    key = _keys.name_key(args.namespace, "cb", name)

    def body(ops: Any) -> int:
        if not ops.exists(key) and not args.create:
            known = sorted(tag(k) for _n, k in ops.scan(f"{args.namespace}:cb:*"))
            raise _Failure(f"no circuit breaker {name!r} in Redis (known: "
                           f"{', '.join(known) or 'none'}); pass --create to set the state of a"
                           " breaker no process has used yet", EXIT_NOT_FOUND)
        previous = breaker_row(name, ops.client.hmget(key, *BREAKER_FIELDS), ops.now_us())
        breaker = CircuitBreaker(name, backend=ops.backend, on_backend_error="raise",
                                 namespace=args.namespace, audit=_audit_log(args, ops.backend))
        method = getattr(breaker, BREAKER_ACTIONS[args.action])
        state = method(actor=args.actor or _login())
        result = {"ok": True, "name": name, "action": args.action,
                  "previous": previous["state"], "state": state.name}
        if args.json:
            print(json.dumps(result), file=out)
        else:
            print(f"breaker {name!r}: {previous['state']} -> {state.name}", file=out)
        return EXIT_OK

    return _run_ops(args, body)


def _login() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no login name in some containers
        return "cli"


def _record_key(args: argparse.Namespace) -> str:
    """Turn KEY (+ options) into the record's storage key; see ``idempotency --help``."""
    from ..errors import ConfigurationError

    key, kind = args.key, args.kind
    prefix = f"{args.namespace}:idem:{{"
    if kind == "auto":
        kind = ("record" if key.startswith(prefix) else
                "hash" if _HASH.fullmatch(key) else "client")
    try:
        store_name = _keys.validate_name(args.store, "--store")
        if kind == "record":
            if not (key.startswith(prefix) and key.endswith("}")):
                raise _Failure(f"a record key looks like {prefix}<store>:<hash>}}", EXIT_USAGE)
            return str(key)
        if kind == "hash":
            if not _HASH.fullmatch(key):
                raise _Failure("a key hash is 32 lower-case hex digits", EXIT_USAGE)
            return f"{prefix}{store_name}:{key}}}"
        if not args.scope:
            raise _Failure("a client key needs --scope (the principal it belongs to); or pass"
                           " the record key or key hash from the logs", EXIT_USAGE)
        secret = os.environ.get(args.secret_env)
        if not secret:
            raise _Failure(f"a client key needs the store's secret in ${args.secret_env}"
                           " (--secret-env VAR names another variable)", EXIT_USAGE)
        if args.route:
            method, route = "CALL", args.route
        elif args.path:
            method, route = args.method.upper(), args.path
        else:
            raise _Failure("a client key needs --path (HTTP) or --route (@idempotent)",
                           EXIT_USAGE)
        from ..backends.memory import MemoryBackend
        from ..idempotency.store import IdempotencyStore

        store = IdempotencyStore(MemoryBackend(), secret=secret.encode(), name=store_name,
                                 namespace=args.namespace)
        return store.record_key(key, scope=args.scope, method=method, route=route)
    except ConfigurationError as exc:
        raise _Failure(str(exc), EXIT_USAGE) from exc


def _idempotency(args: argparse.Namespace, out: TextIO) -> int:
    from ..inspection.redis import idempotency_record

    record_key = _record_key(args)

    def body(ops: Any) -> int:
        info = idempotency_record(ops, record_key)
        if info is None:
            raise _Failure(f"no idempotency record {record_key} (never claimed, or expired)",
                           EXIT_NOT_FOUND)
        if args.action == "show":
            _print_record(info, out, args.json)
            return EXIT_OK
        if info["state"] == "in_progress" and not args.yes:
            raise _Failure(f"record {record_key} is in progress (lease alive for"
                           f" {info['lease_left']:.1f}s): its handler may still be running;"
                           " pass --yes to forget it anyway", EXIT_NOT_FOUND)
        from ..idempotency.store import IdempotencyStore

        store = IdempotencyStore(ops.backend, secret=os.urandom(32), name=info["store"],
                                 namespace=args.namespace, on_backend_error="raise",
                                 check_eviction=False)
        freed = store.forget(record_key)
        result = {"ok": True, "record_key": record_key, "previous": info["state"],
                  "freed": freed}
        if args.json:
            print(json.dumps(result), file=out)
        else:
            print(f"forgot {record_key} (was {info['state']}; fencing counter kept: the next"
                  " request with this key executes)", file=out)
        return EXIT_OK

    return _run_ops(args, body)


def _print_record(info: dict[str, Any], out: TextIO, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"ok": True, **info}), file=out)
        return
    for name, value in info.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        print(f"{name + ':':<20} {value}", file=out)


def _limit(args: argparse.Namespace, out: TextIO) -> int:
    from ..errors import ConfigurationError
    from .limits import limit_command, limit_lines

    def body(ops: Any) -> int:
        try:
            result = limit_command(args, ops, _audit_log(args, ops.backend),
                                   args.actor or _login())
        except ConfigurationError as exc:
            raise _Failure(str(exc), EXIT_USAGE) from exc
        except LookupError as exc:
            raise _Failure(str(exc.args[0]), EXIT_NOT_FOUND) from exc
        if args.json:
            print(json.dumps(result), file=out)
        else:
            title, table, header, rows = limit_lines(result)
            print(title, file=out)
            _table(out, table, header, rows)
        return EXIT_OK

    return _run_ops(args, body)


def _check(args: argparse.Namespace, out: TextIO) -> int:
    from ..inspection.redis import check

    def body(ops: Any) -> int:
        findings = check(ops, load_scripts=args.load_scripts, max_skew=args.max_skew)
        ok = all(f.level != "error" for f in findings)
        if args.json:
            print(json.dumps({"ok": ok, "checks": [f.as_dict() for f in findings]}), file=out)
        else:
            for finding in findings:
                print(f"{finding.level.upper():<5}  {finding.name:<9} {finding.detail}", file=out)
        return EXIT_OK if ok else EXIT_NOT_FOUND

    return _run_ops(args, body)


def _audit(args: argparse.Namespace, out: TextIO) -> int:
    from ..audit.verify import verify_cli

    rest = list(args.rest)
    if not rest or rest[0] != "verify":
        raise _Failure("usage: fintech-resilience audit verify --redis URL --stream NAME"
                       " [--json]", EXIT_USAGE)
    rest = rest[1:]
    if "--redis" not in rest and os.environ.get(ENV_URL):
        rest += ["--redis", os.environ[ENV_URL]]
    return verify_cli(rest, out=out)  # its own status: 0 intact, 1 broken, 2 usage/unreachable

