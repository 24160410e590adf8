"""The demo's moving parts: a simulated PSP, a small payment API (pure ASGI) and a client.

Nothing here needs a web framework or an HTTP client: the API is a plain ASGI callable wrapped in
the library's own middleware, and :func:`call_asgi` drives it in-process. ``fintech-resilience
demo`` (:mod:`fintech_resilience.cli.demo`) builds these parts, runs the load and checks the
invariants.

The wiring, outside in::

    AuthMiddleware          "Authorization: Bearer <tenant>" -> scope["state"]["principal"]
    RateLimitMiddleware     one limit per tenant (429 problem+json with Retry-After)
    AdmissionRecorder       notes when each tenant's request got past the limiter (for the check)
    IdempotencyMiddleware   POST /charges: executed once per (tenant, Idempotency-Key)
    payment_api             calls the PSP through a Policy: rate limit -> bulkhead -> retry
                            (budget) -> breaker -> timeout, with the record's downstream key
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import (
    BulkheadFull,
    CircuitOpen,
    RateLimited,
    RetryBudgetExhausted,
)
from ..idempotency.context import current_idempotency

__all__ = ["PHASES", "AdmissionRecorder", "AuthMiddleware", "CardDeclined", "Reply",
           "SimulatedPSP", "call_asgi", "payment_api"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: (name, start as a fraction of the run): the PSP's health over time
PHASES = (("healthy", 0.0), ("flaky", 0.2), ("down", 0.4), ("recovered", 0.6))


class CardDeclined(Exception):
    """The PSP declined the card: an answer, not an outage (neutral for the breaker)."""


@dataclass
class SimulatedPSP:
    """A payment service provider that is healthy, then flaky, then down, then back.

    Like real PSPs it deduplicates on the ``Idempotency-Key`` it receives: a retry with the same
    key returns the first charge. ``movements`` counts money moved per (tenant, reference) - the
    number the demo's first invariant is about.
    """

    seconds: float
    rng: random.Random
    started: float = field(default_factory=time.monotonic)
    charges: dict[str, dict[str, Any]] = field(default_factory=dict)
    movements: Counter[tuple[str, str]] = field(default_factory=Counter)
    calls: int = 0
    failures: int = 0

    def charges_for(self, tenant: str, reference: str) -> set[str]:
        """Ids of the charges the PSP made for one tenant's reference (the client's key)."""
        return {c["id"] for c in self.charges.values()
                if c["tenant"] == tenant and c["reference"] == reference}

    def phase(self) -> str:
        """The PSP's current phase (see :data:`PHASES`)."""
        elapsed = (time.monotonic() - self.started) / self.seconds
        current = PHASES[0][0]
        for name, start in PHASES:
            if elapsed >= start:
                current = name
        return current

    async def charge(self, *, tenant: str, reference: str, amount: int,
                     idempotency_key: str) -> dict[str, Any]:
        """Move ``amount`` minor units once per ``idempotency_key``; may fail like a real PSP."""
        self.calls += 1
        phase = self.phase()
        await asyncio.sleep(self.rng.uniform(0.002, 0.01))
        roll = self.rng.random()
        if phase == "down" or (phase == "flaky" and roll < 0.3):
            self.failures += 1
            raise ConnectionResetError("PSP connection reset")
        existing = self.charges.get(idempotency_key)
        if existing is not None:
            return existing
        if amount % 97 == 13:
            raise CardDeclined("card declined")
        charge = {"id": f"ch_{len(self.charges) + 1:05d}", "amount": amount, "tenant": tenant,
                  "reference": reference}
        self.charges[idempotency_key] = charge
        self.movements[(tenant, reference)] += 1
        if phase == "flaky" and roll < 0.4:
            self.failures += 1
            await asyncio.sleep(1.0)  # the money moved, the answer is late: the caller times out
        return charge


class AuthMiddleware:
    """Demo authentication: ``Authorization: Bearer <tenant>`` becomes the principal."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == b"authorization" and value.startswith(b"Bearer "):
                    scope.setdefault("state", {})["principal"] = value[7:].decode("latin-1")
        await self.app(scope, receive, send)


class AdmissionRecorder:
    """Notes the time each tenant's request passed the rate limiter (for the invariant check)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.admitted: defaultdict[str, list[float]] = defaultdict(list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            principal = scope.get("state", {}).get("principal")
            if principal is not None:
                self.admitted[principal].append(time.monotonic())
        await self.app(scope, receive, send)


async def _respond(send: Send, status: int, body: dict[str, Any],
                   headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), *headers]})
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


def payment_api(psp: SimulatedPSP, policy: Any, counts: Counter[str]) -> ASGIApp:
    """The innermost ASGI app: ``POST /charges`` (``{"amount": minor units}``) and
    ``GET /healthz``. Each charge goes to the PSP through ``policy`` with the idempotency
    record's downstream key, so a retry - ours or the client's - never moves money twice."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/healthz":
            await _respond(send, 200, {"ok": True})
            return
        if scope["path"] != "/charges" or scope["method"] != "POST":
            await _respond(send, 404, {"error": "not_found"})
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        amount = int(json.loads(b"".join(chunks))["amount"])
        tenant = scope["state"]["principal"]
        reference = dict(scope["headers"]).get(b"idempotency-key", b"").decode("latin-1")
        ctx = current_idempotency()
        downstream = ctx.downstream_key("charge") if ctx is not None else reference
        counts["executions"] += 1
        try:
            charge = await policy.acall(psp.charge, tenant=tenant, reference=reference,
                                        amount=amount, idempotency_key=downstream)
        except CardDeclined:
            counts["declined"] += 1
            await _respond(send, 402, {"error": "card_declined"})
            return
        except (CircuitOpen, BulkheadFull, RateLimited, RetryBudgetExhausted) as exc:
            counts[type(exc).__name__] += 1
            retry_after = max(1, round(getattr(exc, "retry_after", 1) or 1))
            await _respond(send, 503, {"error": type(exc).__name__},
                           ((b"retry-after", str(retry_after).encode()),))
            return
        except (ConnectionError, TimeoutError) as exc:
            counts["psp_gave_up"] += 1
            await _respond(send, 502, {"error": type(exc).__name__})
            return
        await _respond(send, 201, {"id": charge["id"], "amount": charge["amount"],
                                   "status": "succeeded"})

    return app


@dataclass(frozen=True, slots=True)
class Reply:
    """An HTTP answer as the demo's clients see it."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


async def call_asgi(app: ASGIApp, method: str, path: str, *, headers: dict[str, str],
                    body: bytes = b"", client: str = "127.0.0.1") -> Reply:
    """Send one request to an ASGI app in-process (no sockets, no HTTP client needed)."""
    scope: dict[str, Any] = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": b"", "client": (client, 40000), "server": ("demo", 80), "state": {},
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1"))
                    for k, v in {**headers, "content-length": str(len(body))}.items()],
    }
    sent = False
    status = 0
    out_headers: dict[str, str] = {}
    chunks: list[bytes] = []

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # a real server would wait for the client to go away
        return {"type": "http.disconnect"}  # pragma: no cover

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])
            for name, value in message.get("headers", ()):
                out_headers[name.decode("latin-1").lower()] = value.decode("latin-1")
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return Reply(status, out_headers, b"".join(chunks))
