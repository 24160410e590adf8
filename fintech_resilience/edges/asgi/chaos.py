"""Pure ASGI chaos middleware (re-exported as ``fintech_resilience.asgi.ChaosMiddleware``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence

from ...chaos.faults import Engine, Rule, _principal
from ...errors import ConfigurationError
from ..asgi_types import ASGIApp, Receive, Scope, Send
from ..http import injected_answer, send_answer

__all__ = ["ChaosMiddleware"]



def _state_principal(scope: Scope) -> str | None:
    state = scope.get("state")
    value = state.get("principal") if isinstance(state, Mapping) else None
    return None if value is None else str(value)


class ChaosMiddleware:
    """Injects latency, HTTP statuses (RFC 9457 problem+json) and exceptions into HTTP requests.

    :param rules: :class:`~fintech_resilience.chaos.Rule` objects matched by ``route`` (exact or
        glob), ``methods``, ``principals`` and ``when(scope)``.
    :param seed: the fault sequence is reproducible for a given seed and request sequence.
    :param enabled: ``True``/``False``; default from ``FINTECH_RESILIENCE_CHAOS``. Refused in
        production unless ``force=True``.
    :param principal: ``principal(scope) -> str | None``; default ``scope["state"]["principal"]``.
        The principal is also made visible to ``chaos.inject`` rules in the request
        (:func:`~fintech_resilience.chaos.current_principal`).
    :param name: ``resilience.name`` in telemetry (default ``"http"``).
    :param asleep: how to wait (tests pass a recorder).

    Non-HTTP scopes (websocket, lifespan) pass straight through; so does everything while chaos
    is off, after one attribute check.
    """

    def __init__(self, app: ASGIApp, *, rules: Sequence[Rule], seed: int | None = None,
                 enabled: bool | None = None, force: bool = False,
                 principal: Callable[[Scope], str | None] | None = None, name: str = "http",
                 asleep: Callable[[float], Awaitable[None]] | None = None) -> None:
        if any(r.dependency is not None for r in rules):
            raise ConfigurationError("dependency= applies to chaos.inject; match HTTP by route=")
        self.app = app
        self.engine = Engine(rules, seed=seed, enabled=enabled, force=force, name=name)
        self._principal_of = principal if principal is not None else _state_principal
        self._asleep = asleep if asleep is not None else asyncio.sleep

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.engine.on or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        who = self._principal_of(scope)
        path, method = scope.get("path", ""), scope.get("method", "GET")

        def matches(rule: Rule) -> bool:
            return ((rule._route is None or rule._route.match(path) is not None)
                    and (rule.methods is None or method in rule.methods)
                    and (rule.principals is None or who in rule.principals)
                    and (rule.when is None or bool(rule.when(scope))))

        fired = self.engine.decide(matches)
        if fired:
            delay = self.engine.latency(fired)
            if delay:
                await self._asleep(delay)
            failing = self.engine.failure(fired, http_edge=True)
            if failing is not None:
                if failing.status is None:
                    raise failing.make_exception()
                await send_answer(send, injected_answer(failing.status, failing.name))
                return
        token = _principal.set(who)
        try:
            await self.app(scope, receive, send)
        finally:
            _principal.reset(token)
