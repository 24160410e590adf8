"""Asyncio decisions: one pipelined connection per node and event loop, written together, read
in order.

A command issued while nothing is in flight is written at once; commands issued while replies
are awaited are written in groups of ``WRITE_AT``, and whatever is left at the end of the
event-loop iteration, so Redis works on the first group while the loop produces the next.
Replies come back in order and are matched to their callers as they arrive (parsed by hiredis
in C where it is installed). A lone decision therefore costs one write and one read, and 50
concurrent decisions share a few writes and about one round trip's wait, while each stays its
own atomic script.

The connection speaks RESP2 over TCP, TLS (``loop.create_connection(ssl=...)`` with the
SSLContext redis-py's settings describe) or a Unix socket, and sets itself up as a redis-py
connection would: ``AUTH`` (a user, a password or a credential provider), ``SELECT``,
``CLIENT SETNAME``, the TCP keepalive options. The connect timeout bounds the TCP connect and
the TLS handshake; the setup commands, like every command, the command timeout.

Failure rules: a reply later than ``timeout`` closes the connection and fails every waiting
command (their streams can no longer be trusted); a lost connection fails them too; a caller
that stops waiting (cancellation) leaves its reply to be read and dropped, so the connection
stays in step. A closed lane is replaced by the backend on the next call.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis.exceptions as rex

from ._resp import make_reader, pack_command
from ._settings import LaneSettings

__all__ = ["WRITE_AT", "Lane"]

#: queued commands written without waiting for the end of the loop iteration: Redis starts on
#: them while the loop is still producing the rest. Every write costs a system call (over TLS
#: also a TLS record encrypted on the event loop), so not too small (measured, 50 tasks,
#: paired runs: 16 against 4 is 1.07x the decisions/s over TCP, 1.09x on a 3-primary Cluster,
#: 1.27x over TLS; 32 like 16; "all at the end of the iteration" 0.8x over TLS)
WRITE_AT = 16


class Lane(asyncio.Protocol):
    """A pipelined connection: :meth:`call` returns a future of the command's reply."""

    def __init__(self, timeout: float,
                 pack: Callable[[Sequence[Any]], bytes] = pack_command,
                 reader: Callable[[], Any] = make_reader, write_at: int = WRITE_AT) -> None:
        self._pack = pack
        self._write_at = write_at
        self._reader = reader()
        self._loop = asyncio.get_running_loop()
        self._timeout = timeout
        self._transport: asyncio.Transport | None = None
        # the callers' futures, in the order of the replies to come
        self._waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._out: list[bytes] = []
        self._flush_due = False  # a write of what is queued is scheduled for the iteration's end
        # commands written and replies read so far, and per write still unanswered: the count
        # of commands written once it went out, and its monotonic time (the timeout's start)
        self._written = 0
        self._answered = 0
        self._writes: collections.deque[tuple[int, float]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None
        self.closed = False

    @classmethod
    async def open(cls, settings: LaneSettings, **options: Any) -> Lane:
        """Connect - TCP and TLS handshake within the connect timeout - and set the connection
        up (its commands within the command timeout, as every command)."""
        loop = asyncio.get_running_loop()
        lane = cls(settings.timeout, **options)
        try:
            async with asyncio.timeout(settings.connect_timeout):
                if settings.path is not None:
                    await loop.create_unix_connection(lambda: lane, settings.path)
                else:
                    await loop.create_connection(
                        lambda: lane, settings.host, settings.port, ssl=settings.ssl,
                        server_hostname=settings.host if settings.ssl is not None else None)
            lane._keepalive(settings)
            for reply in await asyncio.gather(*map(lane.call, await _hello(settings))):
                if isinstance(reply, Exception):
                    raise rex.ConnectionError(f"Redis refused the connection: {reply}")
        except BaseException:
            lane.close()
            raise
        return lane

    def _keepalive(self, settings: LaneSettings) -> None:
        sock = self._transport.get_extra_info("socket") if self._transport else None
        if settings.keepalive and sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for option, value in settings.keepalive_options:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)

    # -- commands ----------------------------------------------------------------------------
    def call(self, command: Sequence[Any] | bytes) -> asyncio.Future[Any]:
        """Queue ``command`` (a tuple, or bytes already in RESP); the future gets its reply
        (error replies as exception *values*)."""
        future = self._loop.create_future()
        if self.closed:
            future.set_exception(rex.ConnectionError("the Redis connection is closed"))
            return future
        idle = not self._waiting
        self._out.append(command if isinstance(command, bytes) else self._pack(command))
        self._waiting.append(future)
        if idle or len(self._out) >= self._write_at:
            self._flush()  # nothing in flight (no reason to wait for company), or enough company
        elif not self._flush_due:
            self._flush_due = True
            self._loop.call_soon(self._flush_rest)
        return future

    def _flush_rest(self) -> None:
        """At the end of the loop iteration: write what is still queued."""
        self._flush_due = False
        self._flush()

    def _flush(self) -> None:
        out, self._out = self._out, []
        if not out or self.closed or self._transport is None:
            return
        self._written += len(out)
        self._writes.append((self._written, time.monotonic()))
        self._transport.write(b"".join(out))
        if self._timer is None:
            self._timer = self._loop.call_at(self._loop.time() + self._timeout, self._expire)

    def _expire(self) -> None:
        self._timer = None
        if not self._writes:
            return  # nothing written is outstanding: the next flush arms the timer again
        late = time.monotonic() - self._writes[0][1]
        if late >= self._timeout:
            self._fail(rex.TimeoutError(f"no reply from Redis within {self._timeout:.3f}s"))
            return
        self._timer = self._loop.call_at(self._loop.time() + self._timeout - late, self._expire)

    # -- protocol ----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        waiting = self._waiting
        answered = self._answered
        try:
            while (reply := reader.gets()) is not False:
                if not waiting:  # e.g. "max number of clients reached", then the server closes
                    self._fail(rex.ConnectionError(f"Redis said, unasked: {reply}"))
                    return
                future = waiting.popleft()
                answered += 1
                if not future.done():  # a cancelled caller's reply is read and dropped
                    future.set_result(reply)
        except Exception as exc:  # a protocol error
            self._fail(rex.ConnectionError(f"Redis stream out of step: {exc!r}"))
            return
        self._answered = answered
        writes = self._writes
        while writes and writes[0][0] <= answered:
            writes.popleft()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(rex.ConnectionError(f"Redis closed the connection: {exc or 'EOF'}"))

    # -- shutdown ----------------------------------------------------------------------------
    def _fail(self, error: Exception) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiting, self._waiting = self._waiting, collections.deque()
        self._writes.clear()
        for future in waiting:
            if not future.done():
                future.set_exception(error)
        if self._transport is not None:
            self._transport.abort()

    def close(self) -> None:
        """Fail whatever still waits and drop the connection."""
        self._fail(rex.ConnectionError("the Redis connection was closed"))


async def _hello(settings: LaneSettings) -> list[tuple[Any, ...]]:
    """The setup commands, as redis-py sends them; at least a PING, so a server that refuses
    the connection (``maxclients``) says so here."""
    username, password = settings.username, settings.password
    if settings.credential_provider is not None:
        credentials = await settings.credential_provider.get_credentials_async()
        username, password = credentials if len(credentials) == 2 else (None, credentials[0])
    hello: list[tuple[Any, ...]] = []
    if password is not None:
        hello.append(("AUTH", username, password) if username else ("AUTH", password))
    if settings.db:
        hello.append(("SELECT", settings.db))
    if settings.client_name:
        hello.append(("CLIENT", "SETNAME", settings.client_name))
    return hello or [("PING",)]
