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
* All keys of one call share one ``{hash tag}`` (Redis Cluster), and every key written gets a TTL.
* Correctness never depends on a TTL having fired: stale state is recognised from its content.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Sequence
from typing import Any, Final, Literal, TypeAlias

from .. import telemetry
from ..errors import BackendUnavailable, ConfigurationError

__all__ = [
    "ALLOW",
    "DENY",
    "ON_BACKEND_ERROR_CHOICES",
    "Arg",
    "Backend",
    "BackendGuard",
    "Fallback",
    "LocalReply",
    "OnBackendError",
]

Arg: TypeAlias = int | float | str | bytes
OnBackendError: TypeAlias = Literal["allow", "deny", "local", "raise"]
ON_BACKEND_ERROR_CHOICES: Final = ("allow", "deny", "local", "raise")


class Backend(abc.ABC):
    """Runs named atomic operations, for sync and async callers alike."""

    #: Short name used in telemetry (``"memory"``, ``"redis"``).
    kind: str = "backend"

    @abc.abstractmethod
    def run(self, script: str, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """Run ``script`` atomically and return its reply (a list of ints and bytes).

        Raises :class:`~fintech_resilience.BackendUnavailable` when the store cannot answer.
        """

    @abc.abstractmethod
    async def arun(self, script: str, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """Async twin of :meth:`run`."""

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
    """A decision an ``on_backend_error`` policy took instead of the backend."""

    __slots__ = ("allow",)

    def __init__(self, allow: bool) -> None:
        self.allow = allow

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
    from the fallback is logged once per transition, not per call.
    """

    __slots__ = ("_failing", "_local", "_lock", "backend", "name", "pattern", "policy")

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
        self._local: Backend | None = None
        self._failing = False
        self._lock = threading.Lock()

    @property
    def local(self) -> Backend:
        """The per-process backend used by the ``"local"`` policy (created on first use)."""
        if self._local is None:
            from .memory import MemoryBackend

            with self._lock:
                if self._local is None:
                    self._local = MemoryBackend()
        return self._local

    def run(self, script: str, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """Run on the backend; on failure, apply the policy (see the class docstring)."""
        try:
            result = self.backend.run(script, keys, args)
        except BackendUnavailable as exc:
            decided = self._fall_back(exc)
            return self._run_local(script, keys, args) if decided is None else decided
        if self._failing:
            self._recovered()
        return result

    async def arun(self, script: str, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """Async twin of :meth:`run`."""
        try:
            result = await self.backend.arun(script, keys, args)
        except BackendUnavailable as exc:
            decided = self._fall_back(exc)
            return self._run_local(script, keys, args) if decided is None else decided
        if self._failing:
            self._recovered()
        return result

    def _run_local(self, script: str, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        result = self.local.run(script, keys, args)
        return LocalReply(result) if isinstance(result, list) else result

    def _fall_back(self, exc: BackendUnavailable) -> Fallback | None:
        """Return ALLOW/DENY, or None for "run locally"; re-raise under the "raise" policy."""
        if self.policy == "raise":
            raise exc
        if not self._failing:
            self._failing = True
            telemetry.logger.warning(
                "%s %r: backend unavailable (%s); on_backend_error=%r until it recovers",
                self.pattern, self.name, exc, self.policy,
            )
        if telemetry.active():
            telemetry.emit_fallback(self.pattern, self.name, self.policy, exc)
        if self.policy == "local":
            return None
        return ALLOW if self.policy == "allow" else DENY

    def _recovered(self) -> None:
        if not self.backend.healthy():
            return  # another part still fails (one Cluster primary): no flapping to and fro
        self._failing = False
        telemetry.logger.warning(
            "%s %r: backend recovered; decisions are shared again", self.pattern, self.name
        )
