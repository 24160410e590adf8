"""Python twins of the Lua scripts in ``backends/lua/``, registered by script name.

Each module here registers functions with :func:`memory_op`; :func:`load_ops` imports every module
of this package, so adding an operation needs no central list. An operation receives the store,
the keys, the arguments (``args[0]`` is the caller's time or 0) and the resolved time in
microseconds, and returns exactly what the Lua script of the same name returns through redis-py
(ints, bytes, lists of those).

An operation that a pattern runs on every call may also register a *binder*
(:func:`memory_binder`): :meth:`MemoryBackend.bind <fintech_resilience.backends.memory.
MemoryBackend.bind>` then calls it once with the store, the lock and the clock, and the pattern
calls what it returns - the place for a hot operation's preparation (no dispatch, no generic
argument handling per call). Its replies stay those of the operation.
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    from ..base import BoundOp
    from ..memory import MemoryStore

__all__ = ["Binder", "MemoryOp", "binders", "load_ops", "memory_binder", "memory_op"]

MemoryOp: TypeAlias = Callable[["MemoryStore", Sequence[str], Sequence[Any], int], Any]
#: ``(store, lock, now_us or None for real time) -> bound operation``
Binder: TypeAlias = Callable[
    ["MemoryStore", threading.Lock, "Callable[[], int] | None"], "BoundOp"]

_REGISTRY: dict[str, MemoryOp] = {}
_BINDERS: dict[str, Binder] = {}
_loaded = False


def memory_op(name: str) -> Callable[[MemoryOp], MemoryOp]:
    """Register ``fn`` as the memory implementation of script ``name``."""

    def register(fn: MemoryOp) -> MemoryOp:
        _REGISTRY[name] = fn
        return fn

    return register


def memory_binder(name: str) -> Callable[[Binder], Binder]:
    """Register ``fn`` as the binder of operation ``name`` (see the module docstring)."""

    def register(fn: Binder) -> Binder:
        _BINDERS[name] = fn
        return fn

    return register


def binders() -> dict[str, Binder]:
    """The registered binders, by operation name (after :func:`load_ops`)."""
    load_ops()
    return _BINDERS


def load_ops() -> dict[str, MemoryOp]:
    """Import every operation module of this package and return the registry (shared)."""
    global _loaded
    if not _loaded:
        for info in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{info.name}")
        _loaded = True
    return _REGISTRY
