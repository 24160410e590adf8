"""Idempotency keys: the :class:`IdempotencyStore` and ``@idempotent`` (``store``), the pure
record format (``record``) and encryption at rest (``crypto``)."""

from .codec import JsonCodec, ResultCodec
from .crypto import AesGcmCipher, Cipher
from .store import IdempotencyContext, IdempotencyStore, current_idempotency, idempotent

__all__ = ["AesGcmCipher", "Cipher", "IdempotencyContext", "IdempotencyStore", "JsonCodec",
           "ResultCodec", "current_idempotency", "idempotent"]
