"""Building storage keys: a namespace, a pattern kind, a validated name and a hashed user part.

Every key the library stores has the form ``<namespace>:<kind>:{<name>:<digest>}`` (or
``<namespace>:<kind>:{<name>}`` for per-name state such as a breaker). The part in braces is the
Redis Cluster hash tag: all keys of one decision land in one slot, while different user keys spread
over the cluster. User-supplied parts (merchant ids, card fingerprints, idempotency keys, IPs) are
never stored as given: they are hashed with BLAKE2b to 32 hex characters, so a key is bounded,
carries no personal data, and no input (braces, ``*``, ``:``, newlines, megabytes of text) can reach
another tenant's key or slot.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import secrets
from functools import lru_cache

from ..errors import ConfigurationError

__all__ = ["DEFAULT_NAMESPACE", "digest", "name_key", "token", "user_key", "user_prefix",
           "validate_name"]

DEFAULT_NAMESPACE = "fr"
_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
MAX_USER_KEY_BYTES = 65_536


def validate_name(name: str, what: str = "name") -> str:
    """Return ``name`` if it is 1-64 characters of ``A-Z a-z 0-9 _ . -``, else raise."""
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise ConfigurationError(
            f"{what} must be 1-64 characters of letters, digits, '_', '.' or '-'; got {name!r}"
        )
    return name


def digest(value: str | bytes | int) -> str:
    """BLAKE2b-128 hex digest of a user-supplied key part (validated: non-empty, bounded)."""
    if isinstance(value, bool) or not isinstance(value, str | bytes | int):
        raise ConfigurationError(
            f"a key must be a str, bytes or int; got {type(value).__name__}"
        )
    raw = value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogatepass")
    if not raw:
        raise ConfigurationError("a key must not be empty; pass a merchant id, user id, IP, ...")
    if len(raw) > MAX_USER_KEY_BYTES:
        raise ConfigurationError(
            f"a key must be at most {MAX_USER_KEY_BYTES} bytes; got {len(raw)} bytes"
        )
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


@lru_cache(maxsize=8192, typed=True)  # typed: True must not hit the entry of 1
def user_key(namespace: str, kind: str, name: str, value: str | bytes | int) -> str:
    """The storage key for one user-supplied key under a pattern instance (cached)."""
    return f"{user_prefix(namespace, kind, name)}{digest(value)}}}"


def user_prefix(namespace: str, kind: str, name: str) -> str:
    """What every :func:`user_key` of a pattern instance starts with (its digest and ``}``
    follow)."""
    return f"{namespace}:{kind}:{{{name}:"


def name_key(namespace: str, kind: str, name: str) -> str:
    """The storage key for per-name state (a breaker, a retry budget)."""
    return f"{namespace}:{kind}:{{{name}}}"


class _Tokens:
    """Owner and permit tokens: unique, not secret (they live beside the state they guard).

    A random 64-bit prefix drawn per process (again in a forked child) and a counter: as unique
    as ``secrets.token_hex(16)`` per token, without a system call for each.
    """

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._next = itertools.count().__next__

    def __call__(self) -> str:
        return f"{self._prefix}{self._next():x}"


#: ``token()``: a new unique owner / permit token
token = _Tokens()
