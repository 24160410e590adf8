"""Configuration in one schema: from a dict, the environment, Django settings or Flask config.

>>> from fintech_resilience.config import Config
>>> config = Config.from_mapping({"BACKEND": "redis://redis:6379/0",
...                               "RATE_LIMIT": {"LIMITS": "100/minute"}})
>>> config = Config.from_env()          # FINTECH_RESILIENCE_BACKEND=redis://..., ...

Django reads ``settings.FINTECH_RESILIENCE``, the Flask extension ``app.config
["FINTECH_RESILIENCE"]`` and FastAPI's :func:`fintech_resilience.fastapi.install` a
:class:`Config` (or a dict), all through this schema, so the names and checks are the same
everywhere. :func:`check_config` connects to the backend and checks it, for a start-up that
should fail when Redis is unreachable.
"""

from .check import check_config
from .schema import Config, IdempotencyConfig, RateLimitConfig, RuleConfig

__all__ = ["Config", "IdempotencyConfig", "RateLimitConfig", "RuleConfig", "check_config"]
