"""Retry fast path vs tenacity and stamina; the cost of a full Policy and of each of its parts.

    python benchmarks/bench_retry.py [--rounds 7]

Each round measures every contender once, interleaved, so machine noise hits all alike; the
table shows the median per call over the rounds and the ratio to the peer.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import stamina
import tenacity

from fintech_resilience.backends.memory import MemoryBackend
from fintech_resilience.breaker.circuit import CircuitBreaker
from fintech_resilience.policy.bulkhead import Bulkhead
from fintech_resilience.policy.compose import Policy
from fintech_resilience.policy.deadline import TimeLimit
from fintech_resilience.ratelimit.limiter import RateLimiter

fr_retry = importlib.import_module("fintech_resilience.retries.core")  # `fr.retry` is the decorator


def per_call_sync(fn: Callable[[], Any], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


async def per_call_async(fn: Callable[[], Awaitable[Any]], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        await fn()
    return (time.perf_counter() - start) / n * 1e6


def run(contenders: dict[str, tuple[Callable[[], Any], int]], rounds: int,
        is_async: bool) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, (fn, n) in contenders.items():
            if is_async:
                samples[name].append(asyncio.run(per_call_async(fn, n)))
            else:
                samples[name].append(per_call_sync(fn, n))
    return {name: statistics.median(values) for name, values in samples.items()}


def retry_tables(rounds: int) -> None:
    def ok() -> int:
        return 1

    async def aok() -> int:
        return 1

    ours = fr_retry.retry(on=ConnectionError, attempts=3)(ok)
    ten = tenacity.retry(stop=tenacity.stop_after_attempt(3),
                         retry=tenacity.retry_if_exception_type(ConnectionError),
                         wait=tenacity.wait_random_exponential(0.1, 5))(ok)
    sta = stamina.retry(on=ConnectionError, attempts=3)(ok)
    aours = fr_retry.retry(on=ConnectionError, attempts=3)(aok)
    aten = tenacity.retry(stop=tenacity.stop_after_attempt(3),
                          retry=tenacity.retry_if_exception_type(ConnectionError),
                          wait=tenacity.wait_random_exponential(0.1, 5))(aok)
    asta = stamina.retry(on=ConnectionError, attempts=3)(aok)
    for label, contenders, is_async in (
        ("sync", {"fintech_resilience": (ours, 200_000), "tenacity": (ten, 20_000),
                  "stamina": (sta, 20_000)}, False),
        ("async", {"fintech_resilience": (aours, 100_000), "tenacity": (aten, 20_000),
                   "stamina": (asta, 20_000)}, True),
    ):
        medians = run(contenders, rounds, is_async)
        print(f"\nRetry-wrapped call that succeeds first time ({label}), median of {rounds}"
              " rounds")
        print(f"{'':22}{'us/call':>10}{'ours / peer':>14}")
        for name, value in medians.items():
            ratio = medians["fintech_resilience"] / value
            print(f"{name:22}{value:10.3f}{ratio:14.3f}")
        for peer in ("tenacity", "stamina"):
            verdict = "OK" if medians["fintech_resilience"] <= 0.1 * medians[peer] else "MISSED"
            print(f"  target <= 0.1 x {peer}: {verdict}")


def policy_table(rounds: int) -> None:
    backend = MemoryBackend()

    def ok() -> int:
        return 1

    limiter = RateLimiter("1000000000/second", backend=backend, name="bench")
    bulkhead = Bulkhead(1000, name="bench")
    breaker = CircuitBreaker("bench", backend=backend)
    retry = fr_retry.retry(on=ConnectionError)
    limit = TimeLimit(5.0)
    parts: dict[str, Policy | None] = {
        "bare call": None,
        "rate limit": Policy(name="bench", rate_limit=limiter),
        "bulkhead": Policy(name="bench", bulkhead=bulkhead),
        "retry": Policy(name="bench", retry=retry),
        "breaker": Policy(name="bench", breaker=breaker),
        "timeout": Policy(name="bench", timeout=limit),
        "empty Policy": Policy(name="bench"),
        "full Policy": Policy(name="bench", rate_limit=limiter, bulkhead=bulkhead, retry=retry,
                              breaker=breaker, timeout=limit),
    }
    contenders: dict[str, tuple[Callable[[], Any], int]] = {}
    for name, policy in parts.items():
        contenders[name] = ((ok if policy is None else (lambda p=policy: p.call(ok))), 20_000)
    medians = run(contenders, rounds, False)
    empty = medians["empty Policy"]
    full = medians["full Policy"]
    print(f"\nFull Policy on the memory backend, success path (sync), median of {rounds} rounds")
    print(f"{'':22}{'us/call':>10}{'part cost':>12}{'share':>8}")
    for name, value in medians.items():
        if name in ("bare call", "empty Policy", "full Policy"):
            print(f"{name:22}{value:10.3f}")
            continue
        cost = value - empty
        print(f"{name:22}{value:10.3f}{cost:12.3f}{cost / full:8.0%}")
    print(f"  Policy plumbing (empty Policy - bare call): {empty - medians['bare call']:.3f} us"
          f" ({(empty - medians['bare call']) / full:.0%} of the full Policy)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    retry_tables(args.rounds)
    policy_table(args.rounds)


if __name__ == "__main__":
    main()
