"""A circuit breaker shared by every process through the backend, atomic in one script.

States, trip rules and the HALF_OPEN probe permits live in one hash-tagged key per breaker and
change only inside ``breaker_acquire`` / ``breaker_record`` / ``breaker_control`` (Lua on Redis,
their twins in memory). Each process keeps a :class:`View` of the last reply, so:

* CLOSED (and DISABLED, METRICS_ONLY): the call runs at once; afterwards one ``breaker_record``
  round trip counts the outcome and returns the new state. One round trip per call. (On a
  backend that offers it - the memory backend - a plain success in a full count window is
  counted in place, without the operation: see ``Backend.breaker_success_counter``.)
* OPEN / FORCED_OPEN known locally: rejected with :class:`CircuitOpen` without a round trip; the
  process asks again (one ``breaker_acquire``) when the break is over, or every
  ``refresh_interval`` seconds so operator commands reach it.
* HALF_OPEN: every call asks ``breaker_acquire`` for a probe permit first; exactly
  ``half_open_calls`` permits exist across all processes. Permits are leases: a prober that dies
  loses its permit after ``probe_lease`` seconds and another process probes.

"Next call" consistency: a process that believes the breaker is CLOSED learns of a transition made
elsewhere (a trip, ``force_open()``) from the reply of its next call - that call has already run;
the one after it obeys. Pass ``ask_every_call=True`` to ask before every call instead (two round
trips per call; the very next call obeys).

No lock is held while the protected call runs; sync and async code share every decision.
Listeners, per-call events and the refusal hook: ``events.py``.
"""

from __future__ import annotations

import contextvars
import inspect
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Final, ParamSpec, TypeVar, cast

from ..backends.base import BackendGuard, Fallback, LocalReply, OnBackendError
from ..backends.resolve import BackendSpec, resolve_backend
from ..core import hooks, telemetry
from ..core import storage_keys as _keys
from ..core.clock import Clock
from ..core.decorate import around_calls
from ..core.outcomes import Classifier, Outcome, OutcomeRule, Verdict
from ..core.resets import on_reset
from ..errors import CircuitOpen, ConfigurationError
from . import events
from .controls import OperatorControls
from .events import CallHook, CallKind, Listener
from .state import (
    BreakerState,
    CountWindow,
    Gate,
    Settings,
    TimeWindow,
    Transition,
    View,
    gate,
    view_from,
)

if TYPE_CHECKING:
    from ..audit.log import AuditLog

__all__ = ["BreakerState", "CircuitBreaker", "CountWindow", "Listener", "TimeWindow", "Transition",
           "View"]

P = ParamSpec("P")
R = TypeVar("R")
#: (generation seen when the call started, probe token or "", monotonic start time)
_Ticket = tuple[int, str, float]

_DEFAULT_WINDOW: Final = CountWindow(100)
_CLOSED: Final = BreakerState.CLOSED
_CONTROL: Final = {"read": 0, "reset": 1, "force_open": 2, "disable": 3, "metrics_only": 4}
#: every breaker alive in the process: fintech_resilience.testing.reset() makes them forget
_LIVE: weakref.WeakSet[CircuitBreaker] = weakref.WeakSet()


@on_reset
def _forget_all() -> None:
    for breaker in list(_LIVE):
        breaker._forget()
_KINDS: Final = {Verdict.SUCCESS: CallKind.SUCCESS, Verdict.FAILURE: CallKind.FAILURE,
                 Verdict.NEUTRAL: CallKind.IGNORED}


class CircuitBreaker(OperatorControls):
    """Stops calls to a failing dependency in every process at once, then probes it.

    Use it as a decorator (sync or async functions), ``with breaker:``, ``async with breaker:``
    or :meth:`call`. Raises :class:`~fintech_resilience.CircuitOpen` (with ``retry_after``
    seconds) while open, or returns ``fallback(error, *args, **kwargs)`` for decorated calls.

    :param name: the breaker's name, shared by every process (``[A-Za-z0-9_.-]``, 1-64).
    :param backend: where the state lives: a backend or a URL (``"redis://host:6379/0"``);
        default the process-wide :class:`MemoryBackend`.
    :param failure_rate: trip when failures / calls in the window reach this, in (0, 1].
    :param slow_call_rate: trip when slow calls / calls reach this, in (0, 1].
    :param slow_call_duration: a call taking at least this many seconds is slow (None: off).
    :param minimum_calls: no trip before the window holds this many calls.
    :param window: :class:`CountWindow` (last N calls) or :class:`TimeWindow` (last N seconds).
    :param break_duration: seconds OPEN lasts before probing.
    :param break_duration_multiplier: each consecutive trip (without a close in between)
        multiplies the break by this (1 = constant), capped at ``max_break_duration``
        (default ``max(break_duration, 300)``).
    :param half_open_calls: probes admitted in HALF_OPEN across all processes; the breaker reopens
        as soon as the probes' failures (or slow calls) reach the rate over ``half_open_calls``,
        and closes when all probes are recorded below it.
    :param probe_lease: seconds a probe permit lives if its holder never reports.
    :param failure: rule deciding failures (default: any ``Exception``); see
        :mod:`fintech_resilience.outcomes`.
    :param neutral: rule for outcomes that count for neither side (a card decline).
    :param ignore: exception classes that count for neither side.
    :param fallback: called as ``fallback(error, *args, **kwargs)`` instead of raising
        :class:`CircuitOpen` from a decorated call or :meth:`call`.
    :param listeners: callables receiving every :class:`Transition` this process sees.
    :param on_call: called with a :class:`~fintech_resilience.breaker.events.CallEvent` after
        every call (success, failure, ignored, rejected; with its duration and slowness).
    :param on_refusal: called with a :class:`~fintech_resilience.core.hooks.Refusal` for every
        rejected call. Hooks that raise are logged; the call goes on.
    :param on_backend_error: ``"local"`` (default: a per-process breaker continues from the
        last state this process learned - a known OPEN rejects until its break ends, FORCED_OPEN
        until the backend answers again), ``"allow"``, ``"deny"`` or ``"raise"``.
    :param refresh_interval: while rejecting locally, ask the backend at most this often (so
        ``reset()`` elsewhere is seen within it); 0 asks on every rejected call.
    :param ask_every_call: ask the backend before every call (strict consistency, 2 round trips).
    :param clock: a :class:`~fintech_resilience.testing.ManualClock` for tests (its time is then
        passed to the backend); default: real time, the backend's clock for shared state.
    :param audit: an :class:`~fintech_resilience.audit.AuditLog` for the transitions this process
        causes (``breaker.transition``) and operator commands (``operator.override``); default
        :func:`fintech_resilience.audit.get_default`.
    """

    def __init__(self, name: str, *, backend: BackendSpec = None, failure_rate: float = 0.5,
                 slow_call_rate: float = 1.0, slow_call_duration: float | None = None,
                 minimum_calls: int = 20, window: CountWindow | TimeWindow = _DEFAULT_WINDOW,
                 break_duration: float = 30.0, break_duration_multiplier: float = 1.0,
                 max_break_duration: float | None = None, half_open_calls: int = 3,
                 probe_lease: float = 30.0, failure: OutcomeRule | None = None,
                 neutral: OutcomeRule | None = None, ignore: Iterable[type[BaseException]] = (),
                 fallback: Callable[..., Any] | None = None, listeners: Iterable[Listener] = (),
                 on_call: CallHook | None = None, on_refusal: hooks.RefusalHook | None = None,
                 on_backend_error: OnBackendError = "local", refresh_interval: float = 1.0,
                 ask_every_call: bool = False, clock: Clock | None = None,
                 namespace: str = _keys.DEFAULT_NAMESPACE, audit: AuditLog | None = None) -> None:
        self.name = _keys.validate_name(name)
        self.namespace = _keys.validate_name(namespace, "namespace")
        self.audit = audit
        telemetry.watch_breaker(self)
        _LIVE.add(self)
        self.settings = Settings.build(
            window=window, minimum_calls=minimum_calls, failure_rate=failure_rate,
            slow_call_rate=slow_call_rate, slow_call_duration=slow_call_duration,
            break_duration=break_duration, break_duration_multiplier=break_duration_multiplier,
            max_break_duration=max_break_duration, half_open_calls=half_open_calls,
            probe_lease=probe_lease, refresh_interval=refresh_interval)
        self.classifier = Classifier(failure=failure, neutral=neutral, ignore=ignore)
        if fallback is not None and not callable(fallback):
            raise ConfigurationError("fallback must be a callable: fallback(error, *args, **kw)")
        hooks.check(on_call, "on_call")
        hooks.check(on_refusal, "on_refusal")
        self.fallback = fallback
        self.listeners: list[Listener] = list(listeners)
        self.on_call = on_call
        self.on_refusal = on_refusal
        self.ask_every_call = bool(ask_every_call)
        self.clock = clock
        self._mono = clock.monotonic if clock is not None else time.monotonic
        # with the default rules a call that returned is a success: no Outcome to build
        self._plain_success = failure is None and neutral is None
        self.backend = resolve_backend(backend)
        self._guard = BackendGuard("breaker", self.name, self.backend, on_backend_error)
        # a backend that cannot fail (in process) needs no guard
        direct = not self.backend.can_fail
        self._run = self.backend.run if direct else self._guard.run
        self._arun = self.backend.arun if direct else self._guard.arun
        self._keys = [_keys.name_key(self.namespace, "cb", self.name)]
        self._record_tail = self.settings.record_tail()
        self._acquire_tail = self.settings.acquire_tail()
        self._slow = self.settings.slow_call_duration
        self._refresh = self.settings.refresh_interval
        self._view: View | None = None
        self._seq = 0
        # the view last learned from the backend itself, and the one the local fallback was
        # last given (see _prepare_local)
        self._shared: View | None = None
        self._seeded: View | None = None
        self._seed_lock = threading.Lock()
        self._guard.prepare_local = self._prepare_local
        # a count window on a backend that counts successes in CLOSED in place (memory)
        self._closed_success: Callable[[int], bool] | None = None
        window = self.settings.window
        if isinstance(window, CountWindow):
            self._closed_success = self.backend.breaker_success_counter(
                self._keys[0], window.size, self.settings.ttl_ms,
                None if clock is None else self._now_us)
        # ... and when neither the outcome rules, slow calls nor on_call need the result or the
        # duration
        self._quick = (self._closed_success if self._plain_success and self._slow is None
                       and on_call is None else None)
        self._tickets: contextvars.ContextVar[tuple[_Ticket, ...]] = contextvars.ContextVar(
            f"breaker:{self.name}", default=())

    def _forget(self) -> None:
        """Forget the state this process learned (``fintech_resilience.testing.reset``)."""
        self._view = self._shared = self._seeded = None

    # -- pure steps (no I/O) ----------------------------------------------------------------------
    def _now_us(self) -> int:
        return 0 if self.clock is None else round(self.clock.time() * 1_000_000)

    def _pre(self) -> _Ticket | None:
        """A ticket to run now, None to ask the backend first; raises CircuitOpen if known OPEN."""
        view = self._view
        now = self._mono()
        if view is not None and view.state is _CLOSED and not self.ask_every_call:
            return (view.gen, "", now)  # the common case of gate(), decided inline
        decided = gate(view, now, self.ask_every_call)
        if decided is Gate.RUN:
            return (view.gen, "", now)  # type: ignore[union-attr]
        if decided is Gate.REJECT:
            raise self._rejection(view, now)  # type: ignore[arg-type]
        return None

    def _acquire_args(self, token: str) -> tuple[Any, ...]:
        return (self._now_us(), token, *self._acquire_tail)

    def _after_acquire(self, result: Any, token: str, seq: int) -> _Ticket:
        now = self._mono()
        if isinstance(result, Fallback):
            if result.allow:
                return (-1, "", now)
            raise events.refused(self, CircuitOpen(self.name, self._refresh or 1.0, None))
        view = self._apply(result, seq, now)
        if result[3]:
            probe = token if view.state is BreakerState.HALF_OPEN else ""
            return (view.gen, probe, now)
        raise self._rejection(view, now)

    def _record_args(self, ticket: _Ticket, result: Any, exc: BaseException | None,
                     in_place: bool = True) -> tuple[Any, ...] | None:
        duration = self._mono() - ticket[2]
        if telemetry.active():
            telemetry.record_call(telemetry.Pattern.BREAKER, self.name, duration, exc)
        if exc is None and self._plain_success:
            verdict = Verdict.SUCCESS
        else:
            verdict = self.classifier.classify(Outcome(result, exc, duration))
        slow = 1 if self._slow is not None and duration >= self._slow else 0
        if self.on_call is not None:
            events.called(self, _KINDS[verdict], duration, bool(slow), exc, result)
        if verdict is Verdict.NEUTRAL and not ticket[1]:
            return None  # counts for nothing and holds no permit: no round trip
        if (in_place and verdict is Verdict.SUCCESS and not slow and not ticket[1]
                and self._closed_success is not None and self._closed_success(ticket[0])):
            return None  # counted in place; the state did not change, nor does the view
        code = 0 if verdict is Verdict.NEUTRAL else 2 if verdict is Verdict.FAILURE else 1
        return (self._now_us(), ticket[0], ticket[1], code, slow, *self._record_tail)

    def _after_record(self, result: Any, seq: int) -> None:
        if isinstance(result, Fallback):
            if not result.allow:
                self._view = None  # "deny": ask (and be refused) before the next call
            return
        self._apply(result, seq, self._mono())

    def _rejection(self, view: View, now: float) -> CircuitOpen:
        retry_after = view.retry_after
        if view.state is BreakerState.OPEN:
            retry_after = max(0.0, view.ends - now)
        elif view.state is BreakerState.HALF_OPEN:
            retry_after = min(retry_after, self._refresh)
        if telemetry.active():
            telemetry.emit_decision("breaker", self.name, "reject", {
                telemetry.Attr.STATE: view.state.name,
                telemetry.Attr.RETRY_AFTER: retry_after,
            })
        return events.refused(self, CircuitOpen(self.name, retry_after, view.state))

    def _apply(self, reply: Any, seq: int, now: float) -> View:
        """Adopt a reply as the new view (unless a newer one arrived meanwhile); notify."""
        new = view_from(reply, now, self._refresh)
        old = self._view
        if old is not None and new.gen < old.gen and seq != self._seq:
            return new  # an older reply overtaken by a newer one: keep the newer view
        self._view = new
        self._seq += 1
        if type(reply) is not LocalReply:
            self._shared = new
        previous = int(reply[4])
        if previous >= 0:
            events.announce(self, Transition(self.name, BreakerState(previous), new.state, True,
                                             new.retry_after))
        elif old is not None and old.state is not new.state:
            events.announce(self, Transition(self.name, old.state, new.state, False,
                                             new.retry_after))
        return new

    # -- sync driver ------------------------------------------------------------------------------
    def _enter(self) -> _Ticket:
        ticket = self._pre()
        if ticket is None:
            token = _keys.token()
            seq = self._seq
            result = self._run("breaker_acquire", self._keys, self._acquire_args(token))
            ticket = self._after_acquire(result, token, seq)
        return ticket

    def _exit(self, ticket: _Ticket, result: Any, exc: BaseException | None,
              in_place: bool = True) -> None:
        args = self._record_args(ticket, result, exc, in_place)
        if args is not None:
            seq = self._seq
            self._after_record(self._run("breaker_record", self._keys, args), seq)

    def call(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> R:
        """Run ``fn(*args, **kwargs)`` under the breaker (fallback applies)."""
        view = self._view
        if view is not None and view.state is _CLOSED and not self.ask_every_call:
            ticket = (view.gen, "", self._mono())  # _pre's common case, inline
        else:
            try:
                ticket = self._enter()
            except CircuitOpen as exc:
                if self.fallback is None:
                    raise
                return cast(R, self.fallback(exc, *args, **kwargs))
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._exit(ticket, None, exc)
            raise
        quick = self._quick  # a plain success counted in place, if it may be (see __init__)
        if quick is None or ticket[1] or telemetry.active():
            self._exit(ticket, result, None)
        elif not quick(ticket[0]):
            self._exit(ticket, result, None, in_place=False)
        return result

    def __enter__(self) -> CircuitBreaker:
        ticket = self._enter()
        self._tickets.set((*self._tickets.get(), ticket))
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        stack = self._tickets.get()
        ticket = stack[-1]
        self._tickets.set(stack[:-1])
        self._exit(ticket, None, exc)

    # -- async driver -----------------------------------------------------------------------------
    async def _aenter(self) -> _Ticket:
        ticket = self._pre()
        if ticket is None:
            token = _keys.token()
            seq = self._seq
            result = await self._arun("breaker_acquire", self._keys, self._acquire_args(token))
            ticket = self._after_acquire(result, token, seq)
        return ticket

    async def _aexit(self, ticket: _Ticket, result: Any, exc: BaseException | None) -> None:
        args = self._record_args(ticket, result, exc)
        if args is not None:
            seq = self._seq
            self._after_record(await self._arun("breaker_record", self._keys, args), seq)

    async def acall(self, fn: Callable[..., Awaitable[R]], /, *args: Any, **kwargs: Any) -> R:
        """Async twin of :meth:`call` (the fallback may be sync or async)."""
        try:
            ticket = await self._aenter()
        except CircuitOpen as exc:
            if self.fallback is None:
                raise
            value = self.fallback(exc, *args, **kwargs)
            return cast(R, await value if inspect.isawaitable(value) else value)
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            await self._aexit(ticket, None, exc)
            raise
        await self._aexit(ticket, result, None)
        return result

    async def __aenter__(self) -> CircuitBreaker:
        ticket = await self._aenter()
        self._tickets.set((*self._tickets.get(), ticket))
        return self

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        stack = self._tickets.get()
        ticket = stack[-1]
        self._tickets.set(stack[:-1])
        await self._aexit(ticket, None, exc)

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        """Decorate a sync or async function."""
        return around_calls(fn, self.call, self.acall)

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(transition)`` on every transition this process sees."""
        self.listeners.append(listener)

    def __repr__(self) -> str:
        known = self.known_state
        return (f"CircuitBreaker({self.name!r}, state={'unknown' if known is None else known.name},"
                f" backend={self.backend!r})")

