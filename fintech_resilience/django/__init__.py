"""Django edge: rate-limit and idempotency middlewares configured from settings, and a DRF
throttle class.

Middleware (sync and async capable)::

    MIDDLEWARE = [..., "django.contrib.auth.middleware.AuthenticationMiddleware",
                  "fintech_resilience.django.RateLimitMiddleware", ...]
    FINTECH_RESILIENCE = {
        "BACKEND": "redis://redis:6379/0",        # or a Backend object; default: memory
        "TRUSTED_PROXIES": ["10.0.0.0/8"],         # for the default key function
        "RATE_LIMIT": {
            "LIMITS": "100/minute",                # every request (optional when RULES given)
            "RULES": [{"LIMITS": "5/second", "NAME": "payments", "PATH": "/payments",
                       "METHODS": ["POST"]}],
            "EXEMPT_PATHS": ["/healthz"],
            "KEY": "myapp.keys.merchant",          # dotted path or callable(request); optional
            "HEADERS": True, "HEADERS_ON_ALLOWED": True, "SHADOW": False,
        },
    }

DRF, configured the DRF way::

    REST_FRAMEWORK = {
        "DEFAULT_THROTTLE_CLASSES": ["fintech_resilience.django.RateThrottle"],
        "DEFAULT_THROTTLE_RATES": {"payments": "10/second", "default": "100/minute"},
    }
    class PaymentView(APIView):
        throttle_scope = "payments"

The key is the authenticated ``request.user`` (its ``pk``) first, else the client IP through
``TRUSTED_PROXIES`` (see :mod:`fintech_resilience.keys`). DRF answers a throttled request with
its own 429 and ``Retry-After``; the middleware answers with RFC 9457 problem+json and the IETF
``RateLimit``/``RateLimit-Policy`` fields.
"""

try:
    import django as _django  # type: ignore[import-untyped]  # noqa: F401 - names the extra
    import rest_framework as _rest_framework  # type: ignore[import-untyped]  # noqa: F401
except ModuleNotFoundError as _missing:  # the framework's extra is not installed: say which
    from ..core.extras import install_hint

    install_hint(_missing, "django")
    raise

from .drf import RateThrottle
from .idempotency import IdempotencyMiddleware, IdempotencyMixin
from .ratelimit import RateLimitMiddleware
from .settings import drf_rate

__all__ = ["IdempotencyMiddleware", "IdempotencyMixin", "RateLimitMiddleware", "RateThrottle",
           "drf_rate"]
