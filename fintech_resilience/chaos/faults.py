"""Controlled fault injection: latency, exceptions and HTTP statuses, by rule and rate.

Chaos is **off** unless it is explicitly enabled - ``enabled=True``, or the environment variable
``FINTECH_RESILIENCE_CHAOS=1`` - and it refuses to switch on when an environment marker says
production (``FINTECH_RESILIENCE_ENV``, ``ENVIRONMENT``, ``APP_ENV`` or ``ENV`` set to ``prod``,
``production`` or ``live``) unless ``force=True``. When it is off, a wrapped call costs one
attribute check.

Faults are deterministic with a seed: every injector (and every ``ChaosMiddleware``) owns one
``random.Random(seed)``. For each call, each rule that *matches* the call draws exactly one number
``u = rng.random()``, in rule order, and fires when ``u < rule.rate``. The positions of the
injected faults are therefore a pure function of the seed and the sequence of matching calls::

    rng = random.Random(7)
    expected = [i for i in range(100) if rng.random() < 0.1]   # one rule, rate 0.1

A fired rule first waits ``latency`` seconds (latencies of several fired rules add up), then
raises its ``exception`` (or, in HTTP middleware, answers with its ``status`` as problem+json).
Every injected fault adds a ``resilience.chaos.injected`` event to the current span and a point to
the ``resilience.chaos.injected`` counter (attributes: pattern, name, fault).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import copy
import dataclasses
import fnmatch
import functools
import inspect
import os
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, ParamSpec, TypeVar, cast

from opentelemetry import trace as _trace

from ..core import telemetry
from ..errors import ConfigurationError

__all__ = [
    "ENV_ENABLE",
    "PRODUCTION_MARKERS",
    "Engine",
    "InjectedFault",
    "Injector",
    "Rule",
    "current_principal",
    "inject",
    "is_production",
    "principal",
]

P = ParamSpec("P")
R = TypeVar("R")

#: Environment variable that enables chaos where code did not say ``enabled=...``.
ENV_ENABLE: Final = "FINTECH_RESILIENCE_CHAOS"
#: Environment variables that name the deployment environment.
PRODUCTION_MARKERS: Final = ("FINTECH_RESILIENCE_ENV", "ENVIRONMENT", "APP_ENV", "ENV")
#: Values of those variables that mean production.
PRODUCTION_VALUES: Final = frozenset({"prod", "production", "live"})


_Attr = telemetry.Attr


class InjectedFault(ConnectionError):
    """The default exception chaos raises: looks like a dependency's connection failure."""


_principal: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "fintech_resilience_chaos_principal", default=None
)


@contextlib.contextmanager
def principal(value: str | None) -> Iterator[None]:
    """Run the block on behalf of ``value``: rules with ``principals=`` match against it."""
    token = _principal.set(value)
    try:
        yield
    finally:
        _principal.reset(token)


def current_principal() -> str | None:
    """The principal set by :func:`principal` (or by ``ChaosMiddleware``), else None."""
    return _principal.get()


def is_production(environ: Any = None) -> bool:
    """True when one of :data:`PRODUCTION_MARKERS` says ``prod``/``production``/``live``."""
    env = os.environ if environ is None else environ
    return any(str(env.get(name, "")).strip().lower() in PRODUCTION_VALUES
               for name in PRODUCTION_MARKERS)


def _wanted(enabled: bool | None) -> bool:
    if enabled is not None:
        return bool(enabled)
    return os.environ.get(ENV_ENABLE, "").strip().lower() in ("1", "true", "yes", "on")


ExceptionSpec = type[BaseException] | BaseException | Callable[[], BaseException]


@dataclass(frozen=True, slots=True)
class Rule:
    """When to inject which fault.

    Matching (every given criterion must hold):

    :param dependency: ``inject`` only: the injector's ``dependency`` name.
    :param route: HTTP only: the request path, exact or a glob (``"/payments/*"``).
    :param methods: HTTP only: request methods (``{"POST"}``).
    :param principals: principals to target (from :func:`principal` or the middleware).
    :param when: a predicate: ``when(*args, **kwargs)`` for ``inject``, ``when(scope)`` in ASGI,
        ``when(environ)`` in WSGI.

    Fault (applied when a matching call draws below ``rate``):

    :param rate: probability from 0 to 1 (default 1: every matching call).
    :param latency: seconds to wait before the call (or before the other faults).
    :param exception: exception class, instance (copied) or factory to raise.
    :param status: HTTP only: answer with this status (RFC 9457 problem+json) instead of calling
        the application.
    :param name: low-cardinality name for telemetry (default ``"rule-<index>"``).
    """

    rate: float = 1.0
    latency: float = 0.0
    exception: ExceptionSpec | None = None
    status: int | None = None
    dependency: str | None = None
    route: str | None = None
    methods: Collection[str] | None = None
    principals: Collection[str] | None = None
    when: Callable[..., bool] | None = None
    name: str = ""
    _route: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.rate, bool) or not isinstance(self.rate, int | float) or not (
            0.0 <= self.rate <= 1.0
        ):
            raise ConfigurationError(f"rate is a probability from 0 to 1; got {self.rate!r}")
        if not isinstance(self.latency, int | float) or not 0 <= self.latency <= 3600:
            raise ConfigurationError(
                f"latency is in seconds, from 0 to 3600; got {self.latency!r}"
            )
        if self.status is not None and (type(self.status) is not int
                                        or not 400 <= self.status <= 599):
            raise ConfigurationError(f"status must be an HTTP error status 400-599; got"
                                     f" {self.status!r}")
        if self.exception is not None and not (
            isinstance(self.exception, BaseException) or callable(self.exception)
        ):
            raise ConfigurationError(
                f"exception must be an exception class, instance or factory; got"
                f" {self.exception!r}"
            )
        if not (self.latency or self.exception is not None or self.status is not None):
            raise ConfigurationError(
                "a chaos rule needs a fault: latency=seconds, exception=... or status=503"
            )
        for name in ("methods", "principals"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise ConfigurationError(f"{name} is a collection: write {name}={{{value!r}}}")
            if value is not None:
                norm = {v.upper() for v in value} if name == "methods" else set(value)
                object.__setattr__(self, name, frozenset(norm))
        if self.route is not None:
            if not isinstance(self.route, str) or not self.route.startswith("/"):
                raise ConfigurationError(f"route is a path such as '/payments/*'; got"
                                         f" {self.route!r}")
            object.__setattr__(self, "_route", re.compile(fnmatch.translate(self.route)))

    def make_exception(self) -> BaseException:
        """A fresh exception to raise for this rule."""
        spec = self.exception
        if isinstance(spec, BaseException):
            return copy.copy(spec)
        if isinstance(spec, type):
            made: BaseException
            try:
                made = spec(f"fault injected by chaos rule {self.name!r}")
            except TypeError:
                made = spec()
            return made
        if spec is None:
            return InjectedFault(f"fault injected by chaos rule {self.name!r}")
        return spec()


class Engine:
    """The seeded decision core shared by :class:`Injector` and the HTTP middleware.

    It decides without I/O: :meth:`decide` returns the rules that fire for one call; the drivers
    sleep and raise. Thread-safe (one lock around each call's draws).
    """

    def __init__(self, rules: Sequence[Rule], *, seed: int | None = None,
                 enabled: bool | None = None, force: bool = False, name: str = "chaos") -> None:
        if not all(isinstance(r, Rule) for r in rules):
            raise ConfigurationError("rules must be chaos.Rule(...) objects")
        self.rules = tuple(
            r if r.name else dataclasses.replace(r, name=f"rule-{i}") for i, r in enumerate(rules)
        )
        self.name = name
        self.seed = seed
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.calls = 0
        self.injected: Counter[str] = Counter()
        self.on = False
        if _wanted(enabled):
            self.enable(force=force)

    @property
    def enabled(self) -> bool:
        """True while faults are injected."""
        return self.on

    def enable(self, *, force: bool = False) -> bool:
        """Switch chaos on; refused (stays off, logs a warning) in production unless forced.
        Returns whether chaos is on."""
        if not force and is_production():
            telemetry.logger.warning(
                "chaos %r: refusing to enable because the environment says production; pass"
                " force=True to inject faults there anyway", self.name
            )
            self.on = False
            return False
        self.on = True
        return True

    def disable(self) -> None:
        """Switch chaos off."""
        self.on = False

    def reseed(self, seed: int | None) -> None:
        """Restart the fault sequence from ``seed``."""
        with self._lock:
            self.seed = seed
            self._rng = random.Random(seed)

    def decide(self, matches: Callable[[Rule], bool]) -> list[Rule]:
        """Draw once for each matching rule, in order; return those that fire."""
        candidates = [r for r in self.rules if matches(r)]
        with self._lock:
            self.calls += 1
            draws = [self._rng.random() for _ in candidates]
        return [r for r, u in zip(candidates, draws, strict=True) if u < r.rate]

    def record(self, rule: Rule, fault: str, extra: dict[str, Any] | None = None) -> None:
        """Count an injected fault and mark it in telemetry."""
        with self._lock:
            self.injected[fault] += 1
        if telemetry.active():
            labels = {_Attr.PATTERN: telemetry.Pattern.CHAOS, _Attr.NAME: self.name,
                      _Attr.CHAOS_FAULT: fault}
            telemetry.injected_counter.add(1, labels)
            span = _trace.get_current_span()
            if span.is_recording():
                span.add_event(telemetry.Event.CHAOS_INJECTED,
                               {**labels, _Attr.CHAOS_RULE: rule.name, **(extra or {})})

    def latency(self, fired: Sequence[Rule]) -> float:
        """Total latency of the fired rules (each recorded)."""
        total = 0.0
        for rule in fired:
            if rule.latency:
                total += rule.latency
                self.record(rule, "latency", {_Attr.CHAOS_LATENCY: float(rule.latency)})
        return total

    def failure(self, fired: Sequence[Rule], *, http_edge: bool = False) -> Rule | None:
        """The first fired rule that fails the call (status in HTTP, else exception)."""
        for rule in fired:
            if http_edge and rule.status is not None:
                self.record(rule, "status", {_Attr.HTTP_STATUS: rule.status})
                return rule
            if rule.exception is not None:
                exc_type = _exception_name(rule)
                self.record(rule, "exception", {_Attr.ERROR_TYPE: exc_type})
                return rule
        return None


def _exception_name(rule: Rule) -> str:
    spec = rule.exception
    if isinstance(spec, type):
        return spec.__qualname__
    if isinstance(spec, BaseException):
        return type(spec).__qualname__
    return "InjectedFault" if spec is None else getattr(spec, "__qualname__", "exception")


class Injector:
    """Injects faults into the calls it wraps; use it as a decorator (sync or async) or call
    :meth:`check` / :meth:`acheck` before a call yourself. Built by :func:`inject`."""

    def __init__(self, engine: Engine, *, dependency: str | None = None,
                 principal_of: Callable[..., str | None] | None = None,
                 sleep: Callable[[float], None] | None = None,
                 asleep: Callable[[float], Awaitable[None]] | None = None) -> None:
        for rule in engine.rules:
            if rule.status is not None or rule.route is not None or rule.methods is not None:
                raise ConfigurationError(
                    "status=, route= and methods= apply to ChaosMiddleware; for a callable use"
                    " latency= and exception="
                )
        self.engine = engine
        self.dependency = dependency
        self._principal_of = principal_of
        self._sleep = sleep if sleep is not None else time.sleep
        self._asleep = asleep if asleep is not None else asyncio.sleep

    @property
    def enabled(self) -> bool:
        """True while faults are injected."""
        return self.engine.on

    def enable(self, *, force: bool = False) -> bool:
        """Switch on (refused in production unless ``force``)."""
        return self.engine.enable(force=force)

    def disable(self) -> None:
        """Switch off."""
        self.engine.disable()

    def _decide(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Rule]:
        who = (self._principal_of(*args, **kwargs) if self._principal_of is not None
               else _principal.get())

        def matches(rule: Rule) -> bool:
            return ((rule.dependency is None or rule.dependency == self.dependency)
                    and (rule.principals is None or who in rule.principals)
                    and (rule.when is None or bool(rule.when(*args, **kwargs))))

        return self.engine.decide(matches)

    def _plan(self, args: tuple[Any, ...], kwargs: dict[str, Any]
              ) -> tuple[float, Rule | None] | None:
        """What to inject into this call, decided without waiting: ``(delay, failing rule)``,
        or None when nothing fires."""
        fired = self._decide(args, kwargs)
        if not fired:
            return None
        return self.engine.latency(fired), self.engine.failure(fired)

    def check(self, *args: Any, **kwargs: Any) -> None:
        """Inject for one call with these arguments: wait and/or raise. No-op when disabled."""
        plan = self._plan(args, kwargs) if self.engine.on else None
        if plan is not None:
            if plan[0]:
                self._sleep(plan[0])
            if plan[1] is not None:
                raise plan[1].make_exception()

    async def acheck(self, *args: Any, **kwargs: Any) -> None:
        """Async twin of :meth:`check` (waits with ``asyncio.sleep``)."""
        plan = self._plan(args, kwargs) if self.engine.on else None
        if plan is not None:
            if plan[0]:
                await self._asleep(plan[0])
            if plan[1] is not None:
                raise plan[1].make_exception()

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        """Wrap ``fn``; while disabled the wrapper costs one attribute check."""
        engine = self.engine
        if inspect.iscoroutinefunction(fn):
            afn = cast(Callable[P, Awaitable[Any]], fn)
            acheck = self.acheck

            @functools.wraps(fn)
            async def awrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                if engine.on:
                    await acheck(*args, **kwargs)
                return await afn(*args, **kwargs)

            return cast(Callable[P, R], awrapper)
        check = self.check

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            if engine.on:
                check(*args, **kwargs)
            return fn(*args, **kwargs)

        return wrapper

    def __repr__(self) -> str:
        state = "on" if self.engine.on else "off"
        return (f"<chaos.Injector {self.dependency or self.engine.name!r} {state}"
                f" seed={self.engine.seed} rules={len(self.engine.rules)}>")


def inject(*, latency: float = 0.0, latency_rate: float = 1.0,
           exception: ExceptionSpec | None = None, error_rate: float | None = None,
           rules: Sequence[Rule] = (), dependency: str | None = None,
           principals: Collection[str] | None = None, when: Callable[..., bool] | None = None,
           seed: int | None = None, enabled: bool | None = None, force: bool = False,
           principal: Callable[..., str | None] | None = None,
           sleep: Callable[[float], None] | None = None,
           asleep: Callable[[float], Awaitable[None]] | None = None) -> Injector:
    """Build an :class:`Injector`: a decorator for sync or async callables.

    >>> @inject(latency=0.2, error_rate=0.05, exception=TimeoutError, seed=1, enabled=True,
    ...         sleep=lambda s: None)
    ... def charge(amount: int) -> str: return "ok"

    :param latency: seconds added to calls (with probability ``latency_rate``, default always).
    :param exception: what to raise (class, instance or factory; default :class:`InjectedFault`
        when ``error_rate`` is given).
    :param error_rate: probability of raising (default 1 when ``exception`` is given).
    :param rules: further :class:`Rule` objects, after the two shortcut rules (latency first,
        then error; each is a rule that draws once per matching call).
    :param dependency: the name of the wrapped dependency (telemetry ``resilience.name``; rules
        with ``dependency=`` match it).
    :param principals, when: matching criteria for the shortcut rules.
    :param seed: seed of this injector's ``random.Random``: the fault sequence is reproducible.
    :param enabled: ``True`` to enable, ``False`` to keep off; default: the environment variable
        ``FINTECH_RESILIENCE_CHAOS``.
    :param force: enable even where the environment says production.
    :param principal: ``principal(*args, **kwargs) -> str | None``; default
        :func:`current_principal`.
    :param sleep, asleep: how to wait (tests pass recorders).
    """
    shortcuts: list[Rule] = []
    crit: dict[str, Any] = {"principals": principals, "when": when}
    if latency:
        shortcuts.append(Rule(rate=latency_rate, latency=latency, name="latency", **crit))
    if exception is not None or error_rate is not None:
        rate = 1.0 if error_rate is None else error_rate
        shortcuts.append(Rule(rate=rate, exception=exception or InjectedFault, name="error",
                              **crit))
    all_rules = [*shortcuts, *rules]
    if not all_rules:
        raise ConfigurationError(
            "chaos.inject needs a fault: latency=seconds, error_rate=0.05, exception=... or rules="
        )
    engine = Engine(all_rules, seed=seed, enabled=enabled, force=force,
                    name=dependency or "chaos")
    return Injector(engine, dependency=dependency, principal_of=principal, sleep=sleep,
                    asleep=asleep)
