"""The public API is the one promised to users (the project's API.md), exported in one place."""

from __future__ import annotations

import importlib
import inspect

import pytest

import fintech_resilience as fr

# Every `fr.<name>` the API document shows users, and the error tree it draws.
PROMISED = {
    "AuditLog", "BreakerState", "Bulkhead", "CircuitBreaker", "CircuitOpen", "ConcurrencyLimiter",
    "CountWindow", "Decision", "IdempotencyInProgress", "IdempotencyKeyMismatch",
    "IdempotencyOutcomeUnknown", "IdempotencyStore", "MemoryBackend", "Policy", "RateLimited",
    "RateLimiter", "Redactor", "RedisBackend", "ResilienceError", "RetryBudget", "TimeWindow",
    "audit", "current_idempotency", "full_jitter", "idempotent", "keys", "on_exceptions", "retry",
    "BackendUnavailable", "BulkheadFull", "ConfigurationError", "IdempotencyError",
    "RetryBudgetExhausted", "chaos", "testing",
}

# Framework edges, imported from their own modules (Django's needs configured settings to import:
# tests/test_django.py covers it).
EDGES = [
    ("fintech_resilience.asgi", ["RateLimitMiddleware", "IdempotencyMiddleware", "ChaosMiddleware"]),
    ("fintech_resilience.wsgi", ["RateLimitMiddleware", "IdempotencyMiddleware"]),
    ("fintech_resilience.fastapi", ["RateLimit"]),
    ("fintech_resilience.flask", ["Resilience"]),
    ("fintech_resilience.httpx", ["ResilientTransport", "AsyncResilientTransport"]),
    ("fintech_resilience.requests", ["ResilientAdapter"]),
    ("fintech_resilience.chaos", ["inject"]),
    ("fintech_resilience.audit", ["LoggingSink", "RedisStreamSink"]),
    ("fintech_resilience.keys", ["principal_or_ip"]),
    ("fintech_resilience.testing", ["ManualClock", "test_mode"]),
]


def test_every_promised_name_is_exported():
    assert set(fr.__all__) >= PROMISED, PROMISED - set(fr.__all__)


def test_all_has_no_duplicates_and_resolves():
    assert len(set(fr.__all__)) == len(fr.__all__)
    assert [n for n in fr.__all__ if not hasattr(fr, n)] == []


@pytest.mark.parametrize(("module", "names"), EDGES)
def test_framework_edges_live_in_their_modules(module, names):
    mod = importlib.import_module(module)
    assert [n for n in names if not hasattr(mod, n)] == []


def test_one_exception_root():
    errors = [getattr(fr, n) for n in fr.__all__
              if inspect.isclass(getattr(fr, n)) and issubclass(getattr(fr, n), BaseException)]
    assert len(errors) >= 15
    assert all(issubclass(e, fr.ResilienceError) for e in errors)
    assert issubclass(fr.ConfigurationError, ValueError)  # validation errors are ValueErrors too


def test_public_callables_are_documented():
    undocumented = [n for n in fr.__all__ if not n.startswith("_")
                    and (inspect.isclass(getattr(fr, n)) or inspect.isfunction(getattr(fr, n)))
                    and not (getattr(fr, n).__doc__ or "").strip()]
    assert undocumented == []


def test_importing_the_package_imports_no_web_framework():
    import subprocess
    import sys

    code = ("import sys, fintech_resilience; "
            "print(sorted(m for m in ('starlette', 'fastapi', 'flask', 'django', 'httpx',"
            " 'requests') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout.strip()
    assert out == "[]"
