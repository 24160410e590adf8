"""What a retry tells the outside world: the hooks, and one log line per retry.

Hooks (all optional, all sync callables; each costs nothing when unset):

* ``before(AttemptDetails)`` - before every attempt, the first one included;
* ``after(RetryDetails)`` - after every attempt that failed in a way worth retrying (``on`` or
  ``on_result`` matched), also the last one, before deciding whether to retry;
* ``before_sleep(RetryDetails)`` - before each retry, once it is decided (``wait`` = the sleep);
* ``retry_error_callback(RetryDetails)`` - when the retries run out (``attempts``, ``deadline``
  or ``stop``): its return value is returned instead of raising.

A hook that raises is logged and the call goes on (``retry_error_callback`` excepted: what it
raises is what the caller gets, as in tenacity). tenacity's own callbacks
(``tenacity.before_sleep_log(logger, logging.INFO)``, ``after_log``, ``before_log``, ...) and
callables whose parameter is annotated ``RetryCallState`` receive tenacity's ``RetryCallState``
instead of our details, kept up to date by the decision core.

**Logging.** Each retry logs one line to the ``fintech_resilience`` logger (default level
WARNING, ``log_level=None`` turns it off), as stamina does: the call's name, the attempt that
failed, the error's type (an HTTP failure's status code) and the wait. Never an argument value,
never an exception message (either can hold a card number). The same fields are in the record's
``extra`` under the telemetry attribute names (``resilience.name``, ``resilience.retry.attempt``,
``resilience.retry.wait``, ``error.type``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from tenacity import RetryAction, RetryCallState

from ..core import telemetry
from ..core.outcomes import Outcome
from ..errors import ConfigurationError

if TYPE_CHECKING:
    from .attempt import Call

__all__ = ["AttemptDetails", "AttemptHook", "Hooks", "RetryDetails", "RetryHook"]


@dataclass(frozen=True, slots=True)
class AttemptDetails:
    """What ``before`` hooks receive before each attempt."""

    name: str
    """The call's name: the retry's ``name``, else the function's qualified name."""
    attempt: int
    """The attempt about to run (1-based)."""
    wait: float
    """Seconds slept just before it (0 before the first)."""
    waited: float
    """Seconds slept so far in this call."""
    idempotency_key: str | None


@dataclass(frozen=True, slots=True)
class RetryDetails:
    """What ``after``, ``before_sleep`` and ``retry_error_callback`` hooks receive."""

    name: str
    """The call's name: the retry's ``name``, else the function's qualified name."""
    attempt: int
    """The attempt that just failed (1-based)."""
    wait: float
    """Seconds the loop sleeps now (``before_sleep``; 0 for the other hooks)."""
    outcome: Outcome
    idempotency_key: str | None
    waited: float = 0.0
    """Seconds slept so far in this call, before this wait."""


class AttemptHook(Protocol):
    """A ``before`` hook."""

    def __call__(self, details: AttemptDetails, /) -> object: ...


class RetryHook(Protocol):
    """An ``after``, ``before_sleep`` or ``retry_error_callback`` hook."""

    def __call__(self, details: RetryDetails, /) -> object: ...


def _wants_retry_state(hook: Callable[..., Any]) -> bool:
    """True for tenacity's own callbacks and for callables annotated to take a RetryCallState."""
    if (getattr(hook, "__module__", None) or "").partition(".")[0] == "tenacity":
        return True
    try:
        parameters = list(inspect.signature(hook).parameters.values())
    except (TypeError, ValueError):
        return False
    annotation = parameters[0].annotation if parameters else None
    return annotation is RetryCallState or (
        isinstance(annotation, str) and annotation.rpartition(".")[2] == "RetryCallState")


def _hook_name(hook: Any) -> str:
    return str(getattr(hook, "__qualname__", None) or type(hook).__qualname__)


def error_label(outcome: Outcome) -> str:
    """The error of a failed attempt as logs and hooks show it: ``error.type``, or the result's
    status code for a result the retry rejected (``"result"`` when it has none)."""
    if outcome.exception is not None:
        return telemetry.error_type(outcome.exception)
    status = telemetry.status_of(outcome.result)
    return "result" if status is None else f"result {status}"


class Hooks:
    """A retry's hooks and log level, validated once; the decision core calls its methods."""

    __slots__ = ("_state_hooks", "after", "before", "before_sleep", "level", "retry_error")

    def __init__(self, *, before: Callable[..., Any] | None, after: Callable[..., Any] | None,
                 before_sleep: Callable[..., Any] | None,
                 retry_error_callback: Callable[..., Any] | None, log_level: int | None) -> None:
        for what, hook in (("before", before), ("after", after), ("before_sleep", before_sleep),
                           ("retry_error_callback", retry_error_callback)):
            if hook is not None and not callable(hook):
                raise ConfigurationError(f"{what} must be callable or None; got {hook!r}")
        if log_level is not None and (isinstance(log_level, bool)
                                      or not isinstance(log_level, int)):
            raise ConfigurationError(
                f"log_level must be a logging level such as logging.WARNING, or None (no log"
                f" line per retry); got {log_level!r}")
        self.before = before
        self.after = after
        self.before_sleep = before_sleep
        self.retry_error = retry_error_callback
        self.level = log_level
        self._state_hooks = frozenset(id(h) for h in (before, after, before_sleep,
                                                      retry_error_callback)
                                      if h is not None and _wants_retry_state(h))

    def _call(self, what: str, hook: Callable[..., Any], details: Any, state: RetryCallState,
              name: str) -> None:
        try:
            hook(state if id(hook) in self._state_hooks else details)
        except Exception:  # a hook must not break the call it observes
            telemetry.logger.exception("retry %s: the %s hook %s failed", name, what,
                                       _hook_name(hook))

    def starting(self, call: Call, state: RetryCallState, number: int, wait: float) -> None:
        """Before attempt ``number`` (``before``)."""
        if self.before is not None:
            self._call("before", self.before, AttemptDetails(
                call.name, number, wait, state.idle_for, call.key), state, call.name)

    def failed(self, call: Call, state: RetryCallState, outcome: Outcome) -> None:
        """After an attempt that failed in a way worth retrying (``after``)."""
        if self.after is not None:
            self._call("after", self.after, RetryDetails(
                call.name, outcome.attempt, 0.0, outcome, call.key, state.idle_for), state,
                call.name)

    def retrying(self, call: Call, state: RetryCallState, outcome: Outcome, wait: float) -> None:
        """A retry is decided: the log line, then ``before_sleep``."""
        level = self.level
        if level is not None and telemetry.logger.isEnabledFor(level):
            error = error_label(outcome)
            telemetry.logger.log(
                level, "retry %s: attempt %d failed (%s); retrying in %.3fs", call.name,
                outcome.attempt, error, wait, extra={
                    telemetry.Attr.NAME: call.name, telemetry.Attr.ATTEMPT: outcome.attempt,
                    telemetry.Attr.WAIT: wait, telemetry.Attr.ERROR_TYPE: error})
        if self.before_sleep is not None:
            state.next_action = RetryAction(wait)
            state.upcoming_sleep = wait
            self._call("before_sleep", self.before_sleep, RetryDetails(
                call.name, outcome.attempt, wait, outcome, call.key, state.idle_for), state,
                call.name)

    def gave_up(self, call: Call, state: RetryCallState, outcome: Outcome) -> Any:
        """The retries ran out: ``retry_error_callback``'s value (its exceptions propagate)."""
        assert self.retry_error is not None
        if id(self.retry_error) in self._state_hooks:
            return self.retry_error(state)
        return self.retry_error(RetryDetails(call.name, outcome.attempt, 0.0, outcome, call.key,
                                             state.idle_for))

