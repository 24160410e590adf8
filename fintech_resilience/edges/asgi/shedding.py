"""Priority load shedding for ASGI apps: keep capacity for payments when reporting piles up.

Re-exported as :class:`fintech_resilience.asgi.LoadSheddingMiddleware`; the classes, shares and
counter are shared with the WSGI twin (``fintech_resilience.shedding``).
"""

from __future__ import annotations

from ...shedding.shedder import LoadShedder
from ..asgi_types import ASGIApp, Receive, Scope, Send
from ..http import send_answer, shed_answer

__all__ = ["LoadSheddingMiddleware"]


class LoadSheddingMiddleware(LoadShedder[ASGIApp]):
    """Sheds lower-priority HTTP requests first when in-flight work nears ``max_in_flight``.

    >>> app.add_middleware(LoadSheddingMiddleware, max_in_flight=200,    # doctest: +SKIP
    ...     routes=[("/v1/payments", "critical"), ("/v1/reports", "reporting")],
    ...     shares={"reporting": 0.5})

    :param max_in_flight: requests this process serves at once (all classes together).
    :param routes: ``(path prefix or compiled regex, class)`` pairs; the first match wins.
    :param classify: ``callable(scope) -> class | None``, asked when no route matched.
    :param critical: the class that may use all of ``max_in_flight`` (default ``"critical"``).
    :param reserved: share of capacity only the critical class may use (default 0.2).
    :param shares: per-class share of ``max_in_flight`` (0 < share <= 1) overriding
        ``1 - reserved``, e.g. ``{"reporting": 0.5}`` to shed reporting at half load.
    :param default_class: class of requests no rule classified (default ``"default"``).
    :param retry_after: seconds sent in ``Retry-After`` when shedding (default 1).

    Non-HTTP scopes (websocket, lifespan) pass untouched and are not counted. A request counts as
    in flight until the app returns, so a streaming response holds its slot while it streams.
    """

    __slots__ = ()

    def class_of(self, scope: Scope) -> str:
        """The priority class of an HTTP request (route rules, then ``classify``, then default)."""
        return self.class_for(scope["path"], scope)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not self.enter(self.class_of(scope)):
            await send_answer(send, shed_answer(self.retry_after))
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.leave()
