"""WSGI middleware (plain callable classes): the same options and answers as the ASGI ones.

* :class:`IdempotencyMiddleware`, :class:`RateLimitMiddleware`, :class:`LoadSheddingMiddleware`,
  :class:`ChaosMiddleware`.
"""

from .edges.ratelimit_http import Rule
from .edges.wsgi.chaos import ChaosMiddleware
from .edges.wsgi.idempotency import IdempotencyMiddleware
from .edges.wsgi.ratelimit import RateLimitMiddleware
from .edges.wsgi.shedding import LoadSheddingMiddleware

__all__ = ["ChaosMiddleware", "IdempotencyMiddleware", "LoadSheddingMiddleware",
           "RateLimitMiddleware", "Rule"]
