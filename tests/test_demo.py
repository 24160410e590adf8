"""``fintech-resilience demo`` runs to completion and its invariants hold - on memory and Redis."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

from fintech_resilience.cli import commands as cli
from fintech_resilience.cli.demo import Check, DemoReport, _worst_excess, run_demo
from fintech_resilience.cli.demo_app import AuthMiddleware, call_asgi

SECONDS = 6.0
INVARIANTS = {
    "charges executed once per idempotency key",
    "no tenant over its limit",
    "breaker opened and closed again",
    "duplicates replayed, not re-executed",
    "retries bounded by the retry budget",
    "every request answered (no 500s)",
}


def assert_every_invariant_held(report: DemoReport) -> None:
    failed = [f"{c.name}: {c.detail}" for c in report.checks if not c.ok]
    assert not failed, failed
    assert {c.name for c in report.checks} == INVARIANTS
    assert report.ok
    counts = report.counts
    # the demo showed every pattern at work, not just an idle API
    assert counts["http_201"] > 20 and counts["http_429"] > 0 and counts["replays"] > 0
    assert counts["retries"] > 0 and counts["refused_CircuitOpen"] > 0
    assert counts["charges"] > 20
    assert "CLOSED->OPEN" in report.transitions and "HALF_OPEN->CLOSED" in report.transitions


async def test_demo_on_memory_holds_every_invariant() -> None:
    out = io.StringIO()
    report = await run_demo(seconds=SECONDS, seed=3, out=out)
    assert_every_invariant_held(report)
    text = out.getvalue()
    assert "\033[" not in text  # not a terminal: plain lines
    for event in ("PSP is flaky", "PSP is down", "PSP is recovered", "-> OPEN", "429",
                  "Idempotent-Replayed", "all invariants hold"):
        assert event in text, event
    assert text.count("PASS") == len(INVARIANTS)


async def test_demo_on_redis_holds_every_invariant(redis_url: str) -> None:
    out = io.StringIO()
    report = await run_demo(redis_url=redis_url, seconds=SECONDS, seed=5, out=out)
    assert report.backend == "redis"
    assert_every_invariant_held(report)
    # the state lived in Redis: the operator's view shows the demo's breaker, closed again
    status = io.StringIO()
    assert cli.main(["status", "--redis", redis_url, "--json"], out=status) == 0
    breakers = {b["name"]: b for b in json.loads(status.getvalue())["breakers"]}
    assert breakers["demo-psp"]["state"] == "CLOSED"


def test_demo_command_exits_0_and_reports_json() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fintech_resilience.cli", "demo", "--seconds", str(SECONDS),
         "--plain", "--json", "--seed", "11"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "NO_COLOR": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["ok"] is True and report["backend"] == "memory"
    assert {c["name"] for c in report["checks"] if c["ok"]} == INVARIANTS
    assert proc.stderr == ""


def test_live_display_rewrites_one_status_line() -> None:
    from fintech_resilience.cli.demo import Display

    out = io.StringIO()
    display = Display(out, live=True, color=True)
    display.status(0.5, "201=1")
    display.event(0.6, "PSP is down", "red")
    display.status(0.7, "201=2")
    display.close()
    text = out.getvalue()
    assert "\r\033[K" in text and "\033[31mPSP is down\033[0m\n" in text
    assert text.count("\n") == 1  # only the event is a line of its own


def test_demo_command_fails_when_an_invariant_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(**_: object) -> DemoReport:
        return DemoReport("memory", 1.0, [Check("charges executed once per idempotency key",
                                                False, "1 moved money twice")])

    monkeypatch.setattr("fintech_resilience.cli.demo.run_demo", broken)
    assert cli.main(["demo", "--seconds", "1", "--plain"], out=io.StringIO()) == 1


def test_demo_refuses_an_unreachable_redis_before_starting() -> None:
    import servers

    err = io.StringIO()
    code = cli.main(["demo", "--redis", f"redis://127.0.0.1:{servers.free_port()}/0"],
                    out=io.StringIO(), err=err)
    assert code == cli.EXIT_UNREACHABLE and "cannot reach Redis" in err.getvalue()


class TestLimitCheck:
    """The "no tenant over its limit" check catches a limiter that admits too much."""

    def test_admissions_at_the_rate_pass(self) -> None:
        times = [i / 10 for i in range(100)]  # 10/s for 10 s
        assert _worst_excess(times, 10, 10) <= 0

    def test_a_burst_of_the_bucket_size_passes(self) -> None:
        times = [0.0] * 10 + [1.0 + i / 10 for i in range(10)]
        assert _worst_excess(times, 10, 10) <= 0

    def test_one_admission_too_many_fails(self) -> None:
        times = [0.0] * 10 + [0.5 + i / 100 for i in range(10)]  # 20 within 0.6 s
        assert _worst_excess(times, 10, 10) > 0

    def test_a_per_process_limit_on_two_processes_fails(self) -> None:
        one = [i / 10 for i in range(20)]
        assert _worst_excess(one + [t + 0.01 for t in one], 10, 10) > 0


async def test_in_process_client_drives_pure_asgi_apps() -> None:
    seen = {}

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        seen["principal"] = scope["state"].get("principal")
        seen["body"] = (await receive())["body"]
        await send({"type": "http.response.start", "status": 202,
                    "headers": [(b"x-a", b"1")]})
        await send({"type": "http.response.body", "body": b"ok"})

    reply = await call_asgi(AuthMiddleware(app), "POST", "/x", body=b"hi",
                            headers={"authorization": "Bearer acme"})
    assert (reply.status, reply.headers["x-a"], reply.body) == (202, "1", b"ok")
    assert seen == {"principal": "acme", "body": b"hi"}
