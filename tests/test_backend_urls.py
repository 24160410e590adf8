"""``backend="redis://..."`` works wherever a backend is accepted, and a bad URL is refused when
the pattern is built, never at its first decision."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
import test_django  # configures Django settings once for the session
from django.test import Client, override_settings
from fastapi import Depends, FastAPI
from flask import Flask

import fintech_resilience as fr
from fintech_resilience.audit import RedisStreamSink
from fintech_resilience.audit.verify import verify_stream
from fintech_resilience.backends.memory import default_backend
from fintech_resilience.fastapi import RateLimit
from fintech_resilience.flask import Resilience
from fintech_resilience.keys import principal_or_ip

with warnings.catch_warnings():  # starlette 1.x warns that its test client wants httpx2
    warnings.filterwarnings("ignore", message=".*httpx2")
    from fastapi.testclient import TestClient

SECRET = b"0123456789abcdef0123456789abcdef"

# every place a backend is accepted, built from ``backend``
BUILDERS: dict[str, Callable[[Any], object]] = {
    "RateLimiter": lambda b: fr.RateLimiter("5/second", backend=b, name="url"),
    "ConcurrencyLimiter": lambda b: fr.ConcurrencyLimiter(2, backend=b, name="url"),
    "CircuitBreaker": lambda b: fr.CircuitBreaker("url", backend=b),
    "RetryBudget": lambda b: fr.RetryBudget("url", backend=b),
    "IdempotencyStore": lambda b: fr.IdempotencyStore(b, secret=SECRET),
    "Bulkhead": lambda b: fr.Bulkhead(2, backend=b, name="url"),
    "RedisStreamSink": lambda b: RedisStreamSink(b, stream="url"),
    "RegionalBackend": lambda b: fr.RegionalBackend({"eu": b}),
    "flask.Resilience": lambda b: Resilience(Flask(__name__), backend=b),
    "fastapi.RateLimit": lambda b: RateLimit("5/second", backend=b),
}


def test_every_pattern_decides_on_redis_given_its_url(redis_url: str) -> None:
    observer = fr.RedisBackend.from_url(redis_url)
    limiter = fr.RateLimiter("2/minute", backend=redis_url, name="url")
    assert [limiter.acquire("k").allowed for _ in range(2)] == [True, True]
    shared = fr.RateLimiter("2/minute", backend=observer, name="url")
    assert not shared.acquire("k").allowed  # the URL's limiter counted in Redis

    slots = fr.ConcurrencyLimiter(1, backend=redis_url, name="url")
    with slots.hold("psp"), pytest.raises(fr.ConcurrencyLimited), \
            fr.ConcurrencyLimiter(1, backend=observer, name="url").hold("psp"):
        pass

    breaker = fr.CircuitBreaker("url", backend=redis_url)
    breaker.force_open()
    with pytest.raises(fr.CircuitOpen):
        fr.CircuitBreaker("url", backend=observer).call(lambda: None)

    before = set(observer.client.keys())
    budget = fr.RetryBudget("url-budget", backend=redis_url, on_backend_error="raise")
    assert budget.withdraw() is True
    assert [k for k in set(observer.client.keys()) - before if b"url-budget" in k]

    store = fr.IdempotencyStore(redis_url, secret=SECRET)
    runs: list[int] = []

    @fr.idempotent(store, key=lambda n: "k", scope=lambda n: "u")
    def once(n: int) -> int:
        runs.append(n)
        return n

    assert once(1) == once(1) == 1 and runs == [1]
    assert fr.IdempotencyStore(observer, secret=SECRET).record_key("k", scope="u")

    bulkhead = fr.Bulkhead(1, backend=redis_url, name="url")
    with bulkhead.hold(), pytest.raises(fr.BulkheadFull), \
            fr.Bulkhead(1, backend=observer, name="url").hold():
        pass

    sink = RedisStreamSink(redis_url, stream="url", chain=True)
    log = fr.AuditLog(sinks=[sink])
    log.record("test.event", resource="url", principal="ops")
    assert verify_stream(redis_url, stream="url").checked == 1

    regional = fr.RegionalBackend({"eu": redis_url}, default_region="eu")
    assert fr.RateLimiter("1/minute", backend=regional, name="eu").acquire("k").allowed
    observer.close()


def test_one_backend_per_url_shared_by_every_pattern(redis_url: str) -> None:
    from fintech_resilience.backends.resolve import backend_from_url

    limiter = fr.RateLimiter("5/second", backend=redis_url, name="a")
    breaker = fr.CircuitBreaker("b", backend=redis_url)
    assert limiter.backend is breaker.backend is backend_from_url(redis_url)
    assert isinstance(limiter.backend, fr.RedisBackend)


def test_flask_fastapi_and_django_edges_limit_on_the_url(redis_url: str) -> None:
    observer = fr.RateLimiter("2/minute", backend=fr.RedisBackend.from_url(redis_url),
                              name="edge")
    key = principal_or_ip(principal_header="X-User")

    flask_app = Flask(__name__)
    resilience = Resilience(flask_app, backend=redis_url, key=key)

    @flask_app.get("/f")
    @resilience.limit("2/minute", name="edge")
    def flask_view() -> str:
        return "ok"

    assert flask_app.test_client().get("/f", headers={"X-User": "flask"}).status_code == 200

    fastapi_app = FastAPI()

    @fastapi_app.get("/a", dependencies=[Depends(RateLimit("2/minute", backend=redis_url,
                                                           name="edge", key=key))])
    async def fastapi_view() -> str:
        return "ok"

    assert TestClient(fastapi_app).get("/a", headers={"X-User": "fastapi"}).status_code == 200

    config = {"BACKEND": redis_url, "RATE_LIMIT": {"LIMITS": "2/minute", "NAME": "edge"}}
    with override_settings(ROOT_URLCONF="test_django", MIDDLEWARE=test_django.MIDDLEWARE,
                           FINTECH_RESILIENCE=config):
        assert Client().get("/r", headers={"X-User": "django"}).status_code == 200
    # each edge counted one request in Redis for its user
    for user in ("flask", "fastapi", "django"):
        assert observer.acquire(f"p:{user}").remaining == 0, user


@pytest.mark.parametrize("builder", sorted(BUILDERS))
def test_memory_url_is_the_default_memory_backend(builder: str) -> None:
    BUILDERS[builder]("memory://")  # accepted wherever a backend is
    assert fr.RateLimiter("1/second", backend="memory://").backend is default_backend()


BAD = {
    "redis://localhost:99999/0": "port",
    "redis://localhost:abc/0": "port",
    "redis://localhost:0/0": "port",
    "redis://exa mple:6379/0": "host",
    "redis://bad_host!:6379/0": "host",
    "redis://[::zz]:6379/0": "IPv6",
    "redis://localhost:6379/zero": "database",
    "redis://localhost:6379/0/1": "database",
    "http://localhost:6379": "scheme",
    "localhost:6379": "looks like",
    "redis://a:6379,b:6379/0": "several hosts",
    "redis+sentinel://s1:26379": "service",
    "redis+cluster://a:7000,b:notaport": "port",
    "unix://": "socket",
    "memory://somewhere": "memory://",
}


@pytest.mark.parametrize("builder", sorted(BUILDERS))
@pytest.mark.parametrize("url", sorted(BAD))
def test_a_bad_url_is_refused_at_construction(builder: str, url: str) -> None:
    with pytest.raises(fr.ConfigurationError, match=BAD[url]):
        BUILDERS[builder](url)


@pytest.mark.parametrize("builder", sorted(BUILDERS))
def test_a_backend_of_another_type_is_refused_at_construction(builder: str) -> None:
    with pytest.raises(fr.ConfigurationError):
        BUILDERS[builder](6379)


def test_the_password_never_appears_in_the_error() -> None:
    from fintech_resilience.backends.resolve import redact_url

    with pytest.raises(fr.ConfigurationError) as caught:
        fr.RateLimiter("1/second", backend="redis://user:s3cret@localhost:99999/0")
    assert "s3cret" not in str(caught.value) and "user:***@" in str(caught.value)
    assert redact_url("redis://:s3cret@h:6379/0") == "redis://:***@h:6379/0"


@pytest.mark.parametrize("url", ["redis://localhost", "redis://localhost:6379/0", "redis://",
                                 "redis://:6379/0", "rediss://user:pw@cache.internal:6380/2",
                                 "redis://[::1]:6379/0", "redis://10.0.0.5/3?db=3",
                                 "unix:///run/redis.sock?db=1",
                                 "redis+sentinel://s1:26379,s2/mymaster/0",
                                 "redis+cluster://n1:7000,n2:7001", "memory://"])
def test_good_urls_pass_the_check(url: str) -> None:
    from fintech_resilience.backends.resolve import check_url

    assert check_url(url) == url
