"""A retry's options, checked once when it is built, with messages that say what to write."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

from tenacity import RetryCallState

from ..errors import ConfigurationError, IdempotencyKeyInvalid
from .backoff import full_jitter

__all__ = ["check_options", "valid_key", "wait_strategy"]


def check_options(options: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigurationError` for the first option of ``fr.retry`` that is wrong
    (hooks and exception rules are checked where they are built)."""
    attempts, deadline = options["attempts"], options["deadline"]
    max_retry_after = options["max_retry_after"]
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
    for what in ("on_result", "stop", "retry_after"):
        if options[what] is not None and not callable(options[what]):
            raise ConfigurationError(f"{what} must be callable or None; got {options[what]!r}")
    key, argument = options["idempotency_key"], options["key_argument"]
    if not (key is None or key == "auto" or callable(key)):
        raise ConfigurationError(
            "idempotency_key must be None, 'auto' (generate one per call) or a callable"
            f" (*args, **kwargs) -> key; got {key!r}")
    if argument is not None and not (isinstance(argument, str) and argument.isidentifier()):
        raise ConfigurationError(
            f"key_argument must be a keyword argument name such as 'idempotency_key';"
            f" got {argument!r}")
    budget, name = options["budget"], options["name"]
    if budget is not None and not hasattr(budget, "withdraw"):
        raise ConfigurationError(f"budget must be a fr.RetryBudget; got {budget!r}")
    if name is not None and not (isinstance(name, str) and name):
        raise ConfigurationError(f"name must be a non-empty str or None; got {name!r}")


def wait_strategy(wait: Any) -> Callable[[RetryCallState], float]:
    """``wait=`` as a strategy: the default full jitter, a constant for seconds, or as given."""
    if wait is None:
        return full_jitter(initial=0.1, maximum=5.0)
    if isinstance(wait, int | float) and not isinstance(wait, bool) and wait >= 0:
        seconds = float(wait)
        return lambda _state: seconds
    if not callable(wait):
        raise ConfigurationError(
            f"wait must be a wait strategy such as fr.full_jitter(initial=0.1, maximum=5),"
            f" a callable (RetryCallState) -> seconds, or seconds >= 0; got {wait!r}")
    return cast(Callable[[RetryCallState], float], wait)


def valid_key(key: object) -> str | None:
    """The idempotency key if valid (1-255 printable ASCII), None if absent; else raise."""
    if key is None:
        return None
    if isinstance(key, str) and 1 <= len(key) <= 255 and key.isascii() and key.isprintable():
        return key
    raise IdempotencyKeyInvalid(
        "an idempotency key must be 1-255 printable ASCII characters"
        f" (got a {type(key).__name__} of length {len(key) if isinstance(key, str) else '?'})"
    )
