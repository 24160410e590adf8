"""Health per node: a breaker in front of each Redis server the backend talks to.

After ``threshold`` consecutive failures of one node (timeouts, lost or refused-as-dead
connections, error replies), calls for that node fail at once with
:class:`~fintech_resilience.BackendUnavailable` for ``cooldown`` seconds, then one probe goes
through. Other nodes are not affected: on a Cluster, a dead primary sends only its own slots to
``on_backend_error``.

A server that refuses a connection because it has too many (``maxclients``) is alive and
serving everyone already connected: that refusal is not counted against the node.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import redis.exceptions as rex

from ...errors import BackendUnavailable

__all__ = ["HealthBreaker", "Refused", "is_refusal"]


class Refused(rex.ConnectionError):
    """The server refused a new connection because it has too many (``maxclients``)."""


def is_refusal(exc: BaseException) -> bool:
    """Whether ``exc`` says the server is full rather than gone."""
    return isinstance(exc, Refused) or "max number of clients reached" in str(exc)


class HealthBreaker:
    """Stops calling a failing node for a cool-down; then lets a single probe through."""

    __slots__ = ("_failures", "_lock", "_open_until", "_probe_until", "clock", "cooldown",
                 "name", "probe_timeout", "threshold")

    def __init__(self, threshold: int, cooldown: float, probe_timeout: float,
                 clock: Callable[[], float] = time.monotonic, name: str = "Redis") -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.probe_timeout = probe_timeout
        self.clock = clock
        self.name = name
        self._failures = 0
        self._open_until = 0.0
        self._probe_until = 0.0
        self._lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        return self._failures >= self.threshold

    @property
    def failing(self) -> bool:
        """The last call failed (the breaker may not be open yet)."""
        return self._failures > 0

    def before_call(self) -> None:
        """Raise BackendUnavailable while cooling down or while another call probes."""
        if self._failures < self.threshold:
            return
        now = self.clock()
        with self._lock:
            if now < self._open_until:
                raise BackendUnavailable(
                    f"{self.name} failed {self._failures} times in a row; cooling down for"
                    f" {self._open_until - now:.2f}s"
                )
            if now < self._probe_until:
                raise BackendUnavailable(
                    f"{self.name} is being probed after a failure; not calling it")
            self._probe_until = now + self.probe_timeout

    def success(self) -> None:
        if self._failures:
            with self._lock:
                self._failures = 0
                self._probe_until = 0.0

    def failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self._failures >= self.threshold:
                self._open_until = self.clock() + self.cooldown
                self._probe_until = 0.0

    def __repr__(self) -> str:
        state = "open" if self.is_open else "closed"
        return f"HealthBreaker({self.name}, {state}, failures={self._failures})"
