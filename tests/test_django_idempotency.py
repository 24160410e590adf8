"""Django's IdempotencyMiddleware, configured from settings, through Django's test client."""

from __future__ import annotations

import itertools
import json

import pytest
import test_django  # noqa: F401 - configures Django settings once for the session
from django.http import HttpResponse, StreamingHttpResponse
from django.test import Client, override_settings
from django.urls import path

from fintech_resilience import ConfigurationError, IdempotencyStore, MemoryBackend
from fintech_resilience.django import IdempotencyMiddleware

runs: list[str] = []
_ids = itertools.count(1)


def charge(request):  # type: ignore[no-untyped-def]
    runs.append(request.body.decode())
    body = {"charge": f"ch_{next(_ids)}", "amount": json.loads(request.body)["amount"]}
    return HttpResponse(json.dumps(body), status=201, content_type="application/json",
                        headers={"Set-Cookie": "session=secret"})


def broken(request):  # type: ignore[no-untyped-def]
    runs.append("broken")
    return HttpResponse("psp down", status=502)


def stream(request):  # type: ignore[no-untyped-def]
    runs.append("stream")
    return StreamingHttpResponse(iter([b"a", b"b"]))


urlpatterns = [path("charges", charge), path("broken", broken), path("stream", stream)]
MIDDLEWARE = ["test_django.FakeAuthMiddleware", "fintech_resilience.django.IdempotencyMiddleware"]
STORE = IdempotencyStore(MemoryBackend(), name="django")


def settings_for(**options: object) -> dict:
    return {"IDEMPOTENCY": {"STORE": f"{__name__}.STORE", **options}}


@pytest.fixture(autouse=True)
def _django():  # type: ignore[no-untyped-def]
    runs.clear()
    STORE.backend.clear()  # type: ignore[attr-defined]
    with override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=MIDDLEWARE,
                           FINTECH_RESILIENCE=settings_for()):
        yield


def post(client: Client, url: str, body: dict, key: str | None, user: str | None = "u1"):
    headers = {}
    if key is not None:
        headers["Idempotency-Key"] = key
    if user is not None:
        headers["X-User"] = user
    return client.post(url, data=json.dumps(body), content_type="application/json",
                       headers=headers)


def test_a_duplicate_is_replayed_byte_for_byte_and_runs_once():
    client = Client()
    first = post(client, "/charges", {"amount": 500}, "k-1")
    again = post(client, "/charges", {"amount": 500}, "k-1")
    assert first.status_code == again.status_code == 201
    assert again.content == first.content
    assert again["Idempotent-Replayed"] == "true"
    assert "Set-Cookie" not in again.headers  # never replayed
    assert len(runs) == 1


def test_same_key_other_body_is_422_and_other_user_has_its_own_record():
    client = Client()
    post(client, "/charges", {"amount": 500}, "k-2")
    mismatch = post(client, "/charges", {"amount": 900}, "k-2")
    assert mismatch.status_code == 422
    assert mismatch["Content-Type"] == "application/problem+json"
    other = post(client, "/charges", {"amount": 500}, "k-2", user="u2")
    assert other.status_code == 201 and other.json()["charge"] != ""
    assert len(runs) == 2  # u1 once, u2 once; the mismatch never ran


def test_bad_missing_and_anonymous_keys():
    client = Client()
    assert post(client, "/charges", {"amount": 1}, "x" * 256).status_code == 400
    assert post(client, "/charges", {"amount": 1}, None).status_code == 201  # not required
    anonymous = post(client, "/charges", {"amount": 1}, "k-3", user=None)
    assert anonymous.status_code == 500 and "scope" in anonymous.json()["type"]
    with override_settings(FINTECH_RESILIENCE=settings_for(REQUIRED=True)):
        assert post(Client(), "/charges", {"amount": 1}, None).status_code == 400
    assert runs == ['{"amount": 1}']


def test_server_errors_release_the_key_and_streams_are_not_replayable():
    client = Client()
    assert post(client, "/broken", {"amount": 1}, "k-4").status_code == 502
    assert post(client, "/broken", {"amount": 1}, "k-4").status_code == 502
    assert runs == ["broken", "broken"]  # released: the retry ran again
    assert post(client, "/stream", {"amount": 1}, "k-5").status_code == 200
    assert post(client, "/stream", {"amount": 1}, "k-5").status_code == 409
    assert runs.count("stream") == 1


def test_configuration_is_checked():
    with override_settings(FINTECH_RESILIENCE={}), pytest.raises(ConfigurationError):
        IdempotencyMiddleware(lambda request: HttpResponse())
    with override_settings(FINTECH_RESILIENCE={"IDEMPOTENCY": {"STORE": object()}}), \
            pytest.raises(ConfigurationError):
        IdempotencyMiddleware(lambda request: HttpResponse())
