"""Policy: the patterns composed in one fixed, documented order.

For every call::

    fallback -> rate limit -> bulkhead -> retry loop -> (each attempt) breaker -> timeout -> call

* the **fallback** (``fallback=``, ``fallback_on=``) is outermost: when the call ends in an
  exception ``fallback_on`` matches - a refusal of any stage below, or the last failure once
  the retries ran out - ``fallback(error, *args, **kwargs)`` is returned instead;
* the **rate limit** is checked once per call (a retry is not a new request from the user), and
  refuses with :class:`~fintech_resilience.RateLimited` - after waiting up to
  ``rate_limit_wait`` seconds for a permit, if given;
* the **bulkhead** slot is held for the whole call, retries and waits included, so a retry storm
  cannot take more than ``max_concurrent`` slots; full -> :class:`BulkheadFull`;
* the **retry** loop runs the attempts; every attempt passes the **breaker** - an OPEN breaker
  raises :class:`~fintech_resilience.CircuitOpen`, which ends the retry loop at once - and the
  **timeout**, which is capped at the time left before the retry deadline.

Every part is optional. The breaker is used only through the context-manager protocol
(``with breaker:`` / ``async with breaker:``), so any object that raises ``CircuitOpen`` on
entry and records the outcome on exit fits (:class:`~fintech_resilience.CircuitBreaker` does).

As a context manager (``with policy:`` / ``async with policy:``) the same order applies, minus
the retry (a ``with`` block cannot be run again) and the fallback (a block has no value to
replace).

Telemetry (with an OpenTelemetry SDK installed): each :meth:`Policy.call` / :meth:`Policy.acall`
runs in a ``resilience.call`` span and adds a point to the ``resilience.call.duration`` histogram
(seconds); an attempt that overruns its timeout adds a ``timeout`` / ``expired`` decision
(emitted by the timeout itself, also outside a Policy). The span ends before the fallback runs:
it shows how the protected call went.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Final, ParamSpec, Protocol, TypeVar, cast, runtime_checkable

from ..core import storage_keys as _keys
from ..core import telemetry
from ..core.decorate import around_calls
from ..core.outcomes import ExceptionSpec
from ..errors import ConfigurationError, RateLimited
from ..ratelimit.limiter import RateLimiter
from ..ratelimit.waiting import check_max_wait
from ..retries.core import Retry, current_attempt
from .bulkhead import Bulkhead
from .deadline import TimeLimit
from .fallback import Fallback

__all__ = ["BreakerLike", "Policy"]

P = ParamSpec("P")
R = TypeVar("R")
KeyArg = str | bytes | int


#: The stage of a policy that has nothing to do in it (a reusable, re-entrant no-op).
_NOTHING: Final = contextlib.nullcontext()


@runtime_checkable
class BreakerLike(Protocol):
    """What a Policy needs from a circuit breaker: a sync and an async context manager."""

    def __enter__(self) -> Any: ...

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Any: ...

    async def __aenter__(self) -> Any: ...

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> Any: ...


class Policy:
    """Fallback, rate limit, bulkhead, retry, breaker and timeout around a call, in that order.

    :param name: names the policy (and is the default rate-limit key).
    :param rate_limit: a :class:`~fintech_resilience.RateLimiter`, checked once per call.
    :param rate_key: the rate-limit key: a constant or ``(*args, **kwargs) -> key``
        (default: ``name``).
    :param rate_limit_wait: seconds a call may wait for a rate-limit permit before
        :class:`~fintech_resilience.RateLimited` (default 0: refused at once); see
        :meth:`RateLimiter.acquire <fintech_resilience.RateLimiter.acquire>`'s ``max_wait``.
    :param bulkhead: a :class:`~fintech_resilience.Bulkhead` held for the whole call.
    :param retry: a :func:`~fintech_resilience.retry` policy for the attempts.
    :param breaker: a :class:`~fintech_resilience.CircuitBreaker` (or anything following
        :class:`BreakerLike`) every attempt passes.
    :param timeout: seconds per attempt (or a :func:`~fintech_resilience.timeout`), capped at the
        retry deadline's time left.
    :param fallback: ``fallback(error, *args, **kwargs)``, sync or (for async calls) async:
        its value is returned when the call fails with an exception ``fallback_on`` matches.
    :param fallback_on: the exceptions the fallback handles: a class, a tuple of classes or a
        predicate ``(exc) -> bool`` (default ``Exception``: every failure, the library's
        refusals included; narrow it, e.g. ``(fr.CircuitOpen, fr.RateLimited)``).
    """

    def __init__(self, *, name: str = "default", rate_limit: RateLimiter | None = None,
                 rate_key: Callable[..., KeyArg] | KeyArg | None = None,
                 rate_limit_wait: float = 0.0,
                 bulkhead: Bulkhead | None = None, retry: Retry | None = None,
                 breaker: BreakerLike | None = None,
                 timeout: float | TimeLimit | None = None,
                 fallback: Callable[..., Any] | None = None,
                 fallback_on: ExceptionSpec = Exception) -> None:
        self.name = _keys.validate_name(name)
        if rate_limit is not None and not hasattr(rate_limit, "acquire"):
            raise ConfigurationError(f"rate_limit must be a fr.RateLimiter; got {rate_limit!r}")
        if rate_limit_wait:
            try:
                rate_limit_wait = check_max_wait(rate_limit_wait)
            except ConfigurationError as exc:
                raise ConfigurationError(f"rate_limit_wait: {exc}") from None
            if rate_limit is None:
                raise ConfigurationError("rate_limit_wait needs a rate_limit to wait for")
        if bulkhead is not None and not isinstance(bulkhead, Bulkhead):
            raise ConfigurationError(
                f"bulkhead must be a fr.Bulkhead (e.g. fr.Bulkhead(20)); got {bulkhead!r}")
        if retry is not None and not isinstance(retry, Retry):
            raise ConfigurationError(
                f"retry must be built with fr.retry(...); got {retry!r}")
        if breaker is not None and not isinstance(breaker, BreakerLike):
            raise ConfigurationError(
                f"breaker must be a fr.CircuitBreaker (a sync and async context manager);"
                f" got {breaker!r}")
        if timeout is not None and not isinstance(timeout, TimeLimit):
            timeout = TimeLimit(timeout, name=self.name)
        self.rate_limit = rate_limit
        self.rate_limit_wait = float(rate_limit_wait or 0.0)
        self.bulkhead = bulkhead
        self.retry = retry
        self.breaker = breaker
        self.timeout = timeout
        #: The fallback stage, or None.
        self.fallback = None if fallback is None else Fallback(fallback, fallback_on)
        key = self.name if rate_key is None else rate_key
        self._key_of: Callable[..., KeyArg] = (
            key if callable(key) else (lambda *_a, **_k: key))
        self._active: contextvars.ContextVar[tuple[Any, ...]] = contextvars.ContextVar(
            f"fr.policy.{self.name}", default=())

    def _seconds(self) -> float:
        """The attempt's time limit: the timeout, capped by the retry deadline's time left."""
        assert self.timeout is not None
        seconds = self.timeout.seconds
        attempt = current_attempt()
        left = attempt.remaining() if attempt is not None else None
        return seconds if left is None else max(min(seconds, left), 1e-6)

    # --- the stages, for drivers that run their own retry loop (the HTTP transports) -------

    def admission(self, args: tuple[Any, ...], kwargs: dict[str, Any]
                  ) -> contextlib.AbstractContextManager[None]:
        """The once-per-call stages around the attempts: rate limit, then bulkhead (held until
        the block ends). ``args``/``kwargs`` are the call's, for the rate-limit key."""
        if self.rate_limit is None and self.bulkhead is None:
            return _NOTHING
        return self._admission(args, kwargs)

    def aadmission(self, args: tuple[Any, ...], kwargs: dict[str, Any]
                   ) -> contextlib.AbstractAsyncContextManager[None]:
        """Async twin of :meth:`admission`."""
        if self.rate_limit is None and self.bulkhead is None:
            return _NOTHING
        return self._aadmission(args, kwargs)

    def attempt(self) -> contextlib.AbstractContextManager[None]:
        """The per-attempt stages: breaker, then timeout (capped by the retry deadline)."""
        if self.breaker is None and self.timeout is None:
            return _NOTHING
        return self._attempt()

    def aattempt(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Async twin of :meth:`attempt`."""
        if self.breaker is None and self.timeout is None:
            return _NOTHING
        return self._aattempt()

    @contextlib.contextmanager
    def _attempt(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            if self.breaker is not None:
                stack.enter_context(cast(contextlib.AbstractContextManager[Any], self.breaker))
            if self.timeout is not None:
                stack.enter_context(self.timeout.limit(self._seconds()))
            yield

    @contextlib.asynccontextmanager
    async def _aattempt(self) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            if self.breaker is not None:
                await stack.enter_async_context(
                    cast(contextlib.AbstractAsyncContextManager[Any], self.breaker))
            if self.timeout is not None:
                await stack.enter_async_context(self.timeout.alimit(self._seconds()))
            yield

    @contextlib.contextmanager
    def _admission(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Iterator[None]:
        if self.rate_limit is not None:
            key = self._key_of(*args, **kwargs)
            # max_wait only when set: a rate_limit need only have acquire(key) (see __init__)
            decision = (self.rate_limit.acquire(key, max_wait=self.rate_limit_wait)
                        if self.rate_limit_wait else self.rate_limit.acquire(key))
            if not decision.allowed:
                raise RateLimited(decision)
        with self.bulkhead.hold() if self.bulkhead is not None else contextlib.nullcontext():
            yield

    @contextlib.asynccontextmanager
    async def _aadmission(self, args: tuple[Any, ...], kwargs: dict[str, Any]
                          ) -> AsyncIterator[None]:
        if self.rate_limit is not None:
            key = self._key_of(*args, **kwargs)
            decision = (await self.rate_limit.aacquire(key, max_wait=self.rate_limit_wait)
                        if self.rate_limit_wait else await self.rate_limit.aacquire(key))
            if not decision.allowed:
                raise RateLimited(decision)
        if self.bulkhead is None:
            yield
            return
        async with self.bulkhead.ahold():
            yield

    def call(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> R:
        """Call ``fn(*args, **kwargs)`` under the policy (sync)."""
        try:
            if not telemetry.active():
                return self._call(fn, args, kwargs)
            with telemetry.call_span(telemetry.Pattern.POLICY, self.name) as span:
                return cast(R, telemetry.mark_result(span, self._call(fn, args, kwargs)))
        except Exception as exc:
            if self.fallback is None or not self.fallback.handles(exc):
                raise
            return cast(R, self.fallback(exc, args, kwargs))

    def _call(self, fn: Callable[..., R], args: tuple[Any, ...], kwargs: dict[str, Any]) -> R:
        def attempt(*a: Any, **k: Any) -> R:
            with self.attempt():
                return fn(*a, **k)

        with self.admission(args, kwargs):
            if self.retry is None:
                return attempt(*args, **kwargs)
            return cast(R, self.retry._run(attempt, args, kwargs, fn))

    async def acall(self, fn: Callable[..., Awaitable[R]], /, *args: Any, **kwargs: Any) -> R:
        """Await ``fn(*args, **kwargs)`` under the policy (async)."""
        try:
            if not telemetry.active():
                return await self._acall(fn, args, kwargs)
            with telemetry.call_span(telemetry.Pattern.POLICY, self.name) as span:
                return cast(R, telemetry.mark_result(span, await self._acall(fn, args, kwargs)))
        except Exception as exc:
            if self.fallback is None or not self.fallback.handles(exc):
                raise
            return cast(R, await self.fallback.acall(exc, args, kwargs))

    async def _acall(self, fn: Callable[..., Awaitable[R]], args: tuple[Any, ...],
                     kwargs: dict[str, Any]) -> R:
        async def attempt(*a: Any, **k: Any) -> R:
            async with self.aattempt():
                return await fn(*a, **k)

        async with self.aadmission(args, kwargs):
            if self.retry is None:
                return await attempt(*args, **kwargs)
            return cast(R, await self.retry._arun(attempt, args, kwargs, fn))

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        """Decorate a function or a coroutine function."""
        return around_calls(fn, self.call, self.acall)

    # --- as a context manager (no retry: a block cannot run twice) ---------------------------

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Rate limit, bulkhead, breaker and timeout around a ``with`` block (no retry)."""
        with self.admission((), {}), self.attempt():
            yield

    @contextlib.asynccontextmanager
    async def aguard(self) -> AsyncIterator[None]:
        """Async twin of :meth:`guard`."""
        async with self.aadmission((), {}), self.aattempt():
            yield

    def __enter__(self) -> Policy:
        cm = self.guard()
        cm.__enter__()
        self._active.set((*self._active.get(), cm))
        return self

    def __exit__(self, *exc: Any) -> bool | None:
        stack = self._active.get()
        self._active.set(stack[:-1])
        return cast(contextlib.AbstractContextManager[None], stack[-1]).__exit__(*exc)

    async def __aenter__(self) -> Policy:
        cm = self.aguard()
        await cm.__aenter__()
        self._active.set((*self._active.get(), cm))
        return self

    async def __aexit__(self, *exc: Any) -> bool | None:
        stack = self._active.get()
        self._active.set(stack[:-1])
        return await cast(contextlib.AbstractAsyncContextManager[None], stack[-1]).__aexit__(*exc)

    def __repr__(self) -> str:
        parts = [f"name={self.name!r}"] + [
            f"{label}={value!r}" for label, value in (
                ("rate_limit", self.rate_limit), ("bulkhead", self.bulkhead),
                ("retry", self.retry), ("breaker", self.breaker), ("timeout", self.timeout),
                ("fallback", self.fallback))
            if value is not None]
        return f"Policy({', '.join(parts)})"
