"""Every exception fintech_resilience raises, under one root.

Catch :class:`ResilienceError` to handle anything the library decided; catch a leaf to handle one
decision. The tree::

    ResilienceError
    ├── ConfigurationError          bad configuration or bad input (rate string, key, cost, ...)
    ├── BackendUnavailable          the shared store (Redis) failed, timed out or is cooling down
    │   └── BackendFull             a bounded MemoryBackend refuses a new idempotency record
    ├── RateLimited                 a rate limit said no; carries the Decision
    ├── ConcurrencyLimited          every concurrency slot is taken
    ├── CircuitOpen                 a circuit breaker refuses calls; carries retry_after
    ├── BulkheadFull                a bulkhead has no free slot within max_wait
    ├── RetryBudgetExhausted        a retry was refused by the dependency's retry budget
    ├── RetryError                  every allowed attempt failed (wraps the last outcome)
    ├── Timeout                     an operation ran past its timeout (also a builtins.TimeoutError)
    ├── DecryptionError             a stored record could not be decrypted (wrong key, tampering)
    ├── ResidencyViolation          a write would cross the data-residency region of a principal
    └── IdempotencyError
        ├── IdempotencyKeyInvalid       a missing, empty, too long or non-printable key
        ├── IdempotencyInProgress       the first request with this key is still running
        ├── IdempotencyKeyMismatch      the same key was used with a different request
        ├── IdempotencyOutcomeUnknown   the first attempt's lease expired while it was running
        └── IdempotencyNotReplayable    the first call completed, but its result cannot be returned

Errors from redis-py and from web frameworks are mapped at the boundary with ``raise ... from exc``,
so the original error stays available as ``__cause__``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .ratelimit.limiter import Decision

__all__ = [
    "BackendFull",
    "BackendUnavailable",
    "BulkheadFull",
    "CircuitOpen",
    "ConcurrencyLimited",
    "ConfigurationError",
    "DecryptionError",
    "IdempotencyError",
    "IdempotencyInProgress",
    "IdempotencyKeyInvalid",
    "IdempotencyKeyMismatch",
    "IdempotencyNotReplayable",
    "IdempotencyOutcomeUnknown",
    "RateLimited",
    "ResidencyViolation",
    "ResilienceError",
    "RetryBudgetExhausted",
    "RetryError",
    "Timeout",
]


class ResilienceError(Exception):
    """Root of every exception raised by fintech_resilience."""


class ConfigurationError(ResilienceError, ValueError):
    """A configuration value or an input (rate string, key, cost) is invalid.

    The message says what was wrong and what to write instead. Raised before anything is stored.
    """


class BackendUnavailable(ResilienceError):
    """The shared backend could not answer in time (down, paused, failing over, cooling down).

    Patterns catch it and apply their ``on_backend_error`` policy; it reaches callers only with
    ``on_backend_error="raise"`` or from operator commands.
    """


class BackendFull(BackendUnavailable):
    """A :class:`~fintech_resilience.MemoryBackend` holds ``max_records`` live idempotency
    records and refuses a new one rather than forget a record it holds.

    Patterns apply ``on_backend_error`` to the refused operation (the idempotency default,
    ``"deny"``, refuses the request: HTTP 503), while every other operation - replays,
    completions, other patterns' decisions - goes on.
    """


class RateLimited(ResilienceError):
    """A rate limit refused the call. ``decision`` says which limit and when to retry."""

    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        self.retry_after = decision.retry_after
        when = "never (cost above the limit)" if math.isinf(decision.retry_after) else (
            f"in {decision.retry_after:.3f}s"
        )
        super().__init__(f"rate limited by {decision.policy!r}; retry {when}")


class ConcurrencyLimited(ResilienceError):
    """Every slot of a :class:`~fintech_resilience.ConcurrencyLimiter` is taken."""

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        super().__init__(f"{name}: all {limit} concurrency slots are taken")


class CircuitOpen(ResilienceError):
    """A circuit breaker refuses calls. Retry after ``retry_after`` seconds."""

    def __init__(self, name: str, retry_after: float, state: Any = None) -> None:
        self.name = name
        self.retry_after = retry_after
        self.state = state
        super().__init__(f"circuit {name!r} is open; retry in {retry_after:.3f}s")


class BulkheadFull(ResilienceError):
    """A bulkhead had no free slot within its ``max_wait``."""

    def __init__(self, name: str, max_concurrent: int) -> None:
        self.name = name
        self.max_concurrent = max_concurrent
        super().__init__(f"bulkhead {name!r} is full ({max_concurrent} calls in flight)")


class RetryBudgetExhausted(ResilienceError):
    """A retry was refused because the dependency's retry budget is spent."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"retry budget {name!r} is exhausted")


class RetryError(ResilienceError):
    """Every allowed attempt failed; ``last`` holds the final exception or result."""

    def __init__(self, attempts: int, last: Any) -> None:
        self.attempts = attempts
        self.last = last
        super().__init__(f"gave up after {attempts} attempt(s); last outcome: {last!r}")


class Timeout(ResilienceError, TimeoutError):
    """An operation ran past its timeout."""


class DecryptionError(ResilienceError, ValueError):
    """A stored record could not be decrypted: unknown key id, wrong key or tampered data."""


class ResidencyViolation(ResilienceError):
    """An operation for a principal of one region would read or write another region's store."""


class IdempotencyError(ResilienceError):
    """Base of the idempotency errors."""


class IdempotencyKeyInvalid(IdempotencyError):
    """The idempotency key is missing, empty, longer than 255 or not printable ASCII."""


class IdempotencyInProgress(IdempotencyError):
    """A request with the same key is still being processed; retry later."""

    def __init__(self, message: str = "a request with this idempotency key is in progress",
                 retry_after: float = 1.0) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class IdempotencyKeyMismatch(IdempotencyError):
    """The key was already used with a different request (fingerprint mismatch)."""


class IdempotencyOutcomeUnknown(IdempotencyError):
    """The first attempt's lease expired while it ran: it may or may not have completed."""


class IdempotencyNotReplayable(IdempotencyError):
    """The first call with this key completed (its effect happened), but its result cannot be
    returned again: it could not be stored, or the stored form cannot be rebuilt here. The call
    is never run again for this key. ``result_type`` names the result's type when known."""

    def __init__(self, message: str, result_type: str | None = None) -> None:
        self.result_type = result_type
        super().__init__(message)
