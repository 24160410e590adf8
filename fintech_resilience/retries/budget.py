"""A retry budget per dependency, shared by every process: retries cannot multiply load.

gRPC/Finagle style. Every first attempt deposits ``ratio`` tokens into a bucket (capped at
``max_tokens``); every retry withdraws one whole token. When the bucket is empty, a floor of
``min_per_second`` retries per second is still allowed (a refilling second bucket, so a quiet
service can retry at all). So over any run, with ``F`` first attempts in ``t`` seconds::

    retries <= ratio * F + min_per_second * (t + 1)

and during an outage the traffic a dependency sees is at most ``(1 + ratio)`` times the calls
plus the floor - never ``attempts`` times.

One round trip per decision: deposits are counted in the process and sent along with the next
withdrawal (or once they add up to a whole token, or on :meth:`RetryBudget.flush`), so the
success path costs one backend call per ``1 / ratio`` calls, not one per call. Amounts are kept
as integer micro-tokens, so ten deposits of 0.1 make exactly one token.

When the backend fails, ``on_backend_error="allow"`` (the default) lets the retry through:
retries then follow the retry policy alone.
"""

from __future__ import annotations

import math
import threading
from typing import TYPE_CHECKING, Final, cast

from ..audit import log as _audit
from ..backends.base import BackendGuard, Fallback, OnBackendError
from ..backends.resolve import BackendSpec, resolve_backend
from ..core import storage_keys as _keys
from ..core import telemetry
from ..core.clock import Clock
from ..errors import ConfigurationError

if TYPE_CHECKING:
    from ..audit.log import AuditLog

__all__ = ["BudgetState", "RetryBudget"]

SCRIPT: Final = "retrybudget_update"
_UNIT: Final = 1_000_000  # micro-tokens per token


class BudgetState:
    """The budget after a decision: whole tokens left and floor retries left (floats)."""

    __slots__ = ("floor", "granted", "tokens")

    def __init__(self, granted: int, tokens: int, floor: int) -> None:
        #: 0 refused, 1 paid from the tokens, 2 paid from the floor.
        self.granted = granted
        self.tokens = tokens / _UNIT
        self.floor = floor / _UNIT

    def __repr__(self) -> str:
        return f"<BudgetState granted={self.granted} tokens={self.tokens} floor={self.floor}>"


def _number(value: object, what: str, low: float, high: float, hint: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ConfigurationError(f"{what} must be a number in [{low}, {high}]; got {value!r}. "
                                 f"{hint}")
    return float(value)


class RetryBudget:
    """A token bucket of retries per dependency, shared through the backend.

    :param name: the dependency (``"psp-acme"``); one budget per name across every process.
    :param backend: a backend or a URL (``"redis://host:6379/0"``); default the process-wide
        :class:`~fintech_resilience.MemoryBackend`.
    :param ratio: tokens each first attempt deposits: retries allowed per call (default 0.1).
    :param min_per_second: retries always allowed per second, even with an empty bucket
        (default 5; 0 disables the floor).
    :param max_tokens: cap of the bucket, so a long quiet period cannot save up an unbounded
        burst of retries (default 100).
    :param on_backend_error: ``"allow"`` (default), ``"deny"``, ``"local"`` or ``"raise"``.
    :param ttl: seconds the shared state lives after its last use (default 3600).
    :param clock: pass a ``ManualClock`` in tests; by default the backend's clock decides.
    :param audit: an :class:`~fintech_resilience.audit.AuditLog` that records each refused retry
        (``retry_budget.exhausted``); default :func:`fintech_resilience.audit.get_default`.
    """

    def __init__(self, name: str, *, backend: BackendSpec = None, ratio: float = 0.1,
                 min_per_second: float = 5.0, max_tokens: float = 100.0,
                 on_backend_error: OnBackendError = "allow", ttl: float = 3600.0,
                 clock: Clock | None = None, namespace: str = _keys.DEFAULT_NAMESPACE,
                 audit: AuditLog | None = None) -> None:
        self.name = _keys.validate_name(name)
        self.audit = audit
        self.namespace = _keys.validate_name(namespace, "namespace")
        self.ratio = _number(ratio, "ratio", 0.0, 1_000.0, "Write e.g. ratio=0.1 (10% retries).")
        self.min_per_second = _number(min_per_second, "min_per_second", 0.0, 1e6,
                                      "Write e.g. min_per_second=5.")
        self.max_tokens = _number(max_tokens, "max_tokens", 1.0, 1e9,
                                  "Write e.g. max_tokens=100.")
        self.ttl = _number(ttl, "ttl", 1.0, 86_400.0 * 30, "Write e.g. ttl=3600.")
        if self.ratio == 0 and self.min_per_second == 0:
            raise ConfigurationError(
                "ratio=0 and min_per_second=0 would refuse every retry; use attempts=1 instead")
        self.clock = clock
        self.backend = resolve_backend(backend)
        self._guard = BackendGuard(telemetry.Pattern.RETRY_BUDGET, self.name, self.backend,
                                   on_backend_error)
        self._keys = [_keys.name_key(self.namespace, "rb", self.name)]
        self._ratio_ppm = round(self.ratio * _UNIT)
        self._cap = round(self.max_tokens * _UNIT)
        self._floor_rate = round(self.min_per_second * _UNIT)
        # the floor holds one second of retries (at least one whole retry), or none at all
        self._floor_cap = max(_UNIT, self._floor_rate) if self._floor_rate else 0
        self._ttl_ms = math.ceil(self.ttl * 1000)
        #: first attempts not yet sent: flushed with the next withdrawal or at a whole token
        self._pending = 0
        self._batch = max(1, math.ceil(_UNIT / self._ratio_ppm)) if self._ratio_ppm else 1
        self._lock = threading.Lock()

    # --- decisions without I/O --------------------------------------------------------------

    def _take_pending(self) -> int:
        with self._lock:
            pending, self._pending = self._pending, 0
        return pending

    def _note_first(self) -> bool:
        """Count a first attempt; True when the pending deposits should be sent now."""
        if not self._ratio_ppm:
            return False
        with self._lock:
            self._pending += 1
            return self._pending >= self._batch

    def _args(self, deposits: int, withdraw: bool) -> tuple[int, ...]:
        now = 0 if self.clock is None else round(self.clock.time() * _UNIT)
        return (now, deposits, self._ratio_ppm, self._cap, int(withdraw), self._floor_rate,
                self._floor_cap, self._ttl_ms)

    def _state(self, result: object, deposits: int) -> BudgetState:
        if isinstance(result, Fallback):
            with self._lock:  # the deposits were not recorded: keep them for the next call
                self._pending += deposits
            return BudgetState(1 if result.allow else 0, 0, 0)
        reply = cast("list[int]", result)
        return BudgetState(int(reply[0]), int(reply[1]), int(reply[2]))

    def _granted(self, state: BudgetState) -> bool:
        if telemetry.active():
            telemetry.emit_decision(telemetry.Pattern.RETRY_BUDGET, self.name,
                                    telemetry.Decision.ALLOW if state.granted
                                    else telemetry.Decision.DENY)
        return state.granted > 0

    def _audit_log(self) -> AuditLog | None:
        """The log a refusal goes to (this budget's, else the process default), or None."""
        return self.audit if self.audit is not None else _audit.get_default()

    # --- sync and async drivers -------------------------------------------------------------

    def deposit(self) -> None:
        """Record a first attempt (sent to the backend in batches; see the module docstring)."""
        if self._note_first():
            self.flush()

    async def adeposit(self) -> None:
        """Async twin of :meth:`deposit`."""
        if self._note_first():
            await self.aflush()

    def flush(self) -> BudgetState:
        """Send the pending deposits now and return the budget's state."""
        deposits = self._take_pending()
        return self._state(self._guard.run(SCRIPT, self._keys, self._args(deposits, False)),
                           deposits)

    async def aflush(self) -> BudgetState:
        """Async twin of :meth:`flush`."""
        deposits = self._take_pending()
        result = await self._guard.arun(SCRIPT, self._keys, self._args(deposits, False))
        return self._state(result, deposits)

    def withdraw(self) -> bool:
        """Ask for one retry (sending the pending deposits in the same call); True if granted."""
        deposits = self._take_pending()
        result = self._guard.run(SCRIPT, self._keys, self._args(deposits, True))
        if self._granted(self._state(result, deposits)):
            return True
        log = self._audit_log()
        if log is not None:
            log.record(_audit.EventType.RETRY_BUDGET_EXHAUSTED,
                       resource=f"retry_budget:{self.name}", outcome="failure")
        return False

    async def awithdraw(self) -> bool:
        """Async twin of :meth:`withdraw`."""
        deposits = self._take_pending()
        result = await self._guard.arun(SCRIPT, self._keys, self._args(deposits, True))
        if self._granted(self._state(result, deposits)):
            return True
        log = self._audit_log()
        if log is not None:
            await log.arecord(_audit.EventType.RETRY_BUDGET_EXHAUSTED,
                              resource=f"retry_budget:{self.name}", outcome="failure")
        return False

    def __repr__(self) -> str:
        return (f"RetryBudget({self.name!r}, ratio={self.ratio}, min_per_second="
                f"{self.min_per_second}, max_tokens={self.max_tokens})")
