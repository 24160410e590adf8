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

Limits may differ per key (``limits`` a callable of the key: per-plan limits) or per call
(``acquire(key, limits=...)``), and change at run time (:meth:`RateLimiter.set_limits`). Besides
``acquire``: ``acquire(..., max_wait=s)`` waits for a permit (``waiting.py``), :meth:`~RateLimiter.
peek` answers without consuming, :meth:`~RateLimiter.hit` counts whatever the answer (counting by
outcome), :meth:`~RateLimiter.refund` gives units back, :meth:`~RateLimiter.reset` forgets a key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, Literal, ParamSpec, TypeVar

from ..audit import log as _audit
from ..backends.base import BackendGuard, Fallback, LocalReply, OnBackendError
from ..backends.resolve import BackendSpec, resolve_backend
from ..core import hooks, storage_keys, telemetry
from ..core.clock import SYSTEM_CLOCK, Clock
from ..core.decorate import around_calls
from ..errors import ConfigurationError, RateLimited
from .accounting import Accounting
from .decision import Decision, LimitSpec, LimitStatus
from .rates import MAX_AMOUNT, Rate, check_cost, parse_limits
from .specs import KEY_CACHE_SIZE, KeyArg, Limits, LimitsArg, LimitsCache, build_spec
from .waiting import Patience, await_, check_jitter, check_max_wait, wait

__all__ = ["ALGORITHMS", "Decision", "LimitStatus", "RateLimiter", "parse_limits"]

Algorithm = Literal["gcra", "sliding_window", "fixed_window"]
ALGORITHMS: Final = ("gcra", "sliding_window", "fixed_window")
#: Limits as a RateLimiter takes them: a rate string (or list), or a callable of the key.
LimitsOfKey = Callable[[KeyArg], LimitsArg]

P = ParamSpec("P")
R = TypeVar("R")


class RateLimiter(Accounting):
    """Admits or refuses calls per key under one or more rate limits.

    :param limits: ``"10/second"``, ``"10/second; 1000/day"`` (``limits`` notation) or a list;
        or a callable ``(key) -> rate string`` resolved on every call (per-plan limits: each
        distinct string is parsed once). :meth:`set_limits` replaces them at run time.
    :param backend: where counters live: a backend or a URL (``"redis://host:6379/0"``);
        default the process-wide :class:`MemoryBackend`.
    :param algorithm: ``"gcra"`` (default), ``"sliding_window"`` or ``"fixed_window"``.
    :param name: identifies the limiter in keys, telemetry and headers (``[A-Za-z0-9_.-]``).
    :param burst: GCRA only: bucket size, default the limit's amount (applies to every limit).
    :param shadow: decide and count, but never refuse (``Decision.shadowed`` tells).
    :param on_backend_error: ``"local"`` (default), ``"allow"``, ``"deny"`` or ``"raise"``.
    :param deny_retry_after: ``retry_after`` reported when ``on_backend_error="deny"`` refuses.
    :param clock: pass a :class:`~fintech_resilience.testing.ManualClock` to drive time in tests;
        by default the backend's clock decides (Redis ``TIME``). Waits (``max_wait``) sleep on it.
    :param audit: where refusals are audited (``ratelimit.limit_hit``); default the process-wide
        :func:`fintech_resilience.audit.get_default` log, if one is set.
    :param wait_jitter: with ``max_wait``, each sleep is up to this fraction longer, at random,
        so callers waiting on one key do not all ask again at the same instant (0 to 1).
    :param on_refusal: called with a :class:`~fintech_resilience.core.hooks.Refusal` for every
        refused decision (and every shadow "would refuse"); see
        :mod:`fintech_resilience.core.hooks`.
    """

    def __init__(self, limits: LimitsArg | LimitsOfKey, *, backend: BackendSpec = None,
                 algorithm: Algorithm = "gcra", name: str = "default", burst: int | None = None,
                 shadow: bool = False, on_backend_error: OnBackendError = "local",
                 deny_retry_after: float = 1.0, clock: Clock | None = None,
                 namespace: str = storage_keys.DEFAULT_NAMESPACE,
                 audit: _audit.AuditLog | None = None, wait_jitter: float = 0.1,
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
        self.audit = audit
        self.on_refusal = on_refusal
        self.algorithm: Algorithm = algorithm
        self.name = storage_keys.validate_name(name)
        self.namespace = storage_keys.validate_name(namespace, "namespace")
        self.shadow = bool(shadow)
        self.clock = clock
        self.burst = burst
        self.deny_retry_after = float(deny_retry_after)
        self.wait_jitter = check_jitter(wait_jitter)
        self.backend = resolve_backend(backend)
        self._guard = BackendGuard("ratelimit", self.name, self.backend, on_backend_error)
        self._script = f"ratelimit_{algorithm}"
        self._adjust = f"ratelimit_{algorithm}_adjust"
        self._run = self._guard.bind(self._script)
        self._kind = f"rl.{algorithm}"
        self._specs = LimitsCache(self._build)
        self._current: Limits | LimitsOfKey
        self._fixed: Limits | None
        self.set_limits(limits)

    # -- limits ------------------------------------------------------------------------------------
    def _build(self, rates: tuple[Rate, ...], cache_size: int) -> Limits:
        spec = build_spec(self.name, self.algorithm, self.burst, rates, self.deny_retry_after)
        return Limits(spec, namespace=self.namespace, kind=self._kind, cache_size=cache_size)

    def _prepare(self, limits: LimitsArg | LimitsOfKey) -> Limits | LimitsOfKey:
        if callable(limits):
            return limits
        return self._build(parse_limits(limits), KEY_CACHE_SIZE)

    def set_limits(self, limits: LimitsArg | LimitsOfKey) -> None:
        """Apply ``limits`` (a rate string, a list or a callable of the key, as the constructor
        takes) from the next decision on. Thread-safe: a decision already under way finishes
        under the limits it started with.

        Each key keeps its state for every window (limit period) it still has: a GCRA key keeps
        its debt (the time its bucket needs to refill), a window keeps its count; see
        ``docs/ratelimit.md`` ("Limits per plan, and changing them").
        """
        prepared = self._prepare(limits)
        # _current is the truth, one value replaced whole: a decision reads it without a lock.
        # _fixed is _current when that is a Limits (else None), for acquire's usual path; it is
        # written second, so a decision that finds it None and reads _current finds the new
        # limits or the previous ones, never a mix
        self._current = prepared
        self._fixed = prepared if isinstance(prepared, Limits) else None

    @property
    def rates(self) -> tuple[Rate, ...]:
        """The fixed limits, shortest window first; ``()`` when the limits are a callable."""
        current = self._current
        return current.spec.rates if isinstance(current, Limits) else ()

    @property
    def spec(self) -> LimitSpec:
        """The fixed limits' configuration; ConfigurationError when the limits are a callable
        (then each :class:`Decision` knows the limits it applied)."""
        current = self._current
        if not isinstance(current, Limits):
            raise ConfigurationError(
                f"RateLimiter {self.name!r} resolves its limits per key: read them from a"
                f" decision (decision.policy_field, decision.limits)"
            )
        return current.spec

    @property
    def policy_field(self) -> str:
        """The IETF ``RateLimit-Policy`` field of the fixed limits (configuration only); with
        limits per key or per call, each decision carries its own
        (:attr:`Decision.policy_field`)."""
        return self.spec.policy_field

    @property
    def on_backend_error(self) -> OnBackendError:
        return self._guard.policy

    def _applied(self, key: KeyArg, limits: LimitsArg | None) -> Limits:
        """The limits one call applies: the call's own, else the limiter's (resolved for
        ``key`` when they are a callable)."""
        if limits is not None:
            return self._specs.get(limits)
        current = self._current
        if isinstance(current, Limits):
            return current
        resolved = current(key)
        if resolved is None:
            raise ConfigurationError(
                f"the limits callable of RateLimiter {self.name!r} returned None; return a rate"
                f" string such as '10/second'"
            )
        return self._specs.get(resolved)

    def storage_keys(self, key: KeyArg, *, limits: LimitsArg | None = None) -> list[str]:
        """Where ``key``'s state is stored, one key per limit:
        ``<namespace>:rl.<algorithm>:{<name>:<digest>}:<window seconds>`` (the key is hashed,
        never stored as given) - what :meth:`reset` forgets."""
        return self._applied(key, limits).storage_keys(key)

    def _now(self) -> int:
        """The time sent with a call: 0 (the backend's clock) or the limiter's clock, in us."""
        return 0 if self.clock is None else round(self.clock.time() * 1_000_000)

    def _args(self, applied: Limits, cost: int) -> tuple[Any, ...]:
        """The script's arguments: the time (0: the backend's clock), the cost, the limits.
        The usual call's (cost 1, the backend's clock) are one tuple per set of limits, whose
        encoding the Redis transport keeps."""
        if cost == 1 and type(cost) is int and self.clock is None:
            return applied.usual_args
        return (self._now(), check_cost(cost), *applied.spec.parameters)

    # -- acquire -----------------------------------------------------------------------------------
    def _decide(self, result: Any, spec: LimitSpec, cost: int, key: KeyArg) -> Decision:
        """Turn the backend's reply (or the fallback's) into a decision; telemetry, audit and
        the refusal hook."""
        if type(result) is list and result[0]:  # admitted by the backend
            decision = Decision(True, result, spec)
        elif isinstance(result, Fallback):
            decision = Decision(result.allow, (), spec, fallback=self._guard.policy)
            if not decision.allowed and self.on_refusal is not None:
                self._refused(decision, key)
        else:
            fallback = "local" if type(result) is LocalReply else None
            admitted = bool(result[0])
            decision = Decision(admitted or self.shadow, result, spec,
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

    def _patience(self, max_wait: object) -> Patience:
        return Patience(check_max_wait(max_wait), self.wait_jitter, self._sleeper.monotonic())

    @property
    def _sleeper(self) -> Clock:
        """Where waits sleep: the limiter's clock, else the system's."""
        return self.clock if self.clock is not None else SYSTEM_CLOCK

    def _acquire_waiting(self, key: KeyArg, cost: int, limits: LimitsArg | None,
                         max_wait: object) -> Decision:
        patience = self._patience(max_wait)
        return wait(patience, self.acquire(key, cost, limits=limits),
                    lambda: self.acquire(key, cost, limits=limits), self._sleeper)

    async def _aacquire_waiting(self, key: KeyArg, cost: int, limits: LimitsArg | None,
                                max_wait: object) -> Decision:
        patience = self._patience(max_wait)
        return await await_(patience, await self.aacquire(key, cost, limits=limits),
                            lambda: self.aacquire(key, cost, limits=limits), self._sleeper)

    # limits and max_wait are not keyword-only: the usual call, acquire(key), then fills its
    # defaults from a tuple rather than looking each keyword-only default up in a dict
    def acquire(self, key: KeyArg, cost: int = 1, limits: LimitsArg | None = None,
                max_wait: float = 0.0) -> Decision:
        """Decide for ``key`` and, if admitted, consume ``cost`` from every limit.

        :param limits: this call's limits (a rate string), instead of the limiter's.
        :param max_wait: seconds this call may wait for a permit: a refused decision sleeps its
            ``retry_after`` and decides again; a wait that cannot end in time (``retry_after``
            longer than the time left, or infinite) answers the refusal at once.
        """
        if max_wait:
            return self._acquire_waiting(key, cost, limits, max_wait)
        applied = self._fixed
        if applied is None or limits is not None:
            applied = self._applied(key, limits)
        keys = applied.known_keys.get(key) or applied.storage_keys(key)  # type: ignore[arg-type]
        result = self._run(keys, self._args(applied, cost))
        if type(result) is list and result[0] and not telemetry.active():
            return Decision(True, result, applied.spec)  # admitted: the usual answer
        return self._decide(result, applied.spec, cost, key)

    async def aacquire(self, key: KeyArg, cost: int = 1, limits: LimitsArg | None = None,
                       max_wait: float = 0.0) -> Decision:
        """Async twin of :meth:`acquire` (a wait sleeps with the clock's ``asleep``)."""
        if max_wait:
            return await self._aacquire_waiting(key, cost, limits, max_wait)
        if not self.backend.can_fail:  # in process: nothing to await
            return RateLimiter.acquire(self, key, cost, limits)
        applied = self._fixed
        if applied is None or limits is not None:
            applied = self._applied(key, limits)
        keys = applied.known_keys.get(key) or applied.storage_keys(key)  # type: ignore[arg-type]
        result = await self._guard.arun(self._script, keys, self._args(applied, cost))
        return self._decide(result, applied.spec, cost, key)

    # -- decorator ---------------------------------------------------------------------------------
    def limit(self, key: Callable[..., KeyArg] | KeyArg, cost: Callable[..., int] | int = 1, *,
              limits: Callable[..., LimitsArg] | LimitsArg | None = None,
              max_wait: float = 0.0) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Decorate a function (sync or async): each call acquires first, or raises
        :class:`~fintech_resilience.RateLimited`. ``key``, ``cost`` and ``limits`` may be
        callables that receive the call's arguments; ``max_wait`` lets each call wait that
        long for a permit (see :meth:`acquire`)."""
        if max_wait:
            check_max_wait(max_wait)
        key_of = key if callable(key) else (lambda *_a, **_k: key)
        cost_of = cost if callable(cost) else (lambda *_a, **_k: cost)
        limits_of: Callable[..., LimitsArg | None] = (
            limits if callable(limits) else (lambda *_a, **_k: limits))

        def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            decision = self.acquire(key_of(*args, **kwargs), cost_of(*args, **kwargs),
                                    limits=limits_of(*args, **kwargs), max_wait=max_wait)
            if not decision.allowed:
                raise RateLimited(decision)
            return fn(*args, **kwargs)

        async def acall(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            decision = await self.aacquire(key_of(*args, **kwargs), cost_of(*args, **kwargs),
                                           limits=limits_of(*args, **kwargs), max_wait=max_wait)
            if not decision.allowed:
                raise RateLimited(decision)
            return await fn(*args, **kwargs)

        def decorate(fn: Callable[P, R]) -> Callable[P, R]:
            return around_calls(fn, call, acall)

        return decorate

    def __repr__(self) -> str:
        current = self._current
        limits = ("; ".join(r.text for r in current.spec.rates) if isinstance(current, Limits)
                  else current)
        return (f"RateLimiter({limits!r}, name={self.name!r}, algorithm={self.algorithm!r},"
                f" backend={self.backend!r})")


def _audit_limit_hit(limiter: RateLimiter, decision: Decision) -> None:
    """Audit a refusal (``ratelimit.limit_hit``) to the limiter's audit log, unless an HTTP edge
    decides this request and audits it itself (with the client's principal and address)."""
    log = _audit.resolve(limiter.audit)
    if log is not None and not _audit.edge_audits.get():
        _audit.emit_soon(log, log.build(_audit.EventType.LIMIT_HIT,
                                        resource=f"ratelimit:{limiter.name}",
                                        outcome="failure", details={"policy": decision.policy}))
