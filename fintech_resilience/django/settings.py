"""Reading ``settings.FINTECH_RESILIENCE``: the backend (one per URL, shared by every middleware and
throttle), key functions, and the Django response of an HTTP answer."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from django.conf import settings  # type: ignore[import-untyped]
from django.http import HttpRequest, HttpResponse  # type: ignore[import-untyped]
from django.utils.module_loading import import_string  # type: ignore[import-untyped]

from ..backends.base import Backend
from ..backends.resolve import resolve_backend
from ..edges.http import HttpAnswer
from ..errors import ConfigurationError
from ..keys import ClientKey, principal_or_ip
from ..ratelimit.rates import expand_units

__all__ = ["drf_rate"]

_lock = threading.Lock()

def _config() -> Mapping[str, Any]:
    value = getattr(settings, "FINTECH_RESILIENCE", {}) or {}
    if not isinstance(value, Mapping):
        raise ConfigurationError("settings.FINTECH_RESILIENCE must be a dict")
    return value

def _backend(config: Mapping[str, Any]) -> Backend | None:
    value = config.get("BACKEND")
    if value is None or isinstance(value, Backend):
        return value
    if not isinstance(value, str):
        raise ConfigurationError(
            "FINTECH_RESILIENCE['BACKEND'] is a Redis URL ('redis://host:6379/0') or a Backend"
        )
    return resolve_backend(value)  # one connection pool per URL, shared by every edge

def _key(value: Any, config: Mapping[str, Any]) -> Callable[[Any], Any]:
    if value is None:
        return _default_key(config)
    found = import_string(value) if isinstance(value, str) else value
    if not callable(found):
        raise ConfigurationError("KEY is a dotted path to, or a callable(request) -> key")
    return found  # type: ignore[no-any-return]

_default_keys: dict[tuple[Any, ...], ClientKey] = {}


def _default_key(config: Mapping[str, Any]) -> ClientKey:
    options = (tuple(config.get("TRUSTED_PROXIES", ())),
               config.get("FORWARDED_HEADER", "X-Forwarded-For"), config.get("PRINCIPAL_HEADER"))
    key = _default_keys.get(options)
    if key is None:
        key = principal_or_ip(trusted_proxies=options[0], header=options[1],
                              principal_header=options[2])
        _default_keys[options] = key
    return key

def drf_rate(rate: str) -> str:
    """A DRF rate (``"10/s"``, ``"100/min"``, ``"5/hour"``) in ``limits`` notation.

    Every rate in the library accepts both notations (see
    :func:`fintech_resilience.ratelimit.rates.expand_units`); this is kept for callers that want
    the written-out text.
    """
    return expand_units(rate)

def _authenticated_pk(request: HttpRequest) -> Any:
    user = getattr(request, "user", None)
    return user.pk if user is not None and getattr(user, "is_authenticated", False) else None

def _answer(answer: HttpAnswer) -> HttpResponse:
    response = HttpResponse(answer.body, status=answer.status)
    for name, value in answer.headers:
        response[name] = value
    return response
