"""@idempotent results that are not plain JSON: dataclasses, Pydantic models, Decimal, datetime,
tuples... are stored and come back as their types; what cannot be stored is refused when the
function is decorated; a result that still cannot be stored after the call ran is recorded, never
run twice, and answered with a typed error. Memory, Redis and Redis Cluster; sync and async."""

from __future__ import annotations

import datetime as dt
import enum
import json
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, NamedTuple

import pydantic
import pytest
import redis

from fintech_resilience import (
    ConfigurationError,
    IdempotencyNotReplayable,
    JsonCodec,
    MemoryBackend,
    ResultCodec,
    idempotent,
)
from fintech_resilience.backends.base import Backend
from fintech_resilience.core.redaction import Redactor
from fintech_resilience.idempotency import IdempotencyStore
from fintech_resilience.testing import ManualClock

SECRET = b"codec-test-secret-0123456789"
PARIS = dt.timezone(dt.timedelta(hours=2))


class Status(enum.Enum):
    CAPTURED = "captured"
    REFUNDED = "refunded"


@dataclass(frozen=True)
class Line:
    sku: str
    amount: Decimal


@dataclass
class Receipt:
    charge_id: str
    amount: Decimal
    captured_at: dt.datetime
    status: Status
    lines: list[Line]
    pair: tuple[int, str]
    reference: uuid.UUID
    notes: dict[int, str] = field(default_factory=dict)


class Money(NamedTuple):
    amount: Decimal
    currency: str


class Payout(pydantic.BaseModel):
    payout_id: str
    amount: Decimal
    arrives_on: dt.date
    fees: tuple[Decimal, ...]


class Opaque:
    """A plain class: nothing tells a codec how to rebuild it."""


@dataclass
class Card:
    last4: str
    note: str


def receipt() -> Receipt:
    return Receipt("ch_1", Decimal("12.50"), dt.datetime(2025, 7, 1, 9, 30, tzinfo=PARIS),
                   Status.CAPTURED, [Line("A-1", Decimal("10.00")), Line("B-2", Decimal("2.50"))],
                   (1, "one"), uuid.UUID(int=7), {404: "not found"})


def store_on(backend: Backend) -> IdempotencyStore:
    return IdempotencyStore(backend, secret=SECRET, ttl=3600, lease=30, renew=False)


def test_a_dataclass_comes_back_as_that_dataclass_with_every_type_kept(backend: Backend) -> None:
    store = store_on(backend)
    runs: list[str] = []

    @idempotent(store, key=lambda charge: charge, scope=lambda charge: "merchant")
    def capture(charge: str) -> Receipt:
        runs.append(charge)
        return receipt()

    first, again = capture("ch_1"), capture("ch_1")
    assert runs == ["ch_1"]
    assert again == first == receipt()
    assert type(again) is Receipt and type(again.lines[0]) is Line
    assert type(again.amount) is Decimal and again.captured_at.utcoffset() == dt.timedelta(hours=2)
    assert type(again.pair) is tuple and again.status is Status.CAPTURED
    assert list(again.notes) == [404]


async def test_async_pydantic_models_namedtuples_and_scalars_keep_their_types(
        backend: Backend) -> None:
    store = store_on(backend)
    runs: list[str] = []

    @idempotent(store, key=lambda k: k, global_scope=True)
    async def payout(k: str) -> Payout:
        runs.append(k)
        return Payout(payout_id="po_1", amount=Decimal("99.99"), arrives_on=dt.date(2025, 7, 3),
                      fees=(Decimal("0.25"),))

    @idempotent(store, key=lambda k: k, global_scope=True)
    async def quote(k: str) -> tuple[Money, dt.datetime, Decimal, set[str], bytes]:
        runs.append(k)
        return (Money(Decimal("1.10"), "EUR"), dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
                Decimal("0.1"), {"a", "b"}, b"\x00\xff")

    assert await payout("p") == await payout("p")
    replayed = await payout("p")
    assert type(replayed) is Payout and replayed.fees == (Decimal("0.25"),)
    first, again = await quote("q"), await quote("q")
    assert again == first and type(again) is tuple and type(again[0]) is Money
    assert type(again[3]) is set and again[4] == b"\x00\xff"
    assert runs == ["p", "q"]


@pytest.mark.parametrize("annotation", [Opaque, list[Opaque], "Opaque | None",
                                        dict[str, Opaque]])
def test_a_return_type_the_codec_cannot_store_is_refused_when_decorating(
        annotation: Any) -> None:
    store = store_on(MemoryBackend())

    def charge(k: str) -> None:
        raise AssertionError("never called")

    charge.__annotations__["return"] = annotation
    with pytest.raises(ConfigurationError, match="Opaque"):
        idempotent(store, key=lambda k: k, global_scope=True)(charge)


@dataclass
class Holder:
    thing: Opaque


def test_a_dataclass_field_the_codec_cannot_store_is_refused_too() -> None:
    def charge(k: str) -> Holder:
        raise AssertionError("never called")

    with pytest.raises(ConfigurationError, match="Opaque"):
        idempotent(store_on(MemoryBackend()), key=lambda k: k, global_scope=True)(charge)


def test_a_result_that_cannot_be_stored_runs_once_and_duplicates_get_a_typed_error(
        backend: Backend, caplog: pytest.LogCaptureFixture) -> None:
    store = store_on(backend)
    runs: list[str] = []

    @idempotent(store, key=lambda k: k, global_scope=True)
    def charge(k):  # type: ignore[no-untyped-def]  # no annotation: checked at run time
        runs.append(k)
        return Opaque()

    assert isinstance(charge("k"), Opaque)
    for _ in range(3):
        with pytest.raises(IdempotencyNotReplayable) as info:
            charge("k")
        assert info.value.result_type is not None and "Opaque" in info.value.result_type
    assert runs == ["k"]  # the money moved once
    assert any("cannot be stored" in r.getMessage() for r in caplog.records)


def test_an_unannotated_dataclass_result_is_rebuilt_only_when_the_codec_lists_it(
        backend: Backend) -> None:
    store = store_on(backend)

    @idempotent(store, key=lambda k: k, global_scope=True, codec=JsonCodec(types=[Receipt]))
    def listed(k):  # type: ignore[no-untyped-def]
        return receipt()

    @idempotent(store, key=lambda k: k, global_scope=True)
    def unlisted(k):  # type: ignore[no-untyped-def]
        return receipt()

    listed("a")
    assert listed("a") == receipt()
    unlisted("b")
    with pytest.raises(IdempotencyNotReplayable):
        unlisted("b")


def test_a_stored_record_never_picks_the_class_that_is_rebuilt() -> None:
    backend = MemoryBackend()
    store = store_on(backend)

    @idempotent(store, key=lambda k: k, global_scope=True, route="r")
    def charge(k: str) -> Receipt:
        return receipt()

    charge("k")

    @idempotent(store, key=lambda k: k, global_scope=True, route="r")
    def same_route_other_type(k: str) -> Payout:  # a later deploy changed the return type
        raise AssertionError("never runs: the key completed")

    with pytest.raises(IdempotencyNotReplayable):
        same_route_other_type("k")


def test_a_custom_codec_is_consulted_at_decoration_and_used_for_storage() -> None:
    seen: list[Any] = []

    class Upper:
        def for_return(self, annotation: Any) -> Upper:
            seen.append(annotation)
            return self

        def dumps(self, value: Any) -> bytes:
            return str(value).upper().encode()

        def loads(self, data: bytes) -> Any:
            return data.decode()

    codec = Upper()
    assert isinstance(codec, ResultCodec)

    @idempotent(store_on(MemoryBackend()), key=lambda k: k, global_scope=True, codec=codec)
    def greet(k: str) -> str:
        return "hello"

    assert seen == [str]
    assert greet("k") == "hello" and greet("k") == "HELLO"
    with pytest.raises(ConfigurationError):
        idempotent(store_on(MemoryBackend()), key=lambda k: k, global_scope=True, codec=codec,
                   serializer=codec)


def test_plain_json_results_stored_by_earlier_versions_still_replay() -> None:
    assert JsonCodec().loads(json.dumps({"id": "pay_1", "items": [1, 2]}).encode()) == {
        "id": "pay_1", "items": [1, 2]}


def test_on_redis_the_record_holds_json_and_a_redacted_pan_is_masked_in_it(
        redis_url: str) -> None:
    from fintech_resilience import RedisBackend

    backend = RedisBackend.from_url(redis_url, timeout=5.0)
    store = IdempotencyStore(backend, secret=SECRET, redactor=Redactor.pci(), renew=False)

    @idempotent(store, key=lambda k: k, global_scope=True)
    def tokenise(k: str) -> Card:
        return Card("1111", "card 4111 1111 1111 1111 stored")

    tokenise("k")
    replayed = tokenise("k")
    backend.close()
    raw = redis.Redis.from_url(redis_url)
    values = [v for k in raw.keys("*") for v in raw.hgetall(k).values()]
    raw.close()
    assert type(replayed) is Card and replayed.note == "card **** **** **** 1111 stored"
    assert not any(b"4111 1111 1111 1111" in v for v in values)
    assert any(b'"__fr__":"dataclass"' in v for v in values)


def test_unchanged_default_json_results_replay_as_before(clock: ManualClock) -> None:
    store = store_on(MemoryBackend())

    @idempotent(store, key=lambda k: k, global_scope=True)
    def plain(k: str) -> dict[str, Any]:
        return {"id": "pay_1", "amount": 1250, "tags": ["a"]}

    assert plain("k") == plain("k") == {"id": "pay_1", "amount": 1250, "tags": ["a"]}
