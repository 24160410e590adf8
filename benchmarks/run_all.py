"""Run every benchmark beside its peers, on this machine, in one go; write the table and a plot.

    python benchmarks/run_all.py [--rounds 5] [--only breaker,retry] [--out benchmarks/results]

Each ``benchmarks/bench_*.py`` runs as a subprocess (each starts its own redis-server on a free
port, so all of them measure against the same Redis build on the same machine) and measures ours
and the peer interleaved, round by round. This script reads their output, keeps the ratios
(ours / peer: lower is better for times), and writes:

* ``results.md`` - one table of every comparison, then each benchmark's own output;
* ``results.png`` - the ratios as bars (log scale; needs matplotlib: ``pip install -e '.[bench]'``).

Peers: limits (bench_ratelimit), slowapi (bench_http), pybreaker (bench_breaker), tenacity and
stamina (bench_retry), fastapi-idempotency (bench_idempotency); bench_outbound compares with
bare httpx/requests clients.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
FLOAT = r"(-?\d+(?:\.\d+)?)"


@dataclass(frozen=True)
class Ratio:
    """One comparison: ours / peer for ``case`` (lower is better unless stated)."""

    benchmark: str
    case: str
    peer: str
    ratio: float
    ours: float | None = None
    theirs: float | None = None
    unit: str = "µs"


def _breaker(out: str) -> list[Ratio]:
    rows = []
    for line in out.splitlines():
        m = re.match(rf"^(.+?)\s+{FLOAT}\s+{FLOAT}\s+{FLOAT}\s+{FLOAT}\s+", line)
        if m and not line.startswith("case"):
            rows.append(Ratio("breaker", m.group(1).strip(), "pybreaker", float(m.group(4)),
                              float(m.group(2)), float(m.group(3))))
    return rows


def _retry(out: str) -> list[Ratio]:
    rows, label, ours = [], "", None
    for line in out.splitlines():
        head = re.search(r"succeeds first time \((\w+)\)", line)
        if head:
            label, ours = head.group(1), None
        m = re.match(rf"^(fintech_resilience|tenacity|stamina)\s+{FLOAT}\s+{FLOAT}$",
                     line.strip())
        if m and label:
            if m.group(1) == "fintech_resilience":
                ours = float(m.group(2))
            else:
                rows.append(Ratio("retry", f"retry, success on first attempt ({label})",
                                  m.group(1), float(m.group(3)), ours, float(m.group(2))))
    return rows


def _http(out: str) -> list[Ratio]:
    rows = []
    for line in out.splitlines():
        m = re.match(rf"^ours (\w+) / (slowapi \w+|bare starlette)[^:]*:\s+{FLOAT}", line)
        if m:
            rows.append(Ratio("http", f"ASGI rate-limit middleware ({m.group(1)})", m.group(2),
                              float(m.group(3))))
    return rows


def _idempotency(out: str) -> list[Ratio]:
    rows = []
    for line in out.splitlines():
        m = re.match(rf"^fastapi-idempotency \(memory\) overhead / ours \((\w+)\) overhead ="
                     rf"\s+{FLOAT}", line)
        if m and float(m.group(2)) > 0:
            rows.append(Ratio("idempotency", f"idempotency middleware overhead (ours on"
                              f" {m.group(1)})", "fastapi-idempotency (memory)",
                              round(1 / float(m.group(2)), 3)))
        m = re.match(rf"^ours \(Redis\) first-request overhead / bare EVALSHA = {FLOAT}", line)
        if m:
            rows.append(Ratio("idempotency", "idempotency overhead on Redis",
                              "one bare EVALSHA", float(m.group(1))))
    return rows


def _ratelimit(out: str) -> list[Ratio]:
    start = out.find("{")
    data = json.loads(out[start:])
    peers = {"a.": "bare redis-py EVALSHA", "b.": "limits (memory)", "b'": "fixed limits",
             "c.": "check removed",
             "c'": "no SDK", "d.": "redis.asyncio, one EVALSHA each", "d'": "redis.asyncio, one EVALSHA each",
             "e.": "a no-op span"}
    return [Ratio("ratelimit", row["case"], peers.get(row["case"][:2], "reference"),
                  float(row["ratio"]), float(row["ours_us"]), float(row["reference_us"]))
            for row in data["rows"]]


def _outbound(out: str) -> list[Ratio]:
    rows = []
    for line in out.splitlines():
        m = re.match(rf"^(.+?)\s+{FLOAT}\s+{FLOAT}\s+{FLOAT}$", line.strip())
        if m and "transport alone" not in line:
            rows.append(Ratio("outbound", m.group(1).strip(), "bare client", float(m.group(4)),
                              float(m.group(2))))
    return rows


#: benchmark -> (arguments, parser); ``{rounds}`` is filled in
BENCHMARKS: dict[str, tuple[list[str], Callable[[str], list[Ratio]]]] = {
    "ratelimit": (["--rounds", "{rounds}", "--json"], _ratelimit),
    "http": (["--rounds", "{rounds}"], _http),
    "breaker": (["--rounds", "{rounds}"], _breaker),
    "retry": (["--rounds", "{rounds}"], _retry),
    "idempotency": ([], _idempotency),
    "outbound": (["--rounds", "{rounds}"], _outbound),
}


def run_one(name: str, rounds: int, timeout: float) -> tuple[str, list[Ratio], str]:
    """Run ``bench_<name>.py``; return its output, the ratios parsed from it and an error."""
    args, parse = BENCHMARKS[name]
    cmd = [sys.executable, str(HERE / f"bench_{name}.py"),
           *(a.format(rounds=rounds) for a in args)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return "", [], f"timed out after {timeout:.0f} s"
    if proc.returncode != 0:
        return proc.stdout, [], f"exit {proc.returncode}: {proc.stderr.strip()[-800:]}"
    try:
        ratios = parse(proc.stdout)
    except (ValueError, KeyError, json.JSONDecodeError) as exc:
        return proc.stdout, [], f"could not read its output: {exc}"
    return proc.stdout, ratios, "" if ratios else "no comparison found in its output"


def write_markdown(path: Path, ratios: list[Ratio], outputs: dict[str, str],
                   errors: dict[str, str], rounds: int, seconds: float) -> None:
    """The results table, then every benchmark's own output."""
    lines = [
        "# Benchmark results",
        "",
        f"`python benchmarks/run_all.py --rounds {rounds}` on {platform.platform()},"
        f" Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}; {seconds:.0f} s.",
        "Ratios are ours / peer, measured interleaved in the same run: below 1 we are faster.",
        "",
        "| benchmark | case | peer | ours | peer | ours / peer |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in ratios:
        ours = f"{r.ours:.2f} {r.unit}" if r.ours is not None else ""
        theirs = f"{r.theirs:.2f} {r.unit}" if r.theirs is not None else ""
        lines.append(f"| {r.benchmark} | {r.case} | {r.peer} | {ours} | {theirs} |"
                     f" {r.ratio:.3f} |")
    for name, error in errors.items():
        lines.append(f"| {name} | not measured: {error.splitlines()[0][:120]} | | | | |")
    lines += ["", "![ours / peer](results.png)", ""]
    for name, out in outputs.items():
        lines += [f"## bench_{name}.py", "", "```text", out.rstrip(), "```", ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def write_plot(path: Path, ratios: list[Ratio]) -> bool:
    """Horizontal bars of every ratio (log scale, 1 = parity); False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    shown = [r for r in ratios if r.ratio > 0]
    labels = [f"{r.case[:48]} vs {r.peer[:28]}" for r in shown]
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(shown) + 1.5))
    colors = ["#2a9d8f" if r.ratio <= 1 else "#e76f51" for r in shown]
    ax.barh(range(len(shown)), [r.ratio for r in shown], color=colors)
    ax.set_yticks(range(len(shown)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("ours / peer (log scale; < 1: ours is faster or cheaper)")
    ax.set_title("fintech_resilience beside its peers, same machine, same run")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", default="", help="comma-separated: " + ",".join(BENCHMARKS))
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per benchmark")
    opts = parser.parse_args(argv)
    names = [n for n in opts.only.split(",") if n] or list(BENCHMARKS)
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    opts.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    ratios: list[Ratio] = []
    outputs: dict[str, str] = {}
    errors: dict[str, str] = {}
    for name in names:
        print(f"bench_{name}.py ...", flush=True)
        out, found, error = run_one(name, opts.rounds, opts.timeout)
        outputs[name] = out
        ratios += found
        if error:
            errors[name] = error
            print(f"  {error}", flush=True)
        for r in found:
            print(f"  {r.case} vs {r.peer}: {r.ratio:.3f}", flush=True)
    write_markdown(opts.out / "results.md", ratios, outputs, errors, opts.rounds,
                   time.monotonic() - started)
    plotted = write_plot(opts.out / "results.png", ratios)
    print(f"wrote {opts.out / 'results.md'}"
          + (f" and {opts.out / 'results.png'}" if plotted else " (no plot: pip install matplotlib)"))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
