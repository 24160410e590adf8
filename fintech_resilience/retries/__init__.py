"""Retries: the :func:`~fintech_resilience.retry` decorator (``core``), backoff waits, the
shared :class:`RetryBudget` and ``Retry-After`` parsing."""

from .backoff import Backoff, constant, decorrelated_jitter, equal_jitter, exponential, full_jitter
from .budget import RetryBudget
from .core import Attempt, Retry, RetryDetails, current_attempt, retry

__all__ = ["Attempt", "Backoff", "Retry", "RetryBudget", "RetryDetails", "constant",
           "current_attempt", "decorrelated_jitter", "equal_jitter", "exponential", "full_jitter",
           "retry"]
