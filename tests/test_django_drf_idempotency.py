"""Idempotency for Django REST framework views: the principal is DRF's authenticated user, read
after DRF's authentication (real DRF token-header parsing, permissions and throttles), through the
settings-configured middleware (out of the box) and through the view mixin. Django's test client
(WSGI) and Django's ASGI handler."""

from __future__ import annotations

import itertools
import json
from typing import Any

import httpx
import pytest
import test_django  # noqa: F401 - configures Django settings once for the session
from django.core.handlers.asgi import ASGIHandler
from django.test import Client, override_settings
from django.urls import path
from rest_framework import exceptions
from rest_framework.authentication import TokenAuthentication
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework.viewsets import ViewSet

from fintech_resilience import IdempotencyStore, MemoryBackend
from fintech_resilience.django import IdempotencyMixin

BASE = "https://fintech-resilience.dev/problems/"
runs: list[tuple[str, int]] = []
_ids = itertools.count(1)


class Merchant:
    is_authenticated = True

    def __init__(self, pk: str) -> None:
        self.pk = pk


TOKENS = {"tok-alice": Merchant("alice"), "tok-bob": Merchant("bob")}


class InMemoryTokenAuthentication(TokenAuthentication):
    """DRF's TokenAuthentication (``Authorization: Token <key>`` parsing, 401 challenge), with
    the token table in memory instead of the database."""

    def authenticate_credentials(self, key: str) -> tuple[Merchant, str]:
        user = TOKENS.get(key)
        if user is None:
            raise exceptions.AuthenticationFailed("Invalid token.")
        return user, key


class Charges(APIView):
    authentication_classes = [InMemoryTokenAuthentication]
    permission_classes = [IsAuthenticated]

    def post(self, request: Any) -> Response:
        amount = int(request.data["amount"])
        runs.append((request.user.pk, amount))
        if amount < 0:
            raise exceptions.ValidationError({"amount": "must be positive"})
        if amount == 0:
            raise RuntimeError("psp exploded")
        return Response({"charge": f"ch_{next(_ids)}", "amount": amount}, status=201,
                        headers={"Location": "/charges/1"})


class MixedInCharges(IdempotencyMixin, Charges):
    pass


class ChargeSet(ViewSet):
    authentication_classes = [InMemoryTokenAuthentication]
    permission_classes = [IsAuthenticated]

    def create(self, request: Any) -> Response:
        return Charges.post(self, request)  # type: ignore[arg-type]


urlpatterns = [path("api/charges", Charges.as_view()),
               path("api/mixed", MixedInCharges.as_view()),
               path("api/viewset", ChargeSet.as_view({"post": "create"}))]
STORE = IdempotencyStore(MemoryBackend(), name="drf")
MIDDLEWARE = ["fintech_resilience.django.IdempotencyMiddleware"]


@pytest.fixture(autouse=True)
def _django():  # type: ignore[no-untyped-def]
    runs.clear()
    STORE.backend.clear()  # type: ignore[attr-defined]
    with override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=MIDDLEWARE,
                           REST_FRAMEWORK={"UNAUTHENTICATED_USER": None},  # no contrib.auth here
                           FINTECH_RESILIENCE={"IDEMPOTENCY": {"STORE": f"{__name__}.STORE"}}):
        yield


def post(client: Client, url: str, amount: int, key: str | None, token: str | None) -> Any:
    headers = {}
    if key is not None:
        headers["Idempotency-Key"] = key
    if token is not None:
        headers["Authorization"] = f"Token {token}"
    return client.post(url, data=json.dumps({"amount": amount}), content_type="application/json",
                       headers=headers)


@pytest.mark.parametrize("url", ["/api/charges", "/api/mixed", "/api/viewset"])
def test_a_keyed_post_behind_drf_auth_runs_once_and_replays(url: str) -> None:
    client = Client()
    first = post(client, url, 500, "k-1", "tok-alice")
    again = post(client, url, 500, "k-1", "tok-alice")
    assert first.status_code == 201, first.content
    assert again.status_code == 201 and again.content == first.content
    assert again["Idempotent-Replayed"] == "true" and again["Location"] == "/charges/1"
    assert runs == [("alice", 500)]


@pytest.mark.parametrize("url", ["/api/charges", "/api/mixed", "/api/viewset"])
def test_two_users_with_the_same_key_never_see_each_others_response(url: str) -> None:
    client = Client()
    alice = post(client, url, 500, "same-key", "tok-alice")
    bob = post(client, url, 700, "same-key", "tok-bob")
    bob_again = post(client, url, 700, "same-key", "tok-bob")
    assert (alice.status_code, bob.status_code) == (201, 201)
    assert bob.json()["amount"] == 700 and bob.json()["charge"] != alice.json()["charge"]
    assert bob_again.content == bob.content and bob_again["Idempotent-Replayed"] == "true"
    assert post(client, url, 900, "same-key", "tok-alice").status_code == 422
    assert runs == [("alice", 500), ("bob", 700)]


@pytest.mark.parametrize("url", ["/api/charges", "/api/mixed"])
def test_unauthenticated_requests_get_drf_401_and_claim_nothing(url: str) -> None:
    client = Client()
    anonymous = post(client, url, 500, "k-2", None)
    forged = post(client, url, 500, "k-2", "tok-mallory")
    assert anonymous.status_code == 401 and forged.status_code == 401
    assert "idempotency" not in anonymous.content.decode()
    assert runs == []
    assert post(client, url, 500, "k-2", "tok-alice").status_code == 201  # the key is free
    assert runs == [("alice", 500)]


@pytest.mark.parametrize("url", ["/api/charges", "/api/mixed"])
def test_drf_errors_are_stored_or_release_the_key_like_every_edge(url: str) -> None:
    client = Client(raise_request_exception=False)
    invalid = post(client, url, -1, "k-3", "tok-alice")
    invalid_again = post(client, url, -1, "k-3", "tok-alice")
    assert invalid.status_code == invalid_again.status_code == 400
    assert invalid_again["Idempotent-Replayed"] == "true"
    crashed = post(client, url, 0, "k-4", "tok-alice")
    crashed_again = post(client, url, 0, "k-4", "tok-alice")
    assert crashed.status_code == crashed_again.status_code == 500
    assert runs == [("alice", -1), ("alice", 0), ("alice", 0)]  # the crash released the key


def test_a_missing_key_is_400_when_required() -> None:
    config = {"IDEMPOTENCY": {"STORE": f"{__name__}.STORE", "REQUIRED": True}}
    with override_settings(FINTECH_RESILIENCE=config):
        for url in ("/api/charges", "/api/mixed"):
            refused = post(Client(), url, 500, None, "tok-alice")
            assert refused.status_code == 400
            assert refused.json()["type"] == BASE + "idempotency-key-missing"
    assert runs == []


def test_the_mixin_works_without_the_middleware() -> None:
    with override_settings(MIDDLEWARE=[]):
        client = Client()
        first = post(client, "/api/mixed", 500, "k-5", "tok-bob")
        again = post(client, "/api/mixed", 500, "k-5", "tok-bob")
    assert first.status_code == 201 and again["Idempotent-Replayed"] == "true"
    assert runs == [("bob", 500)]


async def test_under_asgi_too() -> None:
    app = ASGIHandler()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as client:
        headers = {"Idempotency-Key": "k-6", "Authorization": "Token tok-alice"}
        first = await client.post("/api/charges", json={"amount": 5}, headers=headers)
        again = await client.post("/api/charges", json={"amount": 5}, headers=headers)
    assert first.status_code == 201 and again.headers["idempotent-replayed"] == "true"
    assert runs == [("alice", 5)]
