"""IdempotencyStore and @idempotent: claim outcomes, CAS completion, leases, fencing, encryption.

Every backend-dependent test runs on memory, Redis and Redis Cluster (the ``backend`` fixture).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fintech_resilience import MemoryBackend, RedisBackend
from fintech_resilience.backends.base import Backend
from fintech_resilience.core import storage_keys as _keys
from fintech_resilience.errors import (
    BackendUnavailable,
    ConfigurationError,
    IdempotencyInProgress,
    IdempotencyKeyMismatch,
    IdempotencyOutcomeUnknown,
)
from fintech_resilience.idempotency import IdempotencyStore, current_idempotency, idempotent
from fintech_resilience.idempotency.crypto import AesGcmCipher, DecryptionError
from fintech_resilience.idempotency.record import (
    ClaimOutcome,
    StoredResponse,
    decode_response,
    encode_response,
)
from fintech_resilience.testing import ManualClock

SECRET = b"test-secret-0123456789abcdef"
PAN = b"4111111111111111"
# TTLs fire on Redis's real clock but on the manual clock in memory: keep them out of the way
LONG_TTL_US = 10**13


def make_store(backend: Backend, clock: ManualClock, **options: object) -> IdempotencyStore:
    opts: dict[str, object] = {"secret": SECRET, "lease": 10.0, "ttl": 3600.0, "clock": clock,
                               "renew": False}
    opts.update(options)
    return IdempotencyStore(backend, **opts)  # type: ignore[arg-type]


def response(body: bytes = b'{"id":"pay_1"}', status: int = 201) -> StoredResponse:
    return StoredResponse("http", status, (("content-type", "application/json"),), body)


def test_first_claim_executes_and_duplicates_see_in_progress_then_replay(
        backend: Backend, clock: ManualClock) -> None:
    store = make_store(backend, clock)
    key = store.record_key("k-1", scope="alice", method="POST", route="/charges")
    fp = store.fingerprint("POST", "/charges", b"", b'{"amount":100}')
    first = store.claim(key, fp)
    assert first.outcome is ClaimOutcome.EXECUTE and first.fencing_token == 1
    busy = store.claim(key, fp)
    assert busy.outcome is ClaimOutcome.IN_PROGRESS and busy.retry_after == 10.0
    assert store.complete(first, response())
    replay = store.claim(key, fp)
    assert replay.outcome is ClaimOutcome.REPLAY
    assert replay.response == response()


def test_same_key_different_request_is_a_mismatch_and_other_principal_is_independent(
        backend: Backend, clock: ManualClock) -> None:
    store = make_store(backend, clock)
    fp = store.fingerprint(b"body-1")
    alice = store.record_key("k", scope="alice")
    bob = store.record_key("k", scope="bob")
    assert alice != bob
    first = store.claim(alice, fp)
    store.complete(first, response(b"alice's payment"))
    assert store.claim(alice, store.fingerprint(b"body-2")).outcome is ClaimOutcome.MISMATCH
    other = store.claim(bob, fp)
    assert other.outcome is ClaimOutcome.EXECUTE and other.response is None


def test_lease_expiry_rejects_stale_owner_reports_unknown_and_keeps_downstream_key(
        backend: Backend, clock: ManualClock) -> None:
    store = make_store(backend, clock)
    key = store.record_key("k", scope="alice")
    fp = store.fingerprint(b"x")
    stale = store.claim(key, fp)
    clock.advance(10.0)  # the lease (10 s) ran out while the handler "runs"
    assert not store.complete(stale, response())
    assert stale.lease_lost
    assert not store.renew(stale) and not store.release(stale)
    assert store.claim(key, fp).outcome is ClaimOutcome.OUTCOME_UNKNOWN

    reclaiming = make_store(backend, clock, reclaim_expired=True)
    second = reclaiming.claim(key, fp)
    assert second.outcome is ClaimOutcome.EXECUTE and second.reclaimed
    assert second.fencing_token > stale.fencing_token
    assert (reclaiming._context(second).downstream_key("charge")
            == store._context(stale).downstream_key("charge"))
    assert not store.complete(stale, response(b"stale"))  # the old owner can change nothing
    clock.advance(10.0)
    third = reclaiming.claim(key, fp)
    assert third.fencing_token > second.fencing_token
    assert reclaiming.complete(third, response(b"third"))
    assert store.claim(key, fp).response == response(b"third")


def test_fencing_tokens_increase_across_release_and_reclaim(
        backend: Backend, clock: ManualClock) -> None:
    store = make_store(backend, clock)
    key = store.record_key("k", scope="alice")
    fp = store.fingerprint(b"x")
    tokens = []
    for _ in range(3):
        claim = store.claim(key, fp)
        tokens.append(claim.fencing_token)
        assert store.release(claim)
    assert tokens == sorted(set(tokens)) and len(tokens) == 3
    assert store.forget(key) is False  # a released record has nothing left to forget


def test_renewal_keeps_the_lease_alive(backend: Backend, clock: ManualClock) -> None:
    store = make_store(backend, clock)
    key = store.record_key("k", scope="alice")
    claim = store.claim(key, store.fingerprint(b""))
    for _ in range(5):
        clock.advance(6.0)
        assert store.renew(claim)
    assert store.complete(claim, response())


async def test_async_twins_agree(backend: Backend, clock: ManualClock) -> None:
    store = make_store(backend, clock)
    key = store.record_key("k", scope="alice")
    fp = store.fingerprint(b"")
    claim = await store.aclaim(key, fp)
    assert claim.outcome is ClaimOutcome.EXECUTE
    assert await store.arenew(claim)
    assert await store.acomplete(claim, response())
    assert (await store.aclaim(key, fp)).outcome is ClaimOutcome.REPLAY
    other = await store.aclaim(store.record_key("k2", scope="alice"), fp)
    assert await store.arelease(other)


def test_memory_and_redis_replies_are_identical(redis_url: str) -> None:
    """A differential check of the Lua scripts against their Python twins."""
    red = RedisBackend.from_url(redis_url, timeout=2.0)
    mem = MemoryBackend()
    rng = random.Random(7)
    now = 1_700_000_000_000_000
    owners = ["o1", "o2", "o3"]
    try:
        for _ in range(400):
            now += rng.choice([0, 1, 500_000, 3_000_000, 11_000_000])
            key = f"fr:idem:{{t:{rng.randint(0, 2)}}}"
            op = rng.choice(["claim", "complete", "release", "renew", "force"])
            owner = rng.choice(owners)
            if op == "claim":
                args = (now, rng.choice(["fa", "fb"]), owner, 10_000_000, LONG_TTL_US,
                        rng.randint(0, 1))
            elif op == "complete":
                args = (now, owner, b"resp" + bytes([rng.randint(0, 255)]), LONG_TTL_US)
            elif op == "release":
                args = (now, owner, 0)
            elif op == "force":
                op, args = "release", (now, "", 1)
            else:
                args = (now, owner, 10_000_000)
            script = f"idempotency_{op}"
            assert mem.run(script, [key], args) == red.run(script, [key], args), (script, args)
    finally:
        red.close()


def test_decorator_runs_once_and_replays_the_result(backend: Backend, clock: ManualClock) -> None:
    store = make_store(backend, clock)
    calls = []

    @idempotent(store, key=lambda event: event["id"], scope=lambda event: event["account"],
                fingerprint=lambda event: repr(sorted(event.items())))
    def handle(event: dict[str, object]) -> dict[str, object]:
        ctx = current_idempotency()
        assert ctx is not None
        calls.append((ctx.fencing_token, ctx.downstream_key()))
        return {"charged": event["amount"]}

    event = {"id": "evt_1", "account": "acct_1", "amount": 100}
    assert handle(event) == {"charged": 100}
    assert handle(event) == {"charged": 100}
    assert len(calls) == 1
    assert current_idempotency() is None
    with pytest.raises(IdempotencyKeyMismatch):
        handle({**event, "amount": 999})
    assert handle({**event, "account": "acct_2"}) == {"charged": 100}
    assert len(calls) == 2
    assert calls[0][1] != calls[1][1]  # downstream keys differ per principal


class CardDeclined(Exception):
    pass


async def test_async_decorator_stores_configured_exceptions_and_releases_others(
        backend: Backend, clock: ManualClock) -> None:
    store = make_store(backend, clock)
    runs: list[str] = []

    @idempotent(store, key=lambda k, outcome: k, scope=lambda k, outcome: "acct",
                store_exceptions=(CardDeclined,))
    async def charge(k: str, outcome: str) -> str:
        runs.append(k)
        if outcome == "decline":
            raise CardDeclined("insufficient_funds")
        if outcome == "crash":
            raise RuntimeError("psp timeout")
        return "ok"

    for _ in range(2):
        with pytest.raises(CardDeclined, match="insufficient_funds"):
            await charge("a", "decline")
    assert runs == ["a"]
    for _ in range(2):
        with pytest.raises(RuntimeError):
            await charge("b", "crash")
    assert runs == ["a", "b", "b"]  # released: the retry runs again
    assert await charge("b", "ok") == "ok"
    assert await charge("b", "ok") == "ok"
    assert runs == ["a", "b", "b", "b"]


def test_decorator_duplicate_while_running_and_after_lease_loss(
        backend: Backend, clock: ManualClock) -> None:
    store = make_store(backend, clock)
    seen: list[BaseException] = []

    @idempotent(store, key=lambda depth: "same", global_scope=True)
    def work(depth: int) -> int:
        if depth == 0:
            try:
                work(1)
            except IdempotencyInProgress as exc:
                seen.append(exc)
            clock.advance(11.0)  # lease lost while "running"
        return depth

    assert work(0) == 0
    assert isinstance(seen[0], IdempotencyInProgress)
    with pytest.raises(IdempotencyOutcomeUnknown):
        work(0)


def test_decorator_requires_a_scope() -> None:
    store = IdempotencyStore(MemoryBackend())
    with pytest.raises(ConfigurationError, match="scope"):
        idempotent(store, key=lambda x: x)


@pytest.mark.parametrize("options", [
    {"ttl": 5, "lease": 10}, {"lease": 0}, {"secret": b"short"}, {"wait_replicas": 1},
    {"on_backend_error": "sometimes"}, {"redactor": object()},
])
def test_invalid_configuration_is_refused(options: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        IdempotencyStore(MemoryBackend(), **options)  # type: ignore[arg-type]


def test_shared_backend_needs_an_explicit_secret(redis_url: str) -> None:
    red = RedisBackend.from_url(redis_url)
    with pytest.raises(ConfigurationError, match="secret"):
        IdempotencyStore(red)
    red.close()


def test_encrypted_record_holds_no_plaintext(redis_url: str, clock: ManualClock) -> None:
    red = RedisBackend.from_url(redis_url, timeout=2.0)
    cipher = AesGcmCipher({"k1": os.urandom(32)})
    store = make_store(red, clock, cipher=cipher)
    key = store.record_key("k", scope="alice")
    body = b'{"card":"' + PAN + b'","holder":"Jane Roe"}'
    claim = store.claim(key, store.fingerprint(b""))
    assert store.complete(claim, response(body))
    raw = red.client.hgetall(key)
    dump = b"".join(k + v for k, v in raw.items())
    assert PAN not in dump and b"Jane Roe" not in dump and b"application/json" not in dump
    assert store.claim(key, store.fingerprint(b"")).response == response(body)
    red.close()


def test_key_rotation_reads_old_records_and_rejects_moved_ciphertext() -> None:
    old, new = os.urandom(32), os.urandom(16)
    before = AesGcmCipher({"2025-01": old})
    after = AesGcmCipher({"2025-01": old, "2025-07": new}, primary="2025-07")
    blob = encode_response(response(), cipher=before, associated_data=b"rec-1")
    assert decode_response(blob, cipher=after, associated_data=b"rec-1") == response()
    with pytest.raises(DecryptionError):
        decode_response(blob, cipher=after, associated_data=b"rec-2")
    with pytest.raises(DecryptionError, match="2025-07"):
        decode_response(encode_response(response(), cipher=after, associated_data=b"r"),
                        cipher=before, associated_data=b"r")
    with pytest.raises(ConfigurationError):
        AesGcmCipher({"a": old, "b": new})
    with pytest.raises(ConfigurationError):
        AesGcmCipher({"a": b"too short"})


class MaskingRedactor:
    def redact_bytes(self, data: bytes, content_type: str | None = None) -> bytes:
        return data.replace(PAN, b"411111******1111")


def test_redactor_masks_stored_bodies(backend: Backend, clock: ManualClock) -> None:
    store = make_store(backend, clock, redactor=MaskingRedactor())
    key = store.record_key("k", scope="alice")
    claim = store.claim(key, store.fingerprint(b""))
    store.complete(claim, response(b'{"pan":"' + PAN + b'"}'))
    stored = store.claim(key, store.fingerprint(b"")).response
    assert stored is not None and stored.redacted and PAN not in stored.body


def test_real_redactor_fits_the_store(clock: ManualClock) -> None:
    from fintech_resilience.core.redaction import Redactor

    store = make_store(MemoryBackend(), clock, redactor=Redactor.pci())
    key = store.record_key("k", scope="alice")
    claim = store.claim(key, store.fingerprint(b""))
    store.complete(claim, response(b'{"pan":"' + PAN + b'"}'))
    stored = store.claim(key, store.fingerprint(b"")).response
    assert stored is not None and PAN not in stored.body


def test_backend_down_denies_by_default_and_allow_runs_unprotected(
        fresh_redis: object, clock: ManualClock) -> None:
    red = RedisBackend.from_url(fresh_redis.url, timeout=0.2)  # type: ignore[attr-defined]
    store = make_store(red, clock)
    allow = make_store(red, clock, on_backend_error="allow")
    runs = []

    @idempotent(store, key=lambda: "k", global_scope=True)
    def guarded() -> int:
        runs.append("guarded")
        return 1

    fresh_redis.kill()  # type: ignore[attr-defined]
    with pytest.raises(BackendUnavailable):
        guarded()
    assert runs == []
    claim = allow.claim(allow.record_key("k", scope="a"), allow.fingerprint(b""))
    assert claim.outcome is ClaimOutcome.EXECUTE and claim.fallback == "allow"
    assert not allow.complete(claim, response())
    red.close()


def test_every_outcome_is_an_audit_record_with_the_key_hashed(
        caplog: pytest.LogCaptureFixture, clock: ManualClock) -> None:
    store = make_store(MemoryBackend(), clock)
    key = store.record_key("secret-client-key", scope="alice@example.com")
    fp = store.fingerprint(b"")
    with caplog.at_level(logging.INFO, logger="fintech_resilience.audit"):
        claim = store.claim(key, fp)
        store.claim(key, fp)
        store.claim(key, store.fingerprint(b"other"))
        store.complete(claim, response())
        store.claim(key, fp)
    outcomes = [r.resilience["outcome"] for r in caplog.records]  # type: ignore[attr-defined]
    assert outcomes == ["executed", "in_progress", "mismatch", "completed", "replayed"]
    text = " ".join(r.getMessage() + repr(r.resilience) for r in caplog.records)  # type: ignore[attr-defined]
    assert "secret-client-key" not in text and "alice" not in text


async def test_lease_is_renewed_in_the_background_while_an_async_handler_runs() -> None:
    store = IdempotencyStore(MemoryBackend(), secret=SECRET, lease=0.15, ttl=60)
    key = store.record_key("k", scope="alice")
    claim = await store.aclaim(key, store.fingerprint(b""))
    async with store.aholding(claim) as ctx:
        for _ in range(6):  # 0.3 s: twice the lease, so only renewals keep it
            await asyncio.sleep(0.05)
        assert not ctx.lease_lost
    assert await store.acomplete(claim, response())


async def test_one_timer_renews_staggered_async_claims_each_before_its_lease_ends() -> None:
    # real time (the renewals are the event loop's own timers): a lease long enough that a
    # loaded machine's scheduling delays (renewal every 0.2 s) cannot lose it
    store = IdempotencyStore(MemoryBackend(), secret=SECRET, lease=0.6, ttl=60)

    async def handler(name: str, start: float) -> bool:
        await asyncio.sleep(start)
        claim = await store.aclaim(store.record_key(name, scope="alice"), store.fingerprint(b""))
        async with store.aholding(claim) as ctx:
            await asyncio.sleep(1.3)  # more than twice the lease
            lost = ctx.lease_lost
        return not lost and await store.acomplete(claim, response())

    assert await asyncio.gather(*(handler(f"k{i}", 0.1 * i) for i in range(5))) == [True] * 5


def test_a_finished_event_loop_is_not_kept_alive(redis_url: str) -> None:
    import gc
    import weakref

    backend = RedisBackend.from_url(redis_url, timeout=1.0)
    store = IdempotencyStore(backend, secret=SECRET, check_eviction=False)
    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def request(i: int) -> None:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        claim = await store.aclaim(store.record_key(f"loop-{i}", scope="alice"),
                                   store.fingerprint(b""))
        async with store.aholding(claim):
            pass
        assert await store.acomplete(claim, response())

    for i in range(3):
        asyncio.run(request(i))  # no aclose(): each loop's shutdown closes its connection
    gc.collect()
    assert [ref() for ref in loops] == [None, None, None]
    backend.close()


def test_lease_is_renewed_in_the_background_while_a_sync_handler_runs() -> None:
    import threading

    store = IdempotencyStore(MemoryBackend(), secret=SECRET, lease=0.6, ttl=60)
    key = store.record_key("k", scope="alice")
    claim = store.claim(key, store.fingerprint(b""))
    with store.holding(claim) as ctx:
        threading.Event().wait(1.3)  # the handler's own work, more than twice the lease
        assert not ctx.lease_lost
    assert store.complete(claim, response())


@pytest.mark.parametrize("secret", [b"s" * 16, b"0123456789abcdef" * 4, os.urandom(65),
                                    os.urandom(200)])
def test_keys_and_fingerprints_are_hmac_sha256_with_length_prefixed_parts(secret: bytes) -> None:
    # the store's MAC must equal the standard library's HMAC of the parts, for keys shorter
    # than, equal to and longer than SHA-256's block
    def reference(*parts: bytes) -> bytes:
        msg = b"".join(len(p).to_bytes(8, "big") + p for p in parts)
        return hmac.new(secret, msg, hashlib.sha256).digest()

    store = IdempotencyStore(MemoryBackend(), secret=secret, name="pay", namespace="ns")
    body = os.urandom(300)
    assert store.fingerprint("POST", "/charges", b"q=1", body) == reference(
        b"fingerprint", b"POST", b"/charges", b"q=1", body).hex()
    mac = reference(b"record", b"merchant-7", b"POST", b"/charges", "kéy".encode())
    # the record key: the pattern's key prefix, then the MAC's first 128 bits
    prefix = _keys.user_prefix("ns", "idem", "pay")
    assert store.record_key("kéy", scope="merchant-7", method="POST", route="/charges") == (
        f"{prefix}{mac[:16].hex()}}}")
    assert store.record_key(42, scope=7) == (
        f"{prefix}{reference(b'record', b'7', b'', b'', b'42')[:16].hex()}}}")
    assert len(_keys.user_key("ns", "idem", "pay", "x")) == len(store.record_key("x", scope=1))
    assert store.downstream_key("k", "refund") == "fr-" + reference(
        b"downstream", b"k", b"refund").hex()[:40]


_text = st.text(st.characters(codec="utf-8"), max_size=30)


@settings(max_examples=200, deadline=None)
@given(kind=st.sampled_from(["http", "result", "exception"]), status=st.integers(0, 999),
       headers=st.lists(st.tuples(_text, _text), max_size=5), body=st.binary(max_size=64),
       replayable=st.booleans(), redacted=st.booleans())
def test_stored_responses_round_trip_and_their_header_is_plain_json(
        kind: Any, status: int, headers: list[tuple[str, str]], body: bytes, replayable: bool,
        redacted: bool) -> None:
    stored = StoredResponse(kind, status, tuple(headers), body, replayable, redacted)
    blob = encode_response(stored)
    assert decode_response(blob) == stored
    assert encode_response(stored) == blob  # the head from the cache, the same bytes
    as_list: Any = list(headers)  # not hashable: the head is written out, the same bytes
    assert encode_response(StoredResponse(kind, status, as_list, body, replayable,
                                          redacted)) == blob
    size = int.from_bytes(blob[1:5], "big")
    assert json.loads(blob[5:5 + size]) == {
        "kind": kind, "status": status, "headers": [list(h) for h in headers],
        "replayable": replayable, "redacted": redacted}
