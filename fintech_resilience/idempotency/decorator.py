"""``@idempotent``: a sync or async function run once per key; duplicates get the stored result."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ParamSpec, TypeVar, cast

from ..errors import ConfigurationError
from .codec import JsonCodec, ResultCodec, return_annotation
from .context import KeyArg
from .record import (
    ClaimOutcome,
    Serializer,
    duplicate_outcome,
    exception_response,
    result_response,
)
from .store import IdempotencyStore

__all__ = ["idempotent"]

P = ParamSpec("P")
R = TypeVar("R")


def idempotent(store: IdempotencyStore, *, key: Callable[..., KeyArg],
               scope: Callable[..., KeyArg] | None = None, global_scope: bool = False,
               fingerprint: Callable[..., bytes | str] | None = None,
               codec: ResultCodec | None = None, serializer: Serializer | None = None,
               store_exceptions: Sequence[type[BaseException]] = (),
               route: str | None = None) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Run a sync or async function once per key; duplicates get the stored result.

    :param key: callable receiving the call's arguments, returning the idempotency key
        (e.g. ``lambda event: event["id"]``).
    :param scope: callable returning the principal the key belongs to (e.g. the account); keys of
        different principals never meet. Required unless ``global_scope=True``.
    :param fingerprint: callable returning what must be identical for a duplicate (e.g. the
        payload); a different value raises :class:`~fintech_resilience.IdempotencyKeyMismatch`.
        Default: the key alone identifies the call.
    :param codec: stores results and rebuilds them for duplicates (a
        :class:`~fintech_resilience.ResultCodec`); default
        :class:`~fintech_resilience.JsonCodec`, which keeps dataclasses, Pydantic models,
        tuples, Decimal, datetime, UUID, ... as their types. When the function is decorated the
        codec checks its return annotation: a type it cannot store raises
        :class:`~fintech_resilience.ConfigurationError` then, not after money moved.
    :param serializer: an object with ``dumps``/``loads`` only (no annotation check); prefer
        ``codec=``.
    :param store_exceptions: exceptions that are outcomes (a card decline): stored and re-raised
        to duplicates. Any other exception releases the key, so a retry runs again.
    :param route: names the operation in the record key (default: the function's qualified name).

    Duplicates raise :class:`~fintech_resilience.IdempotencyInProgress`,
    :class:`~fintech_resilience.IdempotencyKeyMismatch` or
    :class:`~fintech_resilience.IdempotencyOutcomeUnknown` as the claim decides. A result the
    codec still cannot store after the function ran is recorded as "completed, not replayable"
    (its type name only): duplicates raise
    :class:`~fintech_resilience.IdempotencyNotReplayable` until the record's TTL, and the
    function never runs twice for the key.
    """
    if scope is None and not global_scope:
        raise ConfigurationError(
            "idempotent() needs scope=lambda ...: <principal> so one principal's result is never"
            " returned to another; pass global_scope=True if keys are globally unique"
        )
    if not callable(key):
        raise ConfigurationError("key must be a callable receiving the call's arguments")
    if codec is not None and serializer is not None:
        raise ConfigurationError("pass codec= or serializer=, not both (serializer= is the older"
                                 " name for a codec without the annotation check)")
    chosen: Serializer = codec if codec is not None else (
        serializer if serializer is not None else JsonCodec())
    for method in ("dumps", "loads"):
        if not callable(getattr(chosen, method, None)):
            raise ConfigurationError(f"codec needs dumps(value) -> bytes and loads(bytes);"
                                     f" {chosen!r} has no {method}")
    stored_types = tuple(store_exceptions)
    scope_of: Callable[..., KeyArg] = scope if scope is not None else (lambda *_a, **_k: "*")

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        name = route or f"{fn.__module__}.{fn.__qualname__}"
        bind = getattr(chosen, "for_return", None)
        ser: Serializer = bind(return_annotation(fn)) if callable(bind) else chosen

        def prepare(args: Any, kwargs: Any) -> tuple[str, str, str | None]:
            who = scope_of(*args, **kwargs)
            record = store.record_key(key(*args, **kwargs), scope=who, method="CALL", route=name)
            fp = store.fingerprint(fingerprint(*args, **kwargs) if fingerprint else b"")
            return record, fp, None if scope is None else str(who)

        if inspect.iscoroutinefunction(fn):
            afn = cast(Callable[P, Awaitable[Any]], fn)

            @functools.wraps(fn)
            async def awrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                record, fp, who = prepare(args, kwargs)
                claim = await store.aclaim(record, fp, principal=who)
                if claim.outcome is not ClaimOutcome.EXECUTE:
                    return duplicate_outcome(claim.outcome, claim.retry_after, claim.response, ser,
                                         stored_types)
                async with store.aholding(claim):
                    try:
                        result = await afn(*args, **kwargs)
                    except stored_types as exc:
                        await store.acomplete(claim, exception_response(exc, ser))
                        raise
                    except BaseException:
                        await store.arelease(claim)
                        raise
                await store.acomplete(claim, result_response(result, ser))
                return result

            return cast(Callable[P, R], awrapper)

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            record, fp, who = prepare(args, kwargs)
            claim = store.claim(record, fp, principal=who)
            if claim.outcome is not ClaimOutcome.EXECUTE:
                return cast(R, duplicate_outcome(claim.outcome, claim.retry_after, claim.response,
                                                 ser, stored_types))
            with store.holding(claim):
                try:
                    result = fn(*args, **kwargs)
                except stored_types as exc:
                    store.complete(claim, exception_response(exc, ser))
                    raise
                except BaseException:
                    store.release(claim)
                    raise
            store.complete(claim, result_response(result, ser))
            return result

        return wrapper

    return decorate
