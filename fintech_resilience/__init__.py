"""fintech_resilience: rate limits, circuit breakers, retries and idempotency keys for payment
services, shared by every worker and host through Redis, visible in OpenTelemetry.

The public API is what this module exports; every other module name starting with ``_`` is
private. Framework edges live in their own modules (``fintech_resilience.asgi``, ``.wsgi``,
``.fastapi``, ``.flask``, ``.django``, ``.httpx``, ``.requests``) so importing the package never
imports a web framework.
"""

from . import audit, chaos, keys, testing
from ._version import __version__
from .audit import AuditLog, AuditRecord
from .backends import Backend, MemoryBackend, RedisBackend
from .backoff import constant, decorrelated_jitter, equal_jitter, exponential, full_jitter
from .breaker import BreakerState, CircuitBreaker, CountWindow, TimeWindow, Transition
from .budget import RetryBudget
from .bulkhead import Bulkhead
from .concurrency import ConcurrencyLimiter, Slot
from .crypto import AesGcmCipher
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
    IdempotencyOutcomeUnknown,
    RateLimited,
    ResidencyViolation,
    ResilienceError,
    RetryBudgetExhausted,
    RetryError,
    Timeout,
)
from .idempotency import IdempotencyContext, IdempotencyStore, current_idempotency, idempotent
from .outcomes import Outcome, Verdict, on_exceptions, on_result, on_status
from .policy import Policy
from .ratelimit import Decision, LimitStatus, RateLimiter
from .redaction import Redactor
from .residency import RegionalBackend
from .retry import Attempt, Retry, RetryDetails, current_attempt, retry
from .timeout import timeout

__all__ = [
    "AesGcmCipher",
    "Attempt",
    "AuditLog",
    "AuditRecord",
    "Backend",
    "BackendFull",
    "BackendUnavailable",
    "BreakerState",
    "Bulkhead",
    "BulkheadFull",
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
    "IdempotencyOutcomeUnknown",
    "IdempotencyStore",
    "LimitStatus",
    "MemoryBackend",
    "Outcome",
    "Policy",
    "RateLimited",
    "RateLimiter",
    "Redactor",
    "RedisBackend",
    "RegionalBackend",
    "ResidencyViolation",
    "ResilienceError",
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
    "testing",
    "timeout",
]
