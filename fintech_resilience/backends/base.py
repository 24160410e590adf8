"""The backend seam: one atomic operation per decision, run in one call.

A pattern never issues raw storage commands. It names a script (``"ratelimit_gcra"``,
``"breaker_record"``, ``"idempotency_claim"``, ...), passes its keys and arguments, and reads back a
flat list of integers and bytes. :class:`~fintech_resilience.RedisBackend` runs the Lua script of
that name (``backends/lua/<script>.lua``) with EVALSHA in one round trip;
:class:`~fintech_resilience.MemoryBackend` runs the Python twin registered under the same name in
``backends/memory_ops/``. Both must return identical results for identical inputs.

Conventions every script follows:

* ``ARGV[1]`` is the current time in integer microseconds, or ``0`` to use the backend's own clock
  (Redis ``TIME``), so hosts with skewed clocks agree and tests can pass a manual clock's time.
* All keys of one call share one ``{hash tag}`` (Redis Cluster), and every key written gets a TTL
  (but a breaker's hash under an operator's override, which holds until reset).
* Correctness never depends on a TTL having fired: stale state is recognised from its content.
"""

from __future__ import annotations

import abc
import functools
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias

from ..core import telemetry
from ..errors import BackendFull, BackendUnavailable, ConfigurationError

if TYPE_CHECKING:
    from .memory import MemoryBackend

__all__ = [
    "ALLOW",
    "DENY",
    "ON_BACKEND_ERROR_CHOICES",
    "Arg",
    "Backend",
    "BackendGuard",
    "BoundOp",
    "Fallback",
    "LocalReply",
    "OnBackendError",
]

Arg: TypeAlias = int | float | str | bytes
#: An operation with its script fixed: ``op(keys, args) -> reply`` (see :meth:`Backend.bind`).
BoundOp: TypeAlias = Callable[[Sequence[str], Sequence[Arg]], Any]
OnBackendError: TypeAlias = Literal["allow", "deny", "local", "raise"]
ON_BACKEND_ERROR_CHOICES: Final = ("allow", "deny", "local", "raise")


class Backend(abc.ABC):
    """Runs named atomic operations, for sync and async callers alike."""

    #: Short name used in telemetry (``"memory"``, ``"redis"``).
    kind: str = "backend"
    #: False for a backend that never raises :class:`~fintech_resilience.BackendUnavailable`
    #: (the in-process one): patterns then call it without their ``on_backend_error`` guard.
    can_fail: bool = True
    #: True when every process using the same store sees the same state (Redis); False for
    #: state private to this process (memory).
    shared: bool = True
    #: True when writes go to replicas that can acknowledge them (:meth:`run_replicated`).
    replicated: bool = False

    @abc.abstractmethod
    def run(self, script: str, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """Run ``script`` atomically and return its reply (a list of ints and bytes).

        Raises :class:`~fintech_resilience.BackendUnavailable` when the store cannot answer.
        """

    @abc.abstractmethod
    async def arun(self, script: str, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """Async twin of :meth:`run`."""

    def bind(self, script: str) -> BoundOp:
        """:meth:`run` with ``script`` fixed, for a caller that runs it again and again. A backend
        may prepare the operation once here (the memory backend binds it to its store and lock);
        unknown scripts may be refused here rather than on the first call."""
        return functools.partial(self.run, script)

    def breaker_success_counter(self, key: str, window_size: int, ttl_ms: int,
                                now_us: Callable[[], int] | None
                                ) -> Callable[[int], bool] | None:
        """Optional capability: count a circuit breaker's plain successes in CLOSED in place,
        without running ``breaker_record`` (``counter(generation) -> True`` when counted; False
        when the operation must decide). None (the default): every outcome runs the operation.
        The memory backend offers it for count windows (its successes need no round trip)."""
        return None

    def run_replicated(self, script: str, keys: Sequence[str], args: Sequence[Arg],
                       replicas: int, timeout: float) -> tuple[Any, int]:
        """Run ``script`` and wait until ``replicas`` replicas acknowledged its writes, at most
        ``timeout`` seconds; return ``(reply, replicas that acknowledged)``. Only a store with
        replicas offers it (:attr:`replicated`)."""
        raise ConfigurationError(f"{type(self).__name__} has no replicas to wait for")

    def run_durably(self, script: str, keys: Sequence[str], args: Sequence[Arg],
                    timeout: float) -> tuple[Any, int, int]:
        """Run ``script``, then wait until every replica the store has acknowledged its writes,
        at most ``timeout`` seconds: ``(reply, replicas that acknowledged, replicas)`` - for
        rare writes that must outlive a failover (an operator's override). A store without
        replicas just runs it: ``(reply, 0, 0)``."""
        return self.run(script, keys, args), 0, 0

    def warn_if_evicting(self, what: str) -> bool:
        """Log a warning (and return True) when the store may evict keys that hold ``what``;
        a store that never evicts them answers False (the default)."""
        return False

    def healthy(self) -> bool:
        """Whether every part of the store answers (a Redis Cluster: every primary). A guard
        that fell back says decisions are shared again only then."""
        return True

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections. The backend must not be used afterwards."""

    async def aclose(self) -> None:
        """Async twin of :meth:`close`."""
        self.close()


class LocalReply(list[Any]):
    """A reply computed by the per-process fallback backend (``on_backend_error="local"``)."""

    __slots__ = ()


class Fallback:
    """A decision an ``on_backend_error`` policy took instead of the backend.

    ``cause`` is set when the backend's refusal says more than "unavailable" (a full
    :class:`~fintech_resilience.MemoryBackend`: :class:`~fintech_resilience.BackendFull`).
    """

    __slots__ = ("allow", "cause")

    def __init__(self, allow: bool, cause: BackendUnavailable | None = None) -> None:
        self.allow = allow
        self.cause = cause

    def __repr__(self) -> str:
        return "ALLOW" if self.allow else "DENY"


ALLOW: Final = Fallback(True)
DENY: Final = Fallback(False)


class BackendGuard:
    """Runs a pattern's operations and applies its ``on_backend_error`` policy.

    * ``"allow"``: the call goes ahead (fail open) - :data:`ALLOW` is returned;
    * ``"deny"``: the call is refused (fail closed) - :data:`DENY` is returned;
    * ``"local"``: the operation runs on a per-process :class:`MemoryBackend` instead, so the
      pattern keeps its semantics within this process until the backend is back;
    * ``"raise"``: :class:`~fintech_resilience.BackendUnavailable` propagates.

    Every fallback is counted in the ``resilience.backend.fallbacks`` metric; the switch to and
    from the fallback is logged once per transition, not per call (also when several threads
    fail or recover at once).
    """

    __slots__ = ("_failing", "_local", "_lock", "backend", "name", "pattern", "policy",
                 "prepare_local")

    def __init__(self, pattern: str, name: str, backend: Backend, policy: str) -> None:
        if policy not in ON_BACKEND_ERROR_CHOICES:
            raise ConfigurationError(
                f"on_backend_error must be one of {', '.join(map(repr, ON_BACKEND_ERROR_CHOICES))};"
                f" got {policy!r}"
            )
        self.pattern = pattern
        self.name = name
        self.backend = backend
        self.policy: OnBackendError = policy  # type: ignore[assignment]
        self._local: MemoryBackend | None = None
        self._failing = False
        self._lock = threading.Lock()
        #: called with :attr:`local` before every operation that runs there, so a pattern can
        #: first put in it what it last learned from the backend (a breaker's state)
        self.prepare_local: Callable[[MemoryBackend], None] | None = None

    @property
    def local(self) -> MemoryBackend:
        """The per-process backend used by the ``"local"`` policy (created on first use)."""
        if self._local is None:
            from .memory import MemoryBackend

            with self._lock:
                if self._local is None:
                    self._local = MemoryBackend()
        return self._local

    def bind(self, script: str) -> BoundOp:
        """:meth:`run` with ``script`` fixed; a backend that cannot fail is called directly."""
        if not self.backend.can_fail:
            return self.backend.bind(script)
        return functools.partial(self.run, script)

    def run(self, script: str, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """Run on the backend; on failure, apply the policy (see the class docstring)."""
        try:
            return self._answered(self.backend.run(script, keys, args))
        except BackendUnavailable as exc:
            return self._unanswered(exc, script, keys, args)

    async def arun(self, script: str, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """Async twin of :meth:`run`."""
        try:
            return self._answered(await self.backend.arun(script, keys, args))
        except BackendUnavailable as exc:
            return self._unanswered(exc, script, keys, args)

    def run_where(self, local: bool, script: str, keys: Sequence[str],
                  args: Sequence[Arg]) -> Any:
        """Run where an earlier operation on ``keys`` ran (a claim and then its completion):
        on :attr:`local` if it ran there, else on the backend alone - never on the fallback,
        which holds nothing of it. A failing backend raises
        :class:`~fintech_resilience.BackendUnavailable`, whatever the policy."""
        if local:
            return self.local.run(script, keys, args)
        return self._answered(self.backend.run(script, keys, args))

    async def arun_where(self, local: bool, script: str, keys: Sequence[str],
                         args: Sequence[Arg]) -> Any:
        """Async twin of :meth:`run_where`."""
        if local:
            return self.local.run(script, keys, args)
        return self._answered(await self.backend.arun(script, keys, args))

    def _answered(self, result: Any) -> Any:
        if self._failing:
            self._recovered()
        return result

    def _unanswered(self, exc: BackendUnavailable, script: str, keys: Sequence[str],
                    args: Sequence[Arg]) -> Any:
        decided = self._fall_back(exc)
        return self._run_local(script, keys, args) if decided is None else decided

    def _run_local(self, script: str, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        local = self.local
        if self.prepare_local is not None:
            self.prepare_local(local)
        result = local.run(script, keys, args)
        return LocalReply(result) if isinstance(result, list) else result

    def _fall_back(self, exc: BackendUnavailable) -> Fallback | None:
        """Return ALLOW/DENY, or None for "run locally"; re-raise under the "raise" policy."""
        if self.policy == "raise":
            raise exc
        # a full memory backend refuses one kind of write and logs that itself; it still
        # answers everything else, so it is no switch to the fallback and back
        if not self._failing and not isinstance(exc, BackendFull):
            with self._lock:
                first, self._failing = not self._failing, True
            if first:
                telemetry.logger.warning(
                    "%s %r: backend unavailable (%s); on_backend_error=%r until it recovers",
                    self.pattern, self.name, exc, self.policy,
                )
        if telemetry.active():
            telemetry.emit_fallback(self.pattern, self.name, self.policy, exc)
        if self.policy == "local":
            return None
        if self.policy == "allow":
            return ALLOW
        return Fallback(False, exc) if isinstance(exc, BackendFull) else DENY

    def _recovered(self) -> None:
        if not self.backend.healthy():
            return  # another part still fails (one Cluster primary): no flapping to and fro
        with self._lock:
            first, self._failing = self._failing, False
        if first:
            telemetry.logger.warning(
                "%s %r: backend recovered; decisions are shared again", self.pattern, self.name
            )
