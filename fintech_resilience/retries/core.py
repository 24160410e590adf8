"""Retries that cannot double-charge and cannot grow into a retry storm.

``fr.retry(...)`` decorates sync and async callables. How a call runs:

1. **Fast path.** The first attempt runs directly: no tenacity object is created. If it succeeds
   (and ``on_result`` does not ask for a retry), that is all that happens.
2. **Retry loop.** Otherwise a pure decision core (:meth:`Retry._loop`, a generator) decides,
   feeding tenacity's ``RetryCallState`` to the wait strategy, and yields actions - *run attempt
   n*, *ask the retry budget*, *sleep s seconds* - that a thin sync or async driver executes.

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

Giving up re-raises the last exception, or raises :class:`RetryError` holding the last result
when the retries were about results.

**Idempotency keys.** The key is decided once per call (taken from the ``key_argument`` keyword
the caller passed, computed by ``idempotency_key(*args, **kwargs)``, or generated with
``idempotency_key="auto"``) and every attempt sees the same key: in
``current_attempt().idempotency_key`` and, with ``key_argument``, as that keyword argument.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import time
import uuid
from collections.abc import Awaitable, Callable, Generator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, ParamSpec, TypeVar, cast

from tenacity import RetryCallState

from ..core import telemetry
from ..core.clock import SYSTEM_CLOCK, Clock
from ..core.outcomes import Outcome
from ..core.testmode import attempts_under_test, is_test_mode
from ..errors import (
    CircuitOpen,
    ConfigurationError,
    IdempotencyKeyInvalid,
    RetryBudgetExhausted,
    RetryError,
)
from .backoff import full_jitter
from .retry_after import default_retry_after, parse_retry_after

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from .budget import RetryBudget

__all__ = ["Attempt", "Outcome", "Retry", "RetryDetails", "current_attempt", "retry"]

P = ParamSpec("P")
R = TypeVar("R")
ExceptionSpec = type[BaseException] | tuple[type[BaseException], ...] | Callable[
    [BaseException], bool]
KeySpec = Literal["auto"] | Callable[..., str | None] | None

#: Failures that are decisions, not transient faults: retrying them only adds load.
NEVER_RETRIED: Final = (CircuitOpen, RetryBudgetExhausted)
#: The span of one attempt (``telemetry.Span.RETRY_ATTEMPT``).
SPAN_NAME: Final = telemetry.Span.RETRY_ATTEMPT
_WITHDRAW: Final = object()


class Attempt:
    """The attempt running now: its number, the call's idempotency key and deadline.

    Read it inside the wrapped function with :func:`current_attempt`.
    """

    __slots__ = ("_clock", "deadline_at", "idempotency_key", "number")

    def __init__(self, number: int, idempotency_key: str | None, deadline_at: float | None,
                 clock: Clock) -> None:
        #: 1 for the first attempt.
        self.number = number
        #: The same key on every attempt of one call (None when the call has none).
        self.idempotency_key = idempotency_key
        #: The call's deadline on ``clock.monotonic()``'s scale, or None.
        self.deadline_at = deadline_at
        self._clock = clock

    def remaining(self) -> float | None:
        """Seconds left until the call's overall deadline (never negative), or None."""
        if self.deadline_at is None:
            return None
        return max(0.0, self.deadline_at - self._clock.monotonic())

    def __repr__(self) -> str:
        key = "set" if self.idempotency_key else "none"
        return f"<Attempt number={self.number} idempotency_key={key}>"


#: The running attempt as a plain tuple ``(number, key, deadline_at, clock)``: cheap to set on
#: the fast path; :func:`current_attempt` builds the :class:`Attempt` only when someone asks.
_AttemptTuple = tuple[int, str | None, float | None, Clock]
_CURRENT: contextvars.ContextVar[_AttemptTuple | None] = contextvars.ContextVar(
    "fintech_resilience.attempt", default=None)


def current_attempt() -> Attempt | None:
    """The :class:`Attempt` running in this context, or None outside ``fr.retry``."""
    running = _CURRENT.get()
    return None if running is None else Attempt(*running)


@dataclass(frozen=True, slots=True)
class RetryDetails:
    """What ``before_sleep`` hooks receive before each retry."""

    name: str
    attempt: int
    """The attempt that just failed (1-based)."""
    wait: float
    """Seconds the loop sleeps now."""
    outcome: Outcome
    idempotency_key: str | None


def _exception_predicate(on: ExceptionSpec) -> Callable[[BaseException], bool]:
    if isinstance(on, type) and issubclass(on, BaseException):
        return lambda exc: isinstance(exc, on)
    if isinstance(on, tuple) and on and all(
            isinstance(t, type) and issubclass(t, BaseException) for t in on):
        return lambda exc: isinstance(exc, on)
    if callable(on) and not isinstance(on, type | tuple):
        return on
    raise ConfigurationError(
        f"on must be an exception type, a tuple of them or a predicate (exc) -> bool; got {on!r}."
        " Write e.g. on=(TimeoutError, ConnectionError)"
    )


def _valid_key(key: object) -> str | None:
    """The idempotency key if valid (1-255 printable ASCII), None if absent; else raise."""
    if key is None:
        return None
    if isinstance(key, str) and 1 <= len(key) <= 255 and key.isascii() and key.isprintable():
        return key
    raise IdempotencyKeyInvalid(
        "an idempotency key must be 1-255 printable ASCII characters"
        f" (got a {type(key).__name__} of length {len(key) if isinstance(key, str) else '?'})"
    )


@dataclass(slots=True)
class _Call:
    """One logical call: the function, its arguments and what every attempt shares."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    key: str | None
    started: float
    deadline_at: float | None


class Retry:
    """Retry a sync or async callable on transient failures: ``@fr.retry(...)`` (this class)
    decorates a function, :meth:`call` / :meth:`acall` run one.

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
    :param before_sleep: hook called with :class:`RetryDetails` before each retry.
    :param name: shown in telemetry (default ``"retry"``).
    :param clock: time source for the deadline and sleeps (tests: ``ManualClock``).
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
        before_sleep: Callable[[RetryDetails], None] | None = None, name: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        # the options as given, for replace() (locals() holds exactly the parameters here)
        self._options = {name: value for name, value in locals().items() if name != "self"}
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise ConfigurationError(
                f"attempts must be an int >= 1 (1 = no retries); got {attempts!r}")
        if deadline is not None and (isinstance(deadline, bool) or not isinstance(
                deadline, int | float) or not 0 < deadline < float("inf")):
            raise ConfigurationError(
                f"deadline must be a positive number of seconds or None; got {deadline!r}")
        if isinstance(max_retry_after, bool) or not isinstance(
                max_retry_after, int | float) or not 0 <= max_retry_after < float("inf"):
            raise ConfigurationError(
                f"max_retry_after must be a finite number of seconds >= 0; got {max_retry_after!r}")
        if wait is None:
            wait = full_jitter(initial=0.1, maximum=5.0)
        elif isinstance(wait, int | float) and not isinstance(wait, bool) and wait >= 0:
            seconds = float(wait)
            wait = lambda _state: seconds  # noqa: E731
        elif not callable(wait):
            raise ConfigurationError(
                f"wait must be a wait strategy such as fr.full_jitter(initial=0.1, maximum=5),"
                f" a callable (RetryCallState) -> seconds, or seconds >= 0; got {wait!r}")
        for what, hook in (("on_result", on_result), ("stop", stop), ("retry_after", retry_after),
                           ("before_sleep", before_sleep)):
            if hook is not None and not callable(hook):
                raise ConfigurationError(f"{what} must be callable or None; got {hook!r}")
        if not (idempotency_key is None or idempotency_key == "auto" or callable(idempotency_key)):
            raise ConfigurationError(
                "idempotency_key must be None, 'auto' (generate one per call) or a callable"
                f" (*args, **kwargs) -> key; got {idempotency_key!r}")
        if key_argument is not None and not (isinstance(key_argument, str)
                                             and key_argument.isidentifier()):
            raise ConfigurationError(
                f"key_argument must be a keyword argument name such as 'idempotency_key';"
                f" got {key_argument!r}")
        if budget is not None and not hasattr(budget, "withdraw"):
            raise ConfigurationError(f"budget must be a fr.RetryBudget; got {budget!r}")
        self.attempts = attempts
        self.deadline = None if deadline is None else float(deadline)
        self.wait = wait
        self.stop = stop
        self.budget = budget
        self.respect_retry_after = bool(respect_retry_after)
        self.max_retry_after = float(max_retry_after)
        self.retry_after = retry_after or default_retry_after
        self.idempotent = bool(idempotent)
        self.idempotency_key = idempotency_key
        self.key_argument = key_argument
        self.before_sleep = before_sleep
        self.name = name or "retry"
        self.clock: Clock = clock or SYSTEM_CLOCK
        self._on = on
        self._retry_exc = _exception_predicate(on)
        self._never_sent = _exception_predicate(never_sent)
        self._on_result = on_result
        self._keyed = idempotency_key is not None or key_argument is not None
        self._mono = time.monotonic if self.clock is SYSTEM_CLOCK else self.clock.monotonic

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
            key = _valid_key(kwargs[arg])
        elif self.idempotency_key == "auto":
            key = str(uuid.uuid4())
        elif self.idempotency_key is not None:
            key = _valid_key(self.idempotency_key(*args, **kwargs))
        if key is not None and arg is not None:
            kwargs[arg] = key
        return key

    def _give_up(self, outcome: Outcome) -> Any:
        if outcome.exception is not None:
            raise outcome.exception
        raise RetryError(outcome.attempt, outcome.result)

    def _loop(self, call: _Call, first: Outcome | None) -> Generator[Any, Any, Any]:
        """Decide every step of one call; yields ``(number, wait)`` (run attempt ``number``),
        ``_WITHDRAW`` (ask the budget) or a float (sleep that many seconds).

        Returns the result to hand back, or raises what the caller gets.
        """
        state = RetryCallState(cast(Any, self), call.fn, call.args, call.kwargs)
        state.start_time = call.started
        outcome = first
        if outcome is None:
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
                if not self.idempotent and call.key is None and not self._never_sent(exc):
                    raise exc  # the request may have been sent: only a key makes a retry safe
            now = self.clock.monotonic()
            state.outcome_timestamp = now
            if (outcome.attempt >= attempts_under_test(self.attempts)
                    or (self.stop is not None and self.stop(state))):
                return self._give_up(outcome)
            wait = self._wait(state, outcome)
            if call.deadline_at is not None and now + wait >= call.deadline_at:
                return self._give_up(outcome)
            if self.budget is not None and not (yield _WITHDRAW):
                if telemetry.active():
                    telemetry.emit_decision(telemetry.Pattern.RETRY, self.name,
                                            telemetry.Decision.BUDGET_EXHAUSTED)
                raise RetryBudgetExhausted(self.budget.name) from exc
            if telemetry.active():
                telemetry.emit_retry(self.name, outcome.attempt, wait, exc)
            if self.before_sleep is not None:
                self.before_sleep(RetryDetails(self.name, outcome.attempt, wait, outcome,
                                               call.key))
            if wait > 0:
                yield wait
            state.idle_for += wait
            state.upcoming_sleep = wait
            state.prepare_for_next_attempt()
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

    # --- thin drivers ------------------------------------------------------------------------

    def _span(self, number: int, wait: float) -> contextlib.AbstractContextManager[Any]:
        if not telemetry.active():
            return contextlib.nullcontext()
        return _attempt_span(self.name, number, wait)

    def call(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> R:
        """Call ``fn(*args, **kwargs)`` under this policy (sync)."""
        return cast(R, self._run(fn, args, kwargs))

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        key = self._key(args, kwargs) if self._keyed else None
        started = self._mono()
        deadline_at = None if self.deadline is None else started + self.deadline
        if self.budget is not None:
            self.budget.deposit()
        first = None
        if not telemetry.active():  # the fast path: no tenacity, no generator, no allocation
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
        return self._drive(_Call(fn, args, kwargs, key, started, deadline_at), first)

    def _drive(self, call: _Call, first: Outcome | None) -> Any:
        loop = self._loop(call, first)
        reply: Any = None
        while True:
            try:
                action = loop.send(reply)
            except StopIteration as stop:
                return stop.value
            if action is _WITHDRAW:
                reply = self.budget.withdraw()  # type: ignore[union-attr]
            elif isinstance(action, float):
                self.clock.sleep(action)
                reply = None
            else:
                number, wait = action
                token = _CURRENT.set((number, call.key, call.deadline_at, self.clock))
                try:
                    with self._span(number, wait) as span:
                        try:
                            reply = Outcome(call.fn(*call.args, **call.kwargs), attempt=number)
                        except Exception as exc:
                            reply = Outcome(exception=exc, attempt=number)
                        if span is not None:
                            _end_span(span, reply)
                finally:
                    _CURRENT.reset(token)

    async def acall(self, fn: Callable[..., Awaitable[R]], /, *args: Any, **kwargs: Any) -> R:
        """Await ``fn(*args, **kwargs)`` under this policy (async)."""
        return cast(R, await self._arun(fn, args, kwargs))

    async def _arun(self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
        key = self._key(args, kwargs) if self._keyed else None
        started = self._mono()
        deadline_at = None if self.deadline is None else started + self.deadline
        if self.budget is not None:
            await self.budget.adeposit()
        first = None
        if not telemetry.active():
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
        return await self._adrive(_Call(fn, args, kwargs, key, started, deadline_at), first)

    async def _adrive(self, call: _Call, first: Outcome | None) -> Any:
        loop = self._loop(call, first)
        reply: Any = None
        while True:
            try:
                action = loop.send(reply)
            except StopIteration as stop:
                return stop.value
            if action is _WITHDRAW:
                reply = await self.budget.awithdraw()  # type: ignore[union-attr]
            elif isinstance(action, float):
                await self.clock.asleep(action)
                reply = None
            else:
                number, wait = action
                token = _CURRENT.set((number, call.key, call.deadline_at, self.clock))
                try:
                    with self._span(number, wait) as span:
                        try:
                            result = await call.fn(*call.args, **call.kwargs)
                            reply = Outcome(result, attempt=number)
                        except Exception as exc:
                            reply = Outcome(exception=exc, attempt=number)
                        if span is not None:
                            _end_span(span, reply)
                finally:
                    _CURRENT.reset(token)

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


@contextlib.contextmanager
def _attempt_span(name: str, number: int, wait: float) -> Iterator[Span | None]:
    attributes: dict[str, str | int | float] = {
        telemetry.Attr.PATTERN: telemetry.Pattern.RETRY, telemetry.Attr.NAME: name,
        telemetry.Attr.ATTEMPT: number, telemetry.Attr.WAIT: wait}
    with telemetry.tracer.start_as_current_span(
            SPAN_NAME, attributes=attributes, record_exception=False,
            set_status_on_exception=False) as span:
        yield span if span.is_recording() else None


def _end_span(span: Span, outcome: Outcome) -> None:
    if outcome.exception is None:
        span.set_attribute(telemetry.Attr.OUTCOME, telemetry.Decision.SUCCESS)
    else:
        span.set_attribute(telemetry.Attr.OUTCOME, telemetry.Decision.FAILURE)
        # an exception may name its own error.type (an HTTP failure uses its status code)
        error_type = getattr(outcome.exception, "error_type", None)
        span.set_attribute(telemetry.Attr.ERROR_TYPE, error_type if isinstance(error_type, str)
                           else type(outcome.exception).__qualname__)


#: ``fr.retry(...)`` builds a :class:`Retry` (the lower-case name reads well as a decorator).
retry = Retry


