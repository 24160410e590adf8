"""Chaos: seeded, rule-based fault injection for callables and ASGI/WSGI apps; off by default."""

from __future__ import annotations

import json
import logging
import random
from typing import Any

import pytest

from fintech_resilience.chaos import (
    ENV_ENABLE,
    PRODUCTION_MARKERS,
    InjectedFault,
    Rule,
    current_principal,
    inject,
    is_production,
    principal,
)
from fintech_resilience.edges.asgi.chaos import ChaosMiddleware as AsgiChaos
from fintech_resilience.edges.wsgi.chaos import ChaosMiddleware as WsgiChaos
from fintech_resilience.errors import ConfigurationError


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (ENV_ENABLE, *PRODUCTION_MARKERS):
        monkeypatch.delenv(name, raising=False)


class Sleeps:
    """Records waits instead of waiting."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)

    async def asleep(self, seconds: float) -> None:
        self.calls.append(seconds)


def _run(fn: Any, n: int) -> list[int]:
    failed = []
    for i in range(n):
        try:
            fn(i)
        except InjectedFault:
            failed.append(i)
    return failed


# -- determinism -----------------------------------------------------------------------------------
def test_a_seeded_error_rate_injects_exactly_the_expected_faults() -> None:
    @inject(error_rate=0.1, seed=7, enabled=True)
    def charge(i: int) -> int:
        return i

    rng = random.Random(7)
    expected = [i for i in range(300) if rng.random() < 0.1]
    assert _run(charge, 300) == expected
    assert 15 <= len(expected) <= 45  # a real sample, not an empty or full one


def test_latency_and_errors_draw_once_each_per_call_in_rule_order() -> None:
    sleeps = Sleeps()

    @inject(latency=0.25, latency_rate=0.5, error_rate=0.2, seed=11, enabled=True, sleep=sleeps)
    def call(i: int) -> int:
        return i

    rng = random.Random(11)
    draws = [(rng.random(), rng.random()) for _ in range(100)]
    failed = _run(call, 100)
    assert failed == [i for i, (_, e) in enumerate(draws) if e < 0.2]
    assert sleeps.calls == [0.25] * sum(1 for lat, _ in draws if lat < 0.5)
    assert call.__wrapped__(5) == 5  # type: ignore[attr-defined]


def test_the_same_seed_replays_the_same_faults_and_reseed_restarts() -> None:
    def make() -> Any:
        return inject(error_rate=0.3, seed=123, enabled=True)(lambda i: i)

    first, second = make(), make()
    assert _run(first, 50) == _run(second, 50)
    again = inject(error_rate=0.3, seed=123, enabled=True)
    wrapped = again(lambda i: i)
    run1 = _run(wrapped, 50)
    again.engine.reseed(123)
    assert _run(wrapped, 50) == run1


async def test_async_callables_wait_with_asleep_and_raise() -> None:
    sleeps = Sleeps()

    @inject(latency=0.5, exception=TimeoutError, seed=1, enabled=True, asleep=sleeps.asleep)
    async def fetch() -> str:
        return "ok"

    with pytest.raises(TimeoutError, match="chaos rule 'error'"):
        await fetch()
    assert sleeps.calls == [0.5]


def test_exception_instances_are_copied_and_factories_called() -> None:
    boom = ConnectionResetError("reset by chaos")
    wrapped = inject(exception=boom, enabled=True)(lambda: None)
    with pytest.raises(ConnectionResetError) as first:
        wrapped()
    with pytest.raises(ConnectionResetError) as second:
        wrapped()
    assert first.value is not second.value
    assert str(first.value) == "reset by chaos"
    made = inject(exception=lambda: KeyError("k"), enabled=True)(lambda: None)
    with pytest.raises(KeyError):
        made()


# -- off unless enabled, never in production ------------------------------------------------------
def test_disabled_costs_one_check_no_draw_no_predicate_no_principal() -> None:
    calls: list[str] = []

    def when(*_a: Any, **_k: Any) -> bool:
        calls.append("when")
        return True

    def who(*_a: Any, **_k: Any) -> str:
        calls.append("principal")
        return "p"

    sleeps = Sleeps()
    injector = inject(latency=1.0, error_rate=1.0, when=when, principal=who, seed=1, sleep=sleeps)
    wrapped = injector(lambda i: i * 2)
    assert not injector.enabled  # no enabled=..., no environment variable: off
    assert [wrapped(i) for i in range(1000)] == [i * 2 for i in range(1000)]
    assert calls == []
    assert sleeps.calls == []
    assert injector.engine.calls == 0  # the seeded generator was never drawn from
    injector.enable()
    with pytest.raises(InjectedFault):
        wrapped(1)
    assert calls == ["principal", "when", "when"]
    assert injector.engine.calls == 1
    injector.disable()
    assert wrapped(2) == 4


def test_the_environment_variable_enables_and_enabled_false_overrides(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ENV_ENABLE, "1")
    assert inject(error_rate=1.0).enabled
    assert not inject(error_rate=1.0, enabled=False).enabled
    monkeypatch.setenv(ENV_ENABLE, "0")
    assert not inject(error_rate=1.0).enabled


@pytest.mark.parametrize("marker", PRODUCTION_MARKERS)
@pytest.mark.parametrize("value", ["prod", "Production", "live"])
def test_chaos_refuses_to_enable_in_production_unless_forced(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, marker: str, value: str
) -> None:
    monkeypatch.setenv(marker, value)
    assert is_production()
    with caplog.at_level(logging.WARNING, logger="fintech_resilience"):
        injector = inject(error_rate=1.0, enabled=True)
    assert not injector.enabled
    assert "refusing to enable" in caplog.text
    wrapped = injector(lambda: "ok")
    assert wrapped() == "ok"
    assert not injector.enable()
    assert inject(error_rate=1.0, enabled=True, force=True).enabled


def test_staging_is_not_production(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_ENV", "staging")
    assert not is_production()
    assert inject(error_rate=1.0, enabled=True).enabled


# -- rules -----------------------------------------------------------------------------------------
def test_rules_match_by_dependency_principal_and_predicate() -> None:
    rules = [
        Rule(exception=TimeoutError, dependency="psp-acme", principals={"merchant:42"}),
        Rule(exception=KeyError, when=lambda amount: amount > 1000),
    ]
    psp = inject(rules=rules, dependency="psp-acme", enabled=True)(lambda amount: amount)
    ledger = inject(rules=rules, dependency="ledger", enabled=True)(lambda amount: amount)
    assert psp(5) == 5  # no principal
    with principal("merchant:42"):
        assert current_principal() == "merchant:42"
        with pytest.raises(TimeoutError):
            psp(5)
        assert ledger(5) == 5  # other dependency
    assert current_principal() is None
    with pytest.raises(KeyError):
        ledger(5000)


def test_principal_can_come_from_the_call_arguments() -> None:
    wrapped = inject(error_rate=1.0, principals={"m1"}, principal=lambda merchant: merchant,
                     enabled=True)(lambda merchant: merchant)
    assert wrapped("m2") == "m2"
    with pytest.raises(InjectedFault):
        wrapped("m1")


@pytest.mark.parametrize(
    "kwargs",
    [{"rate": 1.5}, {"rate": True}, {"latency": -1}, {"status": 200}, {"exception": 3},
     {}, {"status": 503, "methods": "POST"}, {"status": 503, "route": "payments"}],
)
def test_bad_rules_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        Rule(**kwargs)


def test_http_only_rules_are_refused_for_callables_and_vice_versa() -> None:
    with pytest.raises(ConfigurationError, match="ChaosMiddleware"):
        inject(rules=[Rule(status=503)])
    with pytest.raises(ConfigurationError):
        inject()
    with pytest.raises(ConfigurationError, match="route"):
        AsgiChaos(lambda *a: None, rules=[Rule(status=503, dependency="x")])  # type: ignore[arg-type]


# -- ASGI ------------------------------------------------------------------------------------------
class Recorder:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    async def send(self, message: dict[str, Any]) -> None:
        self.messages.append(message)


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


def _app(seen: list[str | None]) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(current_principal())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def _scope(path: str, method: str = "POST", principal: str | None = None) -> dict[str, Any]:
    scope: dict[str, Any] = {"type": "http", "path": path, "method": method, "headers": []}
    if principal is not None:
        scope["state"] = {"principal": principal}
    return scope


async def test_asgi_injects_statuses_as_problem_json_by_route_method_and_principal() -> None:
    seen: list[str | None] = []
    mw = AsgiChaos(_app(seen), enabled=True, seed=3, rules=[
        Rule(status=503, route="/payments/*", methods={"post"}, principals={"m1"}),
    ])
    rec = Recorder()
    await mw(_scope("/payments/123", principal="m1"), _receive, rec.send)
    start, body = rec.messages
    assert start["status"] == 503
    headers = dict(start["headers"])
    assert headers[b"content-type"] == b"application/problem+json"
    assert headers[b"retry-after"] == b"1"
    problem = json.loads(body["body"])
    assert problem["status"] == 503
    assert problem["title"] == "Service Unavailable"
    assert seen == []  # the application was not called
    for scope in (_scope("/payments/123", principal="m2"), _scope("/refunds/1", principal="m1"),
                  _scope("/payments/1", "GET", principal="m1")):
        rec = Recorder()
        await mw(scope, _receive, rec.send)
        assert rec.messages[0]["status"] == 200
    assert seen == ["m2", "m1", "m1"]  # the principal is visible to chaos.inject inside the app


async def test_asgi_seeded_rate_latency_and_exceptions() -> None:
    sleeps = Sleeps()
    seen: list[str | None] = []
    mw = AsgiChaos(_app(seen), enabled=True, seed=99, asleep=sleeps.asleep, rules=[
        Rule(latency=0.1, rate=0.5), Rule(exception=RuntimeError("boom"), rate=0.25),
    ])
    rng = random.Random(99)
    draws = [(rng.random(), rng.random()) for _ in range(40)]
    raised = []
    for i in range(40):
        try:
            await mw(_scope("/x"), _receive, Recorder().send)
        except RuntimeError:
            raised.append(i)
    assert raised == [i for i, (_, e) in enumerate(draws) if e < 0.25]
    assert len(sleeps.calls) == sum(1 for lat, _ in draws if lat < 0.5)
    assert mw.engine.injected == {"latency": len(sleeps.calls), "exception": len(raised)}


async def test_asgi_passes_non_http_and_everything_while_off() -> None:
    seen: list[str | None] = []
    off = AsgiChaos(_app(seen), rules=[Rule(status=500)])
    rec = Recorder()
    await off(_scope("/x"), _receive, rec.send)
    assert rec.messages[0]["status"] == 200
    assert off.engine.calls == 0
    on = AsgiChaos(_app(seen), rules=[Rule(status=500)], enabled=True)
    rec = Recorder()
    await on({"type": "lifespan"}, _receive, rec.send)
    assert on.engine.calls == 0
    assert len(seen) == 2


# -- WSGI ------------------------------------------------------------------------------------------
def _wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def test_wsgi_injects_statuses_latency_and_exceptions() -> None:
    sleeps = Sleeps()
    mw = WsgiChaos(_wsgi_app, enabled=True, sleep=sleeps, rules=[
        Rule(status=429, route="/limited", latency=0.2),
        Rule(exception=ValueError, route="/broken", methods={"GET"}),
        Rule(status=502, when=lambda environ: environ.get("HTTP_X_CHAOS") == "1"),
    ])
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        started.append((status, headers))

    body = mw({"PATH_INFO": "/limited", "REQUEST_METHOD": "POST"}, start_response)
    assert started[-1][0] == "429 Too Many Requests"
    assert ("Content-Type", "application/problem+json") in started[-1][1]
    assert json.loads(b"".join(body))["status"] == 429
    assert sleeps.calls == [0.2]
    with pytest.raises(ValueError, match="chaos"):
        mw({"PATH_INFO": "/broken", "REQUEST_METHOD": "GET"}, start_response)
    assert mw({"PATH_INFO": "/broken", "REQUEST_METHOD": "POST"}, start_response) == [b"ok"]
    mw({"PATH_INFO": "/any", "REQUEST_METHOD": "GET", "HTTP_X_CHAOS": "1"}, start_response)
    assert started[-1][0] == "502 Bad Gateway"
    off = WsgiChaos(_wsgi_app, rules=[Rule(status=500)])
    assert off({"PATH_INFO": "/", "REQUEST_METHOD": "GET"}, start_response) == [b"ok"]
    assert off.engine.calls == 0


def test_wsgi_principal_defaults_to_remote_user() -> None:
    mw = WsgiChaos(_wsgi_app, enabled=True, rules=[Rule(status=503, principals={"alice"})])
    started: list[str] = []
    mw({"PATH_INFO": "/", "REQUEST_METHOD": "GET", "REMOTE_USER": "alice"},
       lambda s, h: started.append(s))
    mw({"PATH_INFO": "/", "REQUEST_METHOD": "GET", "REMOTE_USER": "bob"},
       lambda s, h: started.append(s))
    assert started == ["503 Service Unavailable", "200 OK"]
