"""Rate limiting: :class:`RateLimiter` (GCRA, sliding and fixed windows) and
:class:`ConcurrencyLimiter` (at most N in flight per key)."""

from .concurrency import ConcurrencyLimiter, Slot
from .limiter import ALGORITHMS, Decision, LimitStatus, RateLimiter, parse_limits

__all__ = ["ALGORITHMS", "ConcurrencyLimiter", "Decision", "LimitStatus", "RateLimiter", "Slot",
           "parse_limits"]
