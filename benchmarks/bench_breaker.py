"""Circuit breaker: ours vs pybreaker, interleaved in one run (medians of several rounds).

    python benchmarks/bench_breaker.py [--redis redis://127.0.0.1:6379/0] [--rounds 7]

Without --redis a private redis-server (``redis-server`` on PATH or /usr/bin) is started on a free
port. Round trips per call are counted on the client (redis-py sends from this process).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import pybreaker
import redis

from fintech_resilience.backends.memory import MemoryBackend
from fintech_resilience.backends.redis import RedisBackend
from fintech_resilience.breaker.circuit import BreakerState, CircuitBreaker
from fintech_resilience.errors import CircuitOpen


def per_call_us(fn: Callable[[], Any], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


_sent = [0]
_send = redis.connection.AbstractConnection.send_packed_command


def _counting_send(self: Any, command: Any, check_health: bool = True) -> None:
    _sent[0] += 1
    _send(self, command, check_health)


redis.connection.AbstractConnection.send_packed_command = _counting_send  # type: ignore[method-assign]


def commands(client: redis.Redis) -> int:
    """Round trips sent by this process's redis-py connections so far."""
    return _sent[0]


def start_redis() -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([binary, "--port", str(port), "--save", "", "--appendonly", "no",
                             "--dir", tempfile.mkdtemp()], stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    return proc, f"redis://127.0.0.1:{port}/0"


def ok() -> int:
    return 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis")
    parser.add_argument("--rounds", type=int, default=7)
    opts = parser.parse_args()
    proc = None
    url = opts.redis
    if url is None:
        proc, url = start_redis()
    client = redis.Redis.from_url(url)
    try:
        rows = run(url, client, opts.rounds)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()
    print(f"{'case':44} {'ours us':>9} {'peer us':>9} {'ratio':>7} {'ours RT':>8} {'peer RT':>8}")
    for name, ours, peer, rt_ours, rt_peer in rows:
        ratio = f"{ours / peer:7.2f}" if peer else "      -"
        peer_s = f"{peer:9.2f}" if peer else "        -"
        rt_p = f"{rt_peer:8.2f}" if rt_peer is not None else "       -"
        print(f"{name:44} {ours:9.2f} {peer_s} {ratio} {rt_ours:8.2f} {rt_p}")


def run(url: str, client: redis.Redis, rounds: int) -> list[tuple[str, float, float, float,
                                                                   float | None]]:
    client.flushall()
    # memory
    ours_mem = CircuitBreaker("bench-mem", backend=MemoryBackend())
    peer_mem = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)
    ours_mem_call = ours_mem(ok)
    peer_mem_call = peer_mem(ok)
    # redis
    backend = RedisBackend.from_url(url, timeout=1.0)
    ours_red = CircuitBreaker("bench-red", backend=backend)
    storage = pybreaker.CircuitRedisStorage(pybreaker.STATE_CLOSED, redis.Redis.from_url(url),
                                            namespace="bench")
    peer_red = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30, state_storage=storage)
    ours_red_call = ours_red(ok)
    peer_red_call = peer_red(ok)
    ours_red_call()  # learn the state once (one acquire), as any process does on its first call
    # open, for rejections
    ours_open = CircuitBreaker("bench-open", backend=backend, break_duration=3600)
    ours_open.force_open()

    def reject() -> None:
        with contextlib.suppress(CircuitOpen):
            ours_open.call(ok)

    peer_open = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=3600,
                                         state_storage=pybreaker.CircuitRedisStorage(
                                             pybreaker.STATE_CLOSED, redis.Redis.from_url(url),
                                             namespace="bench-open"))
    peer_open.open()

    def peer_reject() -> None:
        with contextlib.suppress(pybreaker.CircuitBreakerError):
            peer_open.call(ok)

    reject()
    samples: dict[str, list[float]] = {k: [] for k in
                                       ("mem", "pmem", "red", "pred", "rej", "prej")}
    rts: dict[str, list[float]] = {k: [] for k in ("red", "pred", "rej", "prej")}
    for _ in range(rounds):
        samples["mem"].append(per_call_us(ours_mem_call, 20_000))
        samples["pmem"].append(per_call_us(peer_mem_call, 20_000))
        for key, fn, n in (("red", ours_red_call, 2000), ("pred", peer_red_call, 2000),
                           ("rej", reject, 20_000), ("prej", peer_reject, 2000)):
            before = commands(client)
            samples[key].append(per_call_us(fn, n))
            rts[key].append((commands(client) - before) / n)
    assert ours_red.known_state is BreakerState.CLOSED
    med = {k: statistics.median(v) for k, v in samples.items()}
    rt = {k: statistics.median(v) for k, v in rts.items()}
    return [
        ("memory, successful call", med["mem"], med["pmem"], 0.0, None),
        ("redis, successful call in CLOSED", med["red"], med["pred"], rt["red"], rt["pred"]),
        ("redis, rejection when known OPEN", med["rej"], med["prej"], rt["rej"], rt["prej"]),
    ]


if __name__ == "__main__":
    sys.exit(main())
