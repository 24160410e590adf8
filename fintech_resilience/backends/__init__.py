"""Storage backends: where the state of every pattern lives.

:class:`MemoryBackend` (the default) keeps state in this process; :class:`RedisBackend` shares it
between every worker and host through Redis (standalone, Sentinel or Cluster).
"""

from .base import ON_BACKEND_ERROR_CHOICES, Backend, BackendGuard, OnBackendError
from .memory import MemoryBackend, default_backend
from .redis import RedisBackend

__all__ = [
    "ON_BACKEND_ERROR_CHOICES",
    "Backend",
    "BackendGuard",
    "MemoryBackend",
    "OnBackendError",
    "RedisBackend",
    "default_backend",
]
