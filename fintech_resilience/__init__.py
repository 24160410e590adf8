"""fintech_resilience: rate limits, circuit breakers, retries and idempotency keys for payment
services, shared by every worker and host through Redis, visible in OpenTelemetry.

The public API is what this module exports; everything else is private.
"""

from ._version import __version__
from .backends import Backend, MemoryBackend, RedisBackend
from .concurrency import ConcurrencyLimiter, Slot
from .errors import (
    BackendUnavailable,
    BulkheadFull,
    CircuitOpen,
    ConcurrencyLimited,
    ConfigurationError,
    IdempotencyError,
    IdempotencyInProgress,
    IdempotencyKeyInvalid,
    IdempotencyKeyMismatch,
    IdempotencyOutcomeUnknown,
    RateLimited,
    ResilienceError,
    RetryBudgetExhausted,
    RetryError,
    Timeout,
)
from .ratelimit import Decision, LimitStatus, RateLimiter

__all__ = [
    "Backend",
    "BackendUnavailable",
    "BulkheadFull",
    "CircuitOpen",
    "ConcurrencyLimited",
    "ConcurrencyLimiter",
    "ConfigurationError",
    "Decision",
    "IdempotencyError",
    "IdempotencyInProgress",
    "IdempotencyKeyInvalid",
    "IdempotencyKeyMismatch",
    "IdempotencyOutcomeUnknown",
    "LimitStatus",
    "MemoryBackend",
    "RateLimited",
    "RateLimiter",
    "RedisBackend",
    "ResilienceError",
    "RetryBudgetExhausted",
    "RetryError",
    "Slot",
    "Timeout",
    "__version__",
]
