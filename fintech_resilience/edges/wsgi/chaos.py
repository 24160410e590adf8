"""WSGI chaos middleware (re-exported as ``fintech_resilience.wsgi.ChaosMiddleware``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ...chaos.faults import Engine, Rule, _principal
from ...errors import ConfigurationError
from ..http import injected_answer, start_answer

__all__ = ["ChaosMiddleware"]

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


def _remote_user(environ: Environ) -> str | None:
    value = environ.get("REMOTE_USER")
    return None if value is None else str(value)


class ChaosMiddleware:
    """Injects latency, HTTP statuses (RFC 9457 problem+json) and exceptions into WSGI requests.

    Same options as the ASGI middleware; ``when(environ)`` and ``principal(environ)`` receive the
    WSGI environ (default principal: ``environ["REMOTE_USER"]``); ``sleep`` replaces
    ``time.sleep`` in tests.
    """

    def __init__(self, app: WSGIApp, *, rules: Sequence[Rule], seed: int | None = None,
                 enabled: bool | None = None, force: bool = False,
                 principal: Callable[[Environ], str | None] | None = None, name: str = "http",
                 sleep: Callable[[float], None] | None = None) -> None:
        if any(r.dependency is not None for r in rules):
            raise ConfigurationError("dependency= applies to chaos.inject; match HTTP by route=")
        self.app = app
        self.engine = Engine(rules, seed=seed, enabled=enabled, force=force, name=name)
        self._principal_of = principal if principal is not None else _remote_user
        self._sleep = sleep if sleep is not None else time.sleep

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if not self.engine.on:
            return self.app(environ, start_response)
        who = self._principal_of(environ)
        path = environ.get("PATH_INFO", "") or "/"
        method = environ.get("REQUEST_METHOD", "GET")

        def matches(rule: Rule) -> bool:
            return ((rule._route is None or rule._route.match(path) is not None)
                    and (rule.methods is None or method in rule.methods)
                    and (rule.principals is None or who in rule.principals)
                    and (rule.when is None or bool(rule.when(environ))))

        fired = self.engine.decide(matches)
        if fired:
            delay = self.engine.latency(fired)
            if delay:
                self._sleep(delay)
            failing = self.engine.failure(fired, http_edge=True)
            if failing is not None:
                if failing.status is None:
                    raise failing.make_exception()
                return start_answer(start_response,
                                    injected_answer(failing.status, failing.name))
        token = _principal.set(who)
        try:
            return self.app(environ, start_response)
        finally:
            _principal.reset(token)

