"""A minimal Django REST framework payments API in one file.

    python examples/django_app/app.py            # drives the WSGI app in-process and prints
    python examples/django_app/app.py runserver  # serve it (Django's development server)

What is wired in:

* ``fintech_resilience.django.RateLimitMiddleware`` - a site-wide limit from settings;
* ``fintech_resilience.django.RateThrottle`` - DRF throttling per merchant (``throttle_scope``),
  one atomic GCRA decision in the shared backend;
* ``fintech_resilience.django.IdempotencyMiddleware`` - POST /charges/ runs once per
  (merchant, Idempotency-Key); for this DRF view the key is claimed after DRF authenticated the
  merchant, so the principal is DRF's ``request.user``; duplicates get the stored response;
* a ``CircuitBreaker`` and ``retry`` around the PSP call, with the record's downstream key.

``settings.FINTECH_RESILIENCE`` is read through ``fintech_resilience.config`` (a mistake in it
stops the start-up). With ``FINTECH_RESILIENCE_REDIS_URL`` set, state is shared through that
Redis; each run uses merchants and keys of its own, so runs can follow each other (and the other
examples) on one Redis. Served with ``runserver``, ``POST /charges/`` (or ``/charges``) with
``X-Merchant`` and ``Idempotency-Key`` headers charges; without ``X-Merchant`` it answers 403.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import sys
import uuid
from typing import Any

import django
from django.conf import settings

import fintech_resilience as fr

URL = os.environ.get("FINTECH_RESILIENCE_REDIS_URL") or "memory://"
store = fr.IdempotencyStore(URL, secret=os.environ.get("IDEMPOTENCY_SECRET",
                                                       "dev-only-secret-32-bytes-long!!"))

if not settings.configured:
    settings.configure(
        DEBUG=False, SECRET_KEY="example-only", ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__,
        INSTALLED_APPS=["rest_framework"], DATABASES={}, USE_TZ=True,
        MIDDLEWARE=["fintech_resilience.django.RateLimitMiddleware",
                    "fintech_resilience.django.IdempotencyMiddleware"],
        FINTECH_RESILIENCE={
            "BACKEND": URL,                    # a URL, or a Backend object
            "RATE_LIMIT": {"LIMITS": "100/minute", "NAME": "site", "EXEMPT_PATHS": ["/healthz"]},
            "IDEMPOTENCY": {"STORE": store, "METHODS": ["POST"], "REQUIRED": True},
        },
        REST_FRAMEWORK={
            "DEFAULT_AUTHENTICATION_CLASSES": [],  # set on the view below
            "DEFAULT_THROTTLE_CLASSES": ["fintech_resilience.django.RateThrottle"],
            "DEFAULT_THROTTLE_RATES": {"payments": "3/s"},
            "UNAUTHENTICATED_USER": None,
        },
    )
    django.setup()

from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.urls import re_path  # noqa: E402
from rest_framework.authentication import BaseAuthentication  # noqa: E402
from rest_framework.permissions import IsAuthenticated  # noqa: E402
from rest_framework.response import Response  # noqa: E402
from rest_framework.views import APIView  # noqa: E402

breaker = fr.CircuitBreaker("django-psp-acme", backend=URL, minimum_calls=10)
_ids = itertools.count(1)
_psp_ledger: dict[str, dict[str, Any]] = {}


@fr.retry(on=ConnectionError, attempts=3, wait=0.01, idempotent=False,
          key_argument="idempotency_key")
@breaker
def psp_charge(amount: int, *, idempotency_key: str) -> dict[str, Any]:
    """Stands in for the PSP's API, which deduplicates on the key it receives."""
    if idempotency_key not in _psp_ledger:
        _psp_ledger[idempotency_key] = {"id": f"ch_{next(_ids)}", "amount": amount}
    return _psp_ledger[idempotency_key]


class Merchant:
    """The authenticated principal (a stand-in for your user model)."""

    is_authenticated = True

    def __init__(self, pk: str) -> None:
        self.pk = pk


class MerchantAuthentication(BaseAuthentication):  # type: ignore[misc]
    """A stand-in for real authentication: ``X-Merchant`` names the merchant."""

    def authenticate(self, request: Any) -> tuple[Merchant, None] | None:
        merchant = request.META.get("HTTP_X_MERCHANT")
        return (Merchant(merchant), None) if merchant else None


class ChargeView(APIView):  # type: ignore[misc]
    authentication_classes = [MerchantAuthentication]
    permission_classes = [IsAuthenticated]  # no merchant: 403, and no key is claimed
    throttle_scope = "payments"

    def post(self, request: Any) -> Response:
        ctx = fr.current_idempotency()
        key = ctx.downstream_key("charge") if ctx is not None else None
        if key is None:
            return Response({"error": "Idempotency-Key required"}, status=400)
        try:
            charge = psp_charge(int(request.data["amount"]), idempotency_key=key)
        except fr.CircuitOpen:
            return Response({"error": "psp_unavailable"}, status=503)
        return Response({"id": charge["id"], "amount": charge["amount"]}, status=201)


urlpatterns = [re_path(r"^charges/?$", ChargeView.as_view())]

# the middleware runs DRF views as if they had fintech_resilience.django.IdempotencyMixin:
# the key is claimed after MerchantAuthentication, under the merchant's pk
application = get_wsgi_application()


def call(method: str, path_: str, body: dict[str, Any] | None = None,
         **headers: str) -> tuple[int, dict[str, str], Any]:
    """Send one request to the WSGI application in-process."""
    data = json.dumps(body or {}).encode()
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path_, "SERVER_NAME": "example",
               "SERVER_PORT": "80", "wsgi.input": io.BytesIO(data),
               "CONTENT_LENGTH": str(len(data)),
               "CONTENT_TYPE": "application/json", "wsgi.url_scheme": "http",
               "REMOTE_ADDR": "203.0.113.9", "wsgi.errors": sys.stderr,
               **{"HTTP_" + k.upper(): v for k, v in headers.items()}}
    answer: dict[str, Any] = {}

    def start_response(status: str, response_headers: list[tuple[str, str]],
                       exc_info: Any = None) -> None:
        answer["status"] = int(status.split()[0])
        answer["headers"] = {k.lower(): v for k, v in response_headers}

    raw = b"".join(application(environ, start_response))
    return answer["status"], answer["headers"], json.loads(raw) if raw else None


def main() -> None:
    run = uuid.uuid4().hex[:8]  # this run's merchants
    status, _, first = call("POST", "/charges/", {"amount": 2500}, X_MERCHANT=f"m-42-{run}",
                            IDEMPOTENCY_KEY="order-9")
    status2, headers, again = call("POST", "/charges/", {"amount": 2500},
                                   X_MERCHANT=f"m-42-{run}", IDEMPOTENCY_KEY="order-9")
    print("charge:", status, first)
    print("same key again:", status2, again, "replayed:", headers.get("idempotent-replayed"))
    other = call("POST", "/charges/", {"amount": 2500}, X_MERCHANT=f"m-43-{run}",
                 IDEMPOTENCY_KEY="order-9")
    print("same key, other merchant (its own record):", other[0], other[2])
    anonymous = call("POST", "/charges/", {"amount": 1}, IDEMPOTENCY_KEY="order-9")
    print("no merchant:", anonymous[0], "(nothing claimed)")
    burst = [call("POST", "/charges/", {"amount": 100}, X_MERCHANT=f"m-7-{run}",
                  IDEMPOTENCY_KEY=f"b{i}")[0] for i in range(5)]
    print("m-7 bursts 5 charges (DRF throttle 3/s):", burst)
    assert first == again
    assert other[2]["id"] != first["id"]
    assert anonymous[0] == 403
    assert 429 in burst


if __name__ == "__main__":
    if sys.argv[1:2] == ["runserver"]:
        from django.core.management import execute_from_command_line

        execute_from_command_line(sys.argv)
    else:
        main()
