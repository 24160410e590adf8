"""httpx transports against a flaky local server; every test runs with httpx.Client
(ResilientTransport) and httpx.AsyncClient (AsyncResilientTransport)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from email.utils import formatdate
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from test_outbound import HANG, FlakyServer, flaky_server  # noqa: F401 - the `server` fixture

import fintech_resilience as fr
from fintech_resilience.backends.memory import MemoryBackend
from fintech_resilience.breaker.circuit import CircuitBreaker, CountWindow
from fintech_resilience.core import telemetry
from fintech_resilience.httpx import AsyncResilientTransport, ResilientTransport
from fintech_resilience.retries.budget import RetryBudget
from fintech_resilience.retries.core import SPAN_NAME
from fintech_resilience.testing import ManualClock


class Client:
    """One interface over httpx.Client and httpx.AsyncClient for the tests."""

    def __init__(self, mode: str, inner: Any = None, **options: Any) -> None:
        self.mode = mode
        if mode == "sync":
            self.transport: Any = ResilientTransport(inner, **options)
            self.sync = httpx.Client(transport=self.transport, timeout=5.0)
        else:
            self.transport = AsyncResilientTransport(inner, **options)
            self.async_ = httpx.AsyncClient(transport=self.transport, timeout=5.0)

    async def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        if self.mode == "sync":
            return self.sync.request(method, url, **kwargs)
        return await self.async_.request(method, url, **kwargs)

    async def close(self) -> None:
        if self.mode == "sync":
            self.sync.close()
        else:
            await self.async_.aclose()


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@contextlib.asynccontextmanager
async def client(mode: str, inner: Any = None, **options: Any) -> AsyncIterator[Client]:
    c = Client(mode, inner, **options)
    try:
        yield c
    finally:
        await c.close()


def retrying(attempts: int = 3, **options: Any) -> fr.Policy:
    options.setdefault("wait", 0)
    return fr.Policy(name="psp", retry=fr.retry(attempts=attempts, **options))


def keys(server: FlakyServer, path: str) -> list[str | None]:
    return [seen.key for seen in server.hits(path)]


class TestRetries:
    async def test_a_get_is_retried_until_it_succeeds(self, mode: str, server: FlakyServer):
        url = server.script("/s", 503, 502, 200)
        async with client(mode, policy=retrying()) as c:
            response = await c.request("GET", url)
        assert response.status_code == 200 and response.json() == {"status": 200}
        assert len(server.hits("/s")) == 3

    async def test_when_retries_run_out_the_last_response_is_returned(
            self, mode: str, server: FlakyServer):
        url = server.script("/s", 500, 503)
        async with client(mode, policy=retrying()) as c:
            response = await c.request("GET", url)
        assert response.status_code == 503 and response.json() == {"status": 503}
        assert len(server.hits("/s")) == 3

    async def test_a_4xx_answer_is_not_retried(self, mode: str, server: FlakyServer):
        url = server.script("/s", 402)
        async with client(mode, policy=retrying()) as c:
            response = await c.request("GET", url)
        assert response.status_code == 402 and len(server.hits("/s")) == 1

    async def test_a_policy_without_retry_sends_once(self, mode: str, server: FlakyServer):
        url = server.script("/s", 503, 200)
        async with client(mode, policy=fr.Policy(name="plain")) as c:
            response = await c.request("GET", url)
        assert response.status_code == 503 and len(server.hits("/s")) == 1

    async def test_a_streamed_response_is_returned_unread(self, mode: str, server: FlakyServer):
        url = server.script("/s", 503, 200)
        async with client(mode, policy=retrying()) as c:
            if mode == "sync":
                with c.sync.stream("GET", url) as response:
                    body = response.read()
            else:
                async with c.async_.stream("GET", url) as response:
                    body = await response.aread()
        assert response.status_code == 200 and body == b'{"status": 200}'
        assert response.elapsed.total_seconds() >= 0


class TestIdempotencyKeys:
    async def test_a_post_without_a_key_is_sent_exactly_once(self, mode: str,
                                                           server: FlakyServer):
        url = server.script("/pay", 503, 200)
        async with client(mode, policy=retrying()) as c:
            response = await c.request("POST", url, json={"amount": 100})
        assert response.status_code == 503
        assert keys(server, "/pay") == [None]

    async def test_a_post_with_the_callers_key_is_retried_under_that_key(
            self, mode: str, server: FlakyServer):
        url = server.script("/pay", 503, 429, 200)
        async with client(mode, policy=retrying()) as c:
            response = await c.request("PATCH", url, json={"amount": 100},
                                       headers={"Idempotency-Key": "order-42"})
        assert response.status_code == 200
        assert keys(server, "/pay") == ["order-42"] * 3
        assert {seen.body for seen in server.hits("/pay")} == {b'{"amount":100}'}

    async def test_a_generated_key_is_the_same_on_every_attempt_of_one_request(
            self, mode: str, server: FlakyServer):
        url = server.script("/pay", 503, 503, 200, 503, 200)
        async with client(mode, policy=retrying(), generate_idempotency_key=True) as c:
            first = await c.request("POST", url, content=b"a")
            second = await c.request("POST", url, content=b"b")
        assert first.status_code == second.status_code == 200
        seen = keys(server, "/pay")
        assert len(seen) == 5 and seen[0] is not None
        assert seen[:3] == [seen[0]] * 3 and seen[3:] == [seen[3]] * 2 and seen[0] != seen[3]

    async def test_a_body_that_cannot_be_replayed_is_sent_once(self, mode: str,
                                                             server: FlakyServer):
        url = server.script("/pay", 503, 200)

        def chunks() -> Iterator[bytes]:
            yield b"one,"
            yield b"two"

        async def achunks() -> AsyncIterator[bytes]:
            yield b"one,"
            yield b"two"

        async with client(mode, policy=retrying()) as c:
            response = await c.request("PUT", url, content=chunks() if mode == "sync"
                                       else achunks(), headers={"Idempotency-Key": "k"})
        assert response.status_code == 503
        assert [(s.key, s.body) for s in server.hits("/pay")] == [("k", b"one,two")]

    async def test_a_connect_error_is_retried_even_without_a_key(self, mode: str):
        calls: list[str | None] = []

        def handler(request: httpx.Request) -> httpx.Response:
            calls.append(request.headers.get("Idempotency-Key"))
            if len(calls) == 1:
                raise httpx.ConnectError("refused", request=request)
            return httpx.Response(201)

        inner = (httpx.MockTransport(handler))
        async with client(mode, inner, policy=retrying()) as c:
            response = await c.request("POST", "http://psp.example/pay")
        assert response.status_code == 201 and calls == [None, None]

    async def test_a_read_error_on_a_keyless_post_is_not_retried(self, mode: str):
        calls: list[int] = []

        def handler(request: httpx.Request) -> httpx.Response:
            calls.append(1)
            raise httpx.ReadError("reset", request=request)

        async with client(mode, httpx.MockTransport(handler), policy=retrying()) as c:
            with pytest.raises(httpx.ReadError):
                await c.request("POST", "http://psp.example/pay")
        assert calls == [1]


class TestRetryAfter:
    @pytest.mark.parametrize(("header", "waited"), [("7", 7.0), ("500", 20.0), ("date", 15.0)])
    async def test_retry_after_is_honoured_and_capped(self, mode: str, server: FlakyServer,
                                                      header: str, waited: float):
        clock = ManualClock(1_700_000_000.0)
        if header == "date":
            header = formatdate(clock.time() + 15, usegmt=True)
        url = server.script("/s", (429, {"Retry-After": header}), 200)
        policy = retrying(clock=clock, max_retry_after=20.0, deadline=None)
        async with client(mode, policy=policy) as c:
            response = await c.request("GET", url)
        assert response.status_code == 200
        assert clock.time() - 1_700_000_000.0 == pytest.approx(waited, abs=1.0)

    async def test_a_hint_past_the_deadline_returns_the_429_at_once(self, mode: str,
                                                                   server: FlakyServer):
        clock = ManualClock()
        url = server.script("/s", (429, {"Retry-After": "50"}), 200)
        async with client(mode, policy=retrying(clock=clock, deadline=10.0)) as c:
            response = await c.request("GET", url)
        assert response.status_code == 429 and response.headers["Retry-After"] == "50"
        assert len(server.hits("/s")) == 1 and clock.time() == 1_700_000_000.0


class TestBudgetAndBreaker:
    async def test_an_empty_retry_budget_stops_the_retry(self, mode: str, server: FlakyServer):
        budget = RetryBudget("psp-budget", backend=MemoryBackend(), ratio=0.1, min_per_second=0,
                             clock=ManualClock())
        url = server.script("/s", 503, 200)
        async with client(mode, policy=retrying(budget=budget)) as c:
            with pytest.raises(fr.RetryBudgetExhausted):
                await c.request("GET", url)
        assert len(server.hits("/s")) == 1

    async def test_the_breaker_trips_on_5xx_rejects_then_recovers(self, mode: str,
                                                                 server: FlakyServer):
        clock = ManualClock()
        breaker = CircuitBreaker("psp-http", backend=MemoryBackend(), clock=clock,
                                 minimum_calls=2, failure_rate=1.0, window=CountWindow(10),
                                 break_duration=10.0, half_open_calls=1)
        url = server.script("/s", 503, 503, 200)
        async with client(mode, policy=fr.Policy(name="psp", breaker=breaker)) as c:
            assert [(await c.request("GET", url)).status_code for _ in range(2)] == [503, 503]
            with pytest.raises(fr.CircuitOpen):
                await c.request("GET", url)
            assert len(server.hits("/s")) == 2
            clock.advance(10.0)
            assert (await c.request("GET", url)).status_code == 200
        assert breaker.known_state is fr.BreakerState.CLOSED

    async def test_4xx_answers_count_for_neither_side_of_the_breaker(self, mode: str,
                                                                    server: FlakyServer):
        breaker = CircuitBreaker("psp-neutral", backend=MemoryBackend(), clock=ManualClock(),
                                 minimum_calls=2, failure_rate=1.0, window=CountWindow(10))
        declined = server.script("/decline", 402)
        down = server.script("/down", 503)
        async with client(mode, policy=fr.Policy(name="psp", breaker=breaker)) as c:
            for _ in range(8):
                assert (await c.request("POST", declined)).status_code == 402
            for _ in range(2):
                await c.request("GET", down)
            # had the declines counted as successes, 2 failures in 10 calls would not trip
            with pytest.raises(fr.CircuitOpen):
                await c.request("GET", down)

    async def test_a_retry_stops_at_an_open_breaker(self, mode: str, server: FlakyServer):
        breaker = CircuitBreaker("psp-stop", backend=MemoryBackend(), clock=ManualClock(),
                                 minimum_calls=1, failure_rate=1.0, window=CountWindow(5))
        url = server.script("/s", 503, 200)
        policy = fr.Policy(name="psp", breaker=breaker, retry=fr.retry(attempts=3, wait=0))
        async with client(mode, policy=policy) as c:
            with pytest.raises(fr.CircuitOpen):
                await c.request("GET", url)
        assert len(server.hits("/s")) == 1

    async def test_the_rate_limit_counts_a_request_once_however_often_it_is_retried(
            self, mode: str, server: FlakyServer):
        limiter = fr.RateLimiter("2/minute", backend=MemoryBackend(), name="psp-rate",
                                 clock=ManualClock())
        url = server.script("/s", 503, 503, 200)
        policy = fr.Policy(name="psp", rate_limit=limiter, retry=fr.retry(attempts=3, wait=0))
        async with client(mode, policy=policy) as c:
            assert (await c.request("GET", url)).status_code == 200
            assert (await c.request("GET", url)).status_code == 200
            with pytest.raises(fr.RateLimited):
                await c.request("GET", url)
        assert len(server.hits("/s")) == 4


    async def test_requests_over_the_psp_quota_wait_for_it(self, mode: str,
                                                          server: FlakyServer):
        """resilience4j's timeoutDuration: a request over the outbound quota waits for a
        permit (on the limiter's clock) instead of failing; one that could not get one in
        time fails at once, without waiting."""
        slept: list[float] = []

        class Clock(ManualClock):
            def sleep(self, seconds: float) -> None:
                slept.append(seconds)
                super().sleep(seconds)

            async def asleep(self, seconds: float) -> None:
                slept.append(seconds)
                await super().asleep(seconds)

        limiter = fr.RateLimiter("2/second", backend=MemoryBackend(), name="psp-quota",
                                 clock=Clock(), wait_jitter=0)
        url = server.script("/s", 200, 200, 200, 200)
        patient = fr.Policy(name="psp", rate_limit=limiter, rate_limit_wait=1.0)
        async with client(mode, policy=patient) as c:
            codes = [(await c.request("GET", url)).status_code for _ in range(3)]
        assert codes == [200, 200, 200] and [round(s, 3) for s in slept] == [0.5]
        hasty = fr.Policy(name="psp", rate_limit=limiter, rate_limit_wait=0.2)
        async with client(mode, policy=hasty) as c:
            with pytest.raises(fr.RateLimited):
                await c.request("GET", url)
        assert len(server.hits("/s")) == 3 and len(slept) == 1


class TestTimeouts:
    async def test_a_hanging_get_times_out_on_each_attempt(self, mode: str,
                                                          server: FlakyServer):
        url = server.script("/hang", HANG)
        policy = fr.Policy(name="psp", timeout=0.2, retry=fr.retry(attempts=2, wait=0))
        async with client(mode, policy=policy) as c:
            with pytest.raises(fr.Timeout if mode == "async" else httpx.ReadTimeout):
                await c.request("GET", url)
        assert len(server.hits("/hang")) == 2

    async def test_a_hanging_keyless_post_is_sent_once(self, mode: str, server: FlakyServer):
        url = server.script("/hang", HANG)
        policy = fr.Policy(name="psp", timeout=0.2, retry=fr.retry(attempts=3, wait=0))
        async with client(mode, policy=policy) as c:
            with pytest.raises((fr.Timeout, httpx.ReadTimeout)):
                await c.request("POST", url, json={"amount": 1})
        assert len(server.hits("/hang")) == 1

    async def test_a_timed_out_post_is_retried_under_its_key(self, mode: str,
                                                            server: FlakyServer):
        url = server.script("/hang", HANG, 201)
        policy = fr.Policy(name="psp", timeout=0.2, retry=fr.retry(attempts=3, wait=0))
        async with client(mode, policy=policy, generate_idempotency_key=True) as c:
            response = await c.request("POST", url, json={"amount": 1})
        assert response.status_code == 201
        seen = keys(server, "/hang")
        assert len(seen) == 2 and seen[0] is not None and seen[0] == seen[1]


class TestHosts:
    async def test_each_host_gets_its_policy_and_unmatched_hosts_pass_through(
            self, mode: str, server: FlakyServer):
        server.script("/s", 503)
        async with client(mode, policies={"127.0.0.1": retrying()}) as c:
            assert (await c.request("GET", server.url("/s"))).status_code == 503
            assert len(server.hits("/s")) == 3
            other = await c.request("GET", server.url("/s", host="localhost"))
            assert other.status_code == 503 and len(server.hits("/s")) == 4
        assert c.transport.policy_for("127.0.0.1") is not None
        assert c.transport.policy_for("localhost") is None


class TestTelemetry:
    @pytest.fixture
    def spans(self, monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        monkeypatch.setattr(telemetry, "active", lambda: True)
        monkeypatch.setattr(telemetry, "tracer", provider.get_tracer("test"))
        return exporter

    async def test_one_client_span_per_attempt_with_the_http_attributes(
            self, mode: str, server: FlakyServer, spans: InMemorySpanExporter):
        url = server.script("/s", 503, 200)
        async with client(mode, policy=retrying()) as c:
            assert (await c.request("GET", url)).status_code == 200
        finished = spans.get_finished_spans()
        assert [(s.name, s.kind) for s in finished] == [("GET", SpanKind.CLIENT)] * 2
        assert SPAN_NAME not in {s.name for s in finished}  # one span per attempt, not two
        first, second = (dict(s.attributes or {}) for s in finished)
        for attrs in (first, second):
            assert attrs["http.request.method"] == "GET"
            assert attrs["server.address"] == "127.0.0.1"
            assert attrs["server.port"] == server.port
            assert attrs["url.full"] == url
            assert attrs["resilience.name"] == "psp"
        assert first["http.response.status_code"] == 503 and first["error.type"] == "503"
        assert "http.request.resend_count" not in first
        assert second["http.response.status_code"] == 200 and "error.type" not in second
        assert second["http.request.resend_count"] == 1
        assert [a["resilience.retry.attempt"] for a in (first, second)] == [1, 2]
        assert [s.status.status_code.name for s in finished] == ["ERROR", "UNSET"]

    async def test_without_a_retry_the_attempt_gets_a_client_span(
            self, mode: str, server: FlakyServer, spans: InMemorySpanExporter):
        url = server.script("/s", 404)
        async with client(mode, policy=fr.Policy(name="plain")) as c:
            assert (await c.request("POST", url, content=b"x")).status_code == 404
        (span,) = spans.get_finished_spans()
        assert span.name == "POST" and span.kind is SpanKind.CLIENT
        attrs = dict(span.attributes or {})
        assert attrs["http.response.status_code"] == 404 and attrs["error.type"] == "404"
        assert attrs["http.request.method"] == "POST"

    async def test_a_transport_error_is_the_error_type(self, mode: str,
                                                       spans: InMemorySpanExporter):
        def handler(request: httpx.Request) -> httpx.Response:
            raise httpx.ReadTimeout("slow", request=request)

        async with client(mode, httpx.MockTransport(handler),
                          policy=fr.Policy(name="plain")) as c:
            with pytest.raises(httpx.ReadTimeout):
                await c.request("GET", "http://psp.example/s")
        (span,) = spans.get_finished_spans()
        assert dict(span.attributes or {})["error.type"] == "ReadTimeout"
        assert dict(span.attributes or {})["server.port"] == 80  # the scheme's default
