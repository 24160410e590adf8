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

A :class:`~fintech_resilience.Decision` carries everything the HTTP ``RateLimit`` /
``RateLimit-Policy`` / ``Retry-After`` fields need, so headers cost no second round trip.
``reset_after`` is the time until the full quota is available again; ``retry_after`` the time
until this request's cost would fit (``inf`` when the cost exceeds a limit outright; 0 when
allowed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final, Literal, ParamSpec, TypeVar

from ..audit import log as _audit
from ..backends import default_backend
from ..backends.base import Backend, BackendGuard, Fallback, LocalReply, OnBackendError
from ..core import hooks, storage_keys, telemetry
from ..core.clock import Clock
from ..core.decorate import around_calls
from ..errors import ConfigurationError, RateLimited
from .decision import Decision, LimitSpec, LimitStatus
from .rates import MAX_AMOUNT, parse_limits

__all__ = ["ALGORITHMS", "Decision", "LimitStatus", "RateLimiter", "parse_limits"]

Algorithm = Literal["gcra", "sliding_window", "fixed_window"]
ALGORITHMS: Final = ("gcra", "sliding_window", "fixed_window")
#: Storage keys remembered per limiter, so a busy key is hashed once, not on every decision.
_KEY_CACHE_SIZE: Final = 4096

P = ParamSpec("P")
R = TypeVar("R")
KeyArg = str | bytes | int


def _check_cost(cost: object) -> int:
    if type(cost) is not int or not 1 <= cost <= MAX_AMOUNT:
        raise ConfigurationError(
            f"cost must be an int between 1 and {MAX_AMOUNT} (money in integer minor units);"
            f" got {cost!r}"
        )
    return cost


class RateLimiter:
    """Admits or refuses calls per key under one or more rate limits.

    :param limits: ``"10/second"``, ``"10/second; 1000/day"`` (``limits`` notation) or a list.
    :param backend: where counters live; default the process-wide :class:`MemoryBackend`.
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
    :param on_refusal: called with a :class:`~fintech_resilience.core.hooks.Refusal` for every
        refused decision (and every shadow "would refuse"); see
        :mod:`fintech_resilience.core.hooks`.
    """

    def __init__(self, limits: str | Sequence[str], *, backend: Backend | None = None,
                 algorithm: Algorithm = "gcra", name: str = "default", burst: int | None = None,
                 shadow: bool = False, on_backend_error: OnBackendError = "local",
                 deny_retry_after: float = 1.0, clock: Clock | None = None,
                 namespace: str = storage_keys.DEFAULT_NAMESPACE,
                 audit: _audit.AuditLog | None = None,
                 on_refusal: hooks.RefusalHook | None = None) -> None:
        if algorithm not in ALGORITHMS:
            raise ConfigurationError(
                f"algorithm must be one of {', '.join(ALGORITHMS)}; got {algorithm!r}"
            )
        if burst is not None and (type(burst) is not int or not 1 <= burst <= MAX_AMOUNT):
            raise ConfigurationError(f"burst must be a positive int; got {burst!r}")
        if burst is not None and algorithm != "gcra":
            raise ConfigurationError("burst applies to algorithm='gcra' only")
        hooks.check(on_refusal, "on_refusal")
        self.rates = parse_limits(limits)
        self.audit = audit
        self.on_refusal = on_refusal
        self.algorithm: Algorithm = algorithm
        self.name = storage_keys.validate_name(name)
        self.namespace = storage_keys.validate_name(namespace, "namespace")
        self.shadow = bool(shadow)
        self.clock = clock
        self.burst = burst
        self.deny_retry_after = float(deny_retry_after)
        self.backend = backend if backend is not None else default_backend()
        self._guard = BackendGuard("ratelimit", self.name, self.backend, on_backend_error)
        self._script = f"ratelimit_{algorithm}"
        self._run = self._guard.bind(self._script)
        self._kind = f"rl.{algorithm}"
        parameters: list[float] = []
        for rate in self.rates:
            period_us = rate.period * 1_000_000
            if algorithm == "gcra":
                interval = period_us / rate.amount
                parameters += [interval, interval * (burst if burst is not None else rate.amount)]
            else:
                parameters += [rate.amount, period_us]
        self.spec = LimitSpec(
            name=self.name, algorithm=algorithm, rates=self.rates,
            parameters=tuple(parameters), deny_retry_after=self.deny_retry_after,
            policy_field=", ".join(
                f'"{self.name}{"" if len(self.rates) == 1 else f"-{i}"}";q={r.amount};w={r.period}'
                for i, r in enumerate(self.rates)))
        # the arguments of the usual call: cost 1, on the backend's clock
        self._usual_args = (0, 1, *parameters)
        self._suffixes = tuple(f":{i}" for i in range(len(self.rates)))
        # str and bytes keys only: True == 1, but no bool equals a str or bytes, so a hit needs
        # no type check (int keys go through storage_keys.user_key's typed cache)
        self._key_cache: dict[str | bytes, list[str]] = {}

    @property
    def on_backend_error(self) -> OnBackendError:
        return self._guard.policy

    @property
    def policy_field(self) -> str:
        """The IETF ``RateLimit-Policy`` field of this limiter (configuration only)."""
        return self.spec.policy_field

    def _keys(self, key: KeyArg) -> list[str]:
        """The storage keys of ``key`` (one per limit), remembered for str and bytes keys."""
        base = storage_keys.user_key(self.namespace, self._kind, self.name, key)
        keys = [base + suffix for suffix in self._suffixes]
        if type(key) is str or type(key) is bytes:
            if len(self._key_cache) >= _KEY_CACHE_SIZE:
                self._key_cache.clear()
            self._key_cache[key] = keys
        return keys

    def _args(self, cost: int) -> tuple[Any, ...]:
        """The script's arguments: the time (0: the backend's clock), the cost, the limits."""
        if self.clock is None and cost == 1 and type(cost) is int:
            return self._usual_args
        now = 0 if self.clock is None else round(self.clock.time() * 1_000_000)
        return (now, _check_cost(cost), *self.spec.parameters)

    def _decide(self, result: Any, cost: int, key: KeyArg) -> Decision:
        """Turn the backend's reply (or the fallback's) into a decision; telemetry, audit and
        the refusal hook."""
        if type(result) is list and result[0]:  # admitted by the backend: the usual answer
            decision = Decision(True, result, self.spec)
        elif isinstance(result, Fallback):
            decision = Decision(result.allow, (), self.spec, fallback=self._guard.policy)
            if not decision.allowed and self.on_refusal is not None:
                self._refused(decision, key)
        else:
            fallback = "local" if type(result) is LocalReply else None
            admitted = bool(result[0])
            decision = Decision(admitted or self.shadow, result, self.spec,
                                shadowed=self.shadow and not admitted, fallback=fallback)
            if not decision.allowed and (self.audit is not None
                                         or _audit.get_default() is not None):
                _audit_limit_hit(self, decision)
            if not admitted and self.on_refusal is not None:
                self._refused(decision, key)
        if telemetry.active():
            self._emit(decision, cost)
        return decision

    def _refused(self, decision: Decision, key: KeyArg) -> None:
        assert self.on_refusal is not None
        hooks.notify(self.on_refusal, hooks.Refusal(
            telemetry.Pattern.RATELIMIT, self.name, RateLimited(decision), decision.retry_after,
            key, decision.shadowed), f"rate limiter {self.name!r}", "on_refusal")

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
        args = self._args(cost)
        keys = self._key_cache.get(key) or self._keys(key)  # type: ignore[arg-type]
        return self._decide(self._run(keys, args), cost, key)

    async def aacquire(self, key: KeyArg, cost: int = 1) -> Decision:
        """Async twin of :meth:`acquire`."""
        args = self._args(cost)
        keys = self._key_cache.get(key) or self._keys(key)  # type: ignore[arg-type]
        if not self.backend.can_fail:  # in process: nothing to await
            return self._decide(self._run(keys, args), cost, key)
        return self._decide(await self._guard.arun(self._script, keys, args), cost, key)

    def limit(self, key: Callable[..., KeyArg] | KeyArg,
              cost: Callable[..., int] | int = 1) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Decorate a function (sync or async): each call acquires first, or raises
        :class:`~fintech_resilience.RateLimited`. ``key`` and ``cost`` may be callables that
        receive the call's arguments."""
        key_of = key if callable(key) else (lambda *_a, **_k: key)
        cost_of = cost if callable(cost) else (lambda *_a, **_k: cost)

        def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            decision = self.acquire(key_of(*args, **kwargs), cost_of(*args, **kwargs))
            if not decision.allowed:
                raise RateLimited(decision)
            return fn(*args, **kwargs)

        async def acall(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            decision = await self.aacquire(key_of(*args, **kwargs), cost_of(*args, **kwargs))
            if not decision.allowed:
                raise RateLimited(decision)
            return await fn(*args, **kwargs)

        def decorate(fn: Callable[P, R]) -> Callable[P, R]:
            return around_calls(fn, call, acall)

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
