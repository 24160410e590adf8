"""Rate notation: ``"10/second; 1000/day"`` parsed (by the ``limits`` package) into rates."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import limits as _limits

from ..errors import ConfigurationError

__all__ = ["MAX_AMOUNT", "MAX_LIMITS", "Rate", "check_cost", "parse_limits"]

#: Largest cost or limit accepted: sums stay exact in the doubles Lua computes with.
MAX_AMOUNT: Final = 2**48
#: Most limits one RateLimiter combines (all checked in one backend call).
MAX_LIMITS: Final = 16


def check_cost(cost: object) -> int:
    """``cost``: an int from 1 to :data:`MAX_AMOUNT`, else ConfigurationError."""
    if type(cost) is not int or not 1 <= cost <= MAX_AMOUNT:
        raise ConfigurationError(
            f"cost must be an int between 1 and {MAX_AMOUNT} (money in integer minor units);"
            f" got {cost!r}"
        )
    return cost


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
    if len(rates) > MAX_LIMITS:
        raise ConfigurationError(f"at most {MAX_LIMITS} limits can be combined in one RateLimiter")
    periods = [rate.period for rate in rates]
    if len(set(periods)) != len(periods):
        # a limit's state is stored per window length: two limits of one window would share it
        # (and only the tighter of them can ever refuse)
        raise ConfigurationError(
            f"two limits of the same window in {spec!r}: keep the tighter one"
        )
    return tuple(sorted(rates, key=lambda r: (r.period, r.amount)))
