"""Support for users' test suites, as stamina has it: a test mode that also caps attempts, and a
reset of all in-memory state - driven through the patterns and the real frameworks."""

from __future__ import annotations

import asyncio
import threading
import warnings
from collections.abc import Iterator

import pytest
import test_django  # configures Django settings once for the session
from django.test import Client, override_settings
from fastapi import Depends, FastAPI
from flask import Flask

import fintech_resilience as fr
from fintech_resilience import testing
from fintech_resilience.audit import get_default, set_default
from fintech_resilience.fastapi import RateLimit
from fintech_resilience.flask import Resilience
from fintech_resilience.keys import principal_or_ip

with warnings.catch_warnings():  # starlette 1.x warns that its test client wants httpx2
    warnings.filterwarnings("ignore", message=".*httpx2")
    from fastapi.testclient import TestClient

KEY = principal_or_ip(principal_header="X-User")


@pytest.fixture(autouse=True)
def _restore() -> Iterator[None]:
    yield
    testing.set_test_mode(False)
    testing.reset()


class Failing:
    """Fails every call; counts them."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1
        raise ConnectionError("PSP down")


def attempts_made(**retry_options: object) -> int:
    fn = Failing()
    with pytest.raises(ConnectionError):
        fr.retry(on=ConnectionError, attempts=3, wait=60.0, **retry_options)(fn)()  # type: ignore[arg-type]
    return fn.calls


# -- test mode ------------------------------------------------------------------------------------
def test_attempts_replace_the_configured_attempts_and_no_wait_is_slept() -> None:
    clock = testing.ManualClock()
    with testing.test_mode(attempts=1):
        assert attempts_made(clock=clock) == 1
    with testing.test_mode(attempts=5):
        assert attempts_made(clock=clock) == 5  # as stamina: attempts replace, unless cap=True
    assert clock.time() == 1_700_000_000.0  # never slept
    with testing.test_mode():
        assert attempts_made(clock=clock) == 3  # without attempts: as configured


def test_cap_never_raises_the_configured_attempts() -> None:
    with testing.test_mode(attempts=5, cap=True):
        assert attempts_made() == 3
    with testing.test_mode(attempts=2, cap=True):
        assert attempts_made() == 2


def test_process_wide_test_mode_reaches_other_threads_and_a_block_wins_over_it() -> None:
    testing.set_test_mode(attempts=1)
    made: list[int] = []
    worker = threading.Thread(target=lambda: made.append(attempts_made()))
    worker.start()
    worker.join()
    assert made == [1]
    with testing.test_mode(attempts=2):
        assert attempts_made() == 2
    assert testing.current() == testing.TestMode(on=True, attempts=1)
    testing.set_test_mode(False)
    assert not testing.is_test_mode() and testing.current() == testing.TestMode()


async def test_async_retries_and_policies_follow_test_mode() -> None:
    calls = 0

    async def charge() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError("PSP down")

    policy = fr.Policy(name="psp", retry=fr.retry(on=ConnectionError, attempts=4, wait=60.0))
    with testing.test_mode(attempts=2), pytest.raises(ConnectionError):
        await asyncio.wait_for(policy(charge)(), timeout=5)
    assert calls == 2


@pytest.mark.parametrize("attempts", [0, -1, 1.5, True, "2"])
def test_bad_attempts_are_refused(attempts: object) -> None:
    with pytest.raises(fr.ConfigurationError, match="attempts"):
        testing.set_test_mode(attempts=attempts)  # type: ignore[arg-type]
    with pytest.raises(fr.ConfigurationError), testing.test_mode(attempts=attempts):  # type: ignore[arg-type]
        pass


def test_a_fastapi_app_under_test_client_sees_process_wide_test_mode() -> None:
    calls: list[int] = []

    @fr.retry(on=ConnectionError, attempts=3, wait=60.0)
    def psp() -> None:
        calls.append(1)
        raise ConnectionError("PSP down")

    app = FastAPI()

    @app.get("/charge")
    def charge() -> str:
        try:
            psp()
        except ConnectionError:
            return "failed"
        return "ok"

    testing.set_test_mode(attempts=1)
    assert TestClient(app).get("/charge").json() == "failed"  # the app runs in another thread
    assert calls == [1]


# -- reset ----------------------------------------------------------------------------------------
def test_reset_forgets_limits_records_and_budgets_of_the_default_backend() -> None:
    limiter = fr.RateLimiter("1/minute", name="reset")
    assert limiter.acquire("k").allowed and not limiter.acquire("k").allowed
    runs: list[int] = []

    @fr.idempotent(fr.IdempotencyStore(), key=lambda: "k", scope=lambda: "u")
    def charge() -> int:
        runs.append(1)
        return len(runs)

    assert charge() == charge() == 1
    testing.reset()
    assert limiter.acquire("k").allowed
    assert charge() == 2  # the record is gone: a new test starts from nothing


def test_reset_makes_breakers_forget_what_they_learned() -> None:
    breaker = fr.CircuitBreaker("reset-breaker")
    breaker.force_open()
    with pytest.raises(fr.CircuitOpen):
        breaker.call(lambda: None)
    testing.reset()
    assert breaker.call(lambda: "through") == "through"
    assert breaker.state is fr.BreakerState.CLOSED


def test_reset_clears_every_memory_backend_and_the_audit_default() -> None:
    own = fr.MemoryBackend()
    limiter = fr.RateLimiter("1/minute", name="own", backend=own)
    limiter.acquire("k")
    log = fr.AuditLog(sinks=[])
    set_default(log)
    testing.reset()
    assert limiter.acquire("k").allowed
    assert get_default() is None


def test_reset_clears_the_local_fallback_of_a_redis_pattern() -> None:
    dead = fr.RedisBackend.from_url("redis://127.0.0.1:1/0", timeout=0.05)
    limiter = fr.RateLimiter("1/minute", name="fallback", backend=dead)
    assert limiter.acquire("k").allowed  # Redis is down: the per-process fallback decides
    assert not limiter.acquire("k").allowed
    testing.reset()
    assert limiter.acquire("k").allowed


def test_reset_forgets_flask_and_fastapi_app_state() -> None:
    flask_app = Flask(__name__)
    resilience = Resilience(flask_app, key=KEY)

    @flask_app.get("/pay")
    @resilience.limit("1/minute")
    def pay() -> str:
        return "ok"

    fastapi_app = FastAPI()

    @fastapi_app.get("/pay", dependencies=[Depends(RateLimit("1/minute", key=KEY))])
    async def fastapi_pay() -> str:
        return "ok"

    flask_client, fastapi_client = flask_app.test_client(), TestClient(fastapi_app)
    for _ in range(2):
        flask_client.get("/pay", headers={"X-User": "u"})
        fastapi_client.get("/pay", headers={"X-User": "u"})
    assert flask_client.get("/pay", headers={"X-User": "u"}).status_code == 429
    assert fastapi_client.get("/pay", headers={"X-User": "u"}).status_code == 429
    testing.reset()
    assert flask_client.get("/pay", headers={"X-User": "u"}).status_code == 200
    assert fastapi_client.get("/pay", headers={"X-User": "u"}).status_code == 200


def test_reset_forgets_the_django_throttle_and_middleware_state() -> None:
    drf = {"DEFAULT_THROTTLE_RATES": {"payments": "1/min"}}
    settings = {"RATE_LIMIT": {"LIMITS": "5/minute"}}  # no BACKEND: the process-wide default
    with override_settings(ROOT_URLCONF="test_django", REST_FRAMEWORK=drf,
                           MIDDLEWARE=test_django.MIDDLEWARE, FINTECH_RESILIENCE=settings):
        client = Client()
        codes = [client.post("/api/payments", headers={"X-User": "a"}).status_code
                 for _ in range(2)]
        testing.reset()
        after = client.post("/api/payments", headers={"X-User": "a"})
    assert codes == [200, 429]
    assert after.status_code == 200 and after["RateLimit"] == '"django";r=4;t=12'
