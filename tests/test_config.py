"""One configuration schema from a dict, the environment, Django settings and Flask config,
validated at start-up; an optional connectivity check that fails a start-up on a wrong host or
port. Each edge is driven through its real framework."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import pytest
import servers
import test_django  # configures Django settings once for the session
from django.core.handlers.wsgi import WSGIHandler
from django.test import Client, override_settings
from fastapi import Depends, FastAPI
from flask import Flask

import fintech_resilience as fr
from fintech_resilience.config import Config, RateLimitConfig, RuleConfig, check_config
from fintech_resilience.fastapi import RateLimit, install
from fintech_resilience.flask import Resilience

with warnings.catch_warnings():  # starlette 1.x warns that its test client wants httpx2
    warnings.filterwarnings("ignore", message=".*httpx2")
    from fastapi.testclient import TestClient

STORE = fr.IdempotencyStore(fr.MemoryBackend(), name="config-test")


def dead_url(password: str = "") -> str:
    auth = f":{password}@" if password else ""
    return f"redis://{auth}127.0.0.1:{servers.free_port()}/0"


# -- the schema ---------------------------------------------------------------------------------
def test_a_mapping_reads_into_typed_frozen_settings() -> None:
    config = Config.from_mapping({
        "backend": "redis://redis:6379/0", "BACKEND_OPTIONS": {"TIMEOUT": 0.1},
        "TRUSTED_PROXIES": ["10.0.0.0/8"], "Rate_Limit": {
            "LIMITS": "10/s; 1000/day", "EXEMPT_PATHS": ["/healthz"], "SHADOW": True,
            "RULES": [{"LIMITS": "5/min", "NAME": "pay", "PATH": "^/pay", "METHODS": ["post"],
                       "COST": 2}]},
        "IDEMPOTENCY": {"STORE": f"{__name__}.STORE", "METHODS": ["POST"], "REQUIRED": True}})
    assert config.backend == "redis://redis:6379/0" and config.backend_options == {"timeout": 0.1}
    assert config.rate_limit == RateLimitConfig(
        limits="10/s; 1000/day", exempt_paths=("/healthz",), shadow=True,
        rules=(RuleConfig(limits="5/min", name="pay", path="^/pay", methods=("POST",), cost=2),))
    assert config.idempotency is not None and config.idempotency.required
    assert config.idempotency.methods == ("POST",)
    with pytest.raises(AttributeError):
        config.backend = None  # type: ignore[misc]
    assert Config.from_mapping(None) == Config.from_mapping({}) == Config()


@pytest.mark.parametrize(("settings", "message"), [
    ({"BAKEND": "redis://r/0"}, "unknown setting 'BAKEND'; known: BACKEND"),
    ({"BACKEND": "redis://r:65536/0"}, r"\['BACKEND'\]: invalid backend URL"),
    ({"BACKEND": 6379}, r"\['BACKEND'\]"),
    ({"BACKEND_OPTIONS": {"TIMEOUT": 0.1}}, "BACKEND_OPTIONS apply to a BACKEND given as a URL"),
    ({"BACKEND": "redis://r/0", "BACKEND_OPTIONS": {"TIMEOUT": -1}}, r"\['TIMEOUT'\]"),
    ({"BACKEND": "redis://r/0", "BACKEND_OPTIONS": {"RETRIES": 3}}, "unknown option"),
    ({"TRUSTED_PROXIES": ["10.0.0.0/33"]}, r"\['TRUSTED_PROXIES'\]"),
    ({"TRUSTED_PROXIES": "10.0.0.0/8; 10.1.0.0/16"}, r"\['TRUSTED_PROXIES'\]"),
    ({"FORWARDED_HEADER": "X-Real-IP"}, r"\['FORWARDED_HEADER'\] is one of"),
    ({"ENABLED": "maybe"}, r"\['ENABLED'\] is True or False"),
    ({"RATE_LIMIT": {"LIMITS": "10 per fortnight"}}, r"\['LIMITS'\]: cannot parse rate"),
    ({"RATE_LIMIT": {"LIMITS": "10/s", "ALGORITHM": "leaky"}}, r"\['ALGORITHM'\] is one of"),
    ({"RATE_LIMIT": {"ON_BACKEND_ERROR": "ignore"}}, r"\['ON_BACKEND_ERROR'\]"),
    ({"RATE_LIMIT": {"RULES": [{"PATH": "/p"}]}}, r"\['RULES'\]\[0\] needs LIMITS"),
    ({"RATE_LIMIT": {"RULES": [{"LIMITS": "1/s", "COST": 0}]}}, r"\['COST'\]"),
    ({"RATE_LIMIT": {"KEY": "not a path"}}, r"\['KEY'\] is a callable or its dotted path"),
    ({"RATE_LIMIT": {"NAME": "has space"}}, r"\['NAME'\]"),
    ({"RATE_LIMIT": "100/minute"}, r"\['RATE_LIMIT'\] is a dict"),
    ({"IDEMPOTENCY": {"REQUIRED": True}}, r"\['IDEMPOTENCY'\] needs STORE"),
    ({"IDEMPOTENCY": {"STORE": STORE, "METHODS": []}}, r"\['METHODS'\] names HTTP methods"),
    ({"IDEMPOTENCY": {"STORE": STORE, "MAX_BODY_BYTES": -1}}, r"\['MAX_BODY_BYTES'\]"),
])
def test_every_mistake_is_named_when_read(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(fr.ConfigurationError, match=message):
        Config.from_mapping(settings)


def test_the_environment_reads_into_the_same_schema() -> None:
    env = {"FINTECH_RESILIENCE_BACKEND": "redis://redis:6379/0",
           "FINTECH_RESILIENCE_BACKEND_OPTIONS__TIMEOUT": "0.2",
           "FINTECH_RESILIENCE_TRUSTED_PROXIES": "10.0.0.0/8, 192.168.0.0/16",
           "FINTECH_RESILIENCE_ENABLED": "false",
           "FINTECH_RESILIENCE_RATE_LIMIT__LIMITS": "100/minute",
           "FINTECH_RESILIENCE_RATE_LIMIT__SHADOW": "yes",
           "FINTECH_RESILIENCE_RATE_LIMIT__RULES": '[{"LIMITS": "5/s", "PATH": "/pay"}]',
           "FINTECH_RESILIENCE_IDEMPOTENCY__STORE": f"{__name__}.STORE",
           "FINTECH_RESILIENCE_IDEMPOTENCY__METHODS": "POST,PUT",
           # other features' variables, and other programs' - left alone
           "FINTECH_RESILIENCE_CHAOS": "1", "FINTECH_RESILIENCE_AUDIT_KEY": "k", "PATH": "/bin"}
    config = Config.from_env(env)
    assert config == Config.from_mapping({
        "BACKEND": "redis://redis:6379/0", "BACKEND_OPTIONS": {"TIMEOUT": 0.2},
        "TRUSTED_PROXIES": ["10.0.0.0/8", "192.168.0.0/16"], "ENABLED": False,
        "RATE_LIMIT": {"LIMITS": "100/minute", "SHADOW": True,
                       "RULES": [{"LIMITS": "5/s", "PATH": "/pay"}]},
        "IDEMPOTENCY": {"STORE": f"{__name__}.STORE", "METHODS": ["POST", "PUT"]}})
    assert Config.from_env({"FINTECH_RESILIENCE_BACKEND": ""}).backend is None
    # the command line's variable names the backend when FINTECH_RESILIENCE_BACKEND does not
    cli = {"FINTECH_RESILIENCE_REDIS_URL": "redis://ops:6379/0"}
    assert Config.from_env(cli).backend == "redis://ops:6379/0"
    assert Config.from_env({**cli, **env}).backend == "redis://redis:6379/0"
    assert Config.from_env({"FINTECH_RESILIENCE_REDIS_URL": ""}).backend is None


@pytest.mark.parametrize(("env", "message"), [
    ({"FINTECH_RESILIENCE_RATE_LIMIT__LIMTS": "1/s"}, "unknown setting 'LIMTS'"),
    ({"FINTECH_RESILIENCE_RATE_LIMIT": "1/s"}, "write FINTECH_RESILIENCE_RATE_LIMIT__<NAME>"),
    ({"FINTECH_RESILIENCE_BACKEND__URL": "x"}, "write FINTECH_RESILIENCE_BACKEND$"),
    ({"FINTECH_RESILIENCE_RATE_LIMIT__RULES": "[{"}, "JSON list"),
    ({"FINTECH_RESILIENCE_BACKEND": "redis://r:port/0"}, "port"),
])
def test_environment_mistakes_are_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(fr.ConfigurationError, match=message):
        Config.from_env(env)


# -- the connectivity check -----------------------------------------------------------------------
def test_check_config_reaches_redis_and_runs_the_server_checks(redis_url: str) -> None:
    found = {f.name: f.level for f in check_config({"BACKEND": redis_url})}
    assert found["version"] == "ok" and "eviction" in found and "scripts" in found
    assert [f.level for f in check_config({})] == ["ok"]  # memory: nothing to reach
    assert check_config(Config(backend=fr.RedisBackend.from_url(redis_url)))[0].level == "ok"


def test_check_config_fails_on_a_port_nobody_listens_on_without_showing_the_password() -> None:
    url = dead_url(password="s3cret")
    with pytest.raises(fr.BackendUnavailable, match="cannot reach Redis") as caught:
        check_config({"BACKEND": url}, timeout=0.5)
    assert "s3cret" not in str(caught.value) and ":***@" in str(caught.value)


def test_check_config_imports_every_dotted_path() -> None:
    with pytest.raises(fr.ConfigurationError, match=r"cannot import 'myapp\.nowhere\.store'"):
        check_config({"IDEMPOTENCY": {"STORE": "myapp.nowhere.store"}})
    with pytest.raises(fr.ConfigurationError, match="not an IdempotencyStore"):
        check_config({"IDEMPOTENCY": {"STORE": "fintech_resilience.RateLimiter"}})
    with pytest.raises(fr.ConfigurationError, match="cannot import"):
        check_config({"RATE_LIMIT": {"LIMITS": "1/s", "KEY": "myapp.keys.merchant"}})


def test_check_config_reads_the_environment_when_given_nothing(
        monkeypatch: pytest.MonkeyPatch, redis_url: str) -> None:
    monkeypatch.setenv("FINTECH_RESILIENCE_BACKEND", redis_url)
    assert any(f.name == "version" for f in check_config())


# -- Django ---------------------------------------------------------------------------------------
DJANGO = {"ROOT_URLCONF": "test_django", "MIDDLEWARE": test_django.MIDDLEWARE}


def test_django_refuses_an_unknown_setting_when_the_middleware_starts() -> None:
    with override_settings(**DJANGO, FINTECH_RESILIENCE={
            "RATE_LIMIT": {"LIMITS": "1/minute", "EXEMPT_PATH": ["/healthz"]}}), \
            pytest.raises(fr.ConfigurationError, match="unknown setting 'EXEMPT_PATH'"):
        WSGIHandler()


def test_django_start_up_check_fails_on_a_wrong_port_and_passes_on_redis(redis_url: str) -> None:
    with override_settings(**DJANGO, FINTECH_RESILIENCE={
            "BACKEND": dead_url(), "CHECK": True, "RATE_LIMIT": {"LIMITS": "1/minute"}}), \
            pytest.raises(fr.BackendUnavailable):
        WSGIHandler()
    with override_settings(**DJANGO, FINTECH_RESILIENCE={
            "BACKEND": redis_url, "CHECK": True, "RATE_LIMIT": {"LIMITS": "1/minute"}}):
        WSGIHandler()


def test_django_reads_rules_backend_options_and_the_off_switch(redis_url: str) -> None:
    config = {"BACKEND": redis_url, "BACKEND_OPTIONS": {"TIMEOUT": 0.5},
              "RATE_LIMIT": {"RULES": [{"LIMITS": "1/min", "NAME": "pay", "PATH": "/payments"}]}}
    with override_settings(**DJANGO, FINTECH_RESILIENCE=config):
        client = Client()
        pays = [client.post("/payments/charge", headers={"X-User": "a"}).status_code
                for _ in range(2)]
        other = client.get("/r", headers={"X-User": "a"}).status_code
    assert pays == [200, 429] and other == 200
    with override_settings(**DJANGO, FINTECH_RESILIENCE={**config, "ENABLED": False}):
        assert Client().post("/payments/charge", headers={"X-User": "a"}).status_code == 200


# -- Flask ----------------------------------------------------------------------------------------
def flask_app(settings: dict[str, Any] | None, **options: Any) -> Flask:
    app = Flask(__name__)
    if settings is not None:
        app.config["FINTECH_RESILIENCE"] = settings
    resilience = Resilience(app, **options)

    @app.get("/pay")
    @resilience.limit("2/minute", name="pay")
    def pay() -> str:
        return "ok"

    @app.get("/healthz")
    def healthz() -> str:
        return "up"

    return app


def test_flask_reads_app_config(redis_url: str) -> None:
    app = flask_app({"BACKEND": redis_url, "PRINCIPAL_HEADER": "X-User",
                     "RATE_LIMIT": {"LIMITS": "3/minute", "NAME": "site",
                                    "EXEMPT_PATHS": ["/healthz"]}})
    client = app.test_client()
    codes = [client.get("/pay", headers={"X-User": "u"}).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    first = app.test_client().get("/healthz", headers={"X-User": "v"})
    assert first.status_code == 200 and "RateLimit" not in first.headers
    # the counters are in the configured Redis, keyed by the configured principal header
    observer = fr.RateLimiter("2/minute", name="pay", backend=fr.RedisBackend.from_url(redis_url))
    assert not observer.acquire("p:u").allowed


def test_flask_options_win_over_app_config() -> None:
    app = flask_app({"RATE_LIMIT": {"LIMITS": "1/minute", "HEADERS": False}},
                    default_limits="5/minute", headers=True)
    response = app.test_client().get("/healthz")
    assert response.headers["RateLimit-Policy"] == '"default";q=5;w=60'


def test_flask_refuses_bad_app_config_at_init_app() -> None:
    with pytest.raises(fr.ConfigurationError, match=r"app.config\['FINTECH_RESILIENCE'\]"):
        flask_app({"RATE_LIMIT": {"LIMITS": "lots"}})


def test_flask_start_up_check(redis_url: str) -> None:
    with pytest.raises(fr.BackendUnavailable):
        flask_app({"BACKEND": dead_url(), "CHECK": True})
    with pytest.raises(fr.BackendUnavailable):
        flask_app(None, backend=dead_url(), check=True)
    flask_app({"BACKEND": redis_url}, check=True)


def test_flask_idempotency_from_app_config() -> None:
    store = fr.IdempotencyStore(fr.MemoryBackend())
    app = Flask(__name__)
    app.config["FINTECH_RESILIENCE"] = {"IDEMPOTENCY": {"STORE": store, "GLOBAL_SCOPE": True,
                                                        "METHODS": ["POST"]}}
    Resilience(app)
    runs: list[int] = []

    @app.post("/charge")
    def charge() -> dict[str, int]:
        runs.append(1)
        return {"charge": len(runs)}

    client = app.test_client()
    first = client.post("/charge", headers={"Idempotency-Key": "k1"})
    again = client.post("/charge", headers={"Idempotency-Key": "k1"})
    assert first.json == again.json == {"charge": 1} and runs == [1]
    assert again.headers["Idempotent-Replayed"] == "true"


# -- FastAPI --------------------------------------------------------------------------------------
def fastapi_app(config: Any = None, **options: Any) -> FastAPI:
    app = FastAPI()
    install(app, config, **options)

    @app.get("/pay", dependencies=[Depends(RateLimit("2/minute", name="pay"))])
    async def pay() -> str:
        return "ok"

    @app.get("/healthz")
    async def healthz() -> str:
        return "up"

    return app


def test_fastapi_install_reads_a_config_from_the_environment(redis_url: str) -> None:
    env = {"FINTECH_RESILIENCE_BACKEND": redis_url,
           "FINTECH_RESILIENCE_PRINCIPAL_HEADER": "X-User",
           "FINTECH_RESILIENCE_RATE_LIMIT__LIMITS": "3/minute",
           "FINTECH_RESILIENCE_RATE_LIMIT__NAME": "site",
           "FINTECH_RESILIENCE_RATE_LIMIT__EXEMPT_PATHS": "/healthz"}
    client = TestClient(fastapi_app(Config.from_env(env)))
    codes = [client.get("/pay", headers={"X-User": "u"}) for _ in range(3)]
    assert [r.status_code for r in codes] == [200, 200, 429]
    # the app-wide limit (middleware) and the route's limit (dependency), both on Redis
    assert codes[0].headers["RateLimit-Policy"].count("q=") == 2
    assert [client.get("/healthz", headers={"X-User": "u"}).status_code
            for _ in range(4)] == [200] * 4
    observer = fr.RateLimiter("2/minute", name="pay", backend=fr.RedisBackend.from_url(redis_url))
    assert not observer.acquire("p:u").allowed


def test_fastapi_start_up_check_and_off_switch(redis_url: str) -> None:
    with pytest.raises(fr.BackendUnavailable):
        fastapi_app({"BACKEND": dead_url()}, check=True)
    fastapi_app({"BACKEND": redis_url, "CHECK": True})
    client = TestClient(fastapi_app({"ENABLED": False, "RATE_LIMIT": {"LIMITS": "1/minute"}}))
    assert [client.get("/pay").status_code for _ in range(4)] == [200] * 4


def test_the_check_logs_warnings(redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    observer = fr.RedisBackend.from_url(redis_url)
    before = observer.client.config_get("maxmemory-policy")["maxmemory-policy"]
    observer.client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        with caplog.at_level(logging.WARNING, logger="fintech_resilience"):
            found = check_config({"BACKEND": redis_url})
    finally:
        observer.client.config_set("maxmemory-policy", before)
    assert any(f.name == "eviction" and f.level == "warn" for f in found)
    assert "maxmemory-policy allkeys-lru" in caplog.text
