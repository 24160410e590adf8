"""``fintech-resilience demo``: every pattern at work on a payment API whose PSP fails.

:func:`run_demo` builds the API of :mod:`fintech_resilience.cli.demo_app` on a backend (memory, or
Redis with ``redis_url``), drives it for ``seconds`` with a crowd of clients - three well-behaved
tenants, one greedy tenant, clients that retry with the same idempotency key, resend after a
success or send a key twice at once - while the simulated PSP goes flaky, down and back. It prints
what happens as it happens, then checks the invariants and returns a :class:`DemoReport`
(``report.ok`` is the exit status of the command).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import secrets
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, TextIO

from ..backends.base import Backend
from ..backends.memory import MemoryBackend
from ..breaker.circuit import BreakerState, CircuitBreaker, CountWindow, Transition
from ..core.outcomes import on_exceptions
from ..idempotency.store import IdempotencyStore
from ..policy.bulkhead import Bulkhead
from ..policy.compose import Policy
from ..ratelimit.limiter import RateLimiter
from ..retries.backoff import full_jitter
from ..retries.budget import RetryBudget
from ..retries.core import RetryDetails, retry
from . import demo_app

__all__ = ["Check", "DemoReport", "run_demo"]

TENANT_RATE = 10  # requests per second per tenant (GCRA: burst = rate)
TENANTS = ("acme", "globex", "initech")
GREEDY = "greedy"
BUDGET_RATIO = 0.2
BUDGET_FLOOR = 3.0


@dataclass(frozen=True, slots=True)
class Check:
    """One invariant of the summary: its name, whether it held, and the evidence."""

    name: str
    ok: bool
    detail: str


@dataclass
class DemoReport:
    """What a demo run showed. ``ok`` is True when every check held."""

    backend: str
    seconds: float
    checks: list[Check] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    transitions: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every invariant held."""
        return bool(self.checks) and all(c.ok for c in self.checks)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly view (``fintech-resilience demo --json``)."""
        return {"ok": self.ok, "backend": self.backend, "seconds": self.seconds,
                "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
                "counts": self.counts, "transitions": self.transitions}


class Display:
    """Live progress: a status line (rewritten in place on a terminal, one line per second
    otherwise) and a line per event (phase change, breaker transition, first of a kind)."""

    COLORS = {"red": "31", "green": "32", "yellow": "33", "cyan": "36", "bold": "1", "dim": "2"}

    def __init__(self, out: TextIO, *, live: bool, color: bool) -> None:
        self.out = out
        self.live = live
        self.color = color
        self._status = ""
        self._last_plain = 0.0

    def paint(self, text: str, color: str) -> str:
        """``text`` in ``color`` when colors are on."""
        return f"\033[{self.COLORS[color]}m{text}\033[0m" if self.color else text

    def event(self, elapsed: float, text: str, color: str = "cyan") -> None:
        """Print one event line (above the status line on a terminal)."""
        line = f"{elapsed:6.1f}s  {self.paint(text, color)}"
        if self.live:
            self.out.write("\r\033[K" + line + "\n" + self._status)
        else:
            self.out.write(line + "\n")
        self.out.flush()

    def status(self, elapsed: float, text: str) -> None:
        """Update the status line (plain output: at most once a second)."""
        if self.live:
            self._status = self.paint(f"{elapsed:6.1f}s  {text}", "dim")
            self.out.write("\r\033[K" + self._status)
            self.out.flush()
        elif elapsed - self._last_plain >= 1.0:
            self._last_plain = elapsed
            self.out.write(f"{elapsed:6.1f}s  {text}\n")
            self.out.flush()

    def close(self) -> None:
        """End the status line."""
        if self.live:
            self.out.write("\r\033[K")
            self.out.flush()


@dataclass
class _Load:
    """What the clients saw."""

    statuses: Counter[int] = field(default_factory=Counter)
    by_tenant: defaultdict[str, Counter[int]] = field(
        default_factory=lambda: defaultdict(Counter))
    charge_ids: defaultdict[tuple[str, str], set[str]] = field(
        default_factory=lambda: defaultdict(set))
    replays: int = 0
    replay_mismatches: int = 0
    keys: int = 0
    retries: int = 0
    first_attempts: int = 0
    budget_denied: int = 0


class _Demo:
    def __init__(self, backend: Backend, *, seconds: float, seed: int, display: Display) -> None:
        self.backend = backend
        self.seconds = seconds
        self.rng = random.Random(seed)
        self.display = display
        self.run_id = secrets.token_hex(4)
        self.load = _Load()
        self.counts: Counter[str] = Counter()
        self.transitions: list[Transition] = []
        self.started = time.monotonic()
        self.firsts: set[str] = set()
        self.psp = demo_app.SimulatedPSP(seconds, self.rng)
        break_duration = min(2.0, max(0.3, seconds * 0.05))
        self.breaker = CircuitBreaker(
            "demo-psp", backend=backend, failure_rate=0.5, minimum_calls=8,
            window=CountWindow(20), break_duration=break_duration, half_open_calls=2,
            refresh_interval=0.2, neutral=on_exceptions(demo_app.CardDeclined),
            listeners=[self._on_transition])
        self.budget = RetryBudget("demo-psp", backend=backend, ratio=BUDGET_RATIO,
                                  min_per_second=BUDGET_FLOOR, max_tokens=5)
        self.policy = Policy(
            name="demo-psp",
            rate_limit=RateLimiter("200/second", name="demo-psp-out", backend=backend),
            bulkhead=Bulkhead(8, max_wait=0.25, name="demo-psp"),
            retry=retry(on=(ConnectionError, TimeoutError), attempts=3,
                        wait=full_jitter(initial=0.02, maximum=0.1, rng=self.rng),
                        deadline=1.0, budget=self.budget, idempotent=False,
                        key_argument="idempotency_key", before_sleep=self._on_retry,
                        name="demo-psp"),
            breaker=self.breaker, timeout=0.2)
        secret = secrets.token_bytes(32)
        self.store = IdempotencyStore(backend, secret=secret, ttl=600, lease=5,
                                      name="demo", check_eviction=False)
        self.limiter = RateLimiter(f"{TENANT_RATE}/second", name="demo-tenant", backend=backend)
        self.app = self._build_app()

    # -- wiring ------------------------------------------------------------------------------
    def _build_app(self) -> demo_app.ASGIApp:
        from ..edges.asgi.idempotency import IdempotencyMiddleware
        from ..edges.asgi.ratelimit import RateLimitMiddleware

        inner = demo_app.payment_api(self.psp, self.policy, self.counts)
        idem = IdempotencyMiddleware(inner, store=self.store, methods=("POST",), required=True,
                                     scope=lambda scope: scope["state"]["principal"])
        self.recorder = demo_app.AdmissionRecorder(idem)
        limited = RateLimitMiddleware(self.recorder, self.limiter, exempt_paths=["/healthz"])
        return demo_app.AuthMiddleware(limited)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def first(self, what: str, text: str, color: str = "yellow") -> None:
        if what not in self.firsts:
            self.firsts.add(what)
            self.display.event(self.elapsed(), text, color)

    def _on_transition(self, transition: Transition) -> None:
        self.transitions.append(transition)
        color = ("red" if transition.state in (BreakerState.OPEN, BreakerState.FORCED_OPEN)
                 else "yellow" if transition.state is BreakerState.HALF_OPEN else "green")
        hint = (f" (probing again in {transition.retry_after:.1f}s)"
                if transition.state is BreakerState.OPEN else "")
        self.display.event(self.elapsed(), f"breaker demo-psp: {transition.previous.name} -> "
                           f"{transition.state.name}{hint}", color)

    def _on_retry(self, details: RetryDetails) -> None:
        self.load.retries += 1
        self.first("retry", f"PSP call failed ({type(details.outcome.exception).__name__});"
                   f" retrying with the same downstream idempotency key")

    # -- clients -----------------------------------------------------------------------------
    async def _send(self, tenant: str, key: str, amount: int) -> demo_app.Reply:
        reply = await demo_app.call_asgi(
            self.app, "POST", "/charges", body=json.dumps({"amount": amount}).encode(),
            headers={"authorization": f"Bearer {tenant}", "idempotency-key": key,
                     "content-type": "application/json"})
        load = self.load
        load.statuses[reply.status] += 1
        load.by_tenant[tenant][reply.status] += 1
        replayed = reply.headers.get("idempotent-replayed") == "true"
        if reply.status == 201:
            load.charge_ids[(tenant, key)].add(reply.json()["id"])
        if replayed:
            load.replays += 1
            self.first("replay", f"{tenant}: duplicate of key {key} answered from the"
                       " idempotency record (Idempotent-Replayed: true), no second charge",
                       "green")
        if reply.status == 429:
            self.first(f"429-{tenant}", f"{tenant}: 429 Too Many Requests (Retry-After:"
                       f" {reply.headers.get('retry-after')}s) - over {TENANT_RATE}/s")
        elif reply.status == 409:
            self.first("409", f"{tenant}: 409 - the same key is still being processed")
        elif reply.status == 503 and "Budget" in reply.body.decode():
            self.first("budget", "retry budget exhausted: no more retries until calls succeed",
                       "red")
        elif reply.status == 503 and "CircuitOpen" in reply.body.decode():
            self.first("open503", "503 with Retry-After while the breaker is open (no PSP call)")
        return reply

    async def _charge(self, tenant: str, key: str, amount: int, stop_at: float) -> None:
        """One charge: retried with the same key until answered (bounded), sometimes resent
        after success (a lost response) or sent twice at once (a double click)."""
        self.load.keys += 1
        if self.rng.random() < 0.08:
            await asyncio.gather(self._send(tenant, key, amount), self._send(tenant, key, amount))
        for _ in range(8):
            reply = await self._send(tenant, key, amount)
            if reply.status in (201, 402):
                if self.rng.random() < 0.15:
                    await self._resend(tenant, key, amount, reply)
                return
            if time.monotonic() > stop_at + 2.0:
                return
            hint = float(reply.headers.get("retry-after", "0") or 0)
            await asyncio.sleep(min(0.5, max(hint, 0.05)) * self.rng.uniform(0.5, 1.0))

    async def _resend(self, tenant: str, key: str, amount: int,
                      first: demo_app.Reply) -> None:
        """Send a charge again after its answer (as if the answer was lost): the tenant's limit
        may refuse it first (429); once through, it must be the first answer, replayed."""
        for _ in range(5):
            again = await self._send(tenant, key, amount)
            if again.status != 429:
                if (again.status, again.body) != (first.status, first.body):
                    self.load.replay_mismatches += 1
                return
            await asyncio.sleep(float(again.headers.get("retry-after", "1")) / 4)

    async def _client(self, tenant: str, number: int, pause: tuple[float, float],
                      stop_at: float) -> None:
        n = 0
        while time.monotonic() < stop_at:
            n += 1
            key = f"{self.run_id}-{tenant}-{number}-{n}"
            amount = self.rng.randrange(100, 100_000)
            await self._charge(tenant, key, amount, stop_at)
            await asyncio.sleep(self.rng.uniform(*pause))

    async def _greedy(self, number: int, stop_at: float) -> None:
        n = 0
        while time.monotonic() < stop_at:
            n += 1
            key = f"{self.run_id}-{GREEDY}-{number}-{n}"
            self.load.keys += 1
            await self._send(GREEDY, key, self.rng.randrange(100, 100_000))
            await asyncio.sleep(0.01)

    # -- the run -----------------------------------------------------------------------------
    def _status_text(self) -> str:
        s = self.load.statuses
        state = self.breaker.known_state
        errors = sum(v for k, v in s.items() if k >= 500)
        return (f"psp={self.psp.phase():<9} breaker={state.name if state is not None else '-':<9} "
                f"201={s[201]} 429={s[429]} 409={s[409]} 5xx={errors} "
                f"replays={self.load.replays} retries={self.load.retries} "
                f"charges={len(self.psp.charges)}")

    async def _watch(self, stop_at: float) -> None:
        phase = ""
        while True:
            now = self.psp.phase()
            if now != phase:
                phase = now
                color = {"healthy": "green", "flaky": "yellow", "down": "red"}.get(now, "green")
                self.display.event(self.elapsed(), f"PSP is {now}", color)
            self.display.status(self.elapsed(), self._status_text())
            if time.monotonic() >= stop_at:
                return
            await asyncio.sleep(0.1)

    async def run(self) -> None:
        await self.breaker.areset(actor="demo")
        self.transitions.clear()
        self.started = self.psp.started = time.monotonic()
        stop_at = self.started + self.seconds
        tasks = [asyncio.create_task(self._client(t, i, (0.2, 0.5), stop_at))
                 for t in TENANTS for i in range(3)]
        tasks += [asyncio.create_task(self._greedy(i, stop_at)) for i in range(3)]
        watcher = asyncio.create_task(self._watch(stop_at))
        done, pending = await asyncio.wait(tasks, timeout=self.seconds + 8.0)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            task.result()  # a client that crashed is a bug of the demo: surface it
        await watcher
        self.display.close()
        self.final_state = await self.breaker.astate()
        await self.budget.aflush()

    # -- the invariants ----------------------------------------------------------------------
    def checks(self) -> list[Check]:
        load = self.load
        psp = self.psp
        doubles = sum(1 for n in psp.movements.values() if n > 1)
        split = sum(1 for ids in load.charge_ids.values() if len(ids) > 1)
        wrong = sum(1 for (tenant, key), ids in load.charge_ids.items()
                    if ids and psp.charges_for(tenant, key) != ids)
        out = [Check("charges executed once per idempotency key",
                     doubles == 0 and split == 0 and wrong == 0 and len(psp.movements) > 0,
                     f"{len(psp.movements)} charges for {load.keys} keys; {doubles} moved money"
                     f" twice, {split} answered with two charge ids, {wrong} differ from the"
                     " PSP's ledger")]
        worst = {t: _worst_excess(times, TENANT_RATE, TENANT_RATE)
                 for t, times in self.recorder.admitted.items()}
        greedy_429 = load.by_tenant[GREEDY][429]
        out.append(Check(
            "no tenant over its limit",
            all(w <= 0 for w in worst.values()) and greedy_429 > 0,
            f"limit {TENANT_RATE}/s per tenant (GCRA, burst {TENANT_RATE}); most admitted above"
            f" the bound in any interval: {max(worst.values(), default=0)};"
            f" greedy tenant refused {greedy_429} times"))
        opened = any(t.state is BreakerState.OPEN for t in self.transitions)
        closed = any(t.state is BreakerState.CLOSED and t.previous is BreakerState.HALF_OPEN
                     for t in self.transitions)
        out.append(Check(
            "breaker opened and closed again",
            opened and closed and self.final_state is BreakerState.CLOSED,
            f"{len(self.transitions)} transitions seen; final state {self.final_state.name}"))
        out.append(Check(
            "duplicates replayed, not re-executed",
            load.replays > 0 and load.replay_mismatches == 0,
            f"{load.replays} replays (Idempotent-Replayed: true);"
            f" {load.replay_mismatches} differed from the first answer"))
        elapsed = max(self.elapsed(), self.seconds)
        first = self.counts["executions"]
        bound = BUDGET_RATIO * first + BUDGET_FLOOR * (elapsed + 1) + 5
        out.append(Check(
            "retries bounded by the retry budget",
            0 < load.retries <= bound,
            f"{load.retries} retries for {first} PSP calls; budget allows at most {bound:.0f}"))
        answered = sum(load.statuses.values())
        errors = load.statuses[500]
        out.append(Check("every request answered (no 500s)", errors == 0 and answered > 0,
                         f"{answered} answers, {errors} internal errors"))
        return out


def _worst_excess(times: list[float], rate: float, burst: int, slack: float = 0.1) -> int:
    """Largest ``admitted - bound`` over every interval of admissions, where GCRA's bound for an
    interval of ``t`` seconds is ``burst + rate * (t + slack)`` (``slack`` covers the gap
    between the limiter's decision and the moment it was recorded)."""
    times = sorted(times)
    worst = -burst
    for i in range(len(times)):
        for j in range(i, len(times)):
            excess = (j - i + 1) - math.floor(burst + rate * (times[j] - times[i] + slack))
            worst = max(worst, excess)
    return worst


class _Capture(logging.Handler):
    """Keeps the library's log lines out of the live display."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


async def run_demo(*, redis_url: str | None = None, seconds: float = 20.0, seed: int = 7,
                   out: TextIO | None = None, live: bool | None = None,
                   color: bool | None = None) -> DemoReport:
    """Run the demo for ``seconds`` and return its report (printed to ``out`` as it goes).

    :param redis_url: run every pattern on this Redis (default: a fresh memory backend).
    :param live: rewrite the status line in place (default: when ``out`` is a terminal).
    :param color: ANSI colors (default: as ``live``).
    """
    out = out if out is not None else sys.stdout
    tty = bool(getattr(out, "isatty", lambda: False)())
    live = tty if live is None else live
    display = Display(out, live=live, color=live if color is None else color)
    backend: Backend
    if redis_url:
        from ..backends.redis import RedisBackend

        backend = RedisBackend.from_url(redis_url, timeout=1.0)
        label = "redis"
    else:
        backend = MemoryBackend()
        label = "memory"
    capture = _Capture()
    library_logger = logging.getLogger("fintech_resilience")
    library_logger.addHandler(capture)
    propagate, library_logger.propagate = library_logger.propagate, False
    try:
        demo = _Demo(backend, seconds=seconds, seed=seed, display=display)
        out.write(display.paint(
            f"fintech_resilience demo - {label} backend, {seconds:g} s: 3 tenants at up to"
            f" {TENANT_RATE}/s, 1 greedy tenant, a PSP that goes flaky, down and back\n", "bold"))
        await demo.run()
    finally:
        library_logger.removeHandler(capture)
        library_logger.propagate = propagate
        await backend.aclose()
    report = DemoReport(label, seconds, demo.checks(), _counts(demo),
                        [f"{t.previous.name}->{t.state.name}" for t in demo.transitions])
    _summary(display, report)
    return report


def _counts(demo: _Demo) -> dict[str, int]:
    load = demo.load
    counts = {f"http_{status}": n for status, n in sorted(load.statuses.items())}
    counts.update({"keys": load.keys, "replays": load.replays, "retries": load.retries,
                   "psp_calls": demo.psp.calls, "psp_failures": demo.psp.failures,
                   "charges": len(demo.psp.charges), "handler_runs": demo.counts["executions"]})
    counts.update({f"refused_{k}": v for k, v in demo.counts.items() if k != "executions"})
    return counts


def _summary(display: Display, report: DemoReport) -> None:
    out = display.out
    c = report.counts
    out.write("\n" + display.paint("summary", "bold") + "\n")
    out.write(f"  requests answered: {sum(v for k, v in c.items() if k.startswith('http_'))}"
              f" ({', '.join(f'{k[5:]}: {v}' for k, v in c.items() if k.startswith('http_'))})\n")
    out.write(f"  PSP: {c['psp_calls']} calls, {c['psp_failures']} failed, {c['charges']}"
              f" charges; {c['retries']} retries; breaker: {' '.join(report.transitions)}\n\n")
    for check in report.checks:
        mark = display.paint("PASS", "green") if check.ok else display.paint("FAIL", "red")
        out.write(f"  {mark}  {check.name}: {check.detail}\n")
    verdict = (display.paint("all invariants hold", "green") if report.ok
               else display.paint("an invariant failed", "red"))
    out.write(f"\n{verdict}\n")
    out.flush()
