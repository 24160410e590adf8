"""Every example runs (``python examples/<name>.py``), exits 0 and shows what it promises."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# example -> lines its output must contain
EXPECTED = {
    "quickstart.py": ["rate limit: [True, True, True, False]", "rejected without calling the PSP",
                      "after 3 attempts with 1 key: True", "ledger: [500]"],
    "fastapi_payments.py": ["charge: 201", "replayed: true", "same key, other body: 422",
                            "429]"],
    "flask_app.py": ["charge: 201", "replayed: true", "no Idempotency-Key: 400", "429",
                     "breaker: OPEN"],
    "django_app/app.py": ["charge: 201", "replayed: true", "(DRF throttle 3/s)", "429"],
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
