"""Helpers for your tests: a manual clock, a test mode, and a reset of all in-memory state.

>>> from fintech_resilience import testing
>>> testing.set_test_mode(attempts=1)   # as stamina.set_testing(True, attempts=1)
>>> with testing.test_mode(attempts=2, cap=True):
...     pass  # retries here do not sleep, and make at most 2 attempts
>>> testing.reset()                     # between tests: forget limits, breakers, records, ...

**Test mode** turns every retry wait off (backoff, Retry-After) and, with ``attempts``, makes each
retried call make exactly that many attempts (``cap=True``: at most that many, never more than
configured). :func:`set_test_mode` sets it for the whole process (what a ``conftest.py`` fixture
wants: the app may run in other threads, as Starlette's and Django's test clients do);
:func:`test_mode` for a block in this thread, over the process-wide setting.

**reset()** forgets everything kept in memory: every :class:`~fintech_resilience.MemoryBackend`
(the process-wide default, each Flask or FastAPI app's own, the per-process fallbacks of Redis
patterns, your own), what each circuit breaker learned of its state, the default audit log, the
backends made from URLs and the cached key functions and Django settings. State in Redis is not
touched (flush your test database). Test mode is left as it is.

Say, in ``conftest.py``::

    @pytest.fixture(autouse=True)
    def _resilience():
        testing.set_test_mode(attempts=1)
        yield
        testing.reset()
"""

from __future__ import annotations

from .core.clock import ManualClock
from .core.resets import reset_all
from .core.testmode import TestMode, current, is_test_mode, set_test_mode
from .core.testmode import mode_block as test_mode

__all__ = ["ManualClock", "TestMode", "current", "is_test_mode", "reset", "reset_default_backend",
           "set_test_mode", "test_mode"]


def reset() -> None:
    """Forget all in-memory state of the library (see the module's documentation)."""
    reset_all()


def reset_default_backend() -> None:
    """Forget all state of the patterns that were given no backend (the process-wide
    :class:`~fintech_resilience.MemoryBackend`): limits, breakers, budgets, slots, audit
    streams and idempotency records. :func:`reset` forgets that and the rest."""
    from .backends.memory import default_backend

    default_backend().clear()
