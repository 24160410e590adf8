"""ResilientTransport / ResilientAdapter vs bare clients: µs added per successful request.

    python benchmarks/bench_outbound.py [--requests 2000] [--rounds 7]

Success path on the memory backend (the default), with the full policy a PSP client would use:
retry (3 attempts, budget), circuit breaker, 2 s timeout. Two setups:

* **local server**: a keep-alive HTTP/1.1 server on 127.0.0.1 (a thread of this process) -
  bare ``httpx.Client`` vs ``httpx.Client(transport=ResilientTransport(...))``, bare
  ``requests.Session`` vs one with ``ResilientAdapter`` mounted;
* **in process**: ``httpx.MockTransport`` under both clients (no sockets), so the difference is
  only our cost, without the server's noise;
* **transport alone**: ``handle_request`` called directly, per part of the policy (empty policy =
  the edge's own work: plan, classification, socket-timeout bound).

Variants are interleaved round by round; the table shows medians of the per-round means.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import requests

import fintech_resilience as fr
from fintech_resilience.backends.memory import MemoryBackend
from fintech_resilience.breaker.circuit import CircuitBreaker
from fintech_resilience.httpx import ResilientTransport
from fintech_resilience.requests import ResilientAdapter
from fintech_resilience.retries.budget import RetryBudget


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


def policy() -> fr.Policy:
    backend = MemoryBackend()
    return fr.Policy(
        name="psp", breaker=CircuitBreaker("psp", backend=backend), timeout=2.0,
        retry=fr.retry(attempts=3, budget=RetryBudget("psp", backend=backend)))


def session(adapter: requests.adapters.HTTPAdapter | None) -> requests.Session:
    s = requests.Session()
    if adapter is not None:
        s.mount("http://", adapter)
    return s


def run(send: Callable[[], Any], n: int) -> float:
    """Mean µs per request over ``n`` requests."""
    start = time.perf_counter()
    for _ in range(n):
        send()
    return (time.perf_counter() - start) / n * 1e6


def breakdown(args: argparse.Namespace) -> None:
    """µs per ``handle_request`` on a MockTransport, per part of the policy."""
    inner = httpx.MockTransport(lambda request: httpx.Response(200, content=b"ok"))
    backend = MemoryBackend()
    parts: dict[str, Any] = {
        "MockTransport alone": inner,
        "+ empty Policy": ResilientTransport(inner, policy=fr.Policy(name="p")),
        "+ retry": ResilientTransport(inner, policy=fr.Policy(name="p", retry=fr.retry())),
        "+ timeout": ResilientTransport(inner, policy=fr.Policy(name="p", timeout=2.0)),
        "+ breaker": ResilientTransport(inner, policy=fr.Policy(
            name="p", breaker=CircuitBreaker("bench-b", backend=backend))),
        "+ full policy": ResilientTransport(inner, policy=policy()),
    }
    request = httpx.Request("GET", "http://psp.example/")
    samples: dict[str, list[float]] = {name: [] for name in parts}
    for _ in range(args.rounds):
        for name, transport in parts.items():
            samples[name].append(run(lambda t=transport: t.handle_request(request),
                                     args.requests * 5))
    medians = {name: statistics.median(values) for name, values in samples.items()}
    base = medians["MockTransport alone"]
    print()
    print(f"{'transport alone (handle_request)':40} {'µs/request':>11} {'added µs':>9}")
    for name, value in medians.items():
        print(f"{name:40} {value:11.1f} {value - base:9.1f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/"

    def ok(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"ok")

    clients: dict[str, Any] = {
        "httpx bare (server)": httpx.Client(),
        "httpx ResilientTransport (server)": httpx.Client(
            transport=ResilientTransport(policy=policy())),
        "requests bare (server)": session(None),
        "requests ResilientAdapter (server)": session(ResilientAdapter(policy=policy())),
        "httpx bare (in process)": httpx.Client(transport=httpx.MockTransport(ok)),
        "httpx ResilientTransport (in process)": httpx.Client(
            transport=ResilientTransport(httpx.MockTransport(ok), policy=policy())),
    }
    mock_url = "http://psp.example/"
    senders = {name: (lambda c=c, u=(mock_url if "in process" in name else url): c.get(u))
               for name, c in clients.items()}
    for send in senders.values():  # warm up: connections, caches
        run(send, 200)
    samples: dict[str, list[float]] = {name: [] for name in senders}
    for _ in range(args.rounds):
        for name, send in senders.items():
            samples[name].append(run(send, args.requests))
    medians = {name: statistics.median(values) for name, values in samples.items()}

    print(f"{args.requests} GETs x {args.rounds} rounds, medians of per-round means "
          f"(Python {sys.version.split()[0]}, httpx {httpx.__version__}, "
          f"requests {requests.__version__})")
    print(f"{'variant':40} {'µs/request':>11} {'added µs':>9} {'ratio':>6}")
    for bare, ours in (("httpx bare (server)", "httpx ResilientTransport (server)"),
                       ("requests bare (server)", "requests ResilientAdapter (server)"),
                       ("httpx bare (in process)", "httpx ResilientTransport (in process)")):
        print(f"{bare:40} {medians[bare]:11.1f} {'':>9} {'':>6}")
        added = medians[ours] - medians[bare]
        print(f"{ours:40} {medians[ours]:11.1f} {added:9.1f} {medians[ours] / medians[bare]:6.2f}")
    breakdown(args)
    for c in clients.values():
        c.close()
    httpd.shutdown()
    httpd.server_close()


if __name__ == "__main__":
    main()
