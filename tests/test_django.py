"""Django: the settings-configured middleware (WSGI and ASGI) and the DRF RateThrottle."""

from __future__ import annotations

import django
import httpx
import pytest
from django.conf import settings

if not settings.configured:  # other Django test modules may have configured it already
    settings.configure(
        DEBUG=False, SECRET_KEY="test-only", ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__,
        INSTALLED_APPS=["rest_framework"], MIDDLEWARE=[], DATABASES={},
        USE_TZ=True, REST_FRAMEWORK={})
    django.setup()

from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.wsgi import WSGIHandler
from django.http import HttpResponse, StreamingHttpResponse
from django.test import Client, override_settings
from django.urls import path
from rest_framework.authentication import BaseAuthentication
from rest_framework.response import Response
from rest_framework.views import APIView
from test_wsgi_ratelimit import serve_wsgi

from fintech_resilience import MemoryBackend
from fintech_resilience.django import RateThrottle, drf_rate
from fintech_resilience.edges.ratelimit_http import QUOTA_EXCEEDED
from fintech_resilience.errors import ConfigurationError


class User:
    is_authenticated = True

    def __init__(self, pk: str) -> None:
        self.pk = pk


class FakeAuthMiddleware:
    """Stands in for AuthenticationMiddleware: ``X-User`` becomes ``request.user``."""

    def __init__(self, get_response):  # type: ignore[no-untyped-def]
        self.get_response = get_response

    def __call__(self, request):  # type: ignore[no-untyped-def]
        uid = request.headers.get("X-User")
        if uid:
            request.user = User(uid)
        return self.get_response(request)


class HeaderAuthentication(BaseAuthentication):
    def authenticate(self, request):  # type: ignore[no-untyped-def]
        uid = request.META.get("HTTP_X_USER")
        return (User(uid), None) if uid else None


def plain(request):  # type: ignore[no-untyped-def]
    return HttpResponse("ok")


def stream(request):  # type: ignore[no-untyped-def]
    return StreamingHttpResponse(iter([b"a", b"b"]))


class Payments(APIView):
    authentication_classes = [HeaderAuthentication]
    permission_classes: list[type] = []
    throttle_classes = [RateThrottle]
    throttle_scope = "payments"

    def post(self, request):  # type: ignore[no-untyped-def]
        return Response({"ok": True})


class Unthrottled(Payments):
    throttle_scope = "nothing-configured"


PLANS = {"alice": "2/minute", "bob": "3/min"}  # limits or DRF notation; no plan: not limited


def plan_limits(request):  # type: ignore[no-untyped-def]
    user = getattr(request, "user", None)
    return PLANS.get(getattr(user, "pk", None))


def declined(status: int) -> bool:
    return status == 402


def charge(request):  # type: ignore[no-untyped-def]
    return HttpResponse("declined", status=402) if request.GET.get("declined") else plain(request)


class PlanThrottle(RateThrottle):
    """Per-plan rates the DRF way: override get_limits."""

    def get_limits(self, request, view):  # type: ignore[no-untyped-def]
        return plan_limits(request)


class PlanQuotes(Payments):
    throttle_classes = [PlanThrottle]


urlpatterns = [path("r", plain), path("payments/charge", plain), path("healthz", plain),
               path("stream", stream), path("api/payments", Payments.as_view()),
               path("api/free", Unthrottled.as_view()), path("charge", charge),
               path("api/quotes", PlanQuotes.as_view())]

MIDDLEWARE = [f"{__name__}.FakeAuthMiddleware", "fintech_resilience.django.RateLimitMiddleware"]


def resilience(**rate_limit: object) -> dict:
    return {"BACKEND": MemoryBackend(), "TRUSTED_PROXIES": ["127.0.0.0/8"],
            "RATE_LIMIT": rate_limit}


@pytest.fixture(autouse=True)
def _urls():  # type: ignore[no-untyped-def]
    with override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=MIDDLEWARE):
        yield


class TestMiddleware:
    def test_limits_per_user_with_exact_fields_and_problem_json(self):
        with override_settings(FINTECH_RESILIENCE=resilience(LIMITS="2/minute")):
            client = Client()
            alice = [client.get("/r", headers={"X-User": "alice"}) for _ in range(3)]
            bob = client.get("/r", headers={"X-User": "bob"})
        assert [r.status_code for r in alice] == [200, 200, 429]
        assert alice[0]["RateLimit-Policy"] == '"django";q=2;w=60'
        assert alice[0]["RateLimit"] == '"django";r=1;t=30'
        refused = alice[2]
        assert refused["Content-Type"] == "application/problem+json"
        assert refused["Retry-After"] == "30"
        assert refused.json()["type"] == QUOTA_EXCEEDED
        assert refused.json()["violated-policies"] == ["django"]
        assert bob.status_code == 200

    def test_rules_exemptions_and_anonymous_clients_behind_trusted_proxies(self):
        config = resilience(RULES=[{"LIMITS": "1/minute", "NAME": "payments",
                                    "PATH": "^/payments/", "METHODS": ["POST"]},
                                   {"LIMITS": "2/m", "NAME": "all"}],
                            EXEMPT_PATHS=["/healthz"])
        with override_settings(FINTECH_RESILIENCE=config):
            client = Client()
            first = client.post("/payments/charge", REMOTE_ADDR="127.0.0.1",
                                headers={"X-Forwarded-For": "6.6.6.6, 203.0.113.1"})
            second = client.post("/payments/charge", REMOTE_ADDR="127.0.0.1",
                                 headers={"X-Forwarded-For": "7.7.7.7, 203.0.113.1"})
            other = client.post("/payments/charge", REMOTE_ADDR="127.0.0.1",
                                headers={"X-Forwarded-For": "203.0.113.2"})
            health = [client.get("/healthz").status_code for _ in range(4)]
        assert first.status_code == 200
        assert first["RateLimit-Policy"] == '"payments";q=1;w=60, "all";q=2;w=60'
        assert second.status_code == 429 and other.status_code == 200
        assert health == [200] * 4

    def test_streaming_responses_pass_through(self):
        with override_settings(FINTECH_RESILIENCE=resilience(LIMITS="5/minute")):
            response = Client().get("/stream")
        assert b"".join(response.streaming_content) == b"ab"
        assert response["RateLimit"] == '"django";r=4;t=12'

    def test_missing_configuration_says_what_to_write(self):
        with override_settings(FINTECH_RESILIENCE={}), \
                pytest.raises(ConfigurationError, match="RATE_LIMIT"):
            Client().get("/r")

    async def test_asgi_django_uses_the_async_path(self):
        with override_settings(FINTECH_RESILIENCE=resilience(LIMITS="1/minute")):
            app = ASGIHandler()
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                         base_url="http://t") as client:
                first = await client.get("/r", headers={"X-User": "a"})
                refused = await client.get("/r", headers={"X-User": "a"})
        assert first.status_code == 200 and first.headers["ratelimit"] == '"django";r=0;t=60'
        assert refused.status_code == 429
        assert refused.headers["content-type"] == "application/problem+json"

    def test_limits_per_plan_from_a_dotted_path(self):
        with override_settings(FINTECH_RESILIENCE=resilience(LIMITS=f"{__name__}.plan_limits")):
            client = Client()
            alice = [client.get("/r", headers={"X-User": "alice"}) for _ in range(3)]
            bob = [client.get("/r", headers={"X-User": "bob"}).status_code for _ in range(4)]
            staff = [client.get("/r", headers={"X-User": "staff"}).status_code for _ in range(4)]
        assert [r.status_code for r in alice] == [200, 200, 429]
        assert alice[0]["RateLimit-Policy"] == '"django";q=2;w=60'
        assert bob == [200, 200, 200, 429] and staff == [200] * 4

    def test_count_when_counts_only_declines(self):
        config = resilience(RULES=[{"LIMITS": "2/minute", "NAME": "declines", "PATH": "/charge",
                                    "COUNT_WHEN": f"{__name__}.declined"}])
        with override_settings(FINTECH_RESILIENCE=config):
            client = Client()
            paid = [client.get("/charge", headers={"X-User": "u"}) for _ in range(3)]
            refused = [client.get("/charge?declined=1", headers={"X-User": "u"}).status_code
                       for _ in range(2)] + [client.get("/charge", headers={"X-User": "u"})
                                             .status_code]
        assert [r.status_code for r in paid] == [200] * 3
        assert paid[2]["RateLimit"] == '"declines";r=2;t=0'
        assert refused == [402, 402, 429]

    async def test_count_when_under_asgi(self):
        config = resilience(LIMITS="1/minute", COUNT_WHEN=declined)
        with override_settings(FINTECH_RESILIENCE=config):
            app = ASGIHandler()
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                         base_url="http://t") as client:
                codes = [(await client.get(path, headers={"X-User": "a"})).status_code
                         for path in ("/charge", "/charge", "/charge?declined=1", "/charge")]
        assert codes == [200, 200, 402, 429]

    def test_real_wsgi_server_on_loopback(self):
        with override_settings(FINTECH_RESILIENCE=resilience(LIMITS="2/minute")), \
                serve_wsgi(WSGIHandler()) as url, httpx.Client(base_url=url) as http:
            codes = [http.get("/r", headers={"X-Forwarded-For": f"9.9.9.{i}, 203.0.113.5"})
                     .status_code for i in range(3)]
        assert codes == [200, 200, 429]


class TestDrfThrottle:
    def test_scoped_rates_the_drf_way_per_user(self):
        drf = {"DEFAULT_THROTTLE_RATES": {"payments": "2/min"}}
        with override_settings(REST_FRAMEWORK=drf, MIDDLEWARE=[],
                               FINTECH_RESILIENCE={"BACKEND": MemoryBackend()}):
            client = Client()
            alice = [client.post("/api/payments", headers={"X-User": "alice"})
                     for _ in range(3)]
            bob = client.post("/api/payments", headers={"X-User": "bob"})
            free = [client.post("/api/free", headers={"X-User": "alice"}).status_code
                    for _ in range(3)]
        assert [r.status_code for r in alice] == [200, 200, 429]
        assert 29 <= int(alice[2]["Retry-After"]) <= 30
        assert "throttled" in alice[2].json()["detail"].lower()
        assert bob.status_code == 200
        assert free == [200, 200, 200]

    def test_rates_per_plan_with_get_limits(self):
        with override_settings(MIDDLEWARE=[], FINTECH_RESILIENCE={"BACKEND": MemoryBackend()}):
            client = Client()
            alice = [client.post("/api/quotes", headers={"X-User": "alice"}).status_code
                     for _ in range(3)]
            bob = [client.post("/api/quotes", headers={"X-User": "bob"}).status_code
                   for _ in range(4)]
            staff = [client.post("/api/quotes", headers={"X-User": "staff"}).status_code
                     for _ in range(4)]
        assert alice == [200, 200, 429]
        assert bob == [200, 200, 200, 429]
        assert staff == [200] * 4

    def test_rate_notations(self):
        assert drf_rate("10/s") == "10/second"
        assert drf_rate("100/min") == "100/minute"
        assert drf_rate("5/hour") == "5/hour"
        assert drf_rate("1000/day") == "1000/day"
        assert drf_rate("10/second; 1000/day") == "10/second; 1000/day"
