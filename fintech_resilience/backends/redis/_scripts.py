"""The Lua scripts of ``backends/lua/``: source and SHA1, loaded once per process."""

from __future__ import annotations

import hashlib
import re
import threading
from importlib import resources

from ...errors import ConfigurationError

__all__ = ["script"]

_SCRIPTS: dict[str, tuple[str, bytes]] = {}
_SCRIPTS_LOCK = threading.Lock()
_INCLUDE = re.compile(rb"^--#include (\S+)$", re.MULTILINE)


def script(name: str) -> tuple[str, bytes]:
    """The SHA1 and source of ``backends/lua/<name>.lua`` (loaded once per process; shared
    fragments such as ``_now.lua`` are pulled in by ``--#include`` lines)."""
    try:
        return _SCRIPTS[name]
    except KeyError:
        pass
    with _SCRIPTS_LOCK:
        try:
            source = _read_lua(f"{name}.lua")
        except FileNotFoundError:
            raise ConfigurationError(f"unknown backend operation {name!r}") from None
        _SCRIPTS[name] = (hashlib.sha1(source, usedforsecurity=False).hexdigest(), source)
    return _SCRIPTS[name]


def _read_lua(filename: str) -> bytes:
    """A script from ``backends/lua/``, with ``--#include <file>`` lines replaced by that file."""
    source = resources.files("fintech_resilience.backends").joinpath("lua", filename).read_bytes()
    return _INCLUDE.sub(lambda m: _read_lua(m.group(1).decode()).rstrip(b"\n"), source)
