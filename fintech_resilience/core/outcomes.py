"""Classifying the outcome of a protected call: failure, success, or neutral.

Shared by the circuit breaker, retries and the HTTP clients. A *rule* is any callable that takes an
:class:`Outcome` and returns a bool; the helpers here build common rules and compose with ``|``,
``&`` and ``~``::

    failure = on_exceptions(TimeoutError, ConnectionError) | on_status(range(500, 600))
    neutral = on_exceptions(CardDeclined)          # a decline is not an outage

:class:`Classifier` turns an outcome into a :class:`Verdict`: ``NEUTRAL`` outcomes count for
neither side (they neither help nor hurt a dependency's health), ``FAILURE`` and ``SUCCESS`` do.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeAlias

from ..errors import ConfigurationError

__all__ = [
    "NEVER",
    "Classifier",
    "ExceptionSpec",
    "Outcome",
    "OutcomeRule",
    "Rule",
    "Verdict",
    "exception_predicate",
    "on_exceptions",
    "on_result",
    "on_status",
]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a protected call did: returned ``result`` or raised ``exception``, in ``duration``
    seconds. Shared by the breaker, retries and the HTTP clients."""

    result: Any = None
    exception: BaseException | None = None
    duration: float = 0.0
    attempt: int = 1
    """Which attempt produced it (1-based; retries count up)."""

    @property
    def raised(self) -> bool:
        """True when the call raised."""
        return self.exception is not None

    failed = raised


#: Any callable deciding something about an outcome.
OutcomeRule: TypeAlias = Callable[[Outcome], bool]
#: Which exceptions an option covers: a class, a tuple of classes or a predicate ``(exc) -> bool``.
ExceptionSpec: TypeAlias = type[BaseException] | tuple[type[BaseException], ...] | Callable[
    [BaseException], bool]


def exception_predicate(spec: ExceptionSpec, option: str) -> Callable[[BaseException], bool]:
    """``spec`` (an exception class, a tuple of them or a predicate) as a predicate; raises
    :class:`ConfigurationError` naming ``option`` for anything else."""
    if isinstance(spec, type) and issubclass(spec, BaseException):
        return lambda exc: isinstance(exc, spec)
    if isinstance(spec, tuple) and spec and all(
            isinstance(t, type) and issubclass(t, BaseException) for t in spec):
        return lambda exc: isinstance(exc, spec)
    if callable(spec) and not isinstance(spec, type | tuple):
        return spec
    raise ConfigurationError(
        f"{option} must be an exception type, a tuple of them or a predicate (exc) -> bool;"
        f" got {spec!r}. Write e.g. {option}=(TimeoutError, ConnectionError)"
    )


class Verdict(enum.Enum):
    """How an outcome counts towards a dependency's health."""

    SUCCESS = "success"
    FAILURE = "failure"
    NEUTRAL = "neutral"


class Rule:
    """A composable outcome predicate (``|`` any, ``&`` all, ``~`` not)."""

    __slots__ = ("_fn", "_text")

    def __init__(self, fn: OutcomeRule, text: str | None = None) -> None:
        self._fn = fn
        self._text = text or getattr(fn, "__name__", repr(fn))

    def __call__(self, outcome: Outcome) -> bool:
        return bool(self._fn(outcome))

    def __or__(self, other: OutcomeRule) -> Rule:
        return Rule(lambda o: self(o) or bool(other(o)), f"({self!r} | {other!r})")

    def __and__(self, other: OutcomeRule) -> Rule:
        return Rule(lambda o: self(o) and bool(other(o)), f"({self!r} & {other!r})")

    def __invert__(self) -> Rule:
        return Rule(lambda o: not self(o), f"~{self!r}")

    def __repr__(self) -> str:
        return str(self._text)


def _check_types(types: Iterable[Any]) -> tuple[type[BaseException], ...]:
    out = tuple(types)
    for t in out:
        if not (isinstance(t, type) and issubclass(t, BaseException)):
            raise ConfigurationError(
                "on_exceptions takes exception classes, e.g. on_exceptions(TimeoutError);"
                f" got {t!r}"
            )
    return out


def on_exceptions(*types: type[BaseException],
                  where: Callable[[BaseException], bool] | None = None) -> Rule:
    """True when the call raised one of ``types`` (and ``where(exception)``, if given)."""
    checked = _check_types(types)
    names = ", ".join(t.__name__ for t in checked)

    def match(outcome: Outcome) -> bool:
        exc = outcome.exception
        return exc is not None and isinstance(exc, checked) and (where is None or where(exc))

    return Rule(match, f"on_exceptions({names})")


def on_result(predicate: Callable[[Any], bool]) -> Rule:
    """True when the call returned and ``predicate(result)`` is true (e.g. an error payload)."""

    def match(outcome: Outcome) -> bool:
        return outcome.exception is None and bool(predicate(outcome.result))

    return Rule(match, f"on_result({getattr(predicate, '__name__', predicate)!r})")


def on_status(*statuses: int | range) -> Rule:
    """True when the call returned a response whose ``status_code`` (httpx, requests) or
    ``status`` (aiohttp, urllib3) is one of ``statuses`` (ints or ranges: ``range(500, 600)``)."""
    if not statuses or not all(isinstance(s, int | range) for s in statuses):
        raise ConfigurationError("on_status takes ints or ranges, e.g. on_status(range(500, 600))")
    codes = frozenset(c for s in statuses for c in (s if isinstance(s, range) else (s,)))

    def match(outcome: Outcome) -> bool:
        if outcome.exception is not None:
            return False
        result = outcome.result
        status = getattr(result, "status_code", None)
        if status is None:
            status = getattr(result, "status", None)
        return isinstance(status, int) and status in codes

    return Rule(match, f"on_status({', '.join(map(repr, statuses))})")


#: A rule that never matches.
NEVER: Rule = Rule(lambda _o: False, "NEVER")


class Classifier:
    """Decides the :class:`Verdict` of an outcome, in this order:

    1. ``BaseException`` that is not an ``Exception`` (cancellation, ``KeyboardInterrupt``) and
       exceptions of the ``ignore`` classes: NEUTRAL;
    2. ``neutral(outcome)``: NEUTRAL (e.g. a card decline says nothing about the PSP's health);
    3. ``failure(outcome)``: FAILURE (default: any ``Exception``);
    4. otherwise SUCCESS (an exception not matched by ``failure`` counts as a success).
    """

    __slots__ = ("failure", "ignore", "neutral")

    def __init__(self, *, failure: OutcomeRule | None = None, neutral: OutcomeRule | None = None,
                 ignore: Iterable[type[BaseException]] = ()) -> None:
        for what, rule in (("failure", failure), ("neutral", neutral)):
            if rule is not None and not callable(rule):
                raise ConfigurationError(
                    f"{what} must be a callable taking an Outcome, e.g. on_exceptions(TimeoutError)"
                )
        self.failure: OutcomeRule = failure if failure is not None else on_exceptions(Exception)
        self.neutral: OutcomeRule | None = neutral
        self.ignore = _check_types(ignore)

    def classify(self, outcome: Outcome) -> Verdict:
        """The verdict of ``outcome``."""
        exc = outcome.exception
        if exc is not None and (not isinstance(exc, Exception) or isinstance(exc, self.ignore)):
            return Verdict.NEUTRAL
        if self.neutral is not None and self.neutral(outcome):
            return Verdict.NEUTRAL
        return Verdict.FAILURE if self.failure(outcome) else Verdict.SUCCESS

    def __repr__(self) -> str:
        return (f"Classifier(failure={self.failure!r}, neutral={self.neutral!r},"
                f" ignore={self.ignore!r})")
