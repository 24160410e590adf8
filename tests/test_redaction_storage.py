"""No card data reaches the idempotency store with ``Redactor.pci()``: PANs in any common spelling,
in replayed headers (Location, Content-Location, Link, ETag) and in compressed bodies (gzip,
deflate, br) - checked in the raw Redis hash, through real ASGI (Starlette) and WSGI (Flask)
apps."""

from __future__ import annotations

import gzip
import json
import random
import re
import zlib
from typing import Any

import brotli
import httpx
import pytest
import redis
from flask import Flask
from flask import Response as FlaskResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fintech_resilience import RedisBackend
from fintech_resilience.asgi import IdempotencyMiddleware
from fintech_resilience.core.redaction import Redactor, luhn_valid
from fintech_resilience.idempotency import IdempotencyStore
from fintech_resilience.idempotency import stored_redaction as _stored_redaction
from fintech_resilience.idempotency.record import decode_response
from fintech_resilience.wsgi import IdempotencyMiddleware as WsgiIdempotency

SECRET = b"redaction-storage-secret-0123"
PAN = "4111111111111111"
FULLWIDTH = str.maketrans({48 + i: 0xFF10 + i for i in range(10)})


def spaced(sep: str, pan: str = PAN) -> str:
    return sep.join(pan[i:i + 4] for i in range(0, len(pan), 4))


SPELLINGS = {
    "dots": spaced("."),
    "slashes": spaced("/"),
    "two spaces": spaced("  "),
    "three spaces": spaced("   "),
    "space dash space": spaced(" - "),
    "tab": spaced("\t"),
    "no-break space": spaced("\u00a0"),
    "narrow no-break space": spaced("\u202f"),
    "thin space": spaced("\u2009"),
    "figure space": spaced("\u2007"),
    "ideographic space": spaced("\u3000"),
    "fullwidth digits": PAN.translate(FULLWIDTH),
    "fullwidth digits, spaces": spaced(" ").translate(FULLWIDTH),
    "mixed": "\uff14\uff11\uff11\uff11.1111\u00a0\uff11\uff11\uff11\uff11/1111",
    "amex with dots": "3782.822463.10005",
    "form encoded": spaced("+"),
}


def digits_of(text: str) -> str:
    return "".join(str(int(c)) for c in text if c.isdigit() and c.isdecimal())


def assert_no_pan(text: str, pan: str = PAN) -> None:
    """The PAN's 12 leading digits are not in the digits of ``text`` (read through any
    separators), nor in ``text`` read as UTF-8 bytes that were decoded as latin-1."""
    assert digits_of(pan)[:12] not in digits_of(text), text
    try:
        again = text.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return
    assert digits_of(pan)[:12] not in digits_of(again), again


# --- the redactor -------------------------------------------------------------------------------
@pytest.mark.parametrize("spelling", list(SPELLINGS.values()), ids=list(SPELLINGS))
def test_every_spelling_is_masked_in_text_bytes_and_json(spelling: str) -> None:
    r = Redactor.pci()
    text = f"card {spelling} ok"
    pan = digits_of(spelling)
    masked = r.redact_text(text)
    assert masked != text and masked.startswith("card ") and masked.endswith(" ok")
    assert_no_pan(masked, pan)
    assert digits_of(masked) == pan[-4:]
    body = r.redact_bytes(text.encode(), "text/plain").decode()
    assert_no_pan(body, pan)
    for ascii_only in (True, False):
        doc = json.dumps({"note": text}, ensure_ascii=ascii_only).encode()
        assert_no_pan(json.loads(r.redact_bytes(doc, "application/json"))["note"], pan)


def test_non_utf8_bytes_with_a_latin1_no_break_space_are_masked() -> None:
    data = spaced("\u00a0").encode("latin-1")
    masked = Redactor.pci().redact_bytes(b"card " + data, "text/plain")
    assert_no_pan(masked.decode("latin-1"))


def _non_pan_text(rng: random.Random) -> str:
    """Text a payment API writes that holds no card number: dates, times, amounts, IPs, version
    strings, phone numbers and ids, in runs separated by the new separators."""
    def token() -> str:
        kind = rng.randrange(7)
        if kind == 0:
            return f"{rng.randint(2000, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        if kind == 1:
            return f"{rng.randint(2000, 2030)}/{rng.randint(1, 12):02d}/{rng.randint(1, 28):02d}"
        if kind == 2:
            return f"{rng.randint(0, 99999)}.{rng.randint(0, 99):02d}"
        if kind == 3:
            return ".".join(str(rng.randint(0, 255)) for _ in range(4))
        if kind == 4:
            return ".".join(str(rng.randint(0, 20)) for _ in range(3))
        if kind == 5:
            return f"+{rng.randint(1, 99)} {rng.randint(100, 999)} {rng.randint(100, 999)}"
        return str(rng.randint(0, 10**6))
    return rng.choice([" ", "  ", " / ", " - "]).join(token() for _ in range(rng.randint(2, 6)))


def test_the_false_positive_rate_on_common_non_card_numbers_stays_under_one_percent() -> None:
    rng = random.Random(15)
    r = Redactor.pci()
    samples = [_non_pan_text(rng) for _ in range(5000)]
    changed = [s for s in samples if r.redact_text(s) != s]
    assert len(changed) / len(samples) < 0.01, changed[:10]


def test_luhn_valid_runs_in_one_unbroken_group_are_still_never_split() -> None:
    run = "4111111111111111" + "7"  # 17 digits: not a PAN as a whole
    assert not luhn_valid(run)
    assert Redactor.pci().redact_text(f"id {run}") == f"id {run}"


# --- through the middlewares, on real Redis -----------------------------------------------------
def compress(data: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.compress(data)
    if encoding == "deflate":
        return zlib.compress(data)
    if encoding == "br":
        return bytes(brotli.compress(data))
    return data


def card_response_parts(encoding: str) -> tuple[bytes, dict[str, str]]:
    body = json.dumps({"card": spaced(" "), "masked_elsewhere": spaced("\u00a0"),
                       "status": "authorised"}).encode()
    headers = {
        "Content-Type": "application/json",
        "Location": f"/v1/cards/{PAN}",
        "Content-Location": f"/v1/cards/{spaced('.')}",
        "Link": f'</v1/cards/{spaced("/")}>; rel="self"',
        "ETag": f'"{PAN}"',
    }
    if encoding:
        headers["Content-Encoding"] = encoding
    return compress(body, encoding), headers


def raw_records(url: str) -> list[dict[bytes, bytes]]:
    client = redis.Redis.from_url(url)
    try:
        return [client.hgetall(k) for k in client.keys("*") if client.type(k) == b"hash"]
    finally:
        client.close()


def assert_redis_holds_no_pan(url: str) -> list[Any]:
    """Every hash in Redis, raw and decoded (bodies decompressed), holds no PAN."""
    records = raw_records(url)
    stored = []
    for record in records:
        for value in record.values():
            assert_no_pan(value.decode("latin-1"))
        if b"res" in record:
            response = decode_response(record[b"res"])
            encoding = dict((n.lower(), v) for n, v in response.headers).get("content-encoding")
            plain = response.body
            if not plain:
                pass
            elif encoding == "gzip":
                plain = gzip.decompress(plain)
            elif encoding == "deflate":
                plain = zlib.decompress(plain)
            elif encoding == "br":
                plain = brotli.decompress(plain)
            assert_no_pan(plain.decode("utf-8"))
            for _, v in response.headers:
                assert_no_pan(v)
            stored.append(response)
    assert stored, "no stored response found"
    return stored


def starlette_app(store: IdempotencyStore, runs: list[str]) -> Any:
    async def card(request: Request) -> Response:
        encoding = request.query_params.get("enc", "")
        runs.append(encoding)
        body, headers = card_response_parts(encoding)
        return Response(body, status_code=201, headers=headers)

    app = Starlette(routes=[Route("/cards", card, methods=["POST"])])
    return IdempotencyMiddleware(app, store=store, scope=lambda scope: "merchant-1")


def flask_app(store: IdempotencyStore, runs: list[str]) -> Flask:
    app = Flask(__name__)

    @app.post("/cards")
    def card() -> FlaskResponse:
        from flask import request

        encoding = request.args.get("enc", "")
        runs.append(encoding)
        body, headers = card_response_parts(encoding)
        return FlaskResponse(body, status=201, headers=headers)

    app.wsgi_app = WsgiIdempotency(  # type: ignore[method-assign]
        app.wsgi_app, store=store, scope=lambda environ: "merchant-1")
    return app


@pytest.fixture
def store(redis_url: str) -> Any:
    backend = RedisBackend.from_url(redis_url, timeout=5.0)
    yield IdempotencyStore(backend, secret=SECRET, redactor=Redactor.pci())
    backend.close()


ENCODINGS = ["", "gzip", "deflate", "br"]


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_asgi_stores_no_pan_in_headers_or_compressed_bodies(
        store: IdempotencyStore, redis_url: str, encoding: str) -> None:
    runs: list[str] = []
    transport = httpx.ASGITransport(app=starlette_app(store, runs))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        first = await c.post(f"/cards?enc={encoding}", headers={"Idempotency-Key": "k"})
        again = await c.post(f"/cards?enc={encoding}", headers={"Idempotency-Key": "k"})
    assert first.status_code == again.status_code == 201
    assert first.json()["card"] == spaced(" ")  # the first answer is the handler's own
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["status"] == "authorised"
    assert_no_pan(again.text)
    for name in ("location", "content-location", "link", "etag"):
        assert_no_pan(again.headers[name])
    assert runs == [encoding]
    assert_redis_holds_no_pan(redis_url)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_wsgi_stores_no_pan_in_headers_or_compressed_bodies(
        store: IdempotencyStore, redis_url: str, encoding: str) -> None:
    runs: list[str] = []
    c = flask_app(store, runs).test_client()
    first = c.post(f"/cards?enc={encoding}", headers={"Idempotency-Key": "k"})
    again = c.post(f"/cards?enc={encoding}", headers={"Idempotency-Key": "k"})
    assert first.status_code == again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    for name in ("Location", "Content-Location", "Link", "ETag"):
        assert_no_pan(again.headers[name])
    replayed = again.get_data()
    if encoding:
        replayed = {"gzip": gzip.decompress, "deflate": zlib.decompress,
                    "br": brotli.decompress}[encoding](replayed)
    assert json.loads(replayed)["status"] == "authorised"
    assert_no_pan(replayed.decode())
    assert runs == [encoding]
    assert_redis_holds_no_pan(redis_url)


async def test_a_body_in_an_encoding_without_a_decoder_is_not_stored_and_duplicates_get_409(
        store: IdempotencyStore, redis_url: str, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(_stored_redaction.DECODERS, "br", None)  # as without brotli installed
    runs: list[str] = []
    transport = httpx.ASGITransport(app=starlette_app(store, runs))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        first = await c.post("/cards?enc=br", headers={"Idempotency-Key": "k"})
        again = await c.post("/cards?enc=br", headers={"Idempotency-Key": "k"})
    assert first.status_code == 201 and first.json()["card"] == spaced(" ")
    assert again.status_code == 409
    assert again.json()["type"].endswith("idempotency-response-not-replayable")
    assert runs == ["br"]  # never executed twice
    [stored] = assert_redis_holds_no_pan(redis_url)
    assert stored.body == b"" and not stored.replayable and stored.status == 201
    assert any("cannot be redacted" in r.getMessage() for r in caplog.records)


async def test_an_unknown_content_encoding_is_not_stored_either(
        store: IdempotencyStore, redis_url: str) -> None:
    async def card(request: Request) -> Response:
        return Response(b"\x28\xb5\x2f\xfd opaque", status_code=201,
                        headers={"Content-Encoding": "zstd", "Location": f"/c/{PAN}"})

    app = IdempotencyMiddleware(Starlette(routes=[Route("/cards", card, methods=["POST"])]),
                                store=store, scope=lambda scope: "m")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as c:
        await c.post("/cards", headers={"Idempotency-Key": "z"})
        again = await c.post("/cards", headers={"Idempotency-Key": "z"})
    assert again.status_code == 409
    [stored] = assert_redis_holds_no_pan(redis_url)
    assert stored.body == b"" and not stored.replayable


def test_a_gzip_bomb_is_not_decoded_past_the_bound_and_not_stored() -> None:
    bomb = gzip.compress(b"0" * (_stored_redaction.MAX_DECODED_BYTES + 1))
    from fintech_resilience.idempotency.record import StoredResponse

    out = _stored_redaction.redact_stored(
        StoredResponse("http", 200, (("content-encoding", "gzip"),), bomb), Redactor.pci())
    assert out.body == b"" and not out.replayable


def test_without_a_pan_a_compressed_body_is_stored_byte_for_byte() -> None:
    from fintech_resilience.idempotency.record import StoredResponse

    body = gzip.compress(b'{"status":"ok","amount":1250}', mtime=0)
    response = StoredResponse("http", 201, (("content-type", "application/json"),
                                            ("content-encoding", "gzip"),
                                            ("location", "/v1/charges/ch_1")), body)
    assert _stored_redaction.redact_stored(response, Redactor.pci()) is response


def test_the_stored_record_of_a_pan_spelled_every_way_holds_none_of_them(
        store: IdempotencyStore, redis_url: str) -> None:
    runs: list[str] = []
    app = Flask(__name__)

    @app.post("/notes")
    def note() -> FlaskResponse:
        runs.append("ran")
        text = "\n".join(f"{name}: {value}" for name, value in SPELLINGS.items())
        return FlaskResponse(text.encode(), status=201, content_type="text/plain; charset=utf-8",
                             headers={"Location": f"/n/{SPELLINGS['fullwidth digits']}"
                                      .encode().decode("latin-1")})

    app.wsgi_app = WsgiIdempotency(  # type: ignore[method-assign]
        app.wsgi_app, store=store, scope=lambda environ: "m")
    c = app.test_client()
    c.post("/notes", headers={"Idempotency-Key": "n"})
    again = c.post("/notes", headers={"Idempotency-Key": "n"})
    assert again.status_code == 201 and runs == ["ran"]
    for line in again.get_data(as_text=True).splitlines():
        assert re.search(r"\d", line), line
        assert_no_pan(line)
    assert_redis_holds_no_pan(redis_url)


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
def test_a_corrupt_or_truncated_compressed_body_is_not_stored(encoding: str) -> None:
    from fintech_resilience.idempotency.record import StoredResponse

    whole = compress(json.dumps({"card": PAN}).encode(), encoding)
    for body in (whole[: len(whole) // 2], b"not compressed at all " + PAN.encode()):
        out = _stored_redaction.redact_stored(
            StoredResponse("http", 201, (("content-encoding", encoding),), body),
            Redactor.pci())
        assert out.body == b"" and not out.replayable
