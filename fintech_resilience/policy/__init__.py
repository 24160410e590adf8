"""Isolation and composition: :class:`Bulkhead`, :func:`timeout` (``deadline``) and
:class:`Policy` (``compose``), which runs the patterns in one fixed order."""

from .bulkhead import Bulkhead
from .compose import Policy
from .deadline import TimeLimit, time_remaining, timeout

__all__ = ["Bulkhead", "Policy", "TimeLimit", "time_remaining", "timeout"]
