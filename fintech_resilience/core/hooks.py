"""User hooks shared by the patterns: the refusal hook, and calling any hook safely.

Every pattern that refuses calls takes ``on_refusal=``: a callable receiving a :class:`Refusal`
(a frozen, slotted dataclass) each time it refuses - a :class:`~fintech_resilience.RateLimiter`
whose limit is reached (Flask-Limiter's ``on_breach``; also a shadow-mode "would refuse"), a
:class:`~fintech_resilience.CircuitBreaker` rejecting a call, a
:class:`~fintech_resilience.Bulkhead` with no free slot. The hook runs in the refused caller's
thread, before the refusal is returned or raised; keep it short (count, log, alert).

A hook that raises is logged (``fintech_resilience`` logger, with the traceback) and the
protected call goes on as if there were no hook. An unset hook costs nothing: patterns look at
it only on their refusal path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import ConfigurationError, ResilienceError
from . import telemetry

__all__ = ["Refusal", "RefusalHook", "check", "notify"]


@dataclass(frozen=True, slots=True)
class Refusal:
    """What ``on_refusal`` hooks receive when a pattern refuses a call."""

    pattern: str
    """``"ratelimit"``, ``"breaker"`` or ``"bulkhead"`` (the ``resilience.pattern`` values)."""
    name: str
    """The refusing pattern's name."""
    error: ResilienceError
    """What the caller gets (or, from ``RateLimiter.acquire``, what the decorator would raise):
    :class:`~fintech_resilience.RateLimited` (its ``decision``),
    :class:`~fintech_resilience.CircuitOpen` (its ``state``) or
    :class:`~fintech_resilience.BulkheadFull`."""
    retry_after: float | None
    """Seconds until a call may be admitted, when the pattern knows (None: it does not)."""
    key: Any = None
    """The rate-limit key as the caller passed it (None for the other patterns). It may be
    personal data (a card fingerprint, a customer id): do not log it as it is."""
    shadow: bool = False
    """True when a shadow-mode limiter would have refused: the call was let through."""


class RefusalHook(Protocol):
    """An ``on_refusal`` hook."""

    def __call__(self, refusal: Refusal, /) -> object: ...


def check(hook: object, option: str) -> None:
    """Raise :class:`~fintech_resilience.ConfigurationError` unless ``hook`` is None or
    callable."""
    if hook is not None and not callable(hook):
        raise ConfigurationError(f"{option} must be a callable or None; got {hook!r}")


def notify(hook: Callable[[Any], object], event: object, owner: str, option: str) -> None:
    """Call ``hook(event)``; an exception is logged, never raised (the call goes on)."""
    try:
        hook(event)
    except Exception:
        telemetry.logger.exception("%s: the %s hook %s failed", owner, option,
                                   getattr(hook, "__qualname__", type(hook).__qualname__))
