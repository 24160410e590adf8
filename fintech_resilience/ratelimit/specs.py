"""The limits a :class:`~fintech_resilience.RateLimiter` applies, prepared once per rate string.

A limiter's limits are fixed (``"10/second; 1000/day"``), a callable of the key (per-plan
limits), or given with each call (``acquire(key, limits=...)``, as the HTTP edges do with a
callable of the request). Each distinct rate string becomes one :class:`Limits` - the
:class:`~fintech_resilience.ratelimit.decision.LimitSpec` a decision reads, the script
arguments and the storage-key suffixes - and a :class:`LimitsCache` remembers the most recent
``SPEC_CACHE_SIZE`` of them per limiter, so a per-plan limit costs a dictionary lookup, not a
parse.

A storage key ends with its limit's window in seconds (``fr:rl.gcra:{payments:<digest>}:60``),
not with the limit's position: when a key's limits change (another plan, ``set_limits``), every
window it keeps finds its state again, and a new window starts empty.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final, TypeAlias

from ..core import storage_keys
from ..errors import ConfigurationError
from .decision import LimitSpec
from .rates import Rate, parse_limits

__all__ = ["KEY_CACHE_SIZE", "SPEC_CACHE_SIZE", "KeyArg", "Limits", "LimitsArg", "LimitsCache",
           "build_spec"]

#: ``"10/second; 1000/day"`` or ``["10/second", "1000/day"]``
LimitsArg: TypeAlias = str | Sequence[str]
KeyArg: TypeAlias = str | bytes | int
#: Storage keys remembered per set of limits, so a busy key is hashed once, not on every call.
KEY_CACHE_SIZE: Final = 4096
#: Distinct rate strings remembered per limiter (beyond that, the oldest are parsed again).
SPEC_CACHE_SIZE: Final = 64
#: Storage keys remembered per set of limits that is not the limiter's fixed one.
_SHARED_KEY_CACHE_SIZE: Final = 512


def build_spec(name: str, algorithm: str, burst: int | None, rates: tuple[Rate, ...],
               deny_retry_after: float) -> LimitSpec:
    """The configuration a decision reads: the script's parameters per limit (GCRA
    ``(interval_us, tau_us)``, windows ``(amount, period_us)``) and the ``RateLimit-Policy``
    field."""
    parameters: list[float] = []
    for rate in rates:
        period_us = rate.period * 1_000_000
        if algorithm == "gcra":
            interval = period_us / rate.amount
            parameters += [interval, interval * (burst if burst is not None else rate.amount)]
        else:
            parameters += [rate.amount, period_us]
    labels = (name,) if len(rates) == 1 else tuple(f"{name}-{i}" for i in range(len(rates)))
    return LimitSpec(
        name=name, algorithm=algorithm, rates=rates, parameters=tuple(parameters),
        deny_retry_after=deny_retry_after,
        policy_field=", ".join(f'"{label}";q={rate.amount};w={rate.period}'
                               for label, rate in zip(labels, rates, strict=True)),
        labels=labels)


class Limits:
    """One set of limits as a limiter applies it: the spec, the arguments of the usual call
    (the backend's clock, cost 1) and the storage keys of recent keys."""

    __slots__ = ("_cache_size", "_prefix", "known_keys", "spec", "suffixes", "usual_args")

    def __init__(self, spec: LimitSpec, *, namespace: str, kind: str,
                 cache_size: int = KEY_CACHE_SIZE) -> None:
        self.spec = spec
        self.usual_args = (0, 1, *spec.parameters)
        self.suffixes = tuple(f":{rate.period}" for rate in spec.rates)
        self._prefix = (namespace, kind, spec.name)
        self._cache_size = cache_size
        #: str and bytes keys -> their storage keys. Only str and bytes: True == 1, but no bool
        #: equals a str or bytes, so a hit needs no type check (int keys go through
        #: storage_keys.user_key's typed cache)
        self.known_keys: dict[str | bytes, list[str]] = {}

    def storage_keys(self, key: KeyArg) -> list[str]:
        """The storage keys of ``key``, one per limit (remembered for str and bytes keys)."""
        base = storage_keys.user_key(*self._prefix, key)
        keys = [base + suffix for suffix in self.suffixes]
        if type(key) is str or type(key) is bytes:
            if len(self.known_keys) >= self._cache_size:
                self.known_keys.clear()
            self.known_keys[key] = keys
        return keys


class LimitsCache:
    """:class:`Limits` per distinct rate string, built on first use; at most
    ``SPEC_CACHE_SIZE`` remembered (then forgotten all at once, and rebuilt as they recur).

    Safe for threads without a lock: two threads meeting a new string may both parse it, and
    either result is the same.
    """

    __slots__ = ("_build", "_entries")

    def __init__(self, build: Callable[[tuple[Rate, ...], int], Limits]) -> None:
        self._build = build
        self._entries: dict[str | tuple[str, ...], Limits] = {}

    def get(self, limits: LimitsArg) -> Limits:
        """The :class:`Limits` of ``limits``; a malformed string raises ConfigurationError."""
        if isinstance(limits, str):
            cache_key: str | tuple[str, ...] = limits
        elif isinstance(limits, list | tuple) and all(isinstance(t, str) for t in limits):
            cache_key = tuple(limits)
        else:
            raise ConfigurationError(
                f"a rate limit is a string such as '10/second' or '10/second; 1000/day';"
                f" got {limits!r}"
            )
        found = self._entries.get(cache_key)
        if found is None:
            found = self._build(parse_limits(limits), _SHARED_KEY_CACHE_SIZE)
            if len(self._entries) >= SPEC_CACHE_SIZE:
                self._entries.clear()
            self._entries[cache_key] = found
        return found
