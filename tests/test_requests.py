"""requests adapter against a flaky local server."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from email.utils import formatdate
from typing import Any

import pytest
import requests
from test_outbound import HANG, FlakyServer, flaky_server  # noqa: F401 - the `server` fixture

import fintech_resilience as fr
from fintech_resilience.backends.memory import MemoryBackend
from fintech_resilience.breaker.circuit import CircuitBreaker, CountWindow
from fintech_resilience.requests import ResilientAdapter, _never_sent
from fintech_resilience.retries.budget import RetryBudget
from fintech_resilience.testing import ManualClock


@pytest.fixture
def make() -> Iterator[Any]:
    sessions: list[requests.Session] = []

    def build(**options: Any) -> requests.Session:
        session = requests.Session()
        session.mount("http://", ResilientAdapter(**options))
        sessions.append(session)
        return session

    yield build
    for session in sessions:
        session.close()


def retrying(attempts: int = 3, **options: Any) -> fr.Policy:
    options.setdefault("wait", 0)
    return fr.Policy(name="psp", retry=fr.retry(attempts=attempts, **options))


def keys(server: FlakyServer, path: str) -> list[str | None]:
    return [seen.key for seen in server.hits(path)]


def test_a_get_is_retried_until_it_succeeds(make: Any, server: FlakyServer) -> None:
    url = server.script("/s", 503, 502, 200)
    response = make(policy=retrying()).get(url, timeout=5)
    assert response.status_code == 200 and response.json() == {"status": 200}
    assert len(server.hits("/s")) == 3


def test_the_last_response_is_returned_when_retries_run_out(make: Any,
                                                            server: FlakyServer) -> None:
    url = server.script("/s", 503)
    response = make(policy=retrying()).get(url, timeout=5, stream=True)
    assert response.status_code == 503 and response.json() == {"status": 503}
    assert len(server.hits("/s")) == 3


def test_a_4xx_answer_is_neither_retried_nor_counted(make: Any, server: FlakyServer) -> None:
    breaker = CircuitBreaker("req-neutral", backend=MemoryBackend(), clock=ManualClock(),
                             minimum_calls=2, failure_rate=1.0, window=CountWindow(10))
    declined, down = server.script("/decline", 422), server.script("/down", 500)
    session = make(policy=fr.Policy(name="psp", breaker=breaker,
                                    retry=fr.retry(attempts=2, wait=0)))
    for _ in range(8):
        assert session.post(declined, json={}, timeout=5).status_code == 422
    assert len(server.hits("/decline")) == 8
    session.get(down, timeout=5)  # two attempts, two failures: trips
    with pytest.raises(fr.CircuitOpen):
        session.get(down, timeout=5)


def test_a_post_without_a_key_is_sent_exactly_once(make: Any, server: FlakyServer) -> None:
    url = server.script("/pay", 503, 200)
    assert make(policy=retrying()).post(url, json={"amount": 1}, timeout=5).status_code == 503
    assert keys(server, "/pay") == [None]


def test_a_post_with_a_key_is_retried_under_that_key(make: Any, server: FlakyServer) -> None:
    url = server.script("/pay", 503, 429, 201)
    response = make(policy=retrying()).post(url, json={"amount": 1}, timeout=5,
                                            headers={"Idempotency-Key": "order-7"})
    assert response.status_code == 201 and keys(server, "/pay") == ["order-7"] * 3


def test_a_generated_key_is_reused_on_every_attempt(make: Any, server: FlakyServer) -> None:
    url = server.script("/pay", 503, 503, 201)
    session = make(policy=retrying(), generate_idempotency_key=True)
    assert session.post(url, data=b"x", timeout=5).status_code == 201
    seen = keys(server, "/pay")
    assert len(seen) == 3 and seen[0] is not None and len(set(seen)) == 1


def test_a_streamed_body_is_sent_once(make: Any, server: FlakyServer) -> None:
    url = server.script("/pay", 503, 200)

    def chunks() -> Iterator[bytes]:
        yield b"a"
        yield b"b"

    response = make(policy=retrying()).put(url, data=chunks(), timeout=5)
    assert response.status_code == 503
    assert [s.body for s in server.hits("/pay")] == [b"ab"]


@pytest.mark.parametrize(("header", "waited"), [("4", 4.0), ("900", 20.0), ("date", 9.0)])
def test_retry_after_is_honoured_and_capped(make: Any, server: FlakyServer, header: str,
                                            waited: float) -> None:
    clock = ManualClock(1_700_000_000.0)
    if header == "date":
        header = formatdate(clock.time() + 9, usegmt=True)
    url = server.script("/s", (503, {"Retry-After": header}), 200)
    session = make(policy=retrying(clock=clock, max_retry_after=20.0, deadline=None))
    assert session.get(url, timeout=5).status_code == 200
    assert clock.time() - 1_700_000_000.0 == pytest.approx(waited, abs=1.0)


def test_an_empty_budget_raises(make: Any, server: FlakyServer) -> None:
    budget = RetryBudget("req-budget", backend=MemoryBackend(), ratio=0.1, min_per_second=0,
                         clock=ManualClock())
    url = server.script("/s", 503, 200)
    with pytest.raises(fr.RetryBudgetExhausted):
        make(policy=retrying(budget=budget)).get(url, timeout=5)
    assert len(server.hits("/s")) == 1


def test_the_breaker_trips_and_recovers(make: Any, server: FlakyServer) -> None:
    clock = ManualClock()
    breaker = CircuitBreaker("req-breaker", backend=MemoryBackend(), clock=clock,
                             minimum_calls=2, failure_rate=1.0, window=CountWindow(10),
                             break_duration=5.0, half_open_calls=1)
    url = server.script("/s", 504, 504, 200)
    session = make(policy=fr.Policy(name="psp", breaker=breaker))
    assert [session.get(url, timeout=5).status_code for _ in range(2)] == [504, 504]
    with pytest.raises(fr.CircuitOpen):
        session.get(url, timeout=5)
    clock.advance(5.0)
    assert session.get(url, timeout=5).status_code == 200
    assert breaker.known_state is fr.BreakerState.CLOSED and len(server.hits("/s")) == 3


def test_a_hanging_server_times_out_each_attempt(make: Any, server: FlakyServer) -> None:
    url = server.script("/hang", HANG)
    session = make(policy=fr.Policy(name="psp", timeout=0.2,
                                    retry=fr.retry(attempts=2, wait=0)))
    with pytest.raises(requests.exceptions.ReadTimeout):
        session.get(url, timeout=5)
    with pytest.raises(requests.exceptions.ReadTimeout):
        session.post(url, json={}, timeout=(5, 5))
    assert [s.method for s in server.hits("/hang")] == ["GET", "GET", "POST"]


def test_a_refused_connection_was_never_sent() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with requests.Session() as session:
        session.mount("http://", ResilientAdapter(policy=fr.Policy(name="x")))
        with pytest.raises(requests.exceptions.ConnectionError) as caught:
            session.post(f"http://127.0.0.1:{port}/", timeout=5)
    assert _never_sent(caught.value)
    assert not _never_sent(requests.exceptions.ConnectionError("reset by peer"))
    assert not _never_sent(requests.exceptions.ReadTimeout())


def test_hosts_without_a_policy_pass_through(make: Any, server: FlakyServer) -> None:
    server.script("/s", 503)
    session = make(policies={"localhost": retrying()})
    assert session.get(server.url("/s"), timeout=5).status_code == 503
    assert len(server.hits("/s")) == 1
    assert session.get(server.url("/s", host="localhost"), timeout=5).status_code == 503
    assert len(server.hits("/s")) == 4


def test_urllib3_retries_stay_off() -> None:
    with pytest.raises(fr.ConfigurationError, match="leave max_retries=0"):
        ResilientAdapter(policy=retrying(), max_retries=3)
