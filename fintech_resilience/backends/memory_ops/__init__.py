"""Python twins of the Lua scripts in ``backends/lua/``, registered by script name.

Each module here registers functions with :func:`memory_op`; :func:`load_ops` imports every module
of this package, so adding an operation needs no central list. An operation receives the store,
the keys, the arguments (``args[0]`` is the caller's time or 0) and the resolved time in
microseconds, and returns exactly what the Lua script of the same name returns through redis-py
(ints, bytes, lists of those).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    from ..memory import MemoryStore

__all__ = ["MemoryOp", "load_ops", "memory_op"]

MemoryOp: TypeAlias = Callable[["MemoryStore", Sequence[str], Sequence[Any], int], Any]

_REGISTRY: dict[str, MemoryOp] = {}
_loaded = False


def memory_op(name: str) -> Callable[[MemoryOp], MemoryOp]:
    """Register ``fn`` as the memory implementation of script ``name``."""

    def register(fn: MemoryOp) -> MemoryOp:
        _REGISTRY[name] = fn
        return fn

    return register


def load_ops() -> dict[str, MemoryOp]:
    """Import every operation module of this package and return the registry (shared)."""
    global _loaded
    if not _loaded:
        for info in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{info.name}")
        _loaded = True
    return _REGISTRY
