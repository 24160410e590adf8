"""What the edges build from a :class:`~fintech_resilience.config.Config`: the backend, the
default key function, the app-wide rate-limit core and the idempotency middleware's options."""

from __future__ import annotations

import importlib
import re
import threading
from collections.abc import Callable
from typing import Any

from ..backends.base import Backend
from ..backends.resolve import backend_from_url, resolve_backend
from ..core.resets import on_reset
from ..edges.ratelimit_http import LimitsFunc, RateLimitCore, Rule, limits_from_requests
from ..errors import ConfigurationError
from ..keys import ClientKey
from ..ratelimit.limiter import RateLimiter
from .schema import DOTTED_PATH, Config, IdempotencyConfig, RateLimitConfig

__all__ = ["build_backend", "default_key", "idempotency_options", "import_object",
           "rate_limit_core"]

_lock = threading.Lock()
_keys: dict[tuple[Any, ...], ClientKey] = {}


def import_object(value: Any, where: str = "setting") -> Any:
    """``value`` itself, or the object its dotted path (``"myapp.resilience.store"``) names."""
    if not isinstance(value, str):
        return value
    module_name, _, attribute = value.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigurationError(f"{where}: cannot import {value!r} ({exc})") from exc


def build_backend(config: Config, default: Callable[[], Backend]) -> Backend:
    """The backend ``config`` names; ``default()`` when it names none (or ``"memory://"``)."""
    if isinstance(config.backend, str) and config.backend_options:
        if config.backend.lower().startswith("memory:"):
            raise ConfigurationError("BACKEND_OPTIONS apply to a Redis URL, not memory://")
        return backend_from_url(config.backend, **config.backend_options)
    return resolve_backend(config.backend, default)


def default_key(config: Config) -> ClientKey:
    """The key function of ``config``'s proxy settings (one per distinct settings)."""
    options = (config.trusted_proxies, config.forwarded_header, config.principal_header)
    key = _keys.get(options)
    if key is None:
        with _lock:
            key = _keys.setdefault(options, config.client_key())
    return key


@on_reset
def forget_keys() -> None:
    """Drop the cached key functions (tests)."""
    with _lock:
        _keys.clear()


def _path(path: str | None) -> str | re.Pattern[str] | None:
    return re.compile(path) if path is not None and path.startswith("^") else path


def rate_limit_core(config: Config, section: RateLimitConfig, *, backend: Backend,
                    default_name: str, clock: Any = None) -> RateLimitCore | None:
    """The app-wide :class:`RateLimitCore` of ``section`` (``LIMITS`` and ``RULES``), or None
    when it sets neither. Dotted paths are imported here."""
    common: dict[str, Any] = {"backend": backend, "on_backend_error": section.on_backend_error,
                              "algorithm": section.algorithm, "clock": clock}
    where = "FINTECH_RESILIENCE['RATE_LIMIT']"

    def limiter(limits: Any, name: str, at: str) -> tuple[RateLimiter, LimitsFunc | None]:
        """A rate makes a limiter of its own; a callable (or dotted path) resolves per request."""
        if isinstance(limits, str) and not DOTTED_PATH.match(limits):
            return RateLimiter(limits, name=name, **common), None
        return (RateLimiter(limits_from_requests, name=name, **common),
                import_object(limits, f"{at}['LIMITS']"))

    rules = []
    for i, rule in enumerate(section.rules):
        at = f"{where}['RULES'][{i}]"
        rule_limiter, per_request = limiter(rule.limits, rule.name, at)
        rules.append(Rule(rule_limiter, methods=rule.methods, path=_path(rule.path),
                          key=import_object(rule.key, f"{at}['KEY']"),
                          cost=import_object(rule.cost, f"{at}['COST']"), limits=per_request,
                          count_when=import_object(rule.count_when, f"{at}['COUNT_WHEN']")))
    own, per_request = (limiter(section.limits, section.name or default_name, where)
                        if section.limits is not None else (None, None))
    if own is None and not rules:
        return None
    key = (import_object(section.key, f"{where}['KEY']") if section.key is not None
           else default_key(config))
    return RateLimitCore(own, rules=rules, key=key, limits=per_request,
                         count_when=(import_object(section.count_when, f"{where}['COUNT_WHEN']")
                                     if own is not None else None),
                         exempt_paths=section.exempt_paths, headers=section.headers,
                         headers_on_allowed=section.headers_on_allowed, shadow=section.shadow)


def idempotency_options(section: IdempotencyConfig) -> dict[str, Any]:
    """The keyword arguments of an idempotency middleware (ASGI, WSGI): ``store``, ``scope``
    (None when not configured), ``global_scope``, ``methods``, ``required``, ``header``,
    ``max_body_bytes``, ``max_response_bytes``."""
    where = "FINTECH_RESILIENCE['IDEMPOTENCY']"
    return {"store": import_object(section.store, f"{where}['STORE']"),
            "scope": import_object(section.scope, f"{where}['SCOPE']"),
            "global_scope": section.global_scope, "methods": section.methods,
            "required": section.required, "header": section.header,
            "max_body_bytes": section.max_body_bytes,
            "max_response_bytes": section.max_response_bytes}
