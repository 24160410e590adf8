"""Idempotency keys: the :class:`IdempotencyStore` and ``@idempotent`` (``store``), the pure
record format (``record``) and encryption at rest (``crypto``)."""

from .codec import JsonCodec, ResultCodec
from .context import IdempotencyContext, current_idempotency
from .crypto import AesGcmCipher, Cipher
from .decorator import idempotent
from .store import IdempotencyStore

__all__ = ["AesGcmCipher", "Cipher", "IdempotencyContext", "IdempotencyStore", "JsonCodec",
           "ResultCodec", "current_idempotency", "idempotent"]
