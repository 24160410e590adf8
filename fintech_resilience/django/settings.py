"""Reading ``settings.FINTECH_RESILIENCE`` through the one configuration schema
(:class:`fintech_resilience.config.Config`): validated once per settings object, the backend (one
per URL, shared by every middleware and throttle), key functions, and the Django response of an
HTTP answer."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from django.conf import settings  # type: ignore[import-untyped]
from django.http import HttpRequest, HttpResponse  # type: ignore[import-untyped]

from ..backends.base import Backend
from ..backends.memory import default_backend
from ..config.build import build_backend, default_key
from ..config.check import check_config
from ..config.schema import Config
from ..core.resets import on_reset
from ..edges.http import HttpAnswer
from ..errors import ConfigurationError
from ..keys import ClientKey
from ..ratelimit.rates import expand_units

__all__ = ["drf_rate"]

_lock = threading.Lock()
_cache: list[Any] = [None, None]  # [settings.FINTECH_RESILIENCE, its Config]


def _config() -> Config:
    """``settings.FINTECH_RESILIENCE``, validated; read again when the settings object changes
    (``override_settings``). With ``"CHECK": True`` the backend is checked once, here."""
    raw = getattr(settings, "FINTECH_RESILIENCE", None)
    cached = _cache
    if cached[0] is raw and cached[1] is not None:
        return cached[1]  # type: ignore[no-any-return]
    if raw is not None and not isinstance(raw, Mapping):
        raise ConfigurationError("settings.FINTECH_RESILIENCE must be a dict")
    config = Config.from_mapping(raw, where="settings.FINTECH_RESILIENCE")
    if config.check:
        check_config(config)
    cached[:] = [raw, config]  # the settings value is kept alive: its identity is never reused
    return config


@on_reset
def _forget_settings() -> None:
    _cache[:] = [None, None]


def _backend(config: Config) -> Backend:
    """The configured backend; the process-wide memory backend when none is (Django settings
    are process-wide, so is this default)."""
    return build_backend(config, default_backend)


def _default_key(config: Config) -> ClientKey:
    return default_key(config)


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
