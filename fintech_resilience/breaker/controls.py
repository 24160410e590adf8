"""The state and operator controls of a :class:`~fintech_resilience.CircuitBreaker`: reading
the shared state, the commands an operator gives every process at once (``force_open``,
``disable``, ``metrics_only``, ``reset``), audited as ``operator.override``, and handing the
last shared state to the per-process fallback when the backend fails.

Mixed into :class:`~fintech_resilience.CircuitBreaker`, whose state it reads and adopts.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from ..audit import log as _audit
from ..backends.base import Backend, BackendGuard, Fallback
from ..backends.memory import MemoryBackend
from ..backends.memory_ops.breaker import seed
from ..core import telemetry
from .state import BreakerState, Settings, View

if TYPE_CHECKING:
    from ..audit.log import AuditLog

__all__ = ["OperatorControls"]

_CONTROL: Final = {"read": 0, "reset": 1, "force_open": 2, "disable": 3, "metrics_only": 4}
#: Seconds an operator command waits for the replicas to acknowledge it (Redis ``WAIT``).
OVERRIDE_WAIT: Final = 1.0


class OperatorControls:
    """The breaker's state and operator commands (a mixin of ``CircuitBreaker``)."""

    name: str
    audit: AuditLog | None
    backend: Backend
    settings: Settings
    _guard: BackendGuard
    _keys: list[str]
    _view: View | None
    _seq: int
    _mono: Callable[[], float]
    _shared: View | None
    _seeded: View | None
    _seed_lock: threading.Lock
    _record_tail: tuple[Any, ...]

    def _now_us(self) -> int:
        raise NotImplementedError

    def _apply(self, reply: Any, seq: int, now: float) -> View:
        raise NotImplementedError

    @property
    def known_state(self) -> BreakerState | None:
        """The state this process last learned (no I/O); None before its first call."""
        view = self._view
        return None if view is None else view.state

    def _control_result(self, result: Any, seq: int) -> View:
        if isinstance(result, Fallback):
            view = self._view
            return view if view is not None else View(BreakerState.CLOSED, -1, 0.0, 0.0)
        return self._apply(result, seq, self._mono())

    def refresh(self) -> View:
        """Read the shared state (one round trip) and adopt it; returns the new view."""
        seq = self._seq
        return self._control_result(
            self._guard.run("breaker_control", self._keys, self._control_args("read")), seq)

    async def arefresh(self) -> View:
        """Async twin of :meth:`refresh`."""
        seq = self._seq
        return self._control_result(
            await self._guard.arun("breaker_control", self._keys, self._control_args("read")),
            seq)

    @property
    def state(self) -> BreakerState:
        """The shared state, read from the backend (one round trip; see :attr:`known_state`)."""
        return self.refresh().state

    async def astate(self) -> BreakerState:
        """Async twin of :attr:`state`."""
        return (await self.arefresh()).state

    def _audit_log(self) -> AuditLog | None:
        return self.audit if self.audit is not None else _audit.get_default()

    def _command(self, op: str, actor: str | None) -> BreakerState:
        seq = self._seq
        reply, acked, replicas = self.backend.run_durably(
            "breaker_control", self._keys, self._control_args(op), OVERRIDE_WAIT)
        state, details = self._commanded(op, reply, seq, acked, replicas)
        log = self._audit_log()
        if log is not None:
            log.record(_audit.EventType.OPERATOR_OVERRIDE, resource=f"breaker:{self.name}",
                       principal=actor or "operator", details=details)
        return state

    async def _acommand(self, op: str, actor: str | None) -> BreakerState:
        seq = self._seq
        # WAIT blocks its connection for up to OVERRIDE_WAIT: a worker thread's, never a lane
        # that carries this event loop's decisions (operator commands are rare)
        reply, acked, replicas = await asyncio.to_thread(
            self.backend.run_durably, "breaker_control", self._keys, self._control_args(op),
            OVERRIDE_WAIT)
        state, details = self._commanded(op, reply, seq, acked, replicas)
        log = self._audit_log()
        if log is not None:
            await log.arecord(_audit.EventType.OPERATOR_OVERRIDE, resource=f"breaker:{self.name}",
                              principal=actor or "operator", details=details)
        return state

    def _control_args(self, op: str) -> tuple[int, int, int]:
        return (self._now_us(), _CONTROL[op], self.settings.ttl_ms)

    def _commanded(self, op: str, reply: Any, seq: int, acked: int,
                   replicas: int) -> tuple[BreakerState, dict[str, Any]]:
        """Adopt a command's reply; the audit record's details. A command some replica did not
        acknowledge in time is set on the primary alone: a failover now would lose it."""
        state = self._apply(reply, seq, self._mono()).state
        details: dict[str, Any] = {"action": op, "state": state.name}
        if replicas:
            details.update(replicas=replicas, acknowledged=acked)
        if acked < replicas:
            telemetry.logger.warning(
                "breaker %r: %s is set on the primary, but %d of its %d replicas acknowledged it"
                " within %.1f s; a failover before they catch up would lose it", self.name, op,
                acked, replicas, OVERRIDE_WAIT)
        return state, details

    def force_open(self, *, actor: str | None = None) -> BreakerState:
        """Operator: reject every call in every process until :meth:`reset`.

        Operator commands go to the shared backend directly: they raise
        :class:`~fintech_resilience.BackendUnavailable` rather than change a local copy. Each one
        is audited (``operator.override``, principal ``actor``) when an audit log is configured;
        the same holds for :meth:`disable`, :meth:`metrics_only`, :meth:`reset` and the twins.
        """
        return self._command("force_open", actor)

    def disable(self, *, actor: str | None = None) -> BreakerState:
        """Operator: let every call through, record nothing, until :meth:`reset`."""
        return self._command("disable", actor)

    def metrics_only(self, *, actor: str | None = None) -> BreakerState:
        """Operator: let every call through but keep counting (never trips) until :meth:`reset`."""
        return self._command("metrics_only", actor)

    def reset(self, *, actor: str | None = None) -> BreakerState:
        """Operator: forget the window, the break growth and any override; CLOSED everywhere."""
        return self._command("reset", actor)

    async def aforce_open(self, *, actor: str | None = None) -> BreakerState:
        """Async twin of :meth:`force_open`."""
        return await self._acommand("force_open", actor)

    async def adisable(self, *, actor: str | None = None) -> BreakerState:
        """Async twin of :meth:`disable`."""
        return await self._acommand("disable", actor)

    async def ametrics_only(self, *, actor: str | None = None) -> BreakerState:
        """Async twin of :meth:`metrics_only`."""
        return await self._acommand("metrics_only", actor)

    async def areset(self, *, actor: str | None = None) -> BreakerState:
        """Async twin of :meth:`reset`."""
        return await self._acommand("reset", actor)

    def _prepare_local(self, local: MemoryBackend) -> None:
        """Before the local fallback (``on_backend_error="local"``) decides: if the backend
        taught this process something since the fallback last heard, put that state into it,
        so the fallback goes on from it - never from a fresh CLOSED breaker. From then on the
        fallback's own decisions carry it forward, until the backend answers again."""
        view = self._shared
        if view is None or view is self._seeded:
            return
        with self._seed_lock:
            if view is self._seeded:
                return
            now = self._mono()
            now_us = self._now_us() or local.now_us()
            # for states other than OPEN / FORCED_OPEN, ``until`` is when the view was learned
            seed(local, self._keys[0], view.state, view.gen,
                 break_ends_us=now_us + round((view.ends - now) * 1_000_000),
                 counts=(view.calls, view.failures, view.slow_calls),
                 counts_at_us=now_us - round((now - view.until) * 1_000_000),
                 window=self._record_tail[:3], ttl_ms=self.settings.ttl_ms, now_us=now_us)
            self._seeded = view
