"""Pure ASGI middleware (never Starlette's ``BaseHTTPMiddleware``): add them to any ASGI app.

* :class:`IdempotencyMiddleware` - ``Idempotency-Key`` handling with replay, 409 and 422;
* :class:`RateLimitMiddleware` - per-route/method/principal limits with the IETF ``RateLimit``
  fields and RFC 9457 problem answers;
* :class:`LoadSheddingMiddleware` - priority load shedding that keeps capacity for critical
  traffic;
* :class:`ChaosMiddleware` - seeded fault injection, off unless enabled.

Non-HTTP scopes (websocket, lifespan) pass straight through every one of them.
"""

from .edges.asgi.chaos import ChaosMiddleware
from .edges.asgi.idempotency import IdempotencyMiddleware
from .edges.asgi.ratelimit import RateLimitMiddleware
from .edges.asgi.shedding import LoadSheddingMiddleware
from .edges.ratelimit_http import Rule

__all__ = [
    "ChaosMiddleware",
    "IdempotencyMiddleware",
    "LoadSheddingMiddleware",
    "RateLimitMiddleware",
    "Rule",
]
