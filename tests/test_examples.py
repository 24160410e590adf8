"""Every example runs (``python examples/<name>.py``), exits 0 and shows what it promises."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import servers

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# example -> lines its output must contain
EXPECTED = {
    "quickstart.py": ["rate limit: [True, True, True, False]", "rejected without calling the PSP",
                      "after 3 attempts with 1 key: True", "ledger: [500]"],
    "fastapi_payments.py": ["charge: 201", "replayed: true", "same key, other body: 422",
                            "no merchant: 401", "429]"],
    "flask_app.py": ["charge: 201", "replayed: true", "no Idempotency-Key: 400", "429",
                     "breaker: OPEN"],
    "django_app/app.py": ["charge: 201", "replayed: true", "no merchant: 403",
                          "(DRF throttle 3/s)", "429"],
    "httpx_psp_client.py": ["charge: 201", "keys sent: 1", "PSP saw order-77-charge",
                            "breaker OPEN"],
    "webhook_consumer.py": ["concurrent delivery: 200", "409 in progress", "redelivery: 200",
                            "tampered redelivery: 422", "ledger: [('acct_9', 500), ('acct_3', 500)]"],
}


def run_example(name: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run([sys.executable, "-W", "error", str(EXAMPLES / name)],
                          capture_output=True, text=True, timeout=90, cwd=EXAMPLES.parent,
                          env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


def test_every_example_is_exercised() -> None:
    present = {str(p.relative_to(EXAMPLES)) for p in EXAMPLES.rglob("*.py")}
    others = {"otel_prometheus.py", "telemetry_tour.py"}  # tested with the telemetry suite
    assert present - others == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs_on_memory(name: str) -> None:
    out = run_example(name, {"FINTECH_RESILIENCE_REDIS_URL": ""})
    for line in EXPECTED[name]:
        assert line in out, (line, out)


@pytest.mark.parametrize("name", ["fastapi_payments.py", "flask_app.py", "webhook_consumer.py",
                                  "django_app/app.py"])
def test_example_runs_on_redis(name: str, redis_url: str) -> None:
    out = run_example(name, {"FINTECH_RESILIENCE_REDIS_URL": redis_url})
    for line in EXPECTED[name]:
        assert line in out, (line, out)


ON_REDIS = ["fastapi_payments.py", "flask_app.py", "webhook_consumer.py", "django_app/app.py"]


def test_examples_run_in_any_order_on_one_redis(redis_url: str) -> None:
    """Runs follow each other on one Redis, never flushed: each run uses keys of its own, and
    no example leaves state (an open breaker, a stored record) another one trips over."""
    env = {"FINTECH_RESILIENCE_REDIS_URL": redis_url}
    for name in [*ON_REDIS, *reversed(ON_REDIS)]:  # each twice, the last one back to back
        out = run_example(name, env)
        for line in EXPECTED[name]:
            assert line in out, (name, line, out)


def wait_for_port(port: int, proc: subprocess.Popen[str], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited: {proc.communicate()[0][-2000:]}")
        try:
            with socket.create_connection((servers.LOCALHOST, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port} after {seconds} s")


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_the_django_example_answers_posts_under_runserver(backend: str,
                                                          request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("redis_url") if backend == "redis" else ""
    port = servers.free_port()
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "django_app" / "app.py"), "runserver",
         f"{servers.LOCALHOST}:{port}", "--noreload"],
        cwd=EXAMPLES.parent, env={**os.environ, "FINTECH_RESILIENCE_REDIS_URL": url},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_for_port(port, proc)
        with httpx.Client(base_url=f"http://{servers.LOCALHOST}:{port}", timeout=10) as http:
            merchant = {"X-Merchant": f"m-{port}"}
            first = http.post("/charges/", json={"amount": 100},
                              headers={**merchant, "Idempotency-Key": "rs-1"})
            again = http.post("/charges/", json={"amount": 100},
                              headers={**merchant, "Idempotency-Key": "rs-1"})
            no_slash = http.post("/charges", json={"amount": 100},
                                 headers={**merchant, "Idempotency-Key": "rs-2"})
            no_key = http.post("/charges/", json={"amount": 100},  # another merchant: the
                               headers={"X-Merchant": f"m-{port}-b"})  # DRF throttle is 3/s
            anonymous = http.post("/charges/", json={"amount": 100},
                                  headers={"Idempotency-Key": "rs-3"})
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=30)
    assert first.status_code == again.status_code == no_slash.status_code == 201
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    assert no_slash.json()["id"] != first.json()["id"]
    assert no_key.status_code == 400  # REQUIRED: True
    assert anonymous.status_code == 403
