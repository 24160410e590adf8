"""Rate limiting: GCRA (default), sliding window and fixed window, local or shared through Redis.

Several limits in one string (``"10/second; 1000/day"``) are checked and consumed all-or-nothing in
one backend call: a request refused by the daily limit consumes nothing from the per-second one.
``cost`` makes amount-based velocity limits (``"1000000/day"`` with ``cost=amount_minor_units``).

Semantics, all times in seconds:

* ``gcra`` - a token bucket of ``burst`` tokens (default: the limit) refilled at ``limit / period``.
  In any interval of ``t`` seconds at most ``burst + limit * t / period`` units are admitted.
* ``sliding_window`` - two clock-aligned windows; the previous one counts in proportion to its
  overlap with the sliding window that ends now. O(1) memory per key (no log of hits).
* ``fixed_window`` - windows aligned on the clock (a ``day`` starts at 00:00 UTC); at most
  ``limit`` units per window.

A :class:`Decision` carries everything the HTTP ``RateLimit``/``RateLimit-Policy``/``Retry-After``
fields need, so headers cost no second round trip. ``reset_after`` is the time until the full
quota is available again; ``retry_after`` the time until this request's cost would fit (``inf``
when the cost exceeds a limit outright; 0 when allowed).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, ParamSpec, TypeVar, cast

import limits as _limits
from opentelemetry import trace as _trace
from opentelemetry.metrics import _internal as _metrics

from . import _keys, telemetry
from . import audit as _audit
from ._clock import Clock
from .backends.base import (
    ALLOW,
    Backend,
    BackendGuard,
    Fallback,
    LocalReply,
    OnBackendError,
)
from .backends.memory import MemoryBackend, default_backend
from .backends.memory_ops.ratelimit import gcra_one_bound
from .errors import ConfigurationError, RateLimited

__all__ = ["ALGORITHMS", "Decision", "LimitStatus", "RateLimiter", "parse_limits"]

Algorithm = Literal["gcra", "sliding_window", "fixed_window"]
ALGORITHMS: Final = ("gcra", "sliding_window", "fixed_window")
#: Largest cost or limit accepted: sums stay exact in the doubles Lua computes with.
MAX_AMOUNT: Final = 2**48
_KEY_CACHE_SIZE: Final = 4096
#: ``cost is _ONE``: the default cost (CPython's one small-int 1), valid without more checks
_ONE: Final = 1

P = ParamSpec("P")
R = TypeVar("R")
KeyArg = str | bytes | int


@dataclass(frozen=True, slots=True)
class Rate:
    """One parsed limit: ``amount`` units per ``period`` seconds."""

    amount: int
    period: int
    text: str

    def __str__(self) -> str:
        return self.text


def parse_limits(spec: str | Sequence[str]) -> tuple[Rate, ...]:
    """Parse ``"10/second; 1000/day"`` (``limits`` notation) into rates, shortest period first."""
    texts = [spec] if isinstance(spec, str) else (
        list(spec) if isinstance(spec, list | tuple) else []
    )
    if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise ConfigurationError(
            f"a rate limit is a string such as '10/second' or '10/second; 1000/day'; got {spec!r}"
        )
    rates: list[Rate] = []
    for text in texts:
        try:
            items = _limits.parse_many(text)
        except ValueError as exc:
            raise ConfigurationError(
                f"cannot parse rate limit {text!r}: write e.g. '10/second', '100 per minute' or"
                f" '10/second; 1000/day'"
            ) from exc
        for item in items:
            if not 1 <= item.amount <= MAX_AMOUNT:
                raise ConfigurationError(
                    f"a limit must allow between 1 and {MAX_AMOUNT} units; got {item.amount}"
                    f" in {text!r}"
                )
            unit = item.GRANULARITY.name
            per = unit if item.multiples == 1 else f"{item.multiples} {unit}s"
            rates.append(Rate(item.amount, item.get_expiry(), f"{item.amount}/{per}"))
    if len(rates) > 16:
        raise ConfigurationError("at most 16 limits can be combined in one RateLimiter")
    return tuple(sorted(rates, key=lambda r: (r.period, r.amount)))


@dataclass(frozen=True, slots=True)
class LimitStatus:
    """The state of one limit after a decision."""

    limit: int
    window: float
    remaining: int
    reset_after: float
    policy: str


class Decision:
    """The answer of a rate limiter. ``limit``/``remaining``/``reset_after``/``policy`` describe
    the tightest of the limits (the one closest to exhaustion); ``limits`` lists all of them.

    ``shadowed`` is true when the limiter runs with ``shadow=True`` and the limit would have
    refused (``allowed`` is then True). ``fallback`` names the ``on_backend_error`` policy that
    decided because the backend failed: ``"allow"``, ``"deny"`` or ``"local"`` (counted by this
    process alone); it is None for decisions taken by the backend itself.
    """

    __slots__ = ("_limiter", "_limits", "_raw", "_tight", "allowed", "fallback", "shadowed")

    def __init__(self, allowed: bool, raw: Sequence[int], limiter: RateLimiter,
                 shadowed: bool = False, fallback: str | None = None) -> None:
        self.allowed = allowed
        self.shadowed = shadowed
        self.fallback = fallback
        self._raw = raw
        self._limiter = limiter
        # ``_limits`` and ``_tight`` are filled on first use (most decisions never need them)

    @property
    def measured(self) -> bool:
        """False when an ``on_backend_error`` policy allowed or denied without any counter."""
        return bool(self._raw)

    @property
    def limits(self) -> tuple[LimitStatus, ...]:
        """Every limit of the limiter, in the order of ``RateLimiter.rates``."""
        try:
            return self._limits
        except AttributeError:
            pass
        raw, rates = self._raw, self._limiter.rates
        if not raw:  # decided by on_backend_error: nothing is known about the counters
            self._limits: tuple[LimitStatus, ...] = tuple(
                LimitStatus(r.amount, float(r.period), r.amount if self.allowed else 0, 0.0,
                            r.text) for r in rates)
        else:
            self._limits = tuple(
                LimitStatus(r.amount, float(r.period), int(raw[2 * i + 2]),
                            raw[2 * i + 3] / 1_000_000, r.text)
                for i, r in enumerate(rates))
        return self._limits

    def _index(self) -> int:
        """Index of the tightest limit: fewest remaining, then the longest to reset."""
        rates = self._limiter.rates
        if len(rates) == 1:
            return 0
        try:
            return self._tight
        except AttributeError:
            pass
        raw = self._raw
        if raw:
            i = min(range(len(rates)), key=lambda j: (int(raw[2 * j + 2]), -raw[2 * j + 3]))
        else:
            i = min(range(len(rates)), key=lambda j: rates[j].amount if self.allowed else 0)
        self._tight: int = i
        return i

    @property
    def tightest(self) -> LimitStatus:
        """The limit closest to exhaustion (fewest remaining; then the longest to reset)."""
        return self.limits[self._index()]

    @property
    def limit(self) -> int:
        """The tightest limit's amount (units per window)."""
        return self._limiter.rates[self._index()].amount

    @property
    def remaining(self) -> int:
        """Units of the tightest limit left after this decision."""
        i = self._index()
        if not self._raw:
            return self._limiter.rates[i].amount if self.allowed else 0
        return int(self._raw[2 * i + 2])

    @property
    def reset_after(self) -> float:
        """Seconds until the tightest limit's full quota is available again."""
        return self._raw[2 * self._index() + 3] / 1_000_000 if self._raw else 0.0

    @property
    def policy(self) -> str:
        """The tightest limit as text, e.g. ``"10/second"``."""
        return self._limiter.rates[self._index()].text

    @property
    def policy_label(self) -> str:
        """The tightest limit's item name in the HTTP fields (``"api"``, or ``"api-1"``)."""
        limiter = self._limiter
        return limiter.name if len(limiter.rates) == 1 else f"{limiter.name}-{self._index()}"

    @property
    def retry_after(self) -> float:
        """Seconds until this request's cost would be admitted; ``inf`` if it never can."""
        if self.allowed or not self._raw:
            return 0.0 if self.allowed else float(self._limiter.deny_retry_after)
        wait = self._raw[1]
        return math.inf if wait < 0 else wait / 1_000_000

    def ratelimit_field(self) -> str | None:
        """The IETF ``RateLimit`` field: the tightest limit as ``"<policy>";r=<remaining>;t=<s>``.

        ``t`` is the effective window (draft-ietf-httpapi-ratelimit-headers): the whole seconds
        within which the client can use no more than ``r`` - for GCRA the time until one more
        unit is available, for the window algorithms the time until the window resets. None when
        an ``on_backend_error`` policy decided (nothing was measured: the field is omitted).
        """
        if not self._raw:
            return None
        remaining, window = field_parts(self._limiter, self._raw, self._index())
        return f'"{self.policy_label}";r={remaining};t={window}'

    def headers(self, *, retry_after: bool = True) -> dict[str, str]:
        """The IETF ``RateLimit``/``RateLimit-Policy`` fields (and ``Retry-After`` if refused).

        ``RateLimit`` is omitted when an ``on_backend_error`` policy decided (nothing measured).
        """
        out = {"RateLimit-Policy": self._limiter.policy_field}
        item = self.ratelimit_field()
        if item is not None:
            out["RateLimit"] = item
        if retry_after and not self.allowed:
            wait = self.retry_after
            if not math.isinf(wait):
                out["Retry-After"] = str(max(1, math.ceil(wait)))
        return out

    def _key(self) -> tuple[Any, ...]:
        return (self.allowed, self.shadowed, self.fallback, self.retry_after, self.limits)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Decision) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __bool__(self) -> bool:
        return self.allowed

    def __repr__(self) -> str:
        extra = " shadowed" if self.shadowed else (f" fallback={self.fallback}"
                                                    if self.fallback else "")
        return (f"<Decision allowed={self.allowed} policy={self.policy!r} limit={self.limit}"
                f" remaining={self.remaining} reset_after={self.reset_after:.3f}"
                f" retry_after={self.retry_after:.3f}{extra}>")


def _check_cost(cost: int) -> None:
    if type(cost) is not int or not 1 <= cost <= MAX_AMOUNT:
        raise ConfigurationError(
            f"cost must be an int between 1 and {MAX_AMOUNT} (money in integer minor units);"
            f" got {cost!r}"
        )


_ceil = math.ceil


def field_parts(limiter: RateLimiter, raw: Sequence[int], i: int) -> tuple[int, int]:
    """``(r, t)`` of the IETF ``RateLimit`` item of ``limiter``'s limit ``i`` from a measured
    reply ``raw`` (see :meth:`Decision.ratelimit_field`)."""
    j = 2 * i
    remaining = int(raw[j + 2])
    wait_us: float = raw[j + 3]
    if wait_us > 0 and limiter.algorithm == "gcra":
        # the next unit arrives when tau - (tat - now) reaches (remaining + 1) intervals;
        # 1 microsecond of tolerance absorbs the reply's rounding to whole microseconds
        tail = limiter._tail
        next_us = wait_us - tail[j + 1] + (remaining + 1) * tail[j]
        if next_us - 1 < wait_us:
            wait_us = next_us - 1 if next_us > 1 else 0
    return remaining, _ceil(wait_us / 1_000_000)


class _Admitted(Decision):
    """An admission the backend measured, built without an ``__init__`` frame (the hot paths
    set ``_raw`` and ``_limiter``; the flags are class attributes); in every other respect a
    :class:`Decision`."""

    __slots__ = ()
    __init__ = object.__init__
    allowed = True
    shadowed = False
    fallback = None


class RateLimiter:
    """Admits or refuses calls per key under one or more rate limits.

    :param limits: ``"10/second"``, ``"10/second; 1000/day"`` (``limits`` notation) or a list.
    :param backend: where counters live; default a process-wide :class:`MemoryBackend`.
    :param algorithm: ``"gcra"`` (default), ``"sliding_window"`` or ``"fixed_window"``.
    :param name: identifies the limiter in keys, telemetry and headers (``[A-Za-z0-9_.-]``).
    :param burst: GCRA only: bucket size, default the limit's amount (applies to every limit).
    :param shadow: decide and count, but never refuse (``Decision.shadowed`` tells).
    :param on_backend_error: ``"local"`` (default), ``"allow"``, ``"deny"`` or ``"raise"``.
    :param deny_retry_after: ``retry_after`` reported when ``on_backend_error="deny"`` refuses.
    :param clock: pass a :class:`~fintech_resilience.testing.ManualClock` to drive time in tests;
        by default the backend's clock decides (Redis ``TIME``).
    :param audit: where refusals are audited (``ratelimit.limit_hit``); default the process-wide
        :func:`fintech_resilience.audit.get_default` log, if one is set.
    """

    def __init__(self, limits: str | Sequence[str], *, backend: Backend | None = None,
                 algorithm: Algorithm = "gcra", name: str = "default", burst: int | None = None,
                 shadow: bool = False, on_backend_error: OnBackendError = "local",
                 deny_retry_after: float = 1.0, clock: Clock | None = None,
                 namespace: str = _keys.DEFAULT_NAMESPACE,
                 audit: _audit.AuditLog | None = None) -> None:
        if algorithm not in ALGORITHMS:
            raise ConfigurationError(
                f"algorithm must be one of {', '.join(ALGORITHMS)}; got {algorithm!r}"
            )
        if burst is not None and (type(burst) is not int or not 1 <= burst <= MAX_AMOUNT):
            raise ConfigurationError(f"burst must be a positive int; got {burst!r}")
        if burst is not None and algorithm != "gcra":
            raise ConfigurationError("burst applies to algorithm='gcra' only")
        self.rates = parse_limits(limits)
        self.audit = audit
        self.algorithm: Algorithm = algorithm
        self.name = _keys.validate_name(name)
        self.namespace = _keys.validate_name(namespace, "namespace")
        self.shadow = bool(shadow)
        self.clock = clock
        self.burst = burst
        self.deny_retry_after = float(deny_retry_after)
        self.backend = backend if backend is not None else default_backend()
        self._guard = BackendGuard("ratelimit", self.name, self.backend, on_backend_error)
        # a MemoryBackend cannot fail: skip the guard on the hot path
        self._run = (self.backend.run if isinstance(self.backend, MemoryBackend)
                     else self._guard.run)
        # str and bytes keys only: a hit then needs no type check (True == 1, but no bool
        # equals a str or bytes); int keys go through user_key's typed cache
        self._key_cache: dict[KeyArg, list[str]] = {}
        # one GCRA limit (the common case) has a leaner script: same reply, less Redis time
        self._script = ("ratelimit_gcra1" if algorithm == "gcra" and len(self.rates) == 1
                        else f"ratelimit_{algorithm}")
        self._kind = f"rl.{algorithm}"
        tail: list[int | float] = []
        for rate in self.rates:
            period_us = rate.period * 1_000_000
            if algorithm == "gcra":
                interval = period_us / rate.amount
                tail += [interval, interval * (burst if burst is not None else rate.amount)]
            else:
                tail += [rate.amount, period_us]
        self._tail = tuple(tail)
        # ... as the scripts receive them: fractions written once (as redis-py would write them),
        # not on every call
        self._args_tail = tuple(repr(x) if isinstance(x, float) else x for x in tail)
        # the arguments of a call at cost 1 on the backend's clock (most calls): the same tuple
        # every time, so a backend may keep its encoding
        self._constant_args = (0, 1, *self._args_tail)
        # the memory default with one GCRA limit: the twin bound to its store, no dispatch
        self._local: Callable[[str, int], list[int]] | None = None
        if isinstance(self.backend, MemoryBackend) and algorithm == "gcra" and len(tail) == 2:
            clock_us = (None if clock is None
                        else lambda: round(clock.time() * 1_000_000))
            self._local = gcra_one_bound(self.backend, tail[0], tail[1], clock_us)
        self._suffixes = tuple(f":{i}" for i in range(len(self.rates)))
        #: the IETF ``RateLimit-Policy`` field of this limiter (configuration only: built once)
        self.policy_field = ", ".join(
            f'"{self.name}{"" if len(self.rates) == 1 else f"-{i}"}";q={r.amount};w={r.period}'
            for i, r in enumerate(self.rates))

    @property
    def on_backend_error(self) -> OnBackendError:
        return self._guard.policy

    def _request(self, key: KeyArg, cost: int) -> tuple[list[str], tuple[Any, ...]]:
        if type(cost) is not int or not 1 <= cost <= MAX_AMOUNT:
            _check_cost(cost)
        keys = self._key_cache.get(key)
        if keys is None:
            base = _keys.user_key(self.namespace, self._kind, self.name, key)
            keys = [base + s for s in self._suffixes]
            if type(key) is str or type(key) is bytes:  # never equal to a bool: see _key_cache
                if len(self._key_cache) >= _KEY_CACHE_SIZE:
                    self._key_cache.clear()
                self._key_cache[key] = keys
        if self.clock is None:
            return keys, self._constant_args if cost == 1 else (0, cost, *self._args_tail)
        return keys, (round(self.clock.time() * 1_000_000), cost, *self._args_tail)

    def _decide(self, result: Any, cost: int) -> Decision:
        decision: Decision
        if type(result) is list and result[0]:  # admitted by the backend: the common case
            decision = _Admitted()
            decision._raw = result
            decision._limiter = self
        elif isinstance(result, Fallback):
            decision = Decision(result is ALLOW, (), self, fallback=self._guard.policy)
        else:
            local = "local" if type(result) is LocalReply else None
            if result[0]:
                decision = Decision(True, result, self, False, local)
            elif self.shadow:
                decision = Decision(True, result, self, shadowed=True, fallback=local)
            else:
                decision = Decision(False, result, self, fallback=local)
                if self.audit is not None or _audit._DEFAULT[0] is not None:
                    _audit_limit_hit(self, decision)
        # telemetry.active(), inline: as a call it would cost a memory decision ~4 %
        if _trace._TRACER_PROVIDER is not None or _metrics._METER_PROVIDER is not None:
            self._emit(decision, cost)
        return decision

    def _emit(self, decision: Decision, cost: int) -> None:
        outcome = ("shadow_deny" if decision.shadowed
                   else "allow" if decision.allowed else "deny")
        telemetry.emit_decision(telemetry.Pattern.RATELIMIT, self.name, outcome, {
            telemetry.Attr.ALGORITHM: self.algorithm,
            telemetry.Attr.POLICY: decision.policy,
            telemetry.Attr.REMAINING: decision.remaining,
            telemetry.Attr.RETRY_AFTER: decision.retry_after,
            telemetry.Attr.COST: cost,
        })

    def acquire(self, key: KeyArg, cost: int = 1) -> Decision:
        """Decide for ``key`` and, if admitted, consume ``cost`` from every limit."""
        local = self._local
        if local is None:
            keys, args = self._request(key, cost)
            return self._decide(self._run(self._script, keys, args), cost)
        cached = self._key_cache.get(key)
        if cached is None or (cost is not _ONE and (
                type(cost) is not int or not 1 <= cost <= MAX_AMOUNT)):
            cached = self._request(key, cost)[0]
        raw = local(cached[0], cost)
        if not raw[0]:
            return self._decide(raw, cost)
        # admitted: _decide's first case, inline (a frame is ~6 % of this path)
        decision: Decision = _Admitted()
        decision._raw = raw
        decision._limiter = self
        if _trace._TRACER_PROVIDER is not None or _metrics._METER_PROVIDER is not None:
            self._emit(decision, cost)
        return decision

    async def aacquire(self, key: KeyArg, cost: int = 1) -> Decision:
        """Async twin of :meth:`acquire`."""
        if self._local is not None:  # in process: nothing to await (and no override to call)
            return RateLimiter.acquire(self, key, cost)
        keys, args = self._request(key, cost)
        return self._decide(await self._guard.arun(self._script, keys, args), cost)

    def limit(self, key: Callable[..., KeyArg] | KeyArg,
              cost: Callable[..., int] | int = 1) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Decorate a function (sync or async): each call acquires first, or raises
        :class:`~fintech_resilience.RateLimited`. ``key`` and ``cost`` may be callables that
        receive the call's arguments."""
        key_of = key if callable(key) else (lambda *_a, **_k: key)
        cost_of = cost if callable(cost) else (lambda *_a, **_k: cost)

        def decorate(fn: Callable[P, R]) -> Callable[P, R]:
            if inspect.iscoroutinefunction(fn):
                afn = cast(Callable[P, Awaitable[Any]], fn)

                @functools.wraps(fn)
                async def awrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                    decision = await self.aacquire(key_of(*args, **kwargs),
                                                   cost_of(*args, **kwargs))
                    if not decision.allowed:
                        raise RateLimited(decision)
                    return await afn(*args, **kwargs)

                return cast(Callable[P, R], awrapper)

            @functools.wraps(fn)
            def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
                decision = self.acquire(key_of(*args, **kwargs), cost_of(*args, **kwargs))
                if not decision.allowed:
                    raise RateLimited(decision)
                return fn(*args, **kwargs)

            return wrapper

        return decorate

    def __repr__(self) -> str:
        rates = "; ".join(r.text for r in self.rates)
        return (f"RateLimiter({rates!r}, name={self.name!r}, algorithm={self.algorithm!r},"
                f" backend={self.backend!r})")


def _audit_limit_hit(limiter: RateLimiter, decision: Decision) -> None:
    """Audit a refusal (``ratelimit.limit_hit``) to the limiter's audit log, unless an HTTP edge
    decides this request and audits it itself (with the client's principal and address)."""
    log = _audit.resolve(limiter.audit)
    if log is not None and not _audit.edge_audits.get():
        _audit.emit_soon(log, log.build(_audit.EventType.LIMIT_HIT,
                                        resource=f"ratelimit:{limiter.name}",
                                        outcome="failure", details={"policy": decision.policy}))
