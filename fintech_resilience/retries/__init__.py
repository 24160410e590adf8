"""Retries: the :func:`~fintech_resilience.retry` decorator (``core``), the block form
:func:`~fintech_resilience.retrying` (``block``), hooks and logging (``hooks``), backoff waits,
the shared :class:`RetryBudget` and ``Retry-After`` parsing."""

from .attempt import Attempt, current_attempt
from .backoff import Backoff, constant, decorrelated_jitter, equal_jitter, exponential, full_jitter
from .block import Retrying, retrying
from .budget import RetryBudget
from .core import Retry, retry
from .hooks import AttemptDetails, AttemptHook, RetryDetails, RetryHook

__all__ = ["Attempt", "AttemptDetails", "AttemptHook", "Backoff", "Retry", "RetryBudget",
           "RetryDetails", "RetryHook", "Retrying", "constant", "current_attempt",
           "decorrelated_jitter", "equal_jitter", "exponential", "full_jitter", "retry",
           "retrying"]
