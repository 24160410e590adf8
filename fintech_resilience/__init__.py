"""fintech_resilience: rate limits, circuit breakers, retries and idempotency keys for payment
services, shared by every worker and host through Redis, visible in OpenTelemetry.

The public API is what this module exports, plus the public edge modules
(``fintech_resilience.asgi``, ``.wsgi``, ``.fastapi``, ``.flask``, ``.django``, ``.httpx``,
``.requests``), ``.keys``, ``.audit``, ``.chaos``, ``.config``, ``.errors`` and ``.testing``.
Framework edges live in their own modules so importing the package never imports a web framework.
The sub-packages are laid out by concept (see the README's architecture section); their inner
modules are not a stable import path.
"""

from typing import TYPE_CHECKING, Any

from . import audit, chaos, keys, testing
from ._version import __version__
from .audit import AuditLog, AuditRecord
from .backends import Backend, MemoryBackend, RedisBackend
from .breaker import (
    BreakerState,
    CallEvent,
    CallKind,
    CircuitBreaker,
    CountWindow,
    TimeWindow,
    Transition,
)
from .core.hooks import Refusal
from .core.outcomes import Outcome, Verdict, on_exceptions, on_result, on_status
from .core.redaction import Redactor
from .errors import (
    BackendFull,
    BackendUnavailable,
    BulkheadFull,
    CircuitOpen,
    ConcurrencyLimited,
    ConfigurationError,
    DecryptionError,
    IdempotencyError,
    IdempotencyInProgress,
    IdempotencyKeyInvalid,
    IdempotencyKeyMismatch,
    IdempotencyNotReplayable,
    IdempotencyOutcomeUnknown,
    RateLimited,
    ResidencyViolation,
    ResilienceError,
    RetryBudgetExhausted,
    RetryError,
    Timeout,
)
from .idempotency import (
    AesGcmCipher,
    IdempotencyContext,
    IdempotencyStore,
    JsonCodec,
    ResultCodec,
    current_idempotency,
    idempotent,
)
from .policy import Bulkhead, Policy, timeout
from .ratelimit import ConcurrencyLimiter, Decision, LimitStatus, RateLimiter, Slot
from .residency import RegionalBackend
from .retries import (
    Attempt,
    AttemptDetails,
    Retry,
    RetryBudget,
    RetryDetails,
    constant,
    current_attempt,
    decorrelated_jitter,
    equal_jitter,
    exponential,
    full_jitter,
    retry,
    retrying,
)

if TYPE_CHECKING:
    from . import config
    from .config import check_config

__all__ = [
    "AesGcmCipher",
    "Attempt",
    "AttemptDetails",
    "AuditLog",
    "AuditRecord",
    "Backend",
    "BackendFull",
    "BackendUnavailable",
    "BreakerState",
    "Bulkhead",
    "BulkheadFull",
    "CallEvent",
    "CallKind",
    "CircuitBreaker",
    "CircuitOpen",
    "ConcurrencyLimited",
    "ConcurrencyLimiter",
    "ConfigurationError",
    "CountWindow",
    "Decision",
    "DecryptionError",
    "IdempotencyContext",
    "IdempotencyError",
    "IdempotencyInProgress",
    "IdempotencyKeyInvalid",
    "IdempotencyKeyMismatch",
    "IdempotencyNotReplayable",
    "IdempotencyOutcomeUnknown",
    "IdempotencyStore",
    "JsonCodec",
    "LimitStatus",
    "MemoryBackend",
    "Outcome",
    "Policy",
    "RateLimited",
    "RateLimiter",
    "Redactor",
    "RedisBackend",
    "Refusal",
    "RegionalBackend",
    "ResidencyViolation",
    "ResilienceError",
    "ResultCodec",
    "Retry",
    "RetryBudget",
    "RetryBudgetExhausted",
    "RetryDetails",
    "RetryError",
    "Slot",
    "TimeWindow",
    "Timeout",
    "Transition",
    "Verdict",
    "__version__",
    "audit",
    "chaos",
    "check_config",
    "config",
    "constant",
    "current_attempt",
    "current_idempotency",
    "decorrelated_jitter",
    "equal_jitter",
    "exponential",
    "full_jitter",
    "idempotent",
    "keys",
    "on_exceptions",
    "on_result",
    "on_status",
    "retry",
    "retrying",
    "testing",
    "timeout",
]


def __getattr__(name: str) -> Any:
    # the configuration schema loads on first use: a program that never reads settings (a
    # worker process, the command line) does not pay for importing it
    if name in ("config", "check_config"):
        import importlib

        module = importlib.import_module(f"{__name__}.config")
        return module if name == "config" else module.check_config
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
