"""RESP2 on the wire: commands packed to bytes, replies read from a stream of bytes.

hiredis does both in C where it is installed (``pip install 'fintech-resilience[hiredis]'``);
:class:`PyReader` and :func:`py_pack_command` do the same in Python where it is not. Error
replies come back as :data:`ReplyError` *values* (the caller decides what they mean).

:class:`Commands` keeps the encoding of what repeats: a caller that passes the same arguments
tuple again (a rate limiter at cost 1) gets its script and arguments encoded once, and only the
key per call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["Commands", "PyReader", "ReplyError", "error_code", "make_reader", "pack_command",
           "py_pack_command"]


def _bulk(value: Any) -> bytes:
    """One argument as a RESP bulk string, encoded as redis-py and hiredis encode it."""
    if isinstance(value, bytes):
        data = value
    elif isinstance(value, str):
        data = value.encode()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        data = repr(value).encode()
    else:
        raise TypeError(f"a command argument is bytes, str, int or float; got {value!r}")
    return b"$%d\r\n%s\r\n" % (len(data), data)


def py_pack_command(args: Sequence[Any]) -> bytes:
    """A command as a RESP array of bulk strings."""
    return b"*%d\r\n%s" % (len(args), b"".join(map(_bulk, args)))


class PyError(Exception):
    """An error reply, read without hiredis."""


class PyReader:
    """An incremental RESP2 reader with hiredis's interface: :meth:`feed` bytes as they come,
    :meth:`gets` returns the next whole reply or ``False``."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._at = 0

    def feed(self, data: bytes) -> None:
        if self._at:
            del self._buffer[:self._at]
            self._at = 0
        self._buffer += data

    def gets(self) -> Any:
        try:
            reply, at = self._parse(self._at)
        except IndexError:  # not all of it has arrived yet
            return False
        self._at = at
        return reply

    def _parse(self, at: int) -> tuple[Any, int]:
        buffer = self._buffer
        end = buffer.find(b"\r\n", at)
        if end < 0:
            raise IndexError
        kind, line = buffer[at:at + 1], bytes(buffer[at + 1:end])
        at = end + 2
        if kind == b"+":
            return line, at
        if kind == b"-":
            return PyError(line.decode(errors="replace")), at
        if kind == b":":
            return int(line), at
        if kind == b"$":
            size = int(line)
            if size < 0:
                return None, at
            if len(buffer) < at + size + 2:
                raise IndexError
            return bytes(buffer[at:at + size]), at + size + 2
        if kind == b"*":
            count = int(line)
            if count < 0:
                return None, at
            items = []
            for _ in range(count):
                item, at = self._parse(at)
                items.append(item)
            return items, at
        raise ValueError(f"not a RESP2 reply: {bytes(buffer[at - len(line) - 3:at])!r}")


ReplyError: type[Exception]
pack_command: Callable[[Sequence[Any]], bytes]
make_reader: Callable[[], Any]
try:
    import hiredis
except ImportError:  # pragma: no cover - the test dependencies include hiredis
    ReplyError, pack_command, make_reader = PyError, py_pack_command, PyReader
else:
    ReplyError, make_reader = hiredis.ReplyError, hiredis.Reader
    pack_command = hiredis.pack_command  # type: ignore[assignment]

#: an entry per arguments tuple: (the tuple, the script's SHA, RESP before the key, after it);
#: the parts are None until the tuple is seen a second time (most are seen once)
_Parts = tuple[tuple[Any, ...], str, bytes | None, bytes | None]


class Commands:
    """``EVALSHA`` commands in RESP, with the encoding of repeated arguments kept.

    The arguments are recognised by identity (the same tuple object, kept alive by the entry),
    not by value: comparing values would cost as much as encoding them. At most ``size``
    tuples are remembered.
    """

    def __init__(self, pack: Callable[[Sequence[Any]], bytes] = pack_command,
                 size: int = 256) -> None:
        self._pack = pack
        self._size = size
        self._parts: dict[int, _Parts] = {}

    def evalsha(self, sha: str, keys: Sequence[str], args: Sequence[Any]) -> bytes:
        if len(keys) == 1 and type(args) is tuple:
            parts = self._parts.get(id(args))
            if parts is not None and parts[0] is args and parts[1] == sha:
                head, tail = parts[2], parts[3]
                if head is not None and tail is not None and type(key := keys[0]) is str:
                    data = key.encode()
                    return b"%s$%d\r\n%s\r\n%s" % (head, len(data), data, tail)
                try:  # seen before: encode what repeats, once
                    head = b"*%d\r\n$7\r\nEVALSHA\r\n%s$1\r\n1\r\n" % (4 + len(args), _bulk(sha))
                    self._parts[id(args)] = (args, sha, head, b"".join(map(_bulk, args)))
                except TypeError:
                    pass  # not an argument RESP knows: the packer below says so
            else:
                if len(self._parts) >= self._size:
                    self._parts.clear()
                self._parts[id(args)] = (args, sha, None, None)
        return self._pack(("EVALSHA", sha, len(keys), *keys, *args))

    def pack(self, command: Sequence[Any]) -> bytes:
        return self._pack(command)


def error_code(reply: Exception) -> tuple[str, str]:
    """``("MOVED", "3999 127.0.0.1:6381")`` for an error reply (redis-py's exceptions keep the
    code apart from the message; hiredis's carry the whole line)."""
    code = getattr(reply, "status_code", None)
    if code:
        return str(code), str(reply)
    code, _, detail = str(reply).partition(" ")
    return code, detail
