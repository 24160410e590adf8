"""Idempotency: round trips per request, and ASGI middleware overhead vs a bare EVALSHA.

Run: ``python benchmarks/bench_idempotency.py`` (starts its own redis-server on a free port).

Measured, interleaved in the same run (several rounds, medians):

* round trips per first request and per replay (Redis ``INFO commandstats``: EVALSHA + EVAL +
  WAIT calls per request);
* per-request latency of a Starlette app called directly over ASGI: bare, with our
  ``IdempotencyMiddleware`` on Redis and on memory, and with the ``fastapi-idempotency`` package
  (0.1.1 ships only an in-process ``MemoryStore`` and a Tortoise-ORM store; it has no Redis store,
  so it is measured with its MemoryStore on the same app);
* one bare EVALSHA round trip on the same asyncio Redis client kind (``return 1``).

Overhead = median(with middleware) - median(bare app). The target is: ours on Redis, first request,
<= 2.2 x one bare EVALSHA round trip. A round measures every variant once, in forward order on even
rounds and in reverse order on odd ones (so no variant always runs right after another); the
headline ratio is the median of the rounds' own ratios (ours, the bare app and the bare EVALSHA of
the same round), which cancels the machine's drift between rounds. The ratio of the medians over
all rounds is printed beside it.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import redis
import redis.asyncio
import servers
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from fintech_resilience import MemoryBackend, RedisBackend
from fintech_resilience.asgi import IdempotencyMiddleware
from fintech_resilience.idempotency import IdempotencyStore

ROUNDS = 21
PER_ROUND = 200
SECRET = b"benchmark-secret-0123456789"
BODY = b'{"amount":1250,"currency":"EUR","card":"tok_visa"}'


def make_app() -> Starlette:
    async def charge(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse({"id": "pay_1", "status": "succeeded"}, status_code=201)

    return Starlette(routes=[Route("/charges", charge, methods=["POST"])])


def principal(scope: Any) -> str:
    return "merchant-42"


async def call(app: Any, key: str) -> int:
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": BODY, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return messages.pop() if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/charges", "raw_path": b"/charges",
             "root_path": "", "query_string": b"", "scheme": "http", "http_version": "1.1",
             "headers": [(b"idempotency-key", key.encode()), (b"content-type",
                         b"application/json"), (b"content-length", str(len(BODY)).encode())],
             "server": ("bench", 80), "client": ("127.0.0.1", 5000), "asgi": {"version": "3.0"},
             "state": {}}
    await app(scope, receive, send)
    return int(sent[0]["status"])


async def timed_requests(app: Any, replay: bool) -> list[float]:
    out = []
    fixed = uuid.uuid4().hex
    if replay:
        await call(app, fixed)
    for _ in range(PER_ROUND):
        key = fixed if replay else uuid.uuid4().hex
        start = time.perf_counter()
        status = await call(app, key)
        out.append(time.perf_counter() - start)
        assert status == 201, status
    return out


async def timed_evalsha(client: Any, sha: str) -> list[float]:
    out = []
    for _ in range(PER_ROUND):
        start = time.perf_counter()
        await client.evalsha(sha, 1, "{bench}k", 0)
        out.append(time.perf_counter() - start)
    return out


def script_calls(server: servers.RedisServer) -> int:
    stats = server.info("commandstats")
    total = 0
    for name in ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_wait"):
        if name in stats:
            total += int(stats[name].split("calls=")[1].split(",")[0])
    return total


async def round_trips(server: servers.RedisServer, app: Any) -> tuple[float, float]:
    n = 50
    await call(app, uuid.uuid4().hex)  # loads the scripts (NOSCRIPT -> EVAL) outside the count
    before = script_calls(server)
    key = uuid.uuid4().hex
    await call(app, key)
    for _ in range(n - 1):
        await call(app, uuid.uuid4().hex)
    first = (script_calls(server) - before) / n
    before = script_calls(server)
    for _ in range(n):
        await call(app, key)
    replay = (script_calls(server) - before) / n
    return first, replay


async def main() -> None:
    server = servers.RedisServer()
    try:
        backend = RedisBackend.from_url(server.url, timeout=1.0)
        redis_store = IdempotencyStore(backend, secret=SECRET)
        memory_store = IdempotencyStore(MemoryBackend(), secret=SECRET)
        bare = make_app()
        ours_redis = IdempotencyMiddleware(make_app(), store=redis_store, scope=principal)
        ours_memory = IdempotencyMiddleware(make_app(), store=memory_store, scope=principal)
        variants: dict[str, tuple[Any, bool]] = {
            "bare app": (bare, False),
            "ours redis first": (ours_redis, False),
            "ours redis replay": (ours_redis, True),
            "ours memory first": (ours_memory, False),
        }
        try:
            from fastapi_idempotency import IdempotencyMiddleware as PeerMiddleware
            from fastapi_idempotency import MemoryStore as PeerMemoryStore

            peer = PeerMiddleware(make_app(), store=PeerMemoryStore(), scope=principal)
            variants["fastapi-idempotency memory first"] = (peer, False)
            variants["fastapi-idempotency memory replay"] = (peer, True)
        except ImportError:
            print("fastapi-idempotency is not installed: peer not measured")

        client = redis.asyncio.Redis.from_url(server.url)
        sha = await client.script_load("return 1")
        first_rt, replay_rt = await round_trips(server, ours_redis)

        medians: dict[str, list[float]] = {name: [] for name in [*variants, "bare EVALSHA"]}
        for app, replay in variants.values():  # warm-up
            await timed_requests(app, replay)
        names = ["bare EVALSHA", *variants]
        for round_no in range(ROUNDS):
            for name in names if round_no % 2 == 0 else reversed(names):
                if name == "bare EVALSHA":
                    samples = await timed_evalsha(client, sha)
                else:
                    samples = await timed_requests(*variants[name])
                medians[name].append(statistics.median(samples))
        await client.aclose()
        await backend.aclose()

        result = {name: statistics.median(values) for name, values in medians.items()}
        rtt = result["bare EVALSHA"]
        base = result["bare app"]
        print(f"redis-server {server.url}; {ROUNDS} rounds x {PER_ROUND} requests, medians\n")
        print(f"round trips per first request: {first_rt:.2f} (target <= 2)")
        print(f"round trips per replay:        {replay_rt:.2f} (target 1)\n")
        print(f"{'variant':40} {'median us':>10} {'overhead us':>12} {'x EVALSHA':>10}")
        for name, value in result.items():
            if name in ("bare EVALSHA", "bare app"):
                print(f"{name:40} {value * 1e6:10.1f} {'':>12} {value / rtt:10.2f}")
                continue
            over = value - base
            print(f"{name:40} {value * 1e6:10.1f} {over * 1e6:12.1f} {over / rtt:10.2f}")
        ours = result["ours redis first"] - base
        rounds = [(first - bare) / evalsha for first, bare, evalsha in zip(
            medians["ours redis first"], medians["bare app"], medians["bare EVALSHA"],
            strict=True)]
        per_round = statistics.median(rounds)
        print(f"\nours (Redis) first-request overhead / bare EVALSHA per round:"
              f" {' '.join(f'{r:.2f}' for r in rounds)}")
        print(f"ours (Redis) first-request overhead / bare EVALSHA = {per_round:.2f}"
              f" (target <= 2.2; median of the rounds' ratios; ratio of the medians:"
              f" {ours / rtt:.2f})")
        peer_name = "fastapi-idempotency memory first"
        if peer_name in result:
            peer_over = result[peer_name] - base
            mem_over = result["ours memory first"] - base
            print(f"fastapi-idempotency (memory) overhead / ours (memory) overhead ="
                  f" {peer_over / mem_over:.2f}")
            print(f"fastapi-idempotency (memory) overhead / ours (Redis) overhead ="
                  f" {peer_over / ours:.2f}")
    finally:
        server.stop()


if __name__ == "__main__":
    asyncio.run(main())
