"""Counting by outcome, and looking without counting: peek, hit, refund, stats, reset.

:class:`Accounting` is the part of :class:`~fintech_resilience.RateLimiter` beyond ``acquire``.
Each operation is one atomic script (``ratelimit_<algorithm>_adjust`` in a mode, or
``ratelimit_reset``), one round trip, with sync and async drivers around one preparation:

* ``peek`` - what ``acquire`` would answer, without consuming or writing;
* ``hit`` - count ``cost`` whether or not it fits, and say whether it did (count a card decline
  once it is known; nothing is tested first and counted later, so nothing races in between);
* ``refund`` - give units back, never beyond a full quota;
* ``stats`` - each limit's remaining quota and reset time (``peek``'s);
* ``reset`` - forget a key (unblock a merchant): an operator action, audited.
"""

from __future__ import annotations

from typing import Any

from ..audit import log as _audit
from ..backends.base import Backend, BackendGuard, Fallback, LocalReply
from ..core import storage_keys
from .decision import Decision, LimitSpec, LimitStatus
from .rates import check_cost
from .specs import KeyArg, Limits, LimitsArg

__all__ = ["Accounting", "reset_record"]


def reset_record(limiter: str, actor: str | None, key: KeyArg) -> dict[str, Any]:
    """The fields of the ``operator.override`` audit record of a reset: the limiter, who acted
    and the key's hash (never the key: it may be a card fingerprint or an address)."""
    return {"resource": f"ratelimit:{limiter}", "principal": actor or "operator",
            "details": {"action": "reset", "key_hash": storage_keys.digest(key)}}


class Accounting:
    """peek, hit, refund, stats and reset, for :class:`~fintech_resilience.RateLimiter`."""

    # provided by RateLimiter
    name: str
    backend: Backend
    audit: _audit.AuditLog | None
    _guard: BackendGuard
    _adjust: str

    def _applied(self, key: KeyArg, limits: LimitsArg | None) -> Limits:
        """The limits one call applies (RateLimiter's)."""
        raise NotImplementedError

    def _now(self) -> int:
        """The time sent with a call, in microseconds; 0 for the backend's (RateLimiter's)."""
        raise NotImplementedError

    def storage_keys(self, key: KeyArg, *, limits: LimitsArg | None = None) -> list[str]:
        """Where ``key``'s state is stored (RateLimiter's)."""
        raise NotImplementedError

    def _adjust_call(self, mode: str, key: KeyArg, cost: int,
                     limits: LimitsArg | None) -> tuple[LimitSpec, list[str], tuple[Any, ...]]:
        applied = self._applied(key, limits)
        keys = applied.known_keys.get(key) or applied.storage_keys(key)  # type: ignore[arg-type]
        return applied.spec, keys, (self._now(), mode, check_cost(cost), *applied.spec.parameters)

    def _state(self, result: Any, spec: LimitSpec) -> Decision:
        if isinstance(result, Fallback):
            return Decision(result.allow, (), spec, fallback=self._guard.policy)
        return Decision(bool(result[0]), result, spec,
                        fallback="local" if type(result) is LocalReply else None)

    def _adjusted(self, mode: str, key: KeyArg, cost: int, limits: LimitsArg | None) -> Decision:
        spec, keys, args = self._adjust_call(mode, key, cost, limits)
        return self._state(self._guard.run(self._adjust, keys, args), spec)

    async def _aadjusted(self, mode: str, key: KeyArg, cost: int,
                         limits: LimitsArg | None) -> Decision:
        spec, keys, args = self._adjust_call(mode, key, cost, limits)
        return self._state(await self._guard.arun(self._adjust, keys, args), spec)

    def peek(self, key: KeyArg, cost: int = 1, *, limits: LimitsArg | None = None) -> Decision:
        """What :meth:`acquire` would answer now, without consuming or writing anything (one
        round trip): ``allowed`` and ``retry_after`` for ``cost``, each limit's state. Shadow
        mode does not apply: the answer is the limit's."""
        return self._adjusted("peek", key, cost, limits)

    async def apeek(self, key: KeyArg, cost: int = 1, *,
                    limits: LimitsArg | None = None) -> Decision:
        """Async twin of :meth:`peek`."""
        return await self._aadjusted("peek", key, cost, limits)

    def hit(self, key: KeyArg, cost: int = 1, *, limits: LimitsArg | None = None) -> Decision:
        """Count ``cost`` against every limit whether or not it fits (count an outcome once it
        is known: a card decline, a failed login); one atomic round trip.

        ``allowed`` tells whether the hit fitted (False: the key went over its limit - the
        excess is counted); ``remaining`` is what is left after it and, when it went over,
        ``retry_after`` is the wait until the next ``cost`` would be admitted. GCRA keeps at
        most one extra bucket of excess (a key over its limit is refused for at most the time
        its bucket takes to refill); a fixed window keeps the count until it ends, a sliding
        window until its weight has decayed.
        """
        return self._adjusted("hit", key, cost, limits)

    async def ahit(self, key: KeyArg, cost: int = 1, *,
                   limits: LimitsArg | None = None) -> Decision:
        """Async twin of :meth:`hit`."""
        return await self._aadjusted("hit", key, cost, limits)

    def refund(self, key: KeyArg, cost: int = 1, *, limits: LimitsArg | None = None) -> Decision:
        """Give ``cost`` units back to every limit of ``key`` (e.g. a request that turned out
        not to count), never beyond a full quota. Returns the limits' state after the refund
        (``allowed`` is True). A window refunds from its current count (then, for a sliding
        window, from the previous one)."""
        return self._adjusted("refund", key, cost, limits)

    async def arefund(self, key: KeyArg, cost: int = 1, *,
                      limits: LimitsArg | None = None) -> Decision:
        """Async twin of :meth:`refund`."""
        return await self._aadjusted("refund", key, cost, limits)

    def stats(self, key: KeyArg, *, limits: LimitsArg | None = None) -> tuple[LimitStatus, ...]:
        """Each limit's state for ``key`` now - amount, window, remaining, reset_after - without
        consuming anything (:meth:`peek`'s ``limits``)."""
        return self.peek(key, limits=limits).limits

    async def astats(self, key: KeyArg, *,
                     limits: LimitsArg | None = None) -> tuple[LimitStatus, ...]:
        """Async twin of :meth:`stats`."""
        return (await self.apeek(key, limits=limits)).limits

    def _reset_call(self, key: KeyArg, limits: LimitsArg | None) -> tuple[list[str], tuple[int]]:
        return self.storage_keys(key, limits=limits), (self._now(),)

    def reset(self, key: KeyArg, *, limits: LimitsArg | None = None,
              actor: str | None = None) -> None:
        """Forget ``key``'s state under its limits (unblock a merchant): its whole quota is
        available again (:meth:`stats` before tells what it had used).

        An operator action: it goes to the backend directly and raises
        :class:`~fintech_resilience.BackendUnavailable` rather than applying
        ``on_backend_error``; with an audit log it is recorded (``operator.override``,
        principal ``actor``, the key's hash - never the key).
        """
        keys, args = self._reset_call(key, limits)
        self.backend.run("ratelimit_reset", keys, args)
        log = _audit.resolve(self.audit)
        if log is not None:
            log.record(_audit.EventType.OPERATOR_OVERRIDE, **reset_record(self.name, actor, key))

    async def areset(self, key: KeyArg, *, limits: LimitsArg | None = None,
                     actor: str | None = None) -> None:
        """Async twin of :meth:`reset`."""
        keys, args = self._reset_call(key, limits)
        await self.backend.arun("ratelimit_reset", keys, args)
        log = _audit.resolve(self.audit)
        if log is not None:
            await log.arecord(_audit.EventType.OPERATOR_OVERRIDE,
                              **reset_record(self.name, actor, key))
