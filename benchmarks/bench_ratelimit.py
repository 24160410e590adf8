"""Rate limiting: ours vs the floor (bare redis-py) and vs ``limits``, interleaved in one run.

    python benchmarks/bench_ratelimit.py [--rounds 7] [--json]

Cases (medians of the per-round means; every round runs ours and the reference back to back;
the sub-microsecond cases b and c alternate them 40 times per round, 1,000 calls each, in
ABBA order, and their ratio is the median of the ratios of adjacent pairs):

a. Redis, sync: ``RateLimiter.acquire`` vs bare redis-py ``evalsha`` of a two-command script
   (``GET`` + ``SET PX``), the floor of one round trip.                         goal <= 1.10 x
b. memory: GCRA ``acquire`` vs ``limits`` ``FixedWindowRateLimiter(MemoryStorage()).hit``.
                                                                                 goal <= 0.35 x
b'. memory: limits per key (``RateLimiter(callable_of_key)``, the per-plan case: a call of the
   callable and a lookup of its string's parsed limits) vs the same limits fixed.     reported
c. telemetry without an OpenTelemetry SDK: a memory decision vs the same decision with
   ``telemetry.active`` replaced by a C builtin that answers False (what the check costs).
                                                                                 reported
   With an SDK configured (tracer + meter provider, in-memory readers): reported only.
d. 50 asyncio tasks deciding on Redis, each in a loop (as 50 request handlers or consumers do):
   ours (pipelined) vs redis.asyncio issuing one EVALSHA of the same GCRA script per decision;
   decisions per second.                                                        goal >= 4 x
d'. the same with 50 fresh tasks per batch, one decision each, gathered before the next batch:
   task creation and the gather barrier (each batch drains the pipeline) weigh on both sides.
                                                                                 reported
e. an OpenTelemetry no-op span (no SDK) vs one memory decision: why decisions make no spans.

A private redis-server is started on a free loopback port (``tests/servers.py``). ``--json``
prints one JSON document (for ``benchmarks/run_all.py``) instead of the table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import limits
import redis
import redis.asyncio
import servers
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter
from opentelemetry import trace

from fintech_resilience import MemoryBackend, RateLimiter, RedisBackend
from fintech_resilience.backends.redis import script
from fintech_resilience.core import telemetry

LIMIT = "1000000000/minute"  # never refuses: every case measures an admitted decision
TWO_COMMANDS = "local v = redis.call('GET', KEYS[1]) redis.call('SET', KEYS[1], ARGV[1], 'PX', 60000) return v"
TASKS = 50


@contextlib.contextmanager
def telemetry_check_removed() -> Iterator[None]:
    """``telemetry.active`` answering False at the cost of a C call: the reference of case c."""
    real = telemetry.active
    telemetry.active = bool  # type: ignore[assignment]  # bool() is False
    try:
        yield
    finally:
        telemetry.active = real


def per_call_us(fn: Callable[[], Any], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def paired(case: Case, ours: Callable[[], Any], ref: Callable[[], Any], pairs: int = 40,
           n: int = 1_000,
           ref_context: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext
           ) -> None:
    """One round of a sub-microsecond case: ``pairs`` alternations of ``n`` calls each, in
    ABBA order (every other pair runs the reference first), so a drift of the machine, the
    state the previous case left it in, or the position within a pair hits both alike."""
    ours_us: list[float] = []
    ref_us: list[float] = []
    def run_ref() -> float:
        with ref_context():
            return per_call_us(ref, n)

    for i in range(pairs):
        if i % 2:
            ref_us.append(run_ref())
            ours_us.append(per_call_us(ours, n))
        else:
            ours_us.append(per_call_us(ours, n))
            ref_us.append(run_ref())
    case.ours.append(statistics.median(ours_us))
    case.ref.append(statistics.median(ref_us))
    case.pair_ratios += [o / r for o, r in zip(ours_us, ref_us, strict=True)]


async def per_task_us(fn: Callable[[], Awaitable[Any]], per_task: int) -> float:
    """Mean µs per decision, ``TASKS`` tasks each deciding ``per_task`` times in a loop."""

    async def task() -> None:
        for _ in range(per_task):
            await fn()

    start = time.perf_counter()
    await asyncio.gather(*(task() for _ in range(TASKS)))
    return (time.perf_counter() - start) / (per_task * TASKS) * 1e6


async def per_batch_us(fn: Callable[[], Awaitable[Any]], batches: int) -> float:
    """Mean µs per decision, ``TASKS`` fresh concurrent tasks per batch."""
    start = time.perf_counter()
    for _ in range(batches):
        await asyncio.gather(*(fn() for _ in range(TASKS)))
    return (time.perf_counter() - start) / (batches * TASKS) * 1e6


class Case:
    def __init__(self, name: str, goal: str) -> None:
        self.name, self.goal = name, goal
        self.ours: list[float] = []
        self.ref: list[float] = []
        #: paired cases: ours / reference of each adjacent pair (their median is the ratio)
        self.pair_ratios: list[float] = []

    def row(self) -> dict[str, Any]:
        ours, ref = statistics.median(self.ours), statistics.median(self.ref)
        ratio = statistics.median(self.pair_ratios) if self.pair_ratios else ours / ref
        return {"case": self.name, "ours_us": round(ours, 3), "reference_us": round(ref, 3),
                "ratio": round(ratio, 3), "goal": self.goal}


def sync_cases(url: str, rounds: int) -> list[Case]:
    client = redis.Redis.from_url(url)
    two = client.script_load(TWO_COMMANDS)
    red = RateLimiter(LIMIT, backend=RedisBackend.from_url(url, timeout=1.0), name="bench")
    mem = RateLimiter(LIMIT, backend=MemoryBackend(), name="bench")
    peer = FixedWindowRateLimiter(MemoryStorage())
    item = limits.parse(LIMIT)
    red.acquire("k")  # load the script once (NOSCRIPT -> EVAL) outside the measurement

    tracer = trace.get_tracer("bench")

    def noop_span() -> None:
        with tracer.start_as_current_span("decision"):
            pass

    a = Case("a. redis sync decision / bare evalsha (2 commands)", "<= 1.10")
    b = Case("b. memory GCRA / limits fixed-window hit", "<= 0.35")
    plans = {"k": LIMIT}
    per_plan = RateLimiter(lambda key: plans[key], backend=MemoryBackend(), name="bench")
    dynamic = Case("b'. memory, limits per key (callable) / fixed limits", "report")
    c = Case("c. memory decision, telemetry check / check removed", "report")
    e = Case("e. OTel no-op span (no SDK) / memory decision", "report")
    for _ in range(rounds):
        a.ours.append(per_call_us(lambda: red.acquire("k"), 2_000))
        a.ref.append(per_call_us(lambda: client.evalsha(two, 1, "{bench}k", 1), 2_000))
        paired(b, lambda: mem.acquire("k"), lambda: peer.hit(item, "k"))
        paired(dynamic, lambda: per_plan.acquire("k"), lambda: mem.acquire("k"))
        paired(c, lambda: mem.acquire("k"), lambda: mem.acquire("k"),
               ref_context=telemetry_check_removed)
        e.ours.append(per_call_us(noop_span, 20_000))
        e.ref.append(per_call_us(lambda: mem.acquire("k"), 20_000))
    red.backend.close()
    client.close()
    return [a, b, dynamic, c, e]


async def async_cases(url: str, rounds: int) -> list[Case]:
    backend = RedisBackend.from_url(url, timeout=1.0)
    ours = RateLimiter(LIMIT, backend=backend, name="bench-async")
    client = redis.asyncio.Redis.from_url(url)
    sha, source = script(ours._script)  # the very script our decisions run
    await client.script_load(source)
    tail = ours.spec.parameters  # the arguments exactly as our decisions send them
    counter = iter(range(10**9))

    async def one_evalsha() -> Any:
        return await client.evalsha(sha, 1, f"{{bench}}:k{next(counter) % 7}", 0, 1, *tail)

    async def decide() -> Any:
        return await ours.aacquire(f"k{next(counter) % 7}")

    await per_batch_us(decide, 2)  # warm up both (connections, scripts)
    await per_batch_us(one_evalsha, 2)
    d = Case(f"d. {TASKS} tasks deciding in a loop: µs/decision, ours / one EVALSHA",
             ">= 4x /s")
    fresh = Case(f"d'. {TASKS} fresh tasks per batch: µs/decision, ours / one EVALSHA", "report")
    for _ in range(rounds):
        d.ours.append(await per_task_us(decide, 40))
        d.ref.append(await per_task_us(one_evalsha, 40))
        fresh.ours.append(await per_batch_us(decide, 40))
        fresh.ref.append(await per_batch_us(one_evalsha, 40))
    await client.aclose()
    await backend.aclose()
    return [d, fresh]


def sdk_case(rounds: int) -> Case:
    """Memory decisions with an OpenTelemetry SDK installed (last: providers are global)."""
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider

    mem = RateLimiter(LIMIT, backend=MemoryBackend(), name="bench-sdk")
    without = [per_call_us(lambda: mem.acquire("k"), 20_000) for _ in range(rounds)]
    trace.set_tracer_provider(TracerProvider())
    metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))
    telemetry.refresh()  # noticed now rather than within a second
    tracer = trace.get_tracer("bench")
    case = Case("c'. memory decision, SDK + recording span / no SDK", "report")
    case.ref = without
    with tracer.start_as_current_span("request"):
        case.ours = [per_call_us(lambda: mem.acquire("k"), 20_000) for _ in range(rounds)]
    return case


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print JSON for run_all.py")
    opts = parser.parse_args()
    server = servers.RedisServer()
    try:
        cases = sync_cases(server.url, opts.rounds)
        cases[4:4] = asyncio.run(async_cases(server.url, opts.rounds))
    finally:
        server.stop()
    cases.append(sdk_case(opts.rounds))
    rows = [case.row() for case in cases]
    for row in rows:
        if row["case"].startswith(("d.", "d'.")):
            row["decisions_per_s_ours"] = round(1e6 / row["ours_us"])
            row["decisions_per_s_reference"] = round(1e6 / row["reference_us"])
            row["throughput_x"] = round(row["reference_us"] / row["ours_us"], 2)
    if opts.json:
        print(json.dumps({"benchmark": "ratelimit", "rounds": opts.rounds, "rows": rows},
                         indent=2))
        return
    print(f"{opts.rounds} rounds, medians of per-round means (µs per decision)\n")
    print(f"{'case':62} {'ours':>9} {'ref':>9} {'ratio':>7}  goal")
    for row in rows:
        print(f"{row['case']:62} {row['ours_us']:9.2f} {row['reference_us']:9.2f}"
              f" {row['ratio']:7.2f}  {row['goal']}")
        if "throughput_x" in row:
            print(f"{'':62} {row['decisions_per_s_ours']:>9} {row['decisions_per_s_reference']:>9}"
                  f" {row['throughput_x']:6.2f}x decisions/s")


if __name__ == "__main__":
    main()
