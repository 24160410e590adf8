"""Retries that cannot double-charge and cannot grow into a retry storm.

``fr.retry(...)`` decorates sync and async callables; ``fr.retrying(...)`` retries a block
(``block.py``). How a call runs:

1. **Fast path.** The first attempt runs directly: no tenacity object is created. If it succeeds
   (and ``on_result`` does not ask for a retry), that is all that happens.
2. **Retry loop.** Otherwise a pure decision core (:meth:`Retry._loop`, a generator) decides,
   feeding tenacity's ``RetryCallState`` to the wait strategy, and yields actions - *run attempt
   n*, *ask the retry budget*, *sleep s seconds* - that a thin sync or async driver executes
   (``drive.py``; the same drivers run ``fr.retrying`` blocks).

Rules the core applies after a failed attempt, in order:

* success, or an exception that ``on`` does not match (and :class:`CircuitOpen` or
  :class:`RetryBudgetExhausted`, always) ends the call at once;
* a non-idempotent operation (``idempotent=False``) without an idempotency key is attempted
  exactly once, unless the exception proves the request was never sent (``never_sent``);
* ``attempts`` caps the attempts; ``deadline`` (seconds from the start of the first attempt) is
  never exceeded: a wait that would end past it ends the call instead;
* the wait is ``wait(state)``, raised to the failure's Retry-After hint (capped at
  ``max_retry_after``) when ``respect_retry_after``; test mode makes it zero (and its
  ``attempts``, if set, replaces or caps ``attempts``: see :mod:`fintech_resilience.testing`);
* the retry budget, if any, must grant the retry, else :class:`RetryBudgetExhausted`.

Giving up returns ``retry_error_callback``'s value if there is one; else it re-raises the last
exception, or raises :class:`RetryError` holding the last result when the retries were about
results. Hooks and the log line per retry: ``hooks.py``.

**Idempotency keys.** The key is decided once per call (taken from the ``key_argument`` keyword
the caller passed, computed by ``idempotency_key(*args, **kwargs)``, or generated with
``idempotency_key="auto"``) and every attempt sees the same key: in
``current_attempt().idempotency_key`` and, with ``key_argument``, as that keyword argument.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Any, Final, Literal, ParamSpec, TypeVar, cast

from tenacity import RetryCallState

from ..core import telemetry
from ..core.clock import SYSTEM_CLOCK, Clock
from ..core.outcomes import ExceptionSpec, Outcome, exception_predicate
from ..core.testmode import attempts_under_test, is_test_mode
from ..errors import (
    CircuitOpen,
    ConfigurationError,
    RetryBudgetExhausted,
    RetryError,
)
from . import attempt as _attempt
from .attempt import SPAN_NAME, Attempt, Call, current_attempt
from .drive import WITHDRAW, AsyncSteps, Steps
from .hooks import AttemptDetails, AttemptHook, Hooks, RetryDetails, RetryHook
from .options import check_options, valid_key, wait_strategy
from .retry_after import default_retry_after, parse_retry_after

if TYPE_CHECKING:
    from .block import Retrying
    from .budget import RetryBudget

__all__ = ["SPAN_NAME", "Attempt", "AttemptDetails", "Outcome", "Retry", "RetryDetails",
           "current_attempt", "retry"]

P = ParamSpec("P")
R = TypeVar("R")
KeySpec = Literal["auto"] | Callable[..., str | None] | None

#: Failures that are decisions, not transient faults: retrying them only adds load.
NEVER_RETRIED: Final = (CircuitOpen, RetryBudgetExhausted)
#: The running attempt's context variable, assigned here rather than imported by name: CPython
#: compiles ``.set()`` / ``.reset()`` on an imported name as an attribute load plus a call, not
#: as a method call, and the fast path makes both on every call.
_CURRENT: Final = _attempt.CURRENT


def qualified_name(fn: Any) -> str:
    """``module.qualname`` of a function (the name a retry reports when given none)."""
    qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    module = getattr(fn, "__module__", None)
    return f"{module}.{qualname}" if module else str(qualname)


class Retry:
    """Retry a sync or async callable on transient failures: ``@fr.retry(...)`` (this class)
    decorates a function, :meth:`call` / :meth:`acall` run one, :meth:`retrying` runs a block.

    :param on: exception types (or a tuple, or a predicate ``(exc) -> bool``) worth retrying.
        Default ``(ConnectionError, TimeoutError)``. ``CircuitOpen`` and
        ``RetryBudgetExhausted`` are never retried.
    :param on_result: ``(result) -> bool``; True retries (e.g. a 503 response). Giving up on a
        result raises :class:`~fintech_resilience.RetryError` with ``last`` = the result.
    :param attempts: total attempts including the first (default 3).
    :param wait: a wait strategy (default ``fr.full_jitter(initial=0.1, maximum=5)``), any
        tenacity wait, a callable ``(RetryCallState) -> seconds`` or a constant in seconds.
    :param deadline: seconds from the first attempt's start after which no retry starts; a
        wait that would end past it gives up instead of sleeping (default 30; None = none).
    :param stop: an extra tenacity stop strategy (e.g. ``tenacity.stop_after_delay(5)``).
    :param budget: a :class:`~fintech_resilience.RetryBudget` every retry must be granted by.
    :param respect_retry_after: wait at least the failure's Retry-After (default True), capped
        at ``max_retry_after`` seconds (default 60).
    :param retry_after: hook ``(Outcome) -> seconds | header text | None`` that finds the hint;
        default: ``exc.retry_after``, ``exc.response.headers["Retry-After"]``, ``result.headers``.
    :param idempotent: False marks an operation that must not run twice: it is attempted once
        unless the call carries an idempotency key (or the failure is in ``never_sent``).
    :param idempotency_key: ``"auto"`` (a UUID4 per call) or ``(*args, **kwargs) -> key``.
        The key is decided once per call; every attempt sees the same key.
    :param key_argument: name of a keyword argument carrying the key: a value the caller passed
        is the key; otherwise the decided key is passed to the function under that name.
    :param never_sent: failures that prove the request never left (default
        ``ConnectionRefusedError``): safe to retry even without a key.
    :param before: hook called with :class:`AttemptDetails` before every attempt.
    :param after: hook called with :class:`RetryDetails` after every attempt that failed in a
        way worth retrying (also the last one).
    :param before_sleep: hook called with :class:`RetryDetails` before each retry.
    :param retry_error_callback: called with :class:`RetryDetails` when the retries run out;
        its return value is returned instead of raising.
    :param log_level: level of the log line each retry writes to the ``fintech_resilience``
        logger (default ``logging.WARNING``; None: no line).
    :param name: labels telemetry, log lines and hook details (default: the qualified name of
        the decorated or called function; for :meth:`retrying` blocks, of the function the
        block is in).
    :param clock: time source for the deadline and sleeps (tests: ``ManualClock``).

    Hooks are sync callables; a hook that raises is logged and the call goes on. tenacity's
    callbacks (``tenacity.before_sleep_log(logger, level)``...) receive tenacity's
    ``RetryCallState``. See :mod:`fintech_resilience.retries.hooks`.
    """

    def __init__(
        self, *, on: ExceptionSpec = (ConnectionError, TimeoutError),
        on_result: Callable[[Any], bool] | None = None, attempts: int = 3,
        wait: Callable[[RetryCallState], float] | float | None = None,
        deadline: float | None = 30.0, stop: Callable[[RetryCallState], bool] | None = None,
        budget: RetryBudget | None = None, respect_retry_after: bool = True,
        max_retry_after: float = 60.0, retry_after: Callable[[Outcome], Any] | None = None,
        idempotent: bool = True, idempotency_key: KeySpec = None, key_argument: str | None = None,
        never_sent: ExceptionSpec = (ConnectionRefusedError,),
        before: AttemptHook | Callable[[RetryCallState], object] | None = None,
        after: RetryHook | Callable[[RetryCallState], object] | None = None,
        before_sleep: RetryHook | Callable[[RetryCallState], object] | None = None,
        retry_error_callback: Callable[[RetryDetails], Any] | Callable[[RetryCallState], Any]
        | None = None,
        log_level: int | None = logging.WARNING, name: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        # the options as given, for replace() (locals() holds exactly the parameters here)
        self._options = {name: value for name, value in locals().items() if name != "self"}
        check_options(self._options)
        self._hooks = Hooks(before=before, after=after, before_sleep=before_sleep,
                            retry_error_callback=retry_error_callback, log_level=log_level)
        self.attempts = attempts
        self.deadline = None if deadline is None else float(deadline)
        self.wait = wait_strategy(wait)
        self.stop = stop
        self.budget = budget
        self.respect_retry_after = bool(respect_retry_after)
        self.max_retry_after = float(max_retry_after)
        self.retry_after = retry_after or default_retry_after
        self.idempotent = bool(idempotent)
        self.idempotency_key = idempotency_key
        self.key_argument = key_argument
        self.before_sleep = before_sleep
        #: The name given, or None (each call is then named after its function).
        self.name = name
        self.clock: Clock = clock or SYSTEM_CLOCK
        self._on = on
        self._retry_exc = exception_predicate(on, "on")
        self._never_sent = exception_predicate(never_sent, "never_sent")
        self._on_result = on_result
        self._keyed = idempotency_key is not None or key_argument is not None
        self._mono = time.monotonic if self.clock is SYSTEM_CLOCK else self.clock.monotonic
        # a `before` hook sees the first attempt too: no fast path then
        self._direct = before is None

    def replace(self, **changes: Any) -> Retry:
        """A new policy with the same options as this one, but for ``changes`` (the names of
        :func:`~fintech_resilience.retry`'s parameters)."""
        unknown = sorted(set(changes) - set(self._options))
        if unknown:
            raise ConfigurationError(f"Retry has no option {', '.join(unknown)}")
        return Retry(**{**self._options, **changes})

    def is_retryable(self, exc: BaseException) -> bool:
        """True if this policy's ``on`` rule retries after ``exc``."""
        return self._retry_exc(exc)

    def was_never_sent(self, exc: BaseException) -> bool:
        """True if ``exc`` means the request never left (``never_sent``): safe to retry even
        when the operation is not idempotent."""
        return self._never_sent(exc)

    # --- the pure decision core -----------------------------------------------------------

    def _key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
        """Decide the call's idempotency key once (and pass it on as ``key_argument``)."""
        key = None
        arg = self.key_argument
        if arg is not None and kwargs.get(arg) is not None:
            key = valid_key(kwargs[arg])
        elif self.idempotency_key == "auto":
            key = str(uuid.uuid4())
        elif self.idempotency_key is not None:
            key = valid_key(self.idempotency_key(*args, **kwargs))
        if key is not None and arg is not None:
            kwargs[arg] = key
        return key

    def _begin(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[
            str | None, float, float | None]:
        """The call's idempotency key, start time and deadline."""
        key = self._key(args, kwargs) if self._keyed else None
        started = self._mono()
        return key, started, None if self.deadline is None else started + self.deadline

    def _call(self, fn: Callable[..., Any] | None, args: tuple[Any, ...],
              kwargs: dict[str, Any], begun: tuple[str | None, float, float | None],
              origin: Any, spans: bool = True) -> Call:
        """The :class:`Call` the slow path shares between attempts (named only now)."""
        named = fn if origin is None else origin
        name = self.name or (named if isinstance(named, str) else qualified_name(named))
        return Call(fn, args, kwargs, begun[0], begun[1], begun[2], self.clock, name,
                    None if isinstance(named, str) else named, spans)

    def _give_up(self, call: Call, state: RetryCallState, outcome: Outcome) -> Any:
        if self._hooks.retry_error is not None:
            return self._hooks.gave_up(call, state, outcome)
        if outcome.exception is not None:
            raise outcome.exception
        raise RetryError(outcome.attempt, outcome.result)

    def _loop(self, call: Call, first: Outcome | None) -> Generator[Any, Any, Any]:
        """Decide every step of one call; yields ``(number, wait)`` (run attempt ``number``),
        ``WITHDRAW`` (ask the budget) or a float (sleep that many seconds).

        Returns the result to hand back, or raises what the caller gets.
        """
        hooks = self._hooks
        state = RetryCallState(cast(Any, self), call.origin, call.args, call.kwargs)
        state.start_time = call.started
        outcome = first
        if outcome is None:
            hooks.starting(call, state, 1, 0.0)
            outcome = yield (1, 0.0)
        while True:
            exc = outcome.exception
            if exc is None:
                if self._on_result is None or not self._on_result(outcome.result):
                    return outcome.result
                state.set_result(outcome.result)
            else:
                if isinstance(exc, NEVER_RETRIED) or not self._retry_exc(exc):
                    raise exc
                state.set_exception((type(exc), exc, exc.__traceback__))
            now = self.clock.monotonic()
            state.outcome_timestamp = now
            hooks.failed(call, state, outcome)
            if exc is not None and not self.idempotent and call.key is None and (
                    not self._never_sent(exc)):
                raise exc  # the request may have been sent: only a key makes a retry safe
            if (outcome.attempt >= attempts_under_test(self.attempts)
                    or (self.stop is not None and self.stop(state))):
                return self._give_up(call, state, outcome)
            wait = self._wait(state, outcome)
            if call.deadline_at is not None and now + wait >= call.deadline_at:
                return self._give_up(call, state, outcome)
            if self.budget is not None and not (yield WITHDRAW):
                if telemetry.active():
                    telemetry.emit_decision(telemetry.Pattern.RETRY, call.name,
                                            telemetry.Decision.BUDGET_EXHAUSTED)
                raise RetryBudgetExhausted(self.budget.name) from exc
            if telemetry.active():
                telemetry.emit_retry(call.name, outcome.attempt, wait, exc)
            hooks.retrying(call, state, outcome, wait)
            if wait > 0:
                yield wait
            state.idle_for += wait
            state.upcoming_sleep = wait
            state.prepare_for_next_attempt()
            hooks.starting(call, state, outcome.attempt + 1, wait)
            outcome = yield (outcome.attempt + 1, wait)

    def _wait(self, state: RetryCallState, outcome: Outcome) -> float:
        """Seconds to wait before the next attempt: backoff, raised to Retry-After (capped)."""
        if is_test_mode():
            return 0.0
        wait = float(self.wait(state))
        if not wait >= 0:  # also catches NaN
            raise ConfigurationError(f"the wait strategy returned {wait!r}; it must be >= 0")
        if self.respect_retry_after:
            hint = parse_retry_after(self.retry_after(outcome), self.clock.time())
            if hint is not None:
                wait = max(wait, min(hint, self.max_retry_after))
        return wait

    # --- thin drivers: the first attempt inline, then the loop's drivers (drive.py) ----------

    def call(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> R:
        """Call ``fn(*args, **kwargs)`` under this policy (sync)."""
        return cast(R, self._run(fn, args, kwargs))

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
             origin: Any = None, spans: bool = True) -> Any:
        """Run ``fn`` under this policy; ``origin`` (a function or a name) names the call when
        ``fn`` is a wrapper, ``spans=False`` leaves each attempt's span to the caller."""
        # the prologue is inline (not _begin): it is most of what a successful call costs
        key = self._key(args, kwargs) if self._keyed else None
        started = self._mono()
        deadline_at = None if self.deadline is None else started + self.deadline
        if self.budget is not None:
            self.budget.deposit()
        first = None
        if self._direct and not telemetry.active():  # the fast path: no tenacity, no generator
            token = _CURRENT.set((1, key, deadline_at, self.clock))
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                first = Outcome(exception=exc, attempt=1)
            else:
                if self._on_result is None or not self._on_result(result):
                    return result
                first = Outcome(result=result, attempt=1)
            finally:
                _CURRENT.reset(token)
        steps = Steps(self, self._call(fn, args, kwargs, (key, started, deadline_at), origin,
                                       spans), first, False)
        for attempt in steps:
            with attempt:
                attempt.set_result(fn(*args, **kwargs))
        return steps.value

    async def acall(self, fn: Callable[..., Awaitable[R]], /, *args: Any, **kwargs: Any) -> R:
        """Await ``fn(*args, **kwargs)`` under this policy (async)."""
        return cast(R, await self._arun(fn, args, kwargs))

    async def _arun(self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...],
                    kwargs: dict[str, Any], origin: Any = None, spans: bool = True) -> Any:
        """Async twin of :meth:`_run`."""
        key = self._key(args, kwargs) if self._keyed else None
        started = self._mono()
        deadline_at = None if self.deadline is None else started + self.deadline
        if self.budget is not None:
            await self.budget.adeposit()
        first = None
        if self._direct and not telemetry.active():
            token = _CURRENT.set((1, key, deadline_at, self.clock))
            try:
                result = await fn(*args, **kwargs)
            except Exception as exc:
                first = Outcome(exception=exc, attempt=1)
            else:
                if self._on_result is None or not self._on_result(result):
                    return result
                first = Outcome(result=result, attempt=1)
            finally:
                _CURRENT.reset(token)
        steps = AsyncSteps(self, self._call(fn, args, kwargs, (key, started, deadline_at),
                                            origin, spans), first, False)
        async for attempt in steps:
            with attempt:
                attempt.set_result(await fn(*args, **kwargs))
        return steps.value

    def retrying(self, *, name: str | None = None) -> Retrying:
        """Retry a block under this policy: ``for attempt in policy.retrying(): with attempt:``
        (or ``async for``). See :func:`~fintech_resilience.retrying`."""
        from .block import Retrying, caller_name

        return Retrying(self, name or self.name or caller_name(1))

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        """Decorate ``fn`` (a function or a coroutine function)."""
        run, run_sync = self._arun, self._run
        if inspect.iscoroutinefunction(fn):
            afn = cast(Callable[..., Awaitable[Any]], fn)

            @functools.wraps(fn)
            async def awrapper(*args: Any, **kwargs: Any) -> Any:
                return await run(afn, args, kwargs)

            return cast(Callable[P, R], awrapper)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return run_sync(fn, args, kwargs)

        return cast(Callable[P, R], wrapper)

    def __repr__(self) -> str:
        return (f"Retry(attempts={self.attempts}, deadline={self.deadline!r}, wait={self.wait!r},"
                f" idempotent={self.idempotent}, budget={self.budget!r})")


#: ``fr.retry(...)`` builds a :class:`Retry` (the lower-case name reads well as a decorator).
retry = Retry

