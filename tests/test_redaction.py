"""Redactor: PANs (Luhn, separators), CVV and configured fields, headers, bytes and JSON."""

from __future__ import annotations

import json

import pytest

from fintech_resilience.core.redaction import MASK, Redactor, find_pans, luhn_valid
from fintech_resilience.errors import ConfigurationError

VISA = "4111111111111111"
MASTERCARD = "5555555555554444"
AMEX = "378282246310005"  # 15 digits
DINERS_14 = "30569309025904"
VISA_13 = "4222222222222"
MAESTRO_19 = "6759649826438453003"  # 19 digits, Luhn-valid


@pytest.fixture
def pci() -> Redactor:
    return Redactor.pci()


@pytest.mark.parametrize("pan", [VISA, MASTERCARD, AMEX, DINERS_14, VISA_13, MAESTRO_19])
def test_test_card_numbers_pass_luhn(pan: str) -> None:
    assert luhn_valid(pan)


def test_luhn_rejects_a_changed_digit() -> None:
    assert not luhn_valid("4111111111111112")


@pytest.mark.parametrize("pan", [VISA, MASTERCARD, AMEX, DINERS_14, VISA_13, MAESTRO_19])
def test_contiguous_pans_of_13_to_19_digits_keep_only_the_last_four(
    pci: Redactor, pan: str
) -> None:
    out = pci.redact_text(f"pay with {pan} now")
    assert out == f"pay with {'*' * (len(pan) - 4)}{pan[-4:]} now"


@pytest.mark.parametrize(
    ("written", "masked"),
    [
        ("4111 1111 1111 1111", "**** **** **** 1111"),
        ("4111-1111-1111-1111", "****-****-****-1111"),
        ("3782 822463 10005", "**** ****** *0005"),
        ("4111-1111 1111-1111", "****-**** ****-1111"),
    ],
)
def test_pans_with_space_or_dash_separators_are_masked_and_keep_their_format(
    pci: Redactor, written: str, masked: str
) -> None:
    assert pci.redact_text(f"card={written};") == f"card={masked};"


def test_digit_runs_that_fail_luhn_are_kept(pci: Redactor) -> None:
    text = "order 4111111111111112 ts 1700000000123 ref 12345678901234567"
    assert pci.redact_text(text) == text


def test_runs_shorter_than_13_or_longer_than_19_digits_are_kept(pci: Redactor) -> None:
    text = f"short 411111111111 long {VISA}{VISA}"  # 12 digits; 32 digits in one run
    assert pci.redact_text(text) == text


def test_a_pan_next_to_another_number_group_is_still_found(pci: Redactor) -> None:
    assert pci.redact_text(f"qty 2 {VISA[:4]} {VISA[4:8]} {VISA[8:12]} {VISA[12:]}") == (
        "qty 2 **** **** **** 1111"
    )
    assert find_pans(f"2 {VISA} 3") == [VISA]


def test_keep_last_zero_masks_every_digit() -> None:
    assert Redactor(keep_last=0).redact_text(VISA) == "*" * 16


def test_nothing_to_redact_returns_the_same_object(pci: Redactor) -> None:
    text = '{"amount": 1250, "currency": "EUR", "created": 1700000000}'
    body = text.encode()
    assert pci.redact_text(text) is text
    assert pci.redact_bytes(body, "application/json") is body
    assert pci.redact_bytes(body, None) is body


def test_sensitive_fields_in_text_are_masked_with_any_spelling(pci: Redactor) -> None:
    out = pci.redact_text('cvv=123&Card-CVC: 999 "security_code": "777" pin=1234')
    assert "123" not in out
    assert "999" not in out
    assert "777" not in out
    assert "1234" not in out
    assert out.count(MASK) == 4


def test_json_body_is_parsed_and_every_member_redacted(pci: Redactor) -> None:
    body = json.dumps({
        "card": {"number": VISA, "cvc": "123", "expiry": "12/30"},
        "amount": 1250,
        "raw_pan": int(MASTERCARD),
        "notes": [f"call me about {AMEX}"],
        "order_id": 12345678901234567,
    }).encode()
    out = json.loads(pci.redact_bytes(body, "application/json; charset=utf-8"))
    assert out["card"] == {"number": "************1111", "cvc": MASK, "expiry": "12/30"}
    assert out["amount"] == 1250
    assert out["raw_pan"] == "************4444"
    assert out["notes"] == ["call me about ***********0005"]
    assert out["order_id"] == 12345678901234567


def test_problem_json_counts_as_json(pci: Redactor) -> None:
    body = json.dumps({"detail": "x", "password": "hunter2"}).encode()
    assert json.loads(pci.redact_bytes(body, "application/problem+json"))["password"] == MASK


def test_invalid_json_falls_back_to_text_redaction(pci: Redactor) -> None:
    body = f'{{"pan": "{VISA}", "cvv": "123"'.encode()  # truncated JSON
    out = pci.redact_bytes(body, "application/json")
    assert VISA.encode() not in out
    assert b"123" not in out


def test_form_and_binary_bodies_are_redacted_as_bytes(pci: Redactor) -> None:
    body = f"card_number={VISA}&cvv=123&amount=10".encode() + b"\xff\xfe"
    out = pci.redact_bytes(body, "application/x-www-form-urlencoded")
    assert out == b"card_number=[REDACTED]&cvv=[REDACTED]&amount=10\xff\xfe"


def test_redact_mapping_is_a_deep_copy_and_masks_keys_and_values(pci: Redactor) -> None:
    original = {"Card_CVV": 123, VISA: "x", "nested": {"items": [VISA, ("a", VISA)]}}
    out = pci.redact_mapping(original)
    assert out == {
        "Card_CVV": MASK,
        "************1111": "x",
        "nested": {"items": ["************1111", ("a", "************1111")]},
    }
    assert original["nested"]["items"][0] == VISA  # type: ignore[index]


def test_booleans_and_floats_are_not_treated_as_card_numbers(pci: Redactor) -> None:
    assert pci.redact_mapping({"a": True, "b": 4111111111111111.0}) == {
        "a": True, "b": 4111111111111111.0
    }


def test_headers_as_mapping_asgi_and_wsgi_pairs(pci: Redactor) -> None:
    assert pci.redact_headers({"Authorization": "Bearer t", "X-Note": VISA}) == {
        "Authorization": MASK, "X-Note": "************1111"
    }
    assert pci.redact_headers([(b"cookie", b"s=1"), (b"x-ok", b"1")]) == [
        (b"cookie", MASK.encode()), (b"x-ok", b"1")
    ]
    assert pci.redact_headers([("Set-Cookie", "s=1"), ("X-Api-Key", "k")]) == [
        ("Set-Cookie", MASK), ("X-Api-Key", MASK)
    ]


def test_configured_fields_and_headers_extend_a_redactor() -> None:
    r = Redactor.pci().with_fields("iban").with_headers("X-Signature")
    assert r.redact_mapping({"IBAN": "DE89370400440532013000"}) == {"IBAN": MASK}
    assert r.redact_headers({"x-signature": "abc"}) == {"x-signature": MASK}
    assert Redactor.pci().redact_mapping({"iban": "x"}) == {"iban": "x"}


def test_a_redactor_without_pans_keeps_digits() -> None:
    redactor = Redactor(pans=False, fields=("cvv",))
    assert redactor.redact_text(f"{VISA} cvv=1") == f"{VISA} cvv={MASK}"


def test_call_dispatches_on_type(pci: Redactor) -> None:
    assert pci(VISA) == "************1111"
    assert pci(VISA.encode()) == b"************1111"
    assert pci([{"cvv": 1}]) == [{"cvv": MASK}]


@pytest.mark.parametrize(
    "kwargs",
    [{"keep_last": 5}, {"keep_last": -1}, {"fields": "cvv"}, {"headers": "cookie"},
     {"mask": "x1"}],
)
def test_bad_configuration_says_what_to_write(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        Redactor(**kwargs)  # type: ignore[arg-type]


def test_pci_is_a_shared_equal_instance() -> None:
    assert Redactor.pci() is Redactor.pci()
    assert repr(Redactor.pci()) == "Redactor.pci()"
    assert Redactor(fields=("cvv",)) == Redactor(fields=("CVV",))
    assert hash(Redactor(fields=("cvv",))) == hash(Redactor(fields=("c_v_v",)))
