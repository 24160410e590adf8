"""RateLimitMiddleware vs slowapi, and vs a bare Starlette app: µs per request, same run.

    python benchmarks/bench_http.py [--requests 3000] [--rounds 7]

Each variant is the same Starlette app (one route, plain-text 200) called in-process through
ASGI (no sockets, so the middleware's own cost is what differs), interleaved round by round;
medians of the per-round means. Headers are on for both: ours computes ``RateLimit`` /
``RateLimit-Policy`` from the one decision (one Redis round trip); slowapi with
``headers_enabled=True`` reads the window stats again. A redis-server is started on a free
loopback port. Every limit is far above the request count, so every request is admitted.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import servers
from slowapi import Limiter
from slowapi.middleware import SlowAPIASGIMiddleware
from slowapi.util import get_remote_address
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from fintech_resilience import MemoryBackend, RedisBackend
from fintech_resilience.edges.asgi.ratelimit import RateLimitMiddleware
from fintech_resilience.keys import principal_or_ip
from fintech_resilience.ratelimit.limiter import RateLimiter

LIMIT = "1000000/minute"


async def index(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def starlette(*middleware: Middleware) -> Starlette:
    return Starlette(routes=[Route("/", index)], middleware=list(middleware))


def ours(backend: Any) -> Starlette:
    limiter = RateLimiter(LIMIT, backend=backend, name="bench")
    return starlette(Middleware(RateLimitMiddleware, limiter=limiter, key=principal_or_ip()))


def slowapi(storage_uri: str) -> Starlette:
    limiter = Limiter(key_func=get_remote_address, default_limits=[LIMIT],
                      storage_uri=storage_uri, headers_enabled=True)
    app = starlette(Middleware(SlowAPIASGIMiddleware))
    app.state.limiter = limiter
    return app


async def run(app: Starlette, n: int) -> tuple[float, dict[bytes, bytes]]:
    """Mean µs per request over ``n`` requests, and the last response's headers."""
    headers: dict[bytes, bytes] = {}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            headers.clear()
            headers.update(message["headers"])
            if message["status"] != 200:
                raise RuntimeError(f"unexpected status {message['status']}")

    start = time.perf_counter()
    for _ in range(n):
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "GET", "scheme": "http", "path": "/", "raw_path": b"/",
                 "root_path": "", "query_string": b"", "headers": [(b"host", b"bench")],
                 "client": ("203.0.113.7", 5555), "server": ("bench", 80)}
        await app(scope, receive, send)
    return (time.perf_counter() - start) / n * 1e6, dict(headers)


async def main(requests: int, rounds: int) -> None:
    redis = servers.RedisServer()
    try:
        red = RedisBackend.from_url(redis.url, timeout=1.0)
        variants = {
            "bare starlette": starlette(),
            "ours, memory": ours(MemoryBackend()),
            "slowapi, memory": slowapi("memory://"),
            "ours, redis": ours(red),
            "slowapi, redis": slowapi(redis.url),
        }
        for name, app in variants.items():  # warm up; show that headers are really sent
            _, headers = await run(app, 50)
            shown = [k.decode() for k in headers if b"ratelimit" in k.lower()]
            print(f"{name:16} rate-limit fields: {', '.join(shown) or '-'}")
        samples: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(rounds):
            for name, app in variants.items():
                redis.flushall()
                samples[name].append((await run(app, requests))[0])
        await red.aclose()
    finally:
        redis.stop()
    med = {name: statistics.median(values) for name, values in samples.items()}
    print(f"\n{requests} requests x {rounds} rounds, median of round means (µs/request)")
    print(f"{'variant':16} {'µs/req':>8}")
    for name, value in med.items():
        print(f"{name:16} {value:8.1f}")
    print()
    print(f"ours redis / slowapi redis (headers on): {med['ours, redis'] / med['slowapi, redis']:.2f}"
          "  (target <= 0.35)")
    print(f"ours memory / bare starlette:            {med['ours, memory'] / med['bare starlette']:.2f}"
          "  (target <= 1.5)")
    print(f"ours memory / slowapi memory:            {med['ours, memory'] / med['slowapi, memory']:.2f}")
    print(f"middleware cost, ours memory:  {med['ours, memory'] - med['bare starlette']:.1f} µs")
    print(f"middleware cost, slowapi mem:  {med['slowapi, memory'] - med['bare starlette']:.1f} µs")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.rounds))
