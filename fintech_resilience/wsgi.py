"""WSGI middleware (plain callable classes): the same options and answers as the ASGI ones.

* :class:`IdempotencyMiddleware`, :class:`RateLimitMiddleware`, :class:`LoadSheddingMiddleware`,
  :class:`ChaosMiddleware`.
"""

from ._chaos_wsgi import ChaosMiddleware
from ._ratelimit_http import Rule
from ._wsgi_idempotency import IdempotencyMiddleware
from ._wsgi_ratelimit import RateLimitMiddleware
from ._wsgi_shedding import LoadSheddingMiddleware

__all__ = ["ChaosMiddleware", "IdempotencyMiddleware", "LoadSheddingMiddleware",
           "RateLimitMiddleware", "Rule"]
