"""Controlled fault injection: latency, exceptions and HTTP statuses, by rule and rate, off
unless enabled. The ASGI and WSGI middlewares live in ``fintech_resilience.asgi`` / ``.wsgi``."""

from .faults import (
    ENV_ENABLE,
    PRODUCTION_MARKERS,
    Engine,
    InjectedFault,
    Injector,
    Rule,
    current_principal,
    inject,
    is_production,
    principal,
)

__all__ = ["ENV_ENABLE", "PRODUCTION_MARKERS", "Engine", "InjectedFault", "Injector", "Rule",
           "current_principal", "inject", "is_production", "principal"]
