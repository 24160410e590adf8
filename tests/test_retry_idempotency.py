"""Non-idempotent operations: attempted once without a key; one key for every attempt."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from fintech_resilience.errors import IdempotencyKeyInvalid, Timeout
from fintech_resilience.retries.core import current_attempt, retry
from fintech_resilience.testing import ManualClock


class Psp:
    """A fake PSP charge endpoint: fails ``failures`` times, records the key of every attempt."""

    def __init__(self, failures: int, exc: type[BaseException] = TimeoutError) -> None:
        self.failures = failures
        self.exc = exc
        self.keys: list[str | None] = []
        self.kwarg_keys: list[str | None] = []

    def charge(self, amount_minor: int, idempotency_key: str | None = None) -> str:
        attempt = current_attempt()
        self.keys.append(attempt.idempotency_key if attempt else None)
        self.kwarg_keys.append(idempotency_key)
        if len(self.keys) <= self.failures:
            raise self.exc("no answer from the PSP")
        return f"charged {amount_minor}"

    async def acharge(self, amount_minor: int, idempotency_key: str | None = None) -> str:
        await asyncio.sleep(0)
        return self.charge(amount_minor, idempotency_key=idempotency_key)


def test_non_idempotent_call_without_a_key_is_attempted_exactly_once(clock: ManualClock) -> None:
    psp = Psp(failures=5)
    charge = retry(on=TimeoutError, attempts=5, idempotent=False, clock=clock)(psp.charge)
    with pytest.raises(TimeoutError):
        charge(1000)
    assert psp.keys == [None]


async def test_async_non_idempotent_call_without_a_key_is_attempted_exactly_once(
        clock: ManualClock) -> None:
    psp = Psp(failures=5)
    charge = retry(on=TimeoutError, attempts=5, idempotent=False, clock=clock)(psp.acharge)
    with pytest.raises(TimeoutError):
        await charge(1000)
    assert psp.keys == [None]


def test_unknown_outcome_timeout_is_not_retried_without_a_key(clock: ManualClock) -> None:
    psp = Psp(failures=5, exc=Timeout)  # fr.Timeout: the request was sent, no answer came
    with pytest.raises(Timeout):
        retry(on=TimeoutError, attempts=5, idempotent=False, clock=clock)(psp.charge)(1000)
    assert len(psp.keys) == 1


def test_unknown_outcome_is_retried_under_the_same_key(clock: ManualClock) -> None:
    psp = Psp(failures=3, exc=Timeout)
    charge = retry(on=TimeoutError, attempts=5, idempotent=False, idempotency_key="auto",
                   clock=clock)(psp.charge)
    assert charge(1000) == "charged 1000"
    assert len(psp.keys) == 4
    assert psp.keys[0] is not None and len(set(psp.keys)) == 1


def test_a_request_that_was_never_sent_may_be_retried_without_a_key(clock: ManualClock) -> None:
    psp = Psp(failures=2, exc=ConnectionRefusedError)
    charge = retry(on=ConnectionError, idempotent=False, clock=clock)(psp.charge)
    assert charge(1000) == "charged 1000"
    assert psp.keys == [None, None, None]


def test_auto_key_is_the_same_on_every_attempt_and_new_for_every_call(clock: ManualClock) -> None:
    psp = Psp(failures=2)
    charge = retry(on=TimeoutError, idempotent=False, idempotency_key="auto",
                   key_argument="idempotency_key", clock=clock)(psp.charge)
    charge(1000)
    first_call = psp.keys[:]
    assert len(first_call) == 3 and len(set(first_call)) == 1 and first_call[0]
    assert psp.kwarg_keys == first_call  # also passed as the keyword argument
    psp.failures = 0
    charge(2000)
    assert psp.keys[-1] != first_call[0]


async def test_async_every_attempt_carries_the_same_key(clock: ManualClock) -> None:
    psp = Psp(failures=2)
    charge = retry(on=TimeoutError, idempotent=False, key_argument="idempotency_key",
                   idempotency_key="auto", clock=clock)(psp.acharge)
    assert await charge(1000, idempotency_key="order-42-charge") == "charged 1000"
    assert psp.keys == ["order-42-charge"] * 3
    assert psp.kwarg_keys == ["order-42-charge"] * 3


def test_key_taken_from_the_callers_keyword_argument(clock: ManualClock) -> None:
    psp = Psp(failures=1)
    charge = retry(on=TimeoutError, idempotent=False, key_argument="idempotency_key",
                   clock=clock)(psp.charge)
    assert charge(500, idempotency_key="k-1") == "charged 500"
    assert psp.keys == ["k-1", "k-1"]
    # without the argument (and no generator) there is no key: attempted once
    psp = Psp(failures=1)
    charge = retry(on=TimeoutError, idempotent=False, key_argument="idempotency_key",
                   clock=clock)(psp.charge)
    with pytest.raises(TimeoutError):
        charge(500)
    assert psp.keys == [None]


def test_key_computed_from_the_call_arguments(clock: ManualClock) -> None:
    psp = Psp(failures=2)

    def key_of(amount_minor: int, **_: Any) -> str:
        return f"payout-{amount_minor}"

    charge = retry(on=TimeoutError, idempotent=False, idempotency_key=key_of,
                   clock=clock)(psp.charge)
    charge(700)
    assert psp.keys == ["payout-700"] * 3


@pytest.mark.parametrize("bad", ["", "x" * 256, "caf\u00e9", "line\nbreak", 42])
def test_an_invalid_key_is_refused_before_any_attempt(bad: Any, clock: ManualClock) -> None:
    psp = Psp(failures=0)
    charge = retry(idempotent=False, idempotency_key=lambda *a, **k: bad,
                   clock=clock)(psp.charge)
    with pytest.raises(IdempotencyKeyInvalid):
        charge(1)
    assert psp.keys == []


def test_idempotent_operations_retry_without_a_key(clock: ManualClock) -> None:
    psp = Psp(failures=2)
    assert retry(on=TimeoutError, clock=clock)(psp.charge)(1) == "charged 1"
    assert psp.keys == [None, None, None]
