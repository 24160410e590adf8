"""Encryption at rest for stored idempotent responses: AES-GCM with key ids for rotation.

A stolen Redis dump must not reveal what a payment API answered (card data, names, amounts).
:class:`AesGcmCipher` encrypts each stored response with the *primary* key and writes that key's
id next to the ciphertext, so records written under an older key stay readable while keys rotate:
add the new key, make it primary, keep the old one until the records' TTL has passed, drop it.

The ``cryptography`` package is imported when a cipher is created, not when this module is
imported, so the rest of the library works without it (``pip install fintech-resilience[crypto]``).

Envelope: ``0x01 | len(key_id) (1 byte) | key_id | nonce (12 bytes) | ciphertext + tag``. The
caller's ``associated_data`` (the record's storage key) is authenticated, so a ciphertext copied
onto another record does not decrypt.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from ..errors import ConfigurationError, DecryptionError

__all__ = ["AesGcmCipher", "Cipher", "DecryptionError", "Mac"]

_VERSION = 1
_NONCE_BYTES = 12
_TAG_BYTES = 16
_KEY_ID = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


@runtime_checkable
class Cipher(Protocol):
    """What a store needs from a cipher: authenticated encryption bound to ``associated_data``."""

    def encrypt(self, plaintext: bytes, associated_data: bytes) -> bytes:
        """Encrypt ``plaintext``; the result carries everything :meth:`decrypt` needs."""
        ...

    def decrypt(self, envelope: bytes, associated_data: bytes) -> bytes:
        """Decrypt what :meth:`encrypt` produced, or raise :class:`DecryptionError`."""
        ...


class AesGcmCipher:
    """AES-GCM (128, 192 or 256-bit keys) with a random 96-bit nonce per value and key ids.

    :param keys: key id -> raw key (16, 24 or 32 bytes). Key ids are 1-64 characters of
        ``A-Z a-z 0-9 _ . -`` and are stored in clear next to each ciphertext.
    :param primary: the key id new values are encrypted with (default: the only key).

    >>> cipher = AesGcmCipher({"2025-01": os.urandom(32)})          # doctest: +SKIP
    >>> cipher = AesGcmCipher({"2025-01": old, "2025-07": new}, primary="2025-07")  # doctest: +SKIP
    """

    __slots__ = ("_aeads", "_primary_id", "primary")

    def __init__(self, keys: Mapping[str, bytes], *, primary: str | None = None) -> None:
        try:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError as exc:  # pragma: no cover - exercised only without the extra
            raise ConfigurationError(
                "AesGcmCipher needs the 'cryptography' package: pip install"
                " 'fintech-resilience[crypto]'"
            ) from exc
        if not isinstance(keys, Mapping) or not keys:
            raise ConfigurationError(
                "keys must be a non-empty mapping of key id -> key bytes, e.g."
                " {'2025-01': os.urandom(32)}"
            )
        aeads: dict[bytes, Any] = {}
        for key_id, key in keys.items():
            if not isinstance(key_id, str) or _KEY_ID.fullmatch(key_id) is None:
                raise ConfigurationError(
                    f"a key id must be 1-64 characters of letters, digits, '_', '.' or '-';"
                    f" got {key_id!r}"
                )
            if not isinstance(key, bytes) or len(key) not in (16, 24, 32):
                raise ConfigurationError(
                    f"key {key_id!r} must be 16, 24 or 32 random bytes (os.urandom(32))"
                )
            aeads[key_id.encode()] = AESGCM(key)
        if primary is None:
            if len(keys) != 1:
                raise ConfigurationError(
                    "several keys given: name the one new values use with primary='<key id>'"
                )
            primary = next(iter(keys))
        if primary not in keys:
            raise ConfigurationError(f"primary {primary!r} is not one of the key ids")
        self.primary = primary
        self._primary_id = primary.encode()
        self._aeads = aeads

    def encrypt(self, plaintext: bytes, associated_data: bytes) -> bytes:
        """Encrypt with the primary key; a fresh random nonce per call."""
        nonce = os.urandom(_NONCE_BYTES)
        kid = self._primary_id
        sealed = self._aeads[kid].encrypt(nonce, plaintext, associated_data)
        return bytes((_VERSION, len(kid))) + kid + nonce + bytes(sealed)

    def decrypt(self, envelope: bytes, associated_data: bytes) -> bytes:
        """Decrypt with the key named in the envelope; raise :class:`DecryptionError` if that key
        is unknown or the value was altered or belongs to another record."""
        from cryptography.exceptions import InvalidTag

        if len(envelope) < 2 or envelope[0] != _VERSION:
            raise DecryptionError("not an AesGcmCipher envelope")
        end = 2 + envelope[1]
        if len(envelope) < end + _NONCE_BYTES + _TAG_BYTES:
            raise DecryptionError("stored value is truncated (shorter than key id, nonce and tag)")
        kid = envelope[2:end]
        aead = self._aeads.get(kid)
        if aead is None:
            raise DecryptionError(
                f"stored value was encrypted with key id {kid.decode(errors='replace')!r},"
                " which this cipher does not hold"
            )
        nonce = envelope[end:end + _NONCE_BYTES]
        try:
            return bytes(aead.decrypt(nonce, envelope[end + _NONCE_BYTES:], associated_data))
        except InvalidTag as exc:
            raise DecryptionError("stored value failed authentication (altered or moved)") from exc

    def __repr__(self) -> str:
        ids = ", ".join(sorted(k.decode() for k in self._aeads))
        return f"AesGcmCipher(keys=[{ids}], primary={self.primary!r})"


class Mac:
    """HMAC-SHA256 of length-prefixed parts under one key (the key is set up once and copied)."""

    __slots__ = ("_keyed",)

    def __init__(self, key: bytes) -> None:
        self._keyed = hmac.new(key, digestmod=hashlib.sha256)

    def parts(self, *parts: bytes | str) -> bytes:
        """The MAC of length-prefixed parts (no ambiguity between part borders)."""
        mac = self._keyed.copy()
        for part in parts:
            if isinstance(part, str):
                part = part.encode("utf-8", "surrogatepass")
            mac.update(len(part).to_bytes(8, "big"))
            mac.update(part)
        return mac.digest()
