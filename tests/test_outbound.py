"""The outbound core shared by the httpx transports and the requests adapter, and the flaky
local server the client tests talk to (imported by test_httpx*.py and test_requests*.py)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

import fintech_resilience as fr
from fintech_resilience.core.outcomes import Outcome, on_status
from fintech_resilience.edges.outbound import (
    IDEMPOTENT_METHODS,
    FailedResponse,
    OutboundCore,
    _Neutral,
)
from fintech_resilience.errors import ConfigurationError

# --- the flaky server ------------------------------------------------------------------------

#: One scripted answer: a status, (status, headers), or HANG (answer only after the test ends).
Answer = int | tuple[int, dict[str, str]] | str
HANG = "hang"


@dataclass(frozen=True)
class Seen:
    """A request as the server saw it."""

    method: str
    path: str
    key: str | None
    body: bytes


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that time out reset their connection: expected here


class FlakyServer:
    """A threaded HTTP/1.1 server on 127.0.0.1. Each path answers from its script, one entry
    per request; the last entry repeats. Unscripted paths answer 200."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.scripts: dict[str, list[Answer]] = {}
        self.release = threading.Event()
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    body = self._chunked()
                answer = owner._next(Seen(self.command, self.path,
                                          self.headers.get("Idempotency-Key"), body))
                if answer == HANG:
                    owner.release.wait(10)
                    self.close_connection = True
                    return
                status, headers = (answer, {}) if isinstance(answer, int) else answer
                payload = json.dumps({"status": status}).encode()
                try:
                    self.send_response(int(status))
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                except OSError:
                    self.close_connection = True

            def _chunked(self) -> bytes:
                data = b""
                while True:
                    size = int(self.rfile.readline().strip() or b"0", 16)
                    if size == 0:
                        self.rfile.readline()
                        return data
                    data += self.rfile.read(size)
                    self.rfile.readline()

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.01,),
                                       daemon=True)

    def _next(self, seen: Seen) -> Answer:
        with self.lock:
            self.seen.append(seen)
            script = self.scripts.get(seen.path.split("?")[0])
            if not script:
                return 200
            return script.pop(0) if len(script) > 1 else script[0]

    def script(self, path: str, *answers: Answer) -> str:
        """Answer requests to ``path`` with ``answers`` in order (the last repeats); its URL."""
        self.scripts[path] = list(answers)
        return self.url(path)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def hits(self, path: str) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if s.path.split("?")[0] == path]

    def __enter__(self) -> FlakyServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture(name="server")
def flaky_server() -> Iterator[FlakyServer]:
    """A fresh flaky server for the test."""
    with FlakyServer() as running:
        yield running


# --- the core: decisions without I/O -----------------------------------------------------------


def _core(**options: Any) -> OutboundCore:
    defaults: dict[str, Any] = {
        "policy": None, "policies": None, "failure": None, "neutral": None,
        "idempotency_header": "Idempotency-Key", "generate_idempotency_key": False,
        "transport_errors": (httpx.TransportError,),
        "never_sent": lambda exc: isinstance(exc, httpx.ConnectError)}
    defaults.update(options)
    return OutboundCore(**defaults)


RETRYING = fr.Policy(name="retrying", retry=fr.retry(attempts=3, wait=0))


class TestPlan:
    @pytest.mark.parametrize("method", sorted(IDEMPOTENT_METHODS))
    def test_rfc9110_idempotent_methods_are_retried_without_a_key(self, method: str) -> None:
        plan, new_key = _core(policy=RETRYING).plan(method.lower(), "h", None, None, True)
        assert plan is not None and plan.retry is not None and plan.retry.idempotent
        assert new_key is None

    @pytest.mark.parametrize("method", ["POST", "PATCH"])
    def test_post_and_patch_are_retried_only_under_a_key(self, method: str) -> None:
        plan, new_key = _core(policy=RETRYING).plan(method, "h", None, None, True)
        assert plan is not None and plan.retry is not None and not plan.retry.idempotent
        assert new_key is None

    def test_a_key_is_generated_once_for_a_keyless_post_only(self) -> None:
        core = _core(policy=RETRYING, generate_idempotency_key=True)
        keys = {core.plan("POST", "h", None, None, True)[1] for _ in range(3)}
        assert len(keys) == 3 and None not in keys
        assert core.plan("POST", "h", None, "mine", True)[1] is None
        assert core.plan("GET", "h", None, None, True)[1] is None

    def test_a_body_that_cannot_be_replayed_gets_one_attempt(self) -> None:
        plan, _ = _core(policy=RETRYING).plan("PUT", "h", None, None, False)
        assert plan is not None and plan.retry is None

    def test_a_policy_without_retry_means_one_attempt(self) -> None:
        plan, _ = _core(policy=fr.Policy(name="plain")).plan("GET", "h", None, None, True)
        assert plan is not None and plan.retry is None

    def test_policies_are_chosen_by_host_port_host_suffix_then_default(self) -> None:
        p = {name: fr.Policy(name=name) for name in ("port", "host", "sub", "deep", "any")}
        core = _core(policies={"api.psp.example:8443": p["port"], "API.psp.example": p["host"],
                               "*.psp.example": p["sub"], "*.eu.psp.example": p["deep"],
                               "*": p["any"]})
        assert core.policy_for("api.psp.example", 8443) is p["port"]
        assert core.policy_for("api.psp.example", None) is p["host"]
        assert core.policy_for("Api.PSP.example", 443) is p["host"]
        assert core.policy_for("x.psp.example") is p["sub"]
        assert core.policy_for("x.eu.psp.example") is p["deep"]
        assert core.policy_for("psp.example") is p["any"]
        assert core.policy_for("elsewhere.example") is p["any"]

    def test_an_unmatched_host_is_not_protected(self) -> None:
        core = _core(policies={"api.psp.example": RETRYING})
        assert core.plan("GET", "other.example", None, None, True) == (None, None)

    @pytest.mark.parametrize(("options", "message"), [
        ({}, "pass policy=fr.Policy"),
        ({"policy": RETRYING, "policies": {"*": RETRYING}}, "not both"),
        ({"policies": {}}, "non-empty dict"),
        ({"policies": {"*.": RETRYING}}, "policies keys are"),
        ({"policies": {"a*b": RETRYING}}, "policies keys are"),
        ({"policies": {"h": "retrying"}}, "must be a fr.Policy"),
        ({"policy": RETRYING, "idempotency_header": "Idempotency Key"}, "idempotency_header"),
        ({"policy": RETRYING, "idempotency_header": None, "generate_idempotency_key": True},
         "needs idempotency_header"),
        ({"policy": RETRYING, "failure": 3}, "failure must be a callable"),
    ])
    def test_bad_configuration_says_what_to_write(self, options: dict[str, Any],
                                                  message: str) -> None:
        with pytest.raises(ConfigurationError, match=message):
            _core(**options)


class Response:
    def __init__(self, status_code: int) -> None:
        self.status_code = status_code
        self.headers: dict[str, str] = {}


class TestJudge:
    @pytest.mark.parametrize("status", [500, 502, 503, 504, 429])
    def test_5xx_and_429_are_failures(self, status: int) -> None:
        signal = _core(policy=RETRYING).judge(Outcome(Response(status)), None)
        assert isinstance(signal, FailedResponse) and signal.status_code == status

    @pytest.mark.parametrize("status", [400, 402, 404, 409, 422, 499])
    def test_other_4xx_are_neutral(self, status: int) -> None:
        assert isinstance(_core(policy=RETRYING).judge(Outcome(Response(status)), None),
                          _Neutral)

    @pytest.mark.parametrize("status", [200, 201, 204, 301, 304])
    def test_2xx_and_3xx_succeed(self, status: int) -> None:
        assert _core(policy=RETRYING).judge(Outcome(Response(status)), None) is None

    @pytest.mark.parametrize("exc", [httpx.ReadTimeout("t"), httpx.ConnectError("c"),
                                     fr.Timeout("t"), ConnectionResetError()])
    def test_transport_errors_and_timeouts_are_failures(self, exc: Exception) -> None:
        assert _core(policy=RETRYING).judge(Outcome(exception=exc), None) is exc

    def test_other_exceptions_are_neutral_for_the_breaker(self) -> None:
        signal = _core(policy=RETRYING).judge(Outcome(exception=KeyError("x")), None)
        assert isinstance(signal, _Neutral) and isinstance(signal.outcome.exception, KeyError)

    def test_classification_is_configurable(self) -> None:
        core = _core(policy=RETRYING, failure=on_status(402), neutral=on_status(503))
        assert isinstance(core.judge(Outcome(Response(402)), None), FailedResponse)
        assert isinstance(core.judge(Outcome(Response(503)), None), _Neutral)
