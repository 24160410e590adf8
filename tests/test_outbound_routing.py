"""Per-route and per-request outbound policies and the Policy fallback at the HTTP client edges:
the route table, httpx's request extension, ``using_policy`` - against a flaky local server with
httpx (sync and async) and requests."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest
import requests
from test_httpx import client, keys
from test_outbound import FlakyServer, _core, flaky_server  # noqa: F401 - the `server` fixture

import fintech_resilience as fr
from fintech_resilience.edges.outbound_routes import POLICY_EXTENSION
from fintech_resilience.httpx import FailedResponse, using_policy
from fintech_resilience.requests import ResilientAdapter
from fintech_resilience.requests import using_policy as requests_using_policy


def retrying(name: str, attempts: int = 3, **options: Any) -> fr.Policy:
    options.setdefault("wait", 0)
    return fr.Policy(name=name, retry=fr.retry(attempts=attempts, **options))


ONCE = fr.Policy(name="once")
THRICE = retrying("thrice")
TWICE = retrying("twice", attempts=2)


class TestRouteTable:
    def names(self, core: Any, method: str, path: str, host: str = "api.psp.example",
              port: int | None = None) -> str | None:
        policy = core.policy_for(host, port, method=method, path=path)
        return None if policy is None else policy.name

    def test_method_and_path_patterns_then_the_host_policies(self) -> None:
        core = _core(policy=ONCE, routes={
            "POST /v1/charges": THRICE,
            "GET /v1/payments/{payment_id}": TWICE,
            "* /v1/refunds/**": THRICE,
            "get /health": None,
        })
        assert self.names(core, "POST", "/v1/charges") == "thrice"
        assert self.names(core, "GET", "/v1/charges") == "once"  # another method: the host's
        assert self.names(core, "GET", "/v1/payments/pay_1") == "twice"
        assert self.names(core, "GET", "/v1/payments/pay_1/events") == "once"  # one segment
        assert self.names(core, "GET", "/v1/payments/") == "once"  # a segment is not empty
        for path in ("/v1/refunds", "/v1/refunds/", "/v1/refunds/rf_1/status"):
            assert self.names(core, "DELETE", path) == "thrice", path
        assert self.names(core, "GET", "/v1/refundsX") == "once"
        assert self.names(core, "GET", "/health") is None  # a route to None: unprotected
        assert self.names(core, "POST", "/v1/charges/") == "once"  # paths match exactly

    def test_the_first_matching_route_wins_in_the_order_written(self) -> None:
        core = _core(routes={"POST /v1/charges/**": THRICE, "POST /v1/charges/{id}/capture": TWICE})
        assert self.names(core, "POST", "/v1/charges/ch_1/capture") == "thrice"
        reordered = _core(routes={"POST /v1/charges/{id}/capture": TWICE,
                                  "POST /v1/charges/**": THRICE})
        assert self.names(reordered, "POST", "/v1/charges/ch_1/capture") == "twice"

    def test_a_route_may_name_a_host_and_routes_alone_leave_the_rest_unprotected(self) -> None:
        core = _core(routes={"POST api.psp.example/v1/charges": THRICE,
                             "POST *.eu.psp.example/v1/charges": TWICE,
                             "* localhost:8443/**": ONCE})
        assert self.names(core, "POST", "/v1/charges") == "thrice"
        assert self.names(core, "POST", "/v1/charges", host="x.eu.psp.example") == "twice"
        assert self.names(core, "POST", "/v1/charges", host="other.example") is None
        assert self.names(core, "GET", "/a", host="localhost", port=8443) == "once"
        assert self.names(core, "GET", "/a", host="localhost", port=8080) is None

    def test_a_policy_is_derived_once_however_often_it_is_chosen(self) -> None:
        core = _core(policy=THRICE, routes={"POST /v1/charges": THRICE})
        plans = [core.plan("POST", "h", None, "k", True, path="/v1/charges")[0],
                 core.plan("POST", "h", None, "k", True, path="/other")[0],
                 core.plan("POST", "h", None, "k", True, path="/", chosen=THRICE)[0]]
        assert all(p is not None for p in plans)
        assert len({id(p.retry) for p in plans if p is not None}) == 1

    @pytest.mark.parametrize(("routes", "message"), [
        ({"/v1/charges": ONCE}, "routes keys are 'METHOD /path'"),
        ({"POST": ONCE}, "routes keys are 'METHOD /path'"),
        ({"PO ST /x": ONCE}, "routes keys are"),
        ({"POST api.psp.example": ONCE}, "routes keys are 'METHOD /path'"),
        ({"POST api*.psp.example/x": ONCE}, "routes host keys are"),
        ({"POST /v1/**/x": ONCE}, "'\\*\\*' must be the last segment"),
        ({"POST /v1/ch*": ONCE}, "a route segment is literal"),
        ({"POST /v1/charges": "thrice"}, "must be a fr.Policy"),
        ({}, "routes must be a non-empty dict"),
    ])
    def test_bad_routes_say_what_to_write(self, routes: Any, message: str) -> None:
        with pytest.raises(fr.ConfigurationError, match=message):
            _core(policy=ONCE, routes=routes)

    def test_a_transport_needs_a_policy_policies_or_routes(self) -> None:
        with pytest.raises(fr.ConfigurationError, match="or routes="):
            _core()


class TestHttpx:
    async def test_routes_choose_the_policy_per_method_and_path(
            self, mode: str, server: FlakyServer) -> None:
        for path in ("/v1/charges", "/v1/payments/pay_1", "/v1/other", "/health"):
            server.script(path, 503)
        routes = {"POST /v1/charges": THRICE, "GET /v1/payments/*": TWICE, "GET /health": None}
        async with client(mode, policy=ONCE, routes=routes) as c:
            await c.request("POST", server.url("/v1/charges"), content=b"{}",
                            headers={"Idempotency-Key": "order-7"})
            await c.request("GET", server.url("/v1/payments/pay_1"))
            await c.request("GET", server.url("/v1/other"))
            await c.request("GET", server.url("/health"))
        assert [len(server.hits(p)) for p in ("/v1/charges", "/v1/payments/pay_1",
                                              "/v1/other", "/health")] == [3, 2, 1, 1]
        assert keys(server, "/v1/charges") == ["order-7"] * 3

    async def test_a_request_extension_overrides_the_routes(self, mode: str,
                                                           server: FlakyServer) -> None:
        url = server.script("/v1/charges", 503)
        async with client(mode, policy=ONCE, routes={"GET /v1/charges": TWICE}) as c:
            await c.request("GET", url, extensions={POLICY_EXTENSION: THRICE})
            assert len(server.hits("/v1/charges")) == 3
            await c.request("GET", url, extensions={POLICY_EXTENSION: None})
            assert len(server.hits("/v1/charges")) == 4  # None: sent once, unprotected
            with pytest.raises(fr.ConfigurationError, match=r"must be a fr\.Policy or None"):
                await c.request("GET", url, extensions={POLICY_EXTENSION: "thrice"})

    async def test_using_policy_chooses_for_the_block_and_nests(self, mode: str,
                                                               server: FlakyServer) -> None:
        url = server.script("/s", 503)
        async with client(mode, policy=ONCE) as c:
            with using_policy(THRICE):
                await c.request("GET", url)
                with using_policy(TWICE):
                    await c.request("GET", url)
                await c.request("GET", url, extensions={POLICY_EXTENSION: ONCE})
            await c.request("GET", url)
        assert len(server.hits("/s")) == 3 + 2 + 1 + 1

    async def test_the_fallback_answers_for_a_failing_response_and_closes_it(
            self, mode: str, server: FlakyServer) -> None:
        url = server.script("/v1/rates", 503)
        failed: list[FailedResponse] = []

        def cached_rates(error: BaseException, request: httpx.Request) -> httpx.Response:
            assert isinstance(error, FailedResponse)
            failed.append(error)
            return httpx.Response(200, json={"rates": "cached"}, request=request)

        policy = retrying("fx", attempts=2, wait=0)
        policy = fr.Policy(name="fx", retry=policy.retry, fallback=cached_rates)
        async with client(mode, policy=policy) as c:
            response = await c.request("GET", url)
        assert response.status_code == 200 and response.json() == {"rates": "cached"}
        assert len(server.hits("/v1/rates")) == 2
        (error,) = failed
        assert error.status_code == 503 and error.response.is_closed

    async def test_the_fallback_answers_for_the_librarys_refusals(
            self, mode: str, server: FlakyServer) -> None:
        url = server.script("/v1/charges", 201)
        breaker = fr.CircuitBreaker("psp-routing", backend=fr.MemoryBackend())
        breaker.force_open()

        def queued(error: BaseException, request: httpx.Request) -> httpx.Response:
            return httpx.Response(202, json={"queued": type(error).__name__}, request=request)

        policy = fr.Policy(name="psp", breaker=breaker, fallback=queued,
                           fallback_on=fr.CircuitOpen)
        async with client(mode, policy=policy) as c:
            response = await c.request("POST", url, content=b"{}")
        assert (response.status_code, response.json()) == (202, {"queued": "CircuitOpen"})
        assert server.hits("/v1/charges") == []  # never sent

    async def test_failures_the_fallback_does_not_handle_are_returned_as_before(
            self, mode: str, server: FlakyServer) -> None:
        url = server.script("/s", 503)
        policy = fr.Policy(name="psp", fallback=lambda e, r: None, fallback_on=fr.CircuitOpen)
        async with client(mode, policy=policy) as c:
            response = await c.request("GET", url)
        assert response.status_code == 503 and response.json() == {"status": 503}


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def session() -> Any:
    sessions: list[requests.Session] = []

    def build(**options: Any) -> requests.Session:
        s = requests.Session()
        s.mount("http://", ResilientAdapter(**options))
        sessions.append(s)
        return s

    yield build
    for s in sessions:
        s.close()


class TestRequests:
    def test_routes_choose_the_policy_per_method_and_path(self, session: Any,
                                                          server: FlakyServer) -> None:
        for path in ("/v1/charges", "/v1/payments/pay_1", "/v1/other"):
            server.script(path, 503)
        s = session(policy=ONCE, routes={"POST /v1/charges": THRICE,
                                         "GET /v1/payments/{id}": TWICE})
        s.post(server.url("/v1/charges"), data=b"{}", headers={"Idempotency-Key": "order-7"},
               timeout=5)
        s.get(server.url("/v1/payments/pay_1"), timeout=5)
        s.get(server.url("/v1/other?x=1"), timeout=5)
        assert [len(server.hits(p)) for p in ("/v1/charges", "/v1/payments/pay_1",
                                              "/v1/other")] == [3, 2, 1]

    def test_using_policy_is_the_per_request_choice_and_stays_in_its_thread(
            self, session: Any, server: FlakyServer) -> None:
        url = server.script("/s", 503)
        s = session(policy=ONCE)
        other: list[int] = []
        with using_policy(THRICE):
            s.get(url, timeout=5)
            thread = threading.Thread(target=lambda: other.append(
                s.get(url, timeout=5).status_code))
            thread.start()
            thread.join(10)
        with requests_using_policy(None):  # None: unprotected
            s.get(url, timeout=5)
        assert other == [503]
        assert len(server.hits("/s")) == 3 + 1 + 1  # a thread does not inherit the choice

    def test_the_fallback_returns_a_response_of_its_own(self, session: Any,
                                                        server: FlakyServer) -> None:
        url = server.script("/v1/rates", 502)

        def cached(error: BaseException, request: requests.PreparedRequest) -> requests.Response:
            response = requests.Response()
            response.status_code = 200
            response._content = b'{"rates": "cached"}'
            response.request = request
            return response

        s = session(policy=fr.Policy(name="fx", retry=fr.retry(attempts=2, wait=0),
                                     fallback=cached))
        response = s.get(url, timeout=5)
        assert response.status_code == 200 and response.json() == {"rates": "cached"}
        assert len(server.hits("/v1/rates")) == 2


def test_using_policy_refuses_anything_but_a_policy() -> None:
    with pytest.raises(fr.ConfigurationError, match=r"using_policy takes a fr\.Policy or None"), \
            using_policy("psp"):  # type: ignore[arg-type]
        pass
