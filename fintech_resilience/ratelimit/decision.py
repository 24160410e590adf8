"""What a rate limiter answers: :class:`Decision`, and the HTTP fields it carries.

A decision is built from the backend's reply ``[allowed, retry_after_us, remaining_1,
reset_after_us_1, ...]`` (one pair per limit) and formats the IETF ``RateLimit`` /
``RateLimit-Policy`` fields and ``Retry-After`` itself, so an HTTP edge needs no second round
trip and every edge formats them the same way (draft-ietf-httpapi-ratelimit-headers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from .rates import Rate

__all__ = ["Decision", "LimitSpec", "LimitStatus", "retry_after_field"]

US: Final = 1_000_000


def retry_after_field(seconds: float) -> str | None:
    """The ``Retry-After`` value for a wait of ``seconds``: whole seconds rounded up, at least 1;
    None when the wait is infinite (the request can never be admitted)."""
    if math.isinf(seconds):
        return None
    return str(max(1, math.ceil(seconds)))


@dataclass(frozen=True, slots=True)
class LimitSpec:
    """What a decision needs to know about its limiter (configuration only)."""

    name: str
    algorithm: str
    rates: tuple[Rate, ...]
    #: per limit, the two script arguments: GCRA ``(interval_us, tau_us)``, windows
    #: ``(amount, period_us)``
    parameters: tuple[float, ...]
    deny_retry_after: float
    #: the IETF ``RateLimit-Policy`` field: one item per limit, ``"<name>";q=<amount>;w=<s>``
    policy_field: str
    #: each limit's item name in the HTTP fields: ``("api",)``, or ``("api-0", "api-1")``
    labels: tuple[str, ...]

    def label(self, index: int) -> str:
        """The item name of limit ``index`` in the HTTP fields (``"api"``, or ``"api-1"``)."""
        return self.labels[index]


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

    __slots__ = ("_raw", "_spec", "_tight", "allowed", "fallback", "shadowed")

    def __init__(self, allowed: bool, raw: Sequence[int], spec: LimitSpec, *,
                 shadowed: bool = False, fallback: str | None = None) -> None:
        self.allowed = allowed
        self.shadowed = shadowed
        self.fallback = fallback
        self._raw = raw
        self._spec = spec
        self._tight: int | None = None

    @property
    def name(self) -> str:
        """The name of the limiter that decided."""
        return self._spec.name

    @property
    def measured(self) -> bool:
        """False when an ``on_backend_error`` policy allowed or denied without any counter."""
        return bool(self._raw)

    def _remaining(self, i: int) -> int:
        if not self._raw:  # decided by on_backend_error: nothing is known about the counters
            return self._spec.rates[i].amount if self.allowed else 0
        return int(self._raw[2 * i + 2])

    def _reset_after(self, i: int) -> float:
        return self._raw[2 * i + 3] / US if self._raw else 0.0

    @property
    def limits(self) -> tuple[LimitStatus, ...]:
        """Every limit of the limiter, in the order of ``RateLimiter.rates``."""
        return tuple(LimitStatus(r.amount, float(r.period), self._remaining(i),
                                 self._reset_after(i), r.text)
                     for i, r in enumerate(self._spec.rates))

    def _index(self) -> int:
        """Index of the tightest limit: fewest remaining, then the longest to reset."""
        if self._tight is None:
            count = len(self._spec.rates)
            self._tight = 0 if count == 1 else min(
                range(count), key=lambda i: (self._remaining(i), -self._reset_after(i)))
        return self._tight

    @property
    def tightest(self) -> LimitStatus:
        """The limit closest to exhaustion (fewest remaining; then the longest to reset)."""
        return self.limits[self._index()]

    @property
    def limit(self) -> int:
        """The tightest limit's amount (units per window)."""
        return self._spec.rates[self._index()].amount

    @property
    def remaining(self) -> int:
        """Units of the tightest limit left after this decision."""
        return self._remaining(self._index())

    @property
    def reset_after(self) -> float:
        """Seconds until the tightest limit's full quota is available again."""
        return self._reset_after(self._index())

    @property
    def policy(self) -> str:
        """The tightest limit as text, e.g. ``"10/second"``."""
        return self._spec.rates[self._index()].text

    @property
    def policy_field(self) -> str:
        """The IETF ``RateLimit-Policy`` field of the limits this decision applied (with limits
        per key or per request, it varies from one decision to the next)."""
        return self._spec.policy_field

    @property
    def policy_label(self) -> str:
        """The tightest limit's item name in the HTTP fields (``"api"``, or ``"api-1"``)."""
        return self._spec.labels[self._index()]

    @property
    def retry_after(self) -> float:
        """Seconds until this request's cost would be admitted; ``inf`` if it never can."""
        if self.allowed:
            return 0.0
        if not self._raw:
            return float(self._spec.deny_retry_after)
        wait = self._raw[1]
        return math.inf if wait < 0 else wait / US

    def ratelimit_field(self) -> str | None:
        """The IETF ``RateLimit`` field: the tightest limit as ``"<policy>";r=<remaining>;t=<s>``.

        ``t`` is the whole seconds within which the client can use no more than ``r``: for the
        window algorithms the time until the window resets, for GCRA the time until one more
        unit is available. None when an ``on_backend_error`` policy decided (nothing was
        measured: the field is omitted).
        """
        raw = self._raw
        if not raw:
            return None
        spec = self._spec
        i = self._index()
        remaining = int(raw[2 * i + 2])
        wait_us: float = raw[2 * i + 3]
        if wait_us > 0 and spec.algorithm == "gcra":
            # the next unit arrives when tau - (tat - now) reaches (remaining + 1) intervals;
            # 1 microsecond of tolerance absorbs the reply's rounding to whole microseconds
            interval, tau = spec.parameters[2 * i], spec.parameters[2 * i + 1]
            next_us = wait_us - tau + (remaining + 1) * interval - 1
            if next_us < wait_us:
                wait_us = next_us if next_us > 0 else 0
        return f'"{spec.labels[i]}";r={remaining};t={math.ceil(wait_us / US)}'

    def headers(self, *, retry_after: bool = True) -> dict[str, str]:
        """The IETF ``RateLimit``/``RateLimit-Policy`` fields (and ``Retry-After`` if refused).

        ``RateLimit`` is omitted when an ``on_backend_error`` policy decided (nothing measured).
        """
        out = {"RateLimit-Policy": self._spec.policy_field}
        item = self.ratelimit_field()
        if item is not None:
            out["RateLimit"] = item
        if retry_after and not self.allowed:
            value = retry_after_field(self.retry_after)
            if value is not None:
                out["Retry-After"] = value
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
