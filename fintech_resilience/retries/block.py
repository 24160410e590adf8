"""Retrying a block of code: ``for attempt in fr.retrying(...)`` / ``async for``.

The block form of :func:`~fintech_resilience.retry` (stamina's ``retry_context``, tenacity's
``Retrying`` iterator). Each iteration starts one logical call and runs the same decision core
and drivers as the decorator (``core.Retry._loop``, ``drive.Steps`` / ``drive.AsyncSteps``):
only the code between the attempts is yours.
"""

from __future__ import annotations

import sys
from typing import Any

from ..errors import ConfigurationError
from .attempt import Call
from .core import Retry
from .drive import AsyncSteps, Steps

__all__ = ["Retrying", "caller_name", "retrying"]


def caller_name(depth: int) -> str:
    """``module.qualname`` of the function ``depth`` frames above the caller."""
    frame = sys._getframe(depth + 1)
    return f"{frame.f_globals.get('__name__', '?')}.{frame.f_code.co_qualname}"


class Retrying:
    """A retry policy bound to a block: iterate it (``for`` or ``async for``) to get the
    attempts, and run each one as ``with attempt:``. Built by :func:`retrying` or
    :meth:`Retry.retrying <fintech_resilience.Retry.retrying>`."""

    __slots__ = ("name", "policy")

    def __init__(self, policy: Retry, name: str) -> None:
        if policy.key_argument is not None:
            raise ConfigurationError(
                "key_argument names a keyword argument of a function; a retrying block has"
                " none: use idempotency_key='auto' or idempotency_key=lambda: key")
        self.policy = policy
        #: Labels the block's telemetry, log lines and hook details.
        self.name = name

    def _start(self) -> Call:
        begun = self.policy._begin((), {})
        return Call(None, (), {}, begun[0], begun[1], begun[2], self.policy.clock, self.name)

    def __iter__(self) -> Steps:
        return Steps(self.policy, self._start(), None, True)

    def __aiter__(self) -> AsyncSteps:
        return AsyncSteps(self.policy, self._start(), None, True)

    def __repr__(self) -> str:
        return f"Retrying({self.name!r}, {self.policy!r})"


def retrying(*, name: str | None = None, **options: Any) -> Retrying:
    """Retry a block of code, with every option of :func:`~fintech_resilience.retry`::

        for attempt in fr.retrying(on=TimeoutError, attempts=3, deadline=10):
            with attempt:
                psp.capture(payment_id, idempotency_key=attempt.idempotency_key)

        async for attempt in fr.retrying(on=httpx.TransportError):
            with attempt:
                response = await client.post(...)

    Each ``attempt`` is an :class:`~fintech_resilience.Attempt` (``number``,
    ``idempotency_key``, ``remaining()``). An exception raised inside ``with attempt:`` is
    caught, then retried or re-raised by the loop as the decorator would; report a result for
    ``on_result`` with ``attempt.set_result(value)``; an exception with a ``retry_after``
    attribute (seconds) makes the loop wait at least that long. The budget, the deadline,
    ``never_sent``, the idempotency key (decided once per loop: ``idempotency_key="auto"`` or
    ``idempotency_key=lambda: key``) and the hooks work as for the decorator. Iterating again
    starts a new call: a new key, a new deadline.

    :param name: labels telemetry and log lines (default: the qualified name of the function
        the block is in).
    """
    return Retrying(Retry(**options, name=name), name or caller_name(1))
