"""Redis fails after the handler ran: the handler's answer still goes out.

The money moved, so nothing may turn the answer into an error: when storing the response (the
completion write, or the ``WAIT`` for replicas with ``wait_replicas``) fails, the caller gets what
the handler returned, the audit logger says ``complete_failed`` (the record's fate is unknown),
and a duplicate never runs the handler again while the lease lives. Every edge is checked - the
sync and async decorator, the ASGI middleware on FastAPI, the WSGI middleware on Flask and the
Django middleware - against a real primary and replica that are paused or killed between the
claim and the completion.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import test_django  # noqa: F401 - configures Django settings once for the session
from conftest import Replicated
from django.http import HttpResponse
from django.test import Client, override_settings
from django.urls import path
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from flask import Flask

import fintech_resilience as fr
from fintech_resilience.asgi import IdempotencyMiddleware
from fintech_resilience.errors import IdempotencyInProgress
from fintech_resilience.idempotency import IdempotencyStore
from fintech_resilience.wsgi import IdempotencyMiddleware as WsgiIdempotencyMiddleware

pytestmark = pytest.mark.slow

SECRET = b"completion-faults-secret-0123"


@dataclass(frozen=True)
class Fault:
    """What breaks between the claim and the completion, and the store that meets it."""

    name: str
    server: str  # "primary" or "replica"
    action: str  # "pause" or "kill"
    timeout: float  # the backend's socket timeout
    wait_replicas: int
    wait_timeout: float
    policy: str
    outcome: str  # what the audit logger reports about the completion


FAULTS = [
    # the completion write (and its WAIT) times out / is refused
    Fault("primary-paused", "primary", "pause", 0.2, 1, 0.1, "deny", "complete_failed"),
    Fault("primary-killed", "primary", "kill", 0.2, 1, 0.1, "deny", "complete_failed"),
    # WAIT takes longer than a command may (wait_timeout > timeout): the reply is awaited
    # that much longer, and the completion is stored with fewer replicas than asked
    Fault("replica-paused-wait-longer-than-timeout", "replica", "pause", 0.2, 1, 0.5, "deny",
          "replication_timeout"),
    # WAIT returns in time with fewer replicas than asked
    Fault("replica-paused-wait-short", "replica", "pause", 2.0, 1, 0.2, "deny",
          "replication_timeout"),
    # no WAIT, on_backend_error="raise" (documented as "the same as deny" for this pattern)
    Fault("primary-paused-raise-policy", "primary", "pause", 0.2, 0, 0.1, "raise",
          "complete_failed"),
]


class Scenario:
    """A store on the replicated pair and a handler that applies the fault when it runs."""

    def __init__(self, pair: Replicated, fault: Fault) -> None:
        self.pair = pair
        self.fault = fault
        self.backend = fr.RedisBackend.from_url(pair.primary.url, timeout=fault.timeout)
        self.store = IdempotencyStore(self.backend, secret=SECRET,
                                      wait_replicas=fault.wait_replicas,
                                      wait_timeout=fault.wait_timeout,
                                      on_backend_error=fault.policy,  # type: ignore[arg-type]
                                      check_eviction=False)
        self.runs = 0
        self.broken = False

    def handler_ran(self) -> dict[str, Any]:
        """The handler's work: money moves, then Redis breaks before the completion."""
        self.runs += 1
        server = getattr(self.pair, self.fault.server)
        getattr(server, self.fault.action)()
        self.broken = True
        return {"charge": "ch_1", "amount": 500}

    def heal(self) -> None:
        if not self.broken:
            return
        server = getattr(self.pair, self.fault.server)
        if self.fault.action == "pause":
            server.resume()
        else:
            server.restart()
        self.broken = False

    def close(self) -> None:
        self.heal()
        self.backend.close()

    @property
    def records_lost(self) -> bool:
        """A killed primary (no persistence) comes back without any record."""
        return self.fault.server == "primary" and self.fault.action == "kill"


@pytest.fixture(params=FAULTS, ids=[f.name for f in FAULTS])
def scenario(request: pytest.FixtureRequest, replicated: Replicated) -> Iterator[Scenario]:
    built = Scenario(replicated, request.param)
    yield built
    built.close()


def outcomes(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.resilience["outcome"] for r in caplog.records if hasattr(r, "resilience")]


def check_audit(caplog: pytest.LogCaptureFixture, scenario: Scenario) -> None:
    seen = outcomes(caplog)
    assert seen.count(scenario.fault.outcome) == 1, seen
    assert "completed" not in seen or scenario.fault.outcome == "replication_timeout"


def check_no_second_run(scenario: Scenario, duplicate: Callable[[], Any]) -> None:
    """Back on Redis, a duplicate is replayed or told the first is in progress; never rerun
    (a killed primary without persistence lost every record: nothing left to check there)."""
    scenario.heal()
    if scenario.records_lost:
        return
    duplicate()
    assert scenario.runs == 1


def test_the_sync_decorator_returns_the_handlers_result(
        scenario: Scenario, caplog: pytest.LogCaptureFixture) -> None:
    @fr.idempotent(scenario.store, key=lambda event: event["id"], global_scope=True)
    def charge(event: dict[str, Any]) -> dict[str, Any]:
        return scenario.handler_ran()

    with caplog.at_level(logging.INFO, logger="fintech_resilience.audit"):
        assert charge({"id": "evt_1"}) == {"charge": "ch_1", "amount": 500}
    assert scenario.runs == 1
    check_audit(caplog, scenario)

    def duplicate() -> None:
        with contextlib.suppress(IdempotencyInProgress):
            assert charge({"id": "evt_1"}) == {"charge": "ch_1", "amount": 500}

    check_no_second_run(scenario, duplicate)


async def test_the_async_decorator_returns_the_handlers_result(
        scenario: Scenario, caplog: pytest.LogCaptureFixture) -> None:
    @fr.idempotent(scenario.store, key=lambda event: event["id"], global_scope=True)
    async def charge(event: dict[str, Any]) -> dict[str, Any]:
        return scenario.handler_ran()

    with caplog.at_level(logging.INFO, logger="fintech_resilience.audit"):
        assert await charge({"id": "evt_1"}) == {"charge": "ch_1", "amount": 500}
    assert scenario.runs == 1
    check_audit(caplog, scenario)
    scenario.heal()
    if not scenario.records_lost:
        with contextlib.suppress(IdempotencyInProgress):
            assert await charge({"id": "evt_1"}) == {"charge": "ch_1", "amount": 500}
        assert scenario.runs == 1
    await scenario.backend.aclose()


def post_headers() -> dict[str, str]:
    return {"Idempotency-Key": "k-1", "X-User": "u1", "Content-Type": "application/json"}


def check_http(status: int, body: bytes, caplog: pytest.LogCaptureFixture,
               scenario: Scenario) -> None:
    assert status == 201, body
    assert json.loads(body) == {"charge": "ch_1", "amount": 500}
    assert scenario.runs == 1
    check_audit(caplog, scenario)


async def test_the_asgi_middleware_on_fastapi_sends_the_handlers_answer(
        scenario: Scenario, caplog: pytest.LogCaptureFixture) -> None:
    app = FastAPI()

    @app.post("/charges")
    def charge() -> JSONResponse:
        return JSONResponse(scenario.handler_ran(), status_code=201)

    app.add_middleware(IdempotencyMiddleware, store=scenario.store,
                       scope=lambda scope: dict(scope["headers"]).get(b"x-user", b"").decode())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        with caplog.at_level(logging.INFO, logger="fintech_resilience.audit"):
            first = await client.post("/charges", content=b'{"amount": 500}',
                                      headers=post_headers())
        check_http(first.status_code, first.content, caplog, scenario)
        scenario.heal()
        if not scenario.records_lost:
            again = await client.post("/charges", content=b'{"amount": 500}',
                                      headers=post_headers())
            assert again.status_code in (201, 409)
            assert scenario.runs == 1
    await scenario.backend.aclose()


def test_the_wsgi_middleware_on_flask_sends_the_handlers_answer(
        scenario: Scenario, caplog: pytest.LogCaptureFixture) -> None:
    app = Flask(__name__)

    @app.post("/charges")
    def charge() -> tuple[dict[str, Any], int]:
        return scenario.handler_ran(), 201

    app.wsgi_app = WsgiIdempotencyMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, store=scenario.store, scope=lambda environ: environ.get("HTTP_X_USER"))
    client = app.test_client()
    with caplog.at_level(logging.INFO, logger="fintech_resilience.audit"):
        first = client.post("/charges", data=b'{"amount": 500}', headers=post_headers())
    check_http(first.status_code, first.data, caplog, scenario)

    def duplicate() -> None:
        again = client.post("/charges", data=b'{"amount": 500}', headers=post_headers())
        assert again.status_code in (201, 409)

    check_no_second_run(scenario, duplicate)


_DJANGO_SCENARIO: list[Scenario] = []


def django_charge(request: Any) -> HttpResponse:
    payload = _DJANGO_SCENARIO[-1].handler_ran()
    return HttpResponse(json.dumps(payload), status=201, content_type="application/json")


urlpatterns = [path("charges", django_charge)]


def test_the_django_middleware_sends_the_handlers_answer(
        scenario: Scenario, caplog: pytest.LogCaptureFixture) -> None:
    _DJANGO_SCENARIO.append(scenario)
    middleware = ["test_django.FakeAuthMiddleware",
                  "fintech_resilience.django.IdempotencyMiddleware"]
    with override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=middleware,
                           FINTECH_RESILIENCE={"IDEMPOTENCY": {"STORE": scenario.store}}):
        client = Client()
        with caplog.at_level(logging.INFO, logger="fintech_resilience.audit"):
            first = client.post("/charges", data=b'{"amount": 500}',
                                content_type="application/json",
                                headers={"Idempotency-Key": "k-1", "X-User": "u1"})
        check_http(first.status_code, first.content, caplog, scenario)

        def duplicate() -> None:
            again = client.post("/charges", data=b'{"amount": 500}',
                                content_type="application/json",
                                headers={"Idempotency-Key": "k-1", "X-User": "u1"})
            assert again.status_code in (201, 409)

        check_no_second_run(scenario, duplicate)
    _DJANGO_SCENARIO.clear()


def test_a_paused_replica_never_counts_against_the_primary_under_default_timeouts(
        replicated: Replicated, caplog: pytest.LogCaptureFixture) -> None:
    """from_url's 50 ms command timeout and the store's 0.1 s wait_timeout: each WAIT on a
    paused replica answers after 0.1 s (or a timer tick later) with 0 replicas. Every charge is
    stored (audited replication_timeout) and replayed to its duplicate. Before, each WAIT timed
    out on the socket (complete_failed, a failure of the primary), and on this fresh server the
    completion script's NOSCRIPT retry was never sent: the duplicate got in_progress."""
    backend = fr.RedisBackend.from_url(replicated.primary.url)
    store = IdempotencyStore(backend, secret=SECRET, wait_replicas=1, check_eviction=False,
                             on_backend_error="deny")
    runs: list[str] = []

    @fr.idempotent(store, key=lambda event: event["id"], global_scope=True)
    def charge(event: dict[str, Any]) -> dict[str, Any]:
        runs.append(event["id"])
        return {"charge": f"ch_{event['id']}"}

    replicated.replica.pause()
    try:
        with caplog.at_level(logging.INFO, logger="fintech_resilience.audit"):
            for i in range(5):
                assert charge({"id": f"evt_{i}"}) == {"charge": f"ch_evt_{i}"}
            assert charge({"id": "evt_0"}) == {"charge": "ch_evt_0"}  # replayed from Redis
    finally:
        replicated.replica.resume()
        backend.close()
    seen = outcomes(caplog)
    assert runs == [f"evt_{i}" for i in range(5)]
    assert seen.count("replication_timeout") == 5, seen
    assert "complete_failed" not in seen and "unavailable" not in seen, seen
    assert seen.count("replayed") == 1, seen
