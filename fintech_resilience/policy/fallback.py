"""The fallback stage of a :class:`~fintech_resilience.Policy` (Polly's Fallback).

The outermost stage: it sees what the whole call did - the rate limit's, the bulkhead's, the
breaker's and the retry budget's refusals, and the last failure once the retries ran out - and,
when ``fallback_on`` matches that exception, returns ``fallback(error, *args, **kwargs)``
instead of raising. Results are not inspected: give the retry an ``on_result`` rule (giving up
on a result raises :class:`~fintech_resilience.RetryError`, whose ``last`` is the result), or
use the HTTP client edges, which hand a response classified as a failure to the fallback as
:class:`~fintech_resilience.httpx.FailedResponse`.

Only ``Exception`` subclasses are handled: cancellation and ``KeyboardInterrupt`` propagate.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from ..core.outcomes import ExceptionSpec, exception_predicate
from ..errors import ConfigurationError

__all__ = ["Fallback"]


class Fallback:
    """What replaces a failed call: ``fn(error, *args, **kwargs)`` for the errors ``on``
    matches (default: every ``Exception``)."""

    __slots__ = ("fn", "on")

    def __init__(self, fn: Callable[..., Any], on: ExceptionSpec = Exception) -> None:
        if not callable(fn):
            raise ConfigurationError(
                f"fallback must be a callable fallback(error, *args, **kwargs); got {fn!r}")
        self.fn = fn
        self.on = exception_predicate(on, "fallback_on")

    def handles(self, error: BaseException) -> bool:
        """True when ``error`` ends in the fallback rather than reaching the caller."""
        return isinstance(error, Exception) and self.on(error)

    def __call__(self, error: BaseException, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> Any:
        """The fallback's value for a call that failed with ``error``."""
        return self.fn(error, *args, **kwargs)

    async def acall(self, error: BaseException, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
        """Async twin of ``__call__``: the fallback may be a sync or an async callable."""
        value = self.fn(error, *args, **kwargs)
        return await value if inspect.isawaitable(value) else value

    def __repr__(self) -> str:
        return f"Fallback({getattr(self.fn, '__qualname__', self.fn)!r})"
