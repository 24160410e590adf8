"""One Redis connection per event loop for asyncio decisions: written together, read in order.

A command issued while nothing is in flight is written at once; commands issued while replies
are awaited are written in groups of ``WRITE_AT``, and whatever is left at the end of the
event-loop iteration, so Redis works on the first group while the loop produces the next.
Replies come back in order and are matched to their callers as they arrive, parsed by hiredis in
C. A lone decision therefore costs one write and one read, and 50 concurrent decisions share a
dozen writes and about one round trip's wait, while each stays its own atomic script.

It replaces redis-py's asyncio client on the decision path only where it speaks exactly as that
client would: a standalone server over TCP or a Unix socket, RESP2, UTF-8, optional
``AUTH``/``SELECT``/``CLIENT SETNAME``, the TCP keepalive its connections set. TLS,
Sentinel, Cluster and credential providers keep redis-py (:func:`settings_of` returns None for
them).

Failure rules: a reply later than ``timeout`` closes the connection and fails every waiting
command (their streams can no longer be trusted); a lost connection fails them too; a caller
that stops waiting (cancellation) leaves its reply to be read and dropped, so the connection
stays in step. A closed lane is replaced by the backend on the next call; the backend closes
its lane when the event loop shuts down.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio
import redis.exceptions as rex

from .base import ConstantArgs

__all__ = ["Lane", "LaneSettings", "evalsha_one", "settings_of"]

#: queued commands written without waiting for the end of the loop iteration: Redis starts on
#: them while the loop is still producing the rest (measured: 2-8 equally good, 1 and "all at the
#: end" about a third slower for 50 concurrent decisions)
WRITE_AT = 4


@dataclass(frozen=True, slots=True)
class LaneSettings:
    host: str
    port: int
    path: str | None
    db: int
    username: str | None
    password: str | None
    client_name: str | None
    timeout: float
    connect_timeout: float
    #: the TCP keepalive of the client's connections (``socket_keepalive[_options]``)
    keepalive: bool = False
    keepalive_options: tuple[tuple[int, Any], ...] = ()


def settings_of(client: Any) -> LaneSettings | None:
    """Connection settings of a standalone asyncio client, or None where a lane cannot stand in
    for it exactly."""
    try:
        import hiredis  # noqa: F401 - the lane parses and packs with it
    except ImportError:
        return None
    if type(client) is not redis.asyncio.Redis:
        return None
    pool = client.connection_pool
    kw = pool.connection_kwargs
    if pool.connection_class not in (redis.asyncio.Connection,
                                     redis.asyncio.UnixDomainSocketConnection):
        return None
    if (kw.get("credential_provider") is not None or kw.get("decode_responses")
            or str(kw.get("protocol") or 2) != "2"
            or str(kw.get("encoding", "utf-8")).lower() not in ("utf-8", "utf8")
            or kw.get("encoding_errors", "strict") != "strict"):
        return None
    timeout = kw.get("socket_timeout")
    if not timeout:
        return None  # redis-py would wait forever; a lane always has a deadline
    return LaneSettings(
        host=kw.get("host", "localhost"), port=int(kw.get("port", 6379)), path=kw.get("path"),
        db=int(kw.get("db", 0) or 0), username=kw.get("username"), password=kw.get("password"),
        client_name=kw.get("client_name"), timeout=float(timeout),
        connect_timeout=float(kw.get("socket_connect_timeout") or timeout),
        **_keepalive_of(pool.connection_class, kw))


def _keepalive_of(connection_class: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The TCP keepalive a connection of the client's pool would set: read from an unconnected
    one, so redis-py's own defaults (on, with default options, since redis-py 8) apply."""
    try:
        probe = connection_class(**kwargs)
    except Exception:  # an unexpected signature: keep the operating system's defaults
        return {}
    options = getattr(probe, "socket_keepalive_options", None)
    return {"keepalive": bool(getattr(probe, "socket_keepalive", False)),
            "keepalive_options": tuple(options.items()) if isinstance(options, Mapping) else ()}


def _bulk(value: Any) -> bytes:
    """One argument as a RESP bulk string, encoded as redis-py and hiredis encode it."""
    if isinstance(value, bytes):
        data = value
    elif isinstance(value, str):
        data = value.encode()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        data = repr(value).encode()
    else:
        raise TypeError(f"a script argument is bytes, str, int or float; got {value!r}")
    return b"$%d\r\n%s\r\n" % (len(data), data)


def evalsha_one(sha: str, key: str, args: ConstantArgs) -> bytes:
    """``EVALSHA sha 1 key *args`` in RESP: what does not change (the script, the arguments) is
    encoded on the first call and kept on ``args``; a call encodes only its key (a fifth of
    hiredis's ``pack_command`` of the whole command, measured)."""
    encoded = args.encoded
    if encoded is None or encoded[0] != sha:
        head = b"*%d\r\n$7\r\nEVALSHA\r\n%s$1\r\n1\r\n" % (4 + len(args), _bulk(sha))
        encoded = args.encoded = (sha, head, b"".join(map(_bulk, args)))
    data = key.encode()
    return b"%s$%d\r\n%s\r\n%s" % (encoded[1], len(data), data, encoded[2])


class Lane(asyncio.Protocol):
    """A pipelined connection: :meth:`call` returns a future of the command's reply."""

    def __init__(self, timeout: float) -> None:
        import hiredis

        self._pack: Callable[[tuple[Any, ...]], bytes] = hiredis.pack_command
        self._reader = hiredis.Reader()
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
    async def open(cls, settings: LaneSettings) -> Lane:
        """Connect and run the handshake (``AUTH``, ``SELECT``, ``CLIENT SETNAME``)."""
        loop = asyncio.get_running_loop()
        lane = cls(settings.timeout)
        async with asyncio.timeout(settings.connect_timeout):
            if settings.path is not None:
                await loop.create_unix_connection(lambda: lane, settings.path)
            else:
                await loop.create_connection(lambda: lane, settings.host, settings.port)
        try:
            sock = lane._transport.get_extra_info("socket") if lane._transport else None
            if settings.keepalive and settings.path is None and sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                for option, value in settings.keepalive_options:
                    sock.setsockopt(socket.IPPROTO_TCP, option, value)
            hello: list[tuple[Any, ...]] = []
            if settings.password is not None:
                hello.append(("AUTH", settings.username, settings.password)
                             if settings.username else ("AUTH", settings.password))
            if settings.db:
                hello.append(("SELECT", settings.db))
            if settings.client_name:
                hello.append(("CLIENT", "SETNAME", settings.client_name))
            for reply in await asyncio.gather(*(lane.call(c) for c in hello)):
                if isinstance(reply, Exception):
                    raise rex.ConnectionError(f"Redis refused the connection setup: {reply}")
        except BaseException:
            lane.close()
            raise
        return lane

    # -- commands ----------------------------------------------------------------------------
    def call(self, command: tuple[Any, ...] | bytes) -> asyncio.Future[Any]:
        """Queue ``command`` (a tuple, or bytes already in RESP: :func:`evalsha_one`); the future
        gets its reply (error replies as exception *values*)."""
        future = self._loop.create_future()
        if self.closed:
            future.set_exception(rex.ConnectionError("the Redis connection is closed"))
            return future
        idle = not self._waiting
        self._out.append(command if isinstance(command, bytes) else self._pack(command))
        self._waiting.append(future)
        if idle or len(self._out) >= WRITE_AT:
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
                future = waiting.popleft()
                answered += 1
                if not future.done():  # a cancelled caller's reply is read and dropped
                    future.set_result(reply)
        except Exception as exc:  # a protocol error or a reply nobody asked for
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
