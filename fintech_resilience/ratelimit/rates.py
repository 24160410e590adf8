"""Rate notation: ``"10/second; 1000/day"`` parsed (by the ``limits`` package) into rates.

The short units Django REST framework and others write (``"10/s"``, ``"100/min"``, ``"5/h"``,
``"1000/d"``) are read as the units they abbreviate, so one notation works at every edge.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import limits as _limits

from ..errors import ConfigurationError

__all__ = ["MAX_AMOUNT", "MAX_LIMITS", "Rate", "check_cost", "expand_units", "parse_limits"]

#: Largest cost or limit accepted: sums stay exact in the doubles Lua computes with.
MAX_AMOUNT: Final = 2**48
#: Most limits one RateLimiter combines (all checked in one backend call).
MAX_LIMITS: Final = 16

#: Short units and what they abbreviate. ``m`` is a minute, as in DRF (``limits`` has no ``m``).
SHORT_UNITS: Final = {"s": "second", "sec": "second", "secs": "second", "m": "minute",
                      "min": "minute", "mins": "minute", "h": "hour", "hr": "hour", "hrs": "hour",
                      "d": "day"}
# the unit of each limit: after "/" or "per" and an optional multiple ("10/2s", "5 per min")
_UNIT = re.compile(r"(\d\s*(?:/|per)\s*(?:\d+\s*)?)([a-z]+)\b", re.IGNORECASE)


def expand_units(spec: str) -> str:
    """``spec`` with short units written out: ``"10/s; 100/min"`` -> ``"10/second; 100/minute"``.

    Full unit names are left alone (``"1/month"`` stays a month, unlike DRF, which reads any
    word by its first letter).
    """
    return _UNIT.sub(lambda m: m.group(1) + SHORT_UNITS.get(m.group(2).lower(), m.group(2)),
                     spec)


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
    """Parse ``"10/second; 1000/day"`` (``limits`` notation, short units such as ``"10/s"``
    accepted: see :func:`expand_units`) into rates, shortest period first."""
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
            items = _limits.parse_many(expand_units(text))
        except ValueError as exc:
            raise ConfigurationError(
                f"cannot parse rate limit {text!r}: write e.g. '10/second', '10/s', '100 per"
                f" minute' or '10/second; 1000/day'"
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
