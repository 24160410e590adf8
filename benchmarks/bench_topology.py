"""One rate limiter on every Redis topology, measured in one process and one run.

    python benchmarks/bench_topology.py [--rounds 5] [--pin] [--json] [--markdown LABEL]

The same ``RateLimiter`` (one GCRA limit that never refuses, keys ``k0`` ... ``k999`` spread
over the slots) decides on a standalone Redis over TCP, the same over TLS (``rediss://`` with a
CA and a server certificate generated for the run), a Sentinel group (1 primary + 1 replica)
and a 3-primary Cluster. Per topology:

a. decisions/s of 50 asyncio tasks, each deciding in a loop, and the client's CPU time per
   decision (this process, every thread): what the library spends, apart from the servers;
b. sync decision latency from one thread (median and p99 of single decisions);
   Beside it, for standalone TCP and the Cluster, the same decisions as bare redis-py EVALSHAs
   of the very script, keys sent to their primary over one plain ``redis.Redis`` connection per
   primary (no library code): the "bare" ratio is what this machine charges any client for
   spreading the keys over several server processes.
c. round trips per decision: Redis ``INFO commandstats`` calls of EVALSHA (and EVAL) on every
   node, divided by the decisions made, for the asyncio and the sync case; and the other
   commands clients sent per decision (all calls minus the scripts and the TIME, GET and SET
   the script runs inside: a decision that needs more than its script shows here).

Each topology runs beside standalone TCP alone - its servers are started for its pairing and
stopped after it, so no other topology's redis-server processes share the cores (as in
production) - for ``--rounds`` rounds: per round, the asyncio case alternates the two 4 times,
the sync case 10 times, in ABBA order. The table shows medians over all measurements, and for the ratios to standalone TCP the
median over rounds of each round's median ratio of adjacent alternations (machine timings drift
10-30 %: compare only within one run, and adjacent measurements best). Also checked once: the first decision on TLS with ``from_url``'s default
timeouts is shared (not a local fallback), and a server requiring client certificates accepts
the backend's connections (sync and asyncio).

Servers are private redis-server processes on free loopback ports (``tests/servers.py``).
``--pin`` runs this process on CPU 0 and every server on the other CPUs (see
``pin_servers_apart``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import redis
import servers
from redis.cluster import RedisCluster

from fintech_resilience import RateLimiter, RedisBackend
from fintech_resilience.backends.redis import script

LIMIT = "1000000000/minute"  # never refuses: every case measures an admitted decision
KEYS = [f"k{i}" for i in range(1000)]
TASKS = 50
#: what ratelimit_gcra1.lua calls (counted in commandstats, but no round trip of a client), and
#: the measurement's own CONFIG RESETSTAT and INFO
INSIDE_THE_SCRIPT = {"cmdstat_time", "cmdstat_get", "cmdstat_set", "cmdstat_config",
                     "cmdstat_info"}


class Topology:
    """A topology under test: its URL, its backend options and the nodes to count commands on."""

    def __init__(self, name: str, url: str, nodes: list[Any], **options: Any) -> None:
        self.name, self.url, self.nodes, self.options = name, url, nodes, options
        self.backend = RedisBackend.from_url(url, timeout=1.0, **options)
        self.limiter = RateLimiter(LIMIT, backend=self.backend, name="topo",
                                   on_backend_error="raise")
        self.per_s: list[float] = []
        #: client CPU (this process, every thread) per decision of the asyncio case, and its
        #: ratio to standalone TCP's: what the library itself spends, wherever the servers run
        self.cpu_us: list[float] = []
        self.cpu_ratio: list[float] = []
        self.median_us: list[float] = []
        #: this topology / standalone TCP, measured one after the other
        self.per_s_ratio: list[float] = []
        self.latency_ratio: list[float] = []
        self.p99_us: list[float] = []
        self.async_scripts: list[float] = []
        self.sync_scripts: list[float] = []
        self.async_commands: list[float] = []
        self.sync_commands: list[float] = []
        #: bare redis-py sync latency (standalone TCP and Cluster only), and its ratio to TCP's
        self.bare: BareClient | None = None
        self.bare_median_us: list[float] = []
        self.bare_ratio: list[float] = []

    def reset_stats(self) -> None:
        for node in self.nodes:
            node.command("CONFIG", "RESETSTAT")

    def counted(self) -> tuple[int, int]:
        """(EVALSHA + EVAL calls, other commands sent by clients) on every node since the last
        reset."""
        scripts = other = 0
        for node in self.nodes:
            if not node.running:
                continue
            for name, value in node.info("commandstats").items():
                calls = int(value.split(",")[0].split("=")[1])
                if name in ("cmdstat_evalsha", "cmdstat_eval"):
                    scripts += calls
                elif name.split("|")[0] not in INSIDE_THE_SCRIPT:  # "cmdstat_config|resetstat"
                    other += calls
        return scripts, other


class BareClient:
    """Bare redis-py: EVALSHA of the limiter's own script, each key sent to its primary over
    one ``redis.Redis`` connection per primary (a Cluster's slot map read once)."""

    def __init__(self, limiter: RateLimiter, nodes: list[tuple[str, int]],
                 cluster: bool) -> None:
        self.sha, source = script(f"ratelimit_{limiter.algorithm}")
        clients = {node: redis.Redis(host=node[0], port=node[1]) for node in nodes}
        for client in clients.values():
            client.script_load(source)
        self.args = (0, 1, *limiter.spec.parameters)  # the backend's clock, cost 1
        if cluster:
            slots = RedisCluster(host=nodes[0][0], port=nodes[0][1])
            where = [slots.get_node_from_key(k) for k in self.storage_keys(limiter)]
            self.calls = [(clients[(n.host, n.port)], k)
                          for n, k in zip(where, self.storage_keys(limiter), strict=True)]
            slots.close()
        else:
            only = next(iter(clients.values()))
            self.calls = [(only, k) for k in self.storage_keys(limiter)]

    @staticmethod
    def storage_keys(limiter: RateLimiter) -> list[str]:
        return [limiter.storage_keys(k)[0] for k in KEYS]

    def latencies_us(self, n: int) -> list[float]:
        clock = time.perf_counter_ns
        sha, args, calls = self.sha, self.args, self.calls
        out = []
        for i in range(n):
            client, key = calls[i % len(calls)]
            start = clock()
            client.evalsha(sha, 1, key, *args)
            out.append((clock() - start) / 1000)
        return out


async def decisions_per_s(topo: Topology, per_task: int) -> tuple[float, float]:
    """Decisions per second of ``TASKS`` tasks, and the client CPU per decision (us)."""
    limiter = topo.limiter
    counter = iter(range(10**9))

    async def task() -> None:
        for _ in range(per_task):
            await limiter.aacquire(KEYS[next(counter) % len(KEYS)])

    start, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(task() for _ in range(TASKS)))
    decisions = TASKS * per_task
    return (decisions / (time.perf_counter() - start),
            (time.process_time() - cpu) * 1e6 / decisions)


def latencies_us(topo: Topology, n: int) -> list[float]:
    acquire = topo.limiter.acquire
    clock = time.perf_counter_ns
    out = []
    for i in range(n):
        start = clock()
        acquire(KEYS[i % len(KEYS)])
        out.append((clock() - start) / 1000)
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def paired(base: Topology, topo: Topology, per_task: int, sync_n: int,
                 first: bool) -> None:
    """One round of ``topo`` against standalone TCP: the asyncio case in 4 alternations and
    the sync case in 10, in ABBA order, so drift of the machine hits both alike; the round's
    ratio is the median of the alternations' ratios."""
    async_ratios, cpu_ratios, sync_ratios = [], [], []
    for i in range(4):
        order = (base, topo) if (i % 2 == 0) == first else (topo, base)
        got = {}
        for measured in order:
            measured.reset_stats()
            per_s, cpu_us = await decisions_per_s(measured, per_task // 4)
            scripts, other = measured.counted()
            measured.async_scripts.append(scripts / (TASKS * (per_task // 4)))
            measured.async_commands.append(other / (TASKS * (per_task // 4)))
            measured.per_s.append(per_s)
            measured.cpu_us.append(cpu_us)
            got[measured.name] = (per_s, cpu_us)
        async_ratios.append(got[topo.name][0] / got[base.name][0])
        cpu_ratios.append(got[topo.name][1] / got[base.name][1])
    for i in range(10):
        order = (base, topo) if (i % 2 == 0) == first else (topo, base)
        got = {}
        for measured in order:
            measured.reset_stats()
            lat = await asyncio.to_thread(latencies_us, measured, sync_n // 10)
            scripts, other = measured.counted()
            measured.sync_scripts.append(scripts / (sync_n // 10))
            measured.sync_commands.append(other / (sync_n // 10))
            measured.median_us.append(statistics.median(lat))
            measured.p99_us.append(percentile(lat, 0.99))
            got[measured.name] = measured.median_us[-1]
        sync_ratios.append(got[topo.name] / got[base.name])
    if topo.bare is not None and base.bare is not None:
        bare_ratios = []
        for i in range(10):
            order = (base, topo) if (i % 2 == 0) == first else (topo, base)
            for measured in order:
                assert measured.bare is not None
                lat = await asyncio.to_thread(measured.bare.latencies_us, sync_n // 10)
                measured.bare_median_us.append(statistics.median(lat))
            bare_ratios.append(topo.bare_median_us[-1] / base.bare_median_us[-1])
        topo.bare_ratio.append(statistics.median(bare_ratios))
    topo.per_s_ratio.append(statistics.median(async_ratios))
    topo.cpu_ratio.append(statistics.median(cpu_ratios))
    topo.latency_ratio.append(statistics.median(sync_ratios))


Started = tuple[list[Any], Topology]


async def measure(base: Topology, makers: list[Callable[[], Started]], rounds: int,
                  per_task: int, sync_n: int) -> list[Topology]:
    """Each topology in turn runs beside standalone TCP alone: its servers are started, paired
    with TCP for ``rounds`` rounds (see paired), and stopped before the next one starts - as
    in production, no other topology's redis-server processes share the cores."""
    await warm_up(base)
    measured = [base]
    for make in makers:
        started, topo = await asyncio.to_thread(make)
        try:
            await warm_up(topo)
            for r in range(rounds):
                await paired(base, topo, per_task, sync_n, first=r % 2 == 0)
                print(f"round {r + 1} {topo.name:22} {topo.per_s_ratio[-1]:5.2f}x decisions/s"
                      f" ({topo.cpu_ratio[-1]:4.2f}x client CPU per decision),"
                      f" {topo.latency_ratio[-1]:5.2f}x sync latency"
                      + (f" (bare redis-py {topo.bare_ratio[-1]:4.2f}x)" if topo.bare_ratio
                         else ""), file=sys.stderr)
        finally:
            await topo.backend.aclose()
            for server in reversed(started):
                server.stop()
        measured.append(topo)
    return measured


async def warm_up(topo: Topology) -> None:
    """Connections, scripts and slot maps in place before anything is measured."""
    await decisions_per_s(topo, 5)
    latencies_us(topo, 50)
    if topo.bare is not None:
        topo.bare.latencies_us(50)


def first_tls_decision(url: str, options: dict[str, Any]) -> dict[str, Any]:
    """The first decisions on a fresh backend with ``from_url``'s default timeouts."""
    backend = RedisBackend.from_url(url, **options)
    limiter = RateLimiter("10/second", backend=backend, name="first-tls")
    sync = limiter.acquire("first")

    async def first_async() -> Any:
        try:
            return await limiter.aacquire("first-async")
        finally:
            await backend.aclose()

    decision = asyncio.run(first_async())
    backend.close()
    return {"sync_fallback": sync.fallback, "async_fallback": decision.fallback}


def client_certificate_check(server: servers.TlsRedisServer) -> dict[str, Any]:
    backend = RedisBackend.from_url(server.tls_url, timeout=1.0, **server.client_options())
    limiter = RateLimiter("10/second", backend=backend, name="client-cert",
                          on_backend_error="raise")
    out: dict[str, Any] = {}
    try:
        out["sync"] = limiter.acquire("c").allowed
    except Exception as exc:  # reported, not hidden
        out["sync"] = repr(exc)

    async def run() -> Any:
        try:
            return (await limiter.aacquire("c")).allowed
        except Exception as exc:
            return repr(exc)
        finally:
            await backend.aclose()

    out["asyncio"] = asyncio.run(run())
    backend.close()
    return out


def rows(topologies: list[Topology]) -> list[dict[str, Any]]:
    out = []
    for topo in topologies:
        out.append({
            "topology": topo.name,
            "decisions_per_s": round(statistics.median(topo.per_s)),
            "per_s_vs_tcp": round(statistics.median(topo.per_s_ratio or [1.0]), 2),
            "client_cpu_us_per_decision": round(statistics.median(topo.cpu_us), 1),
            "client_cpu_vs_tcp": round(statistics.median(topo.cpu_ratio or [1.0]), 2),
            "sync_median_us": round(statistics.median(topo.median_us), 1),
            "sync_p99_us": round(statistics.median(topo.p99_us), 1),
            "sync_median_vs_tcp": round(statistics.median(topo.latency_ratio or [1.0]), 2),
            "bare_sync_median_us": (round(statistics.median(topo.bare_median_us), 1)
                                    if topo.bare_median_us else None),
            "bare_sync_median_vs_tcp": (round(statistics.median(topo.bare_ratio), 2)
                                        if topo.bare_ratio else
                                        1.0 if topo.bare_median_us else None),
            "evalsha_per_decision_async": round(statistics.median(topo.async_scripts), 3),
            "evalsha_per_decision_sync": round(statistics.median(topo.sync_scripts), 3),
            "other_commands_per_decision_async": round(statistics.median(topo.async_commands), 3),
            "other_commands_per_decision_sync": round(statistics.median(topo.sync_commands), 3),
        })
    return out


def markdown(label: str, result: dict[str, Any]) -> str:
    lines = [f"### {label}", "",
             f"`python benchmarks/bench_topology.py --rounds {result['rounds']}"
             f"{' --pin' if result['pinned'] else ''}`;"
             f" {result['platform']}, {result['date']}.", "",
             "| topology | decisions/s (50 tasks) | vs TCP | client CPU per decision, vs TCP"
             " | sync median | sync p99 | vs TCP | bare redis-py sync median, vs TCP"
             " | EVALSHA per decision (async / sync) | other commands per decision (async / sync) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in result["rows"]:
        lines.append(
            f"| {row['topology']} | {row['decisions_per_s']:,} | {row['per_s_vs_tcp']:.2f}x"
            f" | {row['client_cpu_us_per_decision']:.1f} µs, {row['client_cpu_vs_tcp']:.2f}x"
            f" | {row['sync_median_us']:.1f} µs | {row['sync_p99_us']:.1f} µs"
            f" | {row['sync_median_vs_tcp']:.2f}x"
            + (f" | {row['bare_sync_median_us']:.1f} µs, {row['bare_sync_median_vs_tcp']:.2f}x"
               if row["bare_sync_median_us"] is not None else " | -")
            + f" | {row['evalsha_per_decision_async']:.2f} / {row['evalsha_per_decision_sync']:.2f}"
            f" | {row['other_commands_per_decision_async']:.2f} / {row['other_commands_per_decision_sync']:.2f} |")
    lines += ["", f"First decisions on TLS with `from_url`'s default timeouts: "
              f"{result['first_tls']}; client-certificate server: {result['client_cert']}.", ""]
    return "\n".join(lines)


def pin_servers_apart() -> None:
    """Put this process on CPU 0 and every redis-server it starts on the other CPUs, so the
    client and the servers never take each other's CPU (without it, a sync round trip's wait
    on a small machine is mostly how soon a sleeping CPU wakes, and varies with what else
    runs). Both topologies of a pair then get the same CPUs for their servers: a Cluster's
    primaries share them, as they would not on their own hosts."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("--pin needs at least 2 CPUs")
    client, rest = {cpus[0]}, set(cpus[1:])
    os.sched_setaffinity(0, client)
    start = servers.RedisServer.start

    def pinned_start(self: servers.RedisServer, *args: Any, **kwargs: Any) -> Any:
        out = start(self, *args, **kwargs)
        if self.pid is not None:
            os.sched_setaffinity(self.pid, rest)
        return out

    servers.RedisServer.start = pinned_start  # type: ignore[method-assign]


def main() -> None:
    import platform

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--per-task", type=int, default=200, help="decisions per task, case a")
    parser.add_argument("--sync", type=int, default=3000, help="sync decisions per round, case b")
    parser.add_argument("--pin", action="store_true",
                        help="run this process on CPU 0 and every redis-server on the others")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--markdown", metavar="LABEL", help="print a markdown section")
    opts = parser.parse_args()
    started: list[Any] = []

    def start(make: Callable[[], Any]) -> Any:
        server = make()
        started.append(server)
        return server

    if opts.pin:
        pin_servers_apart()

    def tls_topology() -> Started:
        server = servers.TlsRedisServer()
        return [server], Topology("standalone TLS", server.tls_url, [server],
                                  **server.client_options())

    def sentinel_topology() -> Started:
        group = servers.SentinelServers()
        return [group], Topology("Sentinel (1+1)", group.url, [group.primary])

    def cluster_topology() -> Started:
        cluster = servers.RedisClusterServers(3)
        topo = Topology("Cluster (3 primaries)", cluster.url, cluster.nodes)
        topo.bare = BareClient(topo.limiter, [(n.host, n.port) for n in cluster.nodes], True)
        return [cluster], topo

    try:
        tcp = start(servers.RedisServer)
        # the TLS checks need their servers only for a moment
        tls = start(servers.TlsRedisServer)
        tls_client_cert = start(lambda: servers.TlsRedisServer(auth_clients=True))
        first_tls = first_tls_decision(tls.tls_url, tls.client_options())
        client_cert = client_certificate_check(tls_client_cert)
        tls.stop()
        tls_client_cert.stop()
        base = Topology("standalone TCP", tcp.url, [tcp])
        base.bare = BareClient(base.limiter, [(tcp.host, tcp.port)], False)
        began = time.monotonic()

        async def run() -> list[Topology]:
            try:
                return await measure(base, [tls_topology, sentinel_topology, cluster_topology],
                                     opts.rounds, opts.per_task, opts.sync)
            finally:
                await base.backend.aclose()

        topologies = asyncio.run(run())
        result = {
            "benchmark": "topology", "rounds": opts.rounds,
            "platform": f"{platform.platform()}, Python {platform.python_version()}",
            "date": time.strftime("%Y-%m-%d"), "seconds": round(time.monotonic() - began),
            "rows": rows(topologies), "first_tls": first_tls, "client_cert": client_cert,
            "pinned": opts.pin,
        }
    finally:
        for server in reversed(started):
            server.stop()
    if opts.json:
        print(json.dumps(result, indent=2))
    elif opts.markdown:
        print(markdown(opts.markdown, result))
    else:
        print(markdown("bench_topology", result))


if __name__ == "__main__":
    main()
