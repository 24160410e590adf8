"""The operator commands of ``fintech-resilience`` against real Redis (standalone and Cluster)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
import redis
import servers

from fintech_resilience.audit import AuditLog, EventType, RedisStreamSink
from fintech_resilience.backends.redis import RedisBackend
from fintech_resilience.breaker.circuit import BreakerState, CircuitBreaker, CountWindow
from fintech_resilience.cli import commands as cli
from fintech_resilience.core import storage_keys
from fintech_resilience.errors import CircuitOpen
from fintech_resilience.idempotency import IdempotencyStore
from fintech_resilience.idempotency.record import ClaimOutcome, StoredResponse
from fintech_resilience.ratelimit.concurrency import ConcurrencyLimiter
from fintech_resilience.ratelimit.limiter import RateLimiter
from fintech_resilience.retries.budget import RetryBudget

SECRET = b"s" * 32
TOPOLOGIES = ("redis_url", "cluster_url")


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def run_json(*argv: str) -> tuple[int, dict]:
    code, out, _ = run(*argv, "--json")
    return code, json.loads(out.strip().splitlines()[-1])


@pytest.fixture(params=TOPOLOGIES)
def url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(request.param))


@pytest.fixture
def red(url: str) -> Iterator[RedisBackend]:
    backend = RedisBackend.from_url(url, timeout=2.0)
    yield backend
    backend.close()


@pytest.fixture
def dead_url() -> str:
    return f"redis://127.0.0.1:{servers.free_port()}/0"


def http_record(store: IdempotencyStore, key: str, scope: str = "merchant-1") -> str:
    return store.record_key(key, scope=scope, method="POST", route="/v1/charges")


class TestStatus:
    def test_shows_every_pattern_state_kept_in_redis(self, url: str, red: RedisBackend) -> None:
        CircuitBreaker("psp-acme", backend=red).force_open()
        healthy = CircuitBreaker("psp-beta", backend=red, minimum_calls=2, window=CountWindow(2))
        with healthy:
            pass
        RateLimiter("10/minute", name="api", backend=red).acquire("merchant:1")
        RateLimiter("10/minute", name="api", backend=red).acquire("merchant:2")
        budget = RetryBudget("psp-acme", backend=red, ratio=1.0)
        budget.deposit()
        budget.flush()
        slots = ConcurrencyLimiter(3, name="psp-inflight", backend=red)
        slot = slots.try_acquire("psp")
        store = IdempotencyStore(red, secret=SECRET, name="payments")
        running = store.claim(http_record(store, "order-1"), store.fingerprint("a"))
        done = store.claim(http_record(store, "order-2"), store.fingerprint("b"))
        store.complete(done, StoredResponse("http", 201, (), b"{}"))

        code, report = run_json("status", "--redis", url)

        assert code == 0
        breakers = {b["name"]: b for b in report["breakers"]}
        assert breakers["psp-acme"]["state"] == "FORCED_OPEN"
        assert breakers["psp-beta"]["state"] == "CLOSED" and breakers["psp-beta"]["calls"] == 1
        assert report["rate_limits"] == [{"name": "api", "algorithm": "gcra", "active_keys": 2}]
        assert report["retry_budgets"] == [{"name": "psp-acme", "tokens": 1.0}]
        assert report["concurrency"] == [{"name": "psp-inflight", "keys": 1, "held": 1}]
        assert report["idempotency"]["stores"] == {"payments": {"in_progress": 1,
                                                                "completed": 1}}
        (flight,) = report["idempotency"]["in_flight"]
        assert flight["key_hash"] == running.key_hash and flight["state"] == "in_progress"
        assert flight["fencing_token"] == running.fencing_token
        slots.release(slot)

    def test_text_output_is_a_set_of_tables(self, redis_url: str) -> None:
        backend = RedisBackend.from_url(redis_url, timeout=2.0)
        CircuitBreaker("psp-acme", backend=backend).force_open()
        backend.close()
        code, out, _ = run("status", "--redis", redis_url)
        assert code == 0
        assert "circuit breakers" in out and "psp-acme" in out and "FORCED_OPEN" in out
        assert "idempotency stores" in out

    def test_url_from_the_environment(self, redis_url: str,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(cli.ENV_URL, redis_url)
        assert run("status")[0] == 0

    def test_no_url_is_a_usage_error(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv(cli.ENV_URL, raising=False)
        code, _, err = run("status")
        assert code == cli.EXIT_USAGE and "--redis" in err


class TestBreaker:
    @pytest.mark.parametrize(("action", "state"), [
        ("open", BreakerState.FORCED_OPEN), ("disable", BreakerState.DISABLED),
        ("metrics-only", BreakerState.METRICS_ONLY),
    ])
    def test_overrides_reach_every_process(self, url: str, red: RedisBackend, action: str,
                                           state: BreakerState) -> None:
        service = CircuitBreaker("psp-acme", backend=red, refresh_interval=0)
        with service:
            pass
        code, result = run_json("breaker", action, "psp-acme", "--redis", url)
        assert code == 0
        assert result == {"ok": True, "name": "psp-acme", "action": action,
                          "previous": "CLOSED", "state": state.name}
        assert service.state is state

    def test_open_then_close(self, url: str, red: RedisBackend) -> None:
        service = CircuitBreaker("psp-acme", backend=red, refresh_interval=0)
        with service:
            pass
        assert run("breaker", "open", "psp-acme", "--redis", url)[0] == 0
        service.refresh()
        with pytest.raises(CircuitOpen), service:
            pass
        code, out, _ = run("breaker", "close", "psp-acme", "--redis", url)
        assert code == 0 and "FORCED_OPEN -> CLOSED" in out
        with service:  # runs again
            pass
        assert service.state is BreakerState.CLOSED

    def test_reset_forgets_the_window(self, redis_url: str) -> None:
        backend = RedisBackend.from_url(redis_url, timeout=2.0)
        service = CircuitBreaker("psp-acme", backend=backend, minimum_calls=5)
        for _ in range(3):
            with pytest.raises(ConnectionError), service:
                raise ConnectionError
        assert service.refresh().failures == 3
        assert run("breaker", "reset", "psp-acme", "--redis", redis_url)[0] == 0
        assert service.refresh().failures == 0
        backend.close()

    def test_unknown_name_exits_1_and_names_the_known_ones(self, url: str,
                                                         red: RedisBackend) -> None:
        CircuitBreaker("psp-acme", backend=red).reset()
        code, out, err = run("breaker", "open", "psp-acme-typo", "--redis", url)
        assert code == cli.EXIT_NOT_FOUND
        assert "psp-acme-typo" in err and "known: psp-acme" in err and out == ""
        assert CircuitBreaker("psp-acme", backend=red).state is BreakerState.CLOSED

    def test_create_acts_on_a_breaker_nobody_used_yet(self, redis_url: str) -> None:
        code, result = run_json("breaker", "open", "psp-new", "--create", "--redis", redis_url)
        assert code == 0 and result["state"] == "FORCED_OPEN"
        backend = RedisBackend.from_url(redis_url, timeout=2.0)
        assert CircuitBreaker("psp-new", backend=backend).state is BreakerState.FORCED_OPEN
        backend.close()

    def test_invalid_name_is_a_usage_error(self, redis_url: str) -> None:
        code, _, err = run("breaker", "open", "no spaces{}", "--redis", redis_url)
        assert code == cli.EXIT_USAGE and "breaker name" in err

    def test_override_is_audited_in_a_chained_stream(self, redis_url: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("FINTECH_RESILIENCE_AUDIT_KEY", "ab" * 16)
        for action in ("open", "close"):
            code, _, _ = run("breaker", action, "psp-acme", "--create", "--redis", redis_url,
                             "--audit-stream", "ops", "--actor", "ops:alice")
            assert code == 0
        client = redis.Redis.from_url(redis_url)
        entries = client.xrange("fr:audit:{ops}")
        client.close()
        records = [json.loads(fields[b"record"]) for _id, fields in entries]
        overrides = [r for r in records if r["event_type"] == "operator.override"]
        assert [r["details"]["action"] for r in overrides] == ["force_open", "reset"]
        assert {r["principal"] for r in overrides} == {"ops:alice"}
        # the transitions the commands caused are recorded too (breaker.transition)
        assert len(records) == 4
        code, out, _ = run("audit", "verify", "--stream", "ops", "--redis", redis_url)
        assert code == 0 and "4 entries checked" in out


class TestIdempotency:
    def store(self, backend: RedisBackend) -> IdempotencyStore:
        return IdempotencyStore(backend, secret=SECRET, name="payments")

    def test_show_by_record_key_key_hash_and_client_key(
            self, url: str, red: RedisBackend, monkeypatch: pytest.MonkeyPatch) -> None:
        store = self.store(red)
        record = http_record(store, "order-42")
        claim = store.claim(record, store.fingerprint("body"))
        store.complete(claim, StoredResponse(
            "http", 201, (("content-type", "application/json"),), b'{"id": "ch_secret"}'))
        monkeypatch.setenv("FR_SECRET", SECRET.decode())
        forms = [
            (record,),
            (claim.key_hash, "--store", "payments"),
            ("order-42", "--store", "payments", "--scope", "merchant-1", "--path",
             "/v1/charges", "--secret-env", "FR_SECRET"),
        ]
        for form in forms:
            code, info = run_json("idempotency", "show", *form, "--redis", url)
            assert code == 0, form
            assert info["record_key"] == record and info["state"] == "completed"
            assert info["fencing_token"] == 1
            assert info["response"] == {"stored": True, "encrypted": False, "kind": "http",
                                        "status": 201, "replayable": True, "redacted": False,
                                        "body_bytes": 19}
        code, out, _ = run("idempotency", "show", record, "--redis", url)
        assert code == 0 and "completed" in out
        assert "ch_secret" not in out  # never a stored body

    def test_show_of_an_other_principal_finds_nothing(
            self, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
        backend = RedisBackend.from_url(redis_url, timeout=2.0)
        store = self.store(backend)
        store.claim(http_record(store, "order-42"), store.fingerprint("body"))
        monkeypatch.setenv("FR_SECRET", SECRET.decode())
        code, _, err = run("idempotency", "show", "order-42", "--store", "payments", "--scope",
                           "merchant-2", "--path", "/v1/charges", "--secret-env", "FR_SECRET",
                           "--redis", redis_url)
        assert code == cli.EXIT_NOT_FOUND and "no idempotency record" in err
        backend.close()

    def test_show_an_in_flight_record_of_a_decorated_function(
            self, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
        backend = RedisBackend.from_url(redis_url, timeout=2.0)
        store = self.store(backend)
        record = store.record_key("evt_1", scope="acct_9", method="CALL", route="hooks.handle")
        store.claim(record, store.fingerprint(b""))
        monkeypatch.setenv("FR_SECRET", SECRET.decode())
        code, info = run_json("idempotency", "show", "evt_1", "--store", "payments", "--scope",
                              "acct_9", "--route", "hooks.handle", "--secret-env", "FR_SECRET",
                              "--redis", redis_url)
        assert code == 0 and info["state"] == "in_progress" and 0 < info["lease_left"] <= 30
        backend.close()

    def test_forget_refuses_a_live_lease_without_yes(self, url: str,
                                                    red: RedisBackend) -> None:
        store = self.store(red)
        record = http_record(store, "order-7")
        first = store.claim(record, store.fingerprint("body"))
        code, _, err = run("idempotency", "forget", record, "--redis", url)
        assert code == cli.EXIT_NOT_FOUND and "--yes" in err
        assert store.claim(record, store.fingerprint("body")).outcome is ClaimOutcome.IN_PROGRESS

        code, result = run_json("idempotency", "forget", record, "--yes", "--redis", url)
        assert code == 0 and result["previous"] == "in_progress" and result["freed"] is True
        again = store.claim(record, store.fingerprint("body"))
        assert again.outcome is ClaimOutcome.EXECUTE
        assert again.fencing_token > first.fencing_token  # the fencing counter was kept

    def test_forget_a_completed_record(self, redis_url: str) -> None:
        backend = RedisBackend.from_url(redis_url, timeout=2.0)
        store = self.store(backend)
        record = http_record(store, "order-8")
        claim = store.claim(record, store.fingerprint("body"))
        store.complete(claim, StoredResponse("http", 201, (), b"{}"))
        code, out, _ = run("idempotency", "forget", record, "--redis", redis_url)
        assert code == 0 and "forgot" in out
        assert store.claim(record, store.fingerprint("x")).outcome is ClaimOutcome.EXECUTE
        backend.close()

    def test_unknown_record_exits_1(self, url: str) -> None:
        for action in ("show", "forget"):
            code, _, err = run("idempotency", action, "0" * 32, "--redis", url)
            assert code == cli.EXIT_NOT_FOUND and "no idempotency record" in err

    def test_a_client_key_needs_scope_route_and_secret(
            self, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("FINTECH_RESILIENCE_IDEMPOTENCY_SECRET", raising=False)
        assert run("idempotency", "show", "order-1", "--redis", redis_url)[0] == cli.EXIT_USAGE
        code, _, err = run("idempotency", "show", "order-1", "--scope", "m", "--path", "/x",
                           "--redis", redis_url)
        assert code == cli.EXIT_USAGE and "secret" in err
        monkeypatch.setenv("FINTECH_RESILIENCE_IDEMPOTENCY_SECRET", "x" * 32)
        code, _, err = run("idempotency", "show", "order-1", "--scope", "m", "--redis",
                           redis_url)
        assert code == cli.EXIT_USAGE and "--path" in err


class TestCheck:
    def test_a_healthy_server(self, url: str) -> None:
        code, report = run_json("check", "--load-scripts", "--redis", url)
        assert code == 0 and report["ok"] is True
        checks = {c["name"]: c for c in report["checks"]}
        assert checks["version"]["level"] == "ok" and "Redis " in checks["version"]["detail"]
        assert checks["eviction"]["level"] == "ok"
        assert checks["scripts"]["level"] == "ok"
        assert checks["clock"]["level"] == "ok"
        if url.startswith("redis+cluster"):
            assert checks["cluster"]["level"] == "ok"
            assert "16384/16384 slots" in checks["cluster"]["detail"]
            assert "3 primaries" in checks["version"]["detail"]

    def test_script_cache_presence(self, redis_url: str) -> None:
        client = redis.Redis.from_url(redis_url)
        client.script_flush()
        code, report = run_json("check", "--redis", redis_url)
        scripts = {c["name"]: c for c in report["checks"]}["scripts"]
        assert code == 0 and scripts["level"] == "info" and scripts["detail"].startswith("0/")
        run("check", "--load-scripts", "--redis", redis_url)
        code, report = run_json("check", "--redis", redis_url)
        scripts = {c["name"]: c for c in report["checks"]}["scripts"]
        assert scripts["level"] == "ok"
        client.close()

    def test_warns_when_redis_can_evict_idempotency_records(
            self, fresh_redis: servers.RedisServer) -> None:
        fresh_redis.command("CONFIG", "SET", "maxmemory-policy", "allkeys-lru")
        code, out, _ = run("check", "--redis", fresh_redis.url)
        assert code == 0  # a warning, not an error
        line = next(ln for ln in out.splitlines() if "eviction" in ln)
        assert line.startswith("WARN") and "allkeys-lru" in line and "noeviction" in line

    def test_cluster_with_uncovered_slots_is_an_error(self, cluster_url: str) -> None:
        backend = RedisBackend.from_url(cluster_url, timeout=2.0)
        node = backend.client.get_primaries()[0].redis_connection
        slot = backend.client.keyslot("fr:probe")
        owner = backend.client.get_node_from_key("fr:probe").redis_connection
        owner.execute_command("CLUSTER", "DELSLOTS", slot)
        try:
            code, report = run_json("check", "--redis", cluster_url)
            cluster = {c["name"]: c for c in report["checks"]}["cluster"]
            assert code == cli.EXIT_NOT_FOUND and report["ok"] is False
            assert cluster["level"] == "error" and "16383/16384" in cluster["detail"]
        finally:
            owner.execute_command("CLUSTER", "ADDSLOTS", slot)
            del node
            backend.close()


class TestLimit:
    """``limit show|reset NAME KEY``: unblock a merchant from a shell."""

    def test_show_finds_every_stored_window_of_a_key(self, url: str, red: RedisBackend) -> None:
        payments = RateLimiter("3/minute; 100/day", name="payments", backend=red)
        for _ in range(3):
            payments.acquire("merchant:42")
        RateLimiter("10/hour", name="payments", backend=red,
                    algorithm="sliding_window").hit("merchant:42", cost=4)
        payments.acquire("merchant:7")  # another key: not shown
        code, result = run_json("limit", "show", "payments", "merchant:42", "--redis", url)
        assert code == 0 and result["key_hash"] == storage_keys.digest("merchant:42")
        rows = {(r["algorithm"], r["window"]): r for r in result["stored"]}
        assert set(rows) == {("gcra", 60), ("gcra", 86400), ("sliding_window", 3600)}
        assert 59 < rows[("gcra", 60)]["full_in"] <= 60  # 3 x 20 s of debt
        assert rows[("sliding_window", 3600)]["count"] == 4
        assert "merchant:42" not in json.dumps(result)
        code, out, _ = run("limit", "show", "payments", "merchant:42", "--redis", url)
        assert code == 0 and "full again in" in out and "count 4" in out

    def test_show_with_the_limits_gives_the_remaining_quota(self, url: str,
                                                            red: RedisBackend) -> None:
        payments = RateLimiter("3/minute; 100/day", name="payments", backend=red)
        for _ in range(3):
            payments.acquire("merchant:42")
        code, result = run_json("limit", "show", "payments", "merchant:42", "--redis", url,
                                "--limits", "3/minute; 100/day")
        assert code == 0 and result["stored"] is True
        assert [(r["policy"], r["remaining"]) for r in result["limits"]] == [
            ("3/minute", 0), ("100/day", 97)]
        code, result = run_json("limit", "show", "payments", "merchant:1", "--redis", url,
                                "--limits", "3/minute")
        assert code == 0 and result["stored"] is False and result["limits"][0]["remaining"] == 3

    def test_reset_unblocks_the_key_everywhere(self, url: str, red: RedisBackend) -> None:
        payments = RateLimiter("2/minute", name="payments", backend=red)
        payments.acquire("merchant:42", cost=2)
        payments.acquire("merchant:7", cost=2)
        assert not payments.acquire("merchant:42").allowed
        code, out, _ = run("limit", "reset", "payments", "merchant:42", "--redis", url)
        assert code == 0 and "reset rate limiter 'payments'" in out and "forgotten state" in out
        assert payments.acquire("merchant:42").remaining == 1
        assert not payments.acquire("merchant:7").allowed  # other keys keep their state
        payments.reset("merchant:42")
        code, _, err = run("limit", "reset", "payments", "merchant:42", "--redis", url)
        assert code == cli.EXIT_NOT_FOUND and "nothing stored" in err

    def test_reset_with_the_limits_is_audited_with_the_key_hash(
            self, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("FINTECH_RESILIENCE_AUDIT_KEY", "ab" * 16)
        backend = RedisBackend.from_url(redis_url, timeout=2.0)
        declines = RateLimiter("3/hour", name="declines", backend=backend,
                               algorithm="fixed_window")
        declines.hit("card-fp-1", cost=3)
        code, result = run_json("limit", "reset", "declines", "card-fp-1", "--redis", redis_url,
                                "--limits", "3/hour", "--algorithm", "fixed_window",
                                "--audit-stream", "ops", "--actor", "ops:alice")
        assert code == 0 and result["limits"][0]["remaining"] == 0  # as it was before
        assert declines.peek("card-fp-1").remaining == 3
        client = redis.Redis.from_url(redis_url)
        entries = client.xrange("fr:audit:{ops}")
        client.close()
        backend.close()
        (record,) = [json.loads(fields[b"record"]) for _id, fields in entries]
        assert record["event_type"] == "operator.override"
        assert record["principal"] == "ops:alice" and record["resource"] == "ratelimit:declines"
        assert record["details"] == {"action": "reset",
                                     "key_hash": storage_keys.digest("card-fp-1")}
        code, _, err = run("limit", "reset", "declines", "card-fp-1", "--redis", redis_url,
                           "--limits", "3/hour", "--algorithm", "fixed_window")
        assert code == cli.EXIT_NOT_FOUND and "nothing stored" in err

    def test_nothing_stored_and_bad_input(self, url: str) -> None:
        code, _, err = run("limit", "show", "payments", "merchant:42", "--redis", url)
        assert code == cli.EXIT_NOT_FOUND and "nothing stored" in err
        assert run("limit", "show", "pay ments", "k", "--redis", url)[0] == cli.EXIT_USAGE
        assert run("limit", "show", "payments", "", "--redis", url)[0] == cli.EXIT_USAGE
        code, _, err = run("limit", "show", "payments", "k", "--redis", url,
                           "--limits", "10 per fortnight")
        assert code == cli.EXIT_USAGE and "10/second" in err


class TestUnreachable:
    @pytest.mark.parametrize("argv", [
        ("status",), ("check",), ("breaker", "open", "psp-acme"),
        ("idempotency", "show", "0" * 32), ("idempotency", "forget", "0" * 32),
        ("limit", "show", "payments", "merchant:42"), ("limit", "reset", "payments", "m"),
    ])
    def test_every_command_exits_3_with_a_clear_message(self, dead_url: str,
                                                        argv: tuple[str, ...]) -> None:
        code, out, err = run(*argv, "--redis", dead_url, "--timeout", "0.5")
        assert code == cli.EXIT_UNREACHABLE
        assert f"cannot reach Redis at {dead_url}" in err and "Connection" in err
        assert out == ""

    def test_json_mode_reports_the_error_on_stdout(self, dead_url: str) -> None:
        code, result = run_json("status", "--redis", dead_url, "--timeout", "0.5")
        assert code == cli.EXIT_UNREACHABLE
        assert result["ok"] is False and "cannot reach Redis" in result["error"]

    def test_a_killed_server(self, fresh_redis: servers.RedisServer) -> None:
        url = fresh_redis.url
        assert run("status", "--redis", url)[0] == 0
        fresh_redis.kill()
        assert run("status", "--redis", url, "--timeout", "0.5")[0] == cli.EXIT_UNREACHABLE

    def test_the_password_is_not_printed(self) -> None:
        port = servers.free_port()
        code, _, err = run("status", "--redis", f"redis://ops:hunter2@127.0.0.1:{port}/0",
                           "--timeout", "0.5")
        assert code == cli.EXIT_UNREACHABLE and "hunter2" not in err and "ops:***@" in err

    def test_a_bad_url_is_a_usage_error(self) -> None:
        assert run("status", "--redis", "http://example/")[0] == cli.EXIT_USAGE


class TestEntryPoint:
    def test_help_lists_every_command(self) -> None:
        out = subprocess.run([sys.executable, "-m", "fintech_resilience.cli", "--help"],
                             capture_output=True, text=True, check=True, timeout=60).stdout
        for command in ("demo", "status", "breaker", "idempotency", "limit", "check", "audit"):
            assert command in out

    def test_subprocess_exit_status(self, redis_url: str) -> None:
        env = {**os.environ, cli.ENV_URL: redis_url}
        proc = subprocess.run([sys.executable, "-m", "fintech_resilience.cli", "breaker", "open",
                               "nobody"], capture_output=True, text=True, env=env, timeout=60)
        assert proc.returncode == cli.EXIT_NOT_FOUND and "nobody" in proc.stderr

    def test_audit_verify_is_mounted(self, redis_url: str,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
        backend = RedisBackend.from_url(redis_url, timeout=2.0)
        log = AuditLog([RedisStreamSink(backend, stream="audit", chain=True)])
        log.record(EventType.OPERATOR_OVERRIDE, resource="breaker:psp", principal="ops:bob")
        backend.close()
        monkeypatch.setenv(cli.ENV_URL, redis_url)
        code, out, _ = run("audit", "verify", "--stream", "audit")
        assert code == 0 and "1 entries checked" in out
        assert run("audit")[0] == cli.EXIT_USAGE
