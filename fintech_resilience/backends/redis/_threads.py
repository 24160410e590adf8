"""Sync decisions: one redis-py connection per thread and node, outside redis-py's pool.

A decision is one command and one reply on a connection nobody else uses, so it skips the
pool's checkout (its lock and bookkeeping cost about a quarter of a round trip). The pool's
guarantees stay: before each use the socket is polled and the connection replaced if the
server closed it (idle timeout, restart) or it holds stray data; any error other than an error
reply drops the connection (its stream may hold a late reply); a forked child never uses its
parent's.

A thread's connections close when the thread ends: they are held only by the thread's
thread-local storage, through small holders without reference cycles, so they go when that
storage goes - not at the next garbage collection (a redis-py connection sits in reference
cycles). A server that refuses a connection because it is full (``maxclients``) is asked again
by that thread only after ``cooldown`` seconds.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
from typing import Any

import redis.exceptions as rex

from ._health import Refused, is_refusal
from ._topology import Node

__all__ = ["ThreadConnections"]

#: bumped in a forked child: connections made before the fork belong to the parent
_FORKS = [0]
os.register_at_fork(after_in_child=lambda: _FORKS.__setitem__(0, _FORKS[0] + 1))


class _Held:
    """One thread's connection to one node; closing it when the holder goes."""

    __slots__ = ("__weakref__", "conn", "fork", "refused_until")

    def __init__(self) -> None:
        self.conn: Any = None
        self.fork = _FORKS[0]
        self.refused_until = 0.0

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.disconnect()

    def __del__(self) -> None:
        self.close()


class ThreadConnections:
    """This thread's connection to each node (:meth:`call`); :meth:`close` closes them all."""

    def __init__(self, cooldown: float) -> None:
        self.cooldown = cooldown
        self._local = threading.local()
        self._all: weakref.WeakSet[_Held] = weakref.WeakSet()
        self._all_lock = threading.Lock()

    def call(self, node: Node, packed: bytes, replies: int = 1) -> Any:
        """Send ``packed`` (RESP, ``replies`` commands) on this thread's connection to
        ``node`` and return the reply (a list of them when ``replies > 1``). Error replies are
        returned as ``redis.ResponseError`` values; anything else raises."""
        conn = self._connection(node)
        try:
            conn.send_packed_command((packed,), False)
            if replies == 1:
                return read_reply(conn)
            return [read_reply(conn) for _ in range(replies)]
        except BaseException as exc:
            self._drop(node, refused=is_refusal(exc))
            raise

    def _connection(self, node: Node) -> Any:
        held = getattr(self._local, "held", None)
        if held is None:
            held = self._local.held = {}
        mine: _Held | None = held.get(node.address)
        if mine is None or mine.fork != _FORKS[0]:
            mine = held[node.address] = _Held()
            with self._all_lock:
                self._all.add(mine)
        conn = mine.conn
        if conn is not None:
            try:  # as the pool checks: closed by the server (idle timeout, restart) or out of step
                stale = conn.can_read()
            except (rex.ConnectionError, rex.TimeoutError, OSError):
                stale = True
            if not stale:
                return conn
            mine.close()
        if time.monotonic() < mine.refused_until:
            raise Refused(f"Redis {node.address} refused a connection (max number of clients"
                          " reached); asking again later")
        try:
            conn = mine.conn = node.connection.connect()
        except rex.ConnectionError as exc:
            if is_refusal(exc):
                mine.refused_until = time.monotonic() + self.cooldown
            raise
        return conn

    def _drop(self, node: Node, refused: bool) -> None:
        held = getattr(self._local, "held", None)
        mine = held.get(node.address) if held is not None else None
        if mine is not None:
            mine.close()
            if refused:
                mine.refused_until = time.monotonic() + self.cooldown

    def close(self) -> None:
        """Close every thread's connections (the backend is not used afterwards)."""
        with self._all_lock:
            everyone = list(self._all)
            self._all.clear()
        for held in everyone:
            held.close()
        self._local = threading.local()


def read_reply(conn: Any) -> Any:
    """One reply from ``conn``; an error reply is returned as a ``redis.ResponseError``."""
    try:
        return conn.read_response()
    except rex.ResponseError as exc:  # a whole error reply was read: the connection is in step
        return exc
