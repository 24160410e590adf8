"""At most N calls in flight per key, across every process: slots are leases.

A slot is held under a random token with an expiry (``lease`` seconds). If the holder dies, its
slot frees itself when the lease runs out; a long call keeps its slot with ``renew``. Releasing a
lease that already expired is harmless (it releases nothing that belongs to someone else).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import cast

from ..backends.base import BackendGuard, Fallback, LocalReply, OnBackendError
from ..backends.resolve import BackendSpec, resolve_backend
from ..core import storage_keys as _keys
from ..core import telemetry
from ..core.clock import Clock
from ..errors import ConcurrencyLimited, ConfigurationError

__all__ = ["ConcurrencyLimiter", "Slot"]

KeyArg = str | bytes | int


@dataclass(frozen=True, slots=True)
class Slot:
    """A held concurrency slot. ``acquired`` is False when every slot was taken."""

    acquired: bool
    key: KeyArg
    token: str
    in_use: int
    retry_after: float
    fallback: str | None = None


class ConcurrencyLimiter:
    """Caps the calls in flight per key (e.g. per PSP) across every worker and host.

    :param limit: slots per key.
    :param backend: a backend or a URL (``"redis://host:6379/0"``); default the process-wide
        :class:`~fintech_resilience.MemoryBackend`.
    :param lease: seconds a slot stays held without :meth:`renew` (covers a dead holder).
    :param on_backend_error: ``"local"`` (default: a per-process cap), ``"allow"``, ``"deny"``,
        ``"raise"``.
    """

    def __init__(self, limit: int, *, backend: BackendSpec = None, name: str = "default",
                 lease: float = 30.0, on_backend_error: OnBackendError = "local",
                 clock: Clock | None = None, namespace: str = _keys.DEFAULT_NAMESPACE) -> None:
        if type(limit) is not int or limit < 1:
            raise ConfigurationError(f"limit must be a positive int; got {limit!r}")
        if not isinstance(lease, int | float) or not 0 < lease <= 86_400:
            raise ConfigurationError(f"lease must be between 0 and 86400 seconds; got {lease!r}")
        self.limit = limit
        self.lease = float(lease)
        self.name = _keys.validate_name(name)
        self.namespace = _keys.validate_name(namespace, "namespace")
        self.clock = clock
        self.backend = resolve_backend(backend)
        self._guard = BackendGuard("concurrency", self.name, self.backend, on_backend_error)

    def _now(self) -> int:
        return 0 if self.clock is None else round(self.clock.time() * 1_000_000)

    def _key(self, key: KeyArg) -> list[str]:
        return [_keys.user_key(self.namespace, "cc", self.name, key)]

    def _acquire_args(self, token: str) -> tuple[int, int, int, str]:
        return (self._now(), self.limit, round(self.lease * 1_000_000), token)

    def _slot(self, key: KeyArg, token: str, result: object) -> Slot:
        if isinstance(result, Fallback):
            slot = Slot(result.allow, key, token, 0, 0.0 if result.allow else 1.0,
                        self._guard.policy)
        else:
            acquired, in_use, wait = cast(list[int], result)
            slot = Slot(bool(acquired), key, token, int(in_use), int(wait) / 1_000_000,
                        "local" if type(result) is LocalReply else None)
        if telemetry.active():
            telemetry.emit_decision("concurrency", self.name,
                                    "allow" if slot.acquired else "deny")
        return slot

    def try_acquire(self, key: KeyArg) -> Slot:
        """Take a slot if one is free (never waits)."""
        token = _keys.token()
        result = self._guard.run("concurrency_acquire", self._key(key), self._acquire_args(token))
        return self._slot(key, token, result)

    async def atry_acquire(self, key: KeyArg) -> Slot:
        """Async twin of :meth:`try_acquire`."""
        token = _keys.token()
        result = await self._guard.arun("concurrency_acquire", self._key(key),
                                        self._acquire_args(token))
        return self._slot(key, token, result)

    def release(self, slot: Slot) -> bool:
        """Give the slot back; False if its lease had already expired."""
        if not slot.acquired or slot.fallback in ("allow", "deny"):
            return False
        result = self._guard.run("concurrency_release", self._key(slot.key),
                                 (self._now(), slot.token))
        return not isinstance(result, Fallback) and bool(result[0])

    async def arelease(self, slot: Slot) -> bool:
        """Async twin of :meth:`release`."""
        if not slot.acquired or slot.fallback in ("allow", "deny"):
            return False
        result = await self._guard.arun("concurrency_release", self._key(slot.key),
                                        (self._now(), slot.token))
        return not isinstance(result, Fallback) and bool(result[0])

    def renew(self, slot: Slot) -> bool:
        """Extend the slot's lease by ``lease`` seconds; False if it had already expired."""
        result = self._guard.run("concurrency_renew", self._key(slot.key),
                                 (self._now(), round(self.lease * 1_000_000), slot.token))
        return not isinstance(result, Fallback) and bool(result[0])

    async def arenew(self, slot: Slot) -> bool:
        """Async twin of :meth:`renew`."""
        result = await self._guard.arun("concurrency_renew", self._key(slot.key),
                                        (self._now(), round(self.lease * 1_000_000), slot.token))
        return not isinstance(result, Fallback) and bool(result[0])

    @contextlib.contextmanager
    def hold(self, key: KeyArg) -> Iterator[Slot]:
        """Hold a slot for the ``with`` block, or raise :class:`ConcurrencyLimited`."""
        slot = self.try_acquire(key)
        if not slot.acquired:
            raise ConcurrencyLimited(self.name, self.limit)
        try:
            yield slot
        finally:
            self.release(slot)

    @contextlib.asynccontextmanager
    async def ahold(self, key: KeyArg) -> AsyncIterator[Slot]:
        """Async twin of :meth:`hold`."""
        slot = await self.atry_acquire(key)
        if not slot.acquired:
            raise ConcurrencyLimited(self.name, self.limit)
        try:
            yield slot
        finally:
            await self.arelease(slot)

    def __repr__(self) -> str:
        return f"ConcurrencyLimiter({self.limit}, name={self.name!r}, backend={self.backend!r})"
