"""Pure ASGI rate-limit middleware (never Starlette's ``BaseHTTPMiddleware``).

Re-exported as :class:`fintech_resilience.asgi.RateLimitMiddleware`. One backend call per rule,
the response fields computed from the decisions, ``send`` wrapped only to add fields to
``http.response.start``; the app's own ``receive``/``send`` and context pass through untouched, so
streaming responses, background tasks and contextvars work as without it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence

from ..asgi_types import ASGIApp, Message, Receive, Scope, Send
from ..ratelimit_http import RateLimitEdge, Verdict

__all__ = ["RateLimitMiddleware", "encode_fields"]


class RateLimitMiddleware(RateLimitEdge[ASGIApp]):
    """Rate-limits HTTP requests per route, method and principal; answers 429 problem+json.

    >>> app.add_middleware(RateLimitMiddleware,                       # doctest: +SKIP
    ...     limiter=fr.RateLimiter("100/minute", name="api", backend=red),
    ...     key=fr.keys.principal_or_ip(trusted_proxies=["10.0.0.0/8"]))

    :param limiter: a limiter applied to every request (optional when ``rules`` are given).
    :param rules: :class:`~fintech_resilience.asgi.Rule` objects: a limiter per
        method/path, each acquired in order; the first refusal answers and later rules are not
        consumed (earlier ones are: put limits that must be all-or-nothing in one RateLimiter,
        ``"10/second; 1000/day"``).
    :param key: ``callable(scope) -> key | None``; default :func:`fintech_resilience.keys.
        principal_or_ip` with no trusted proxies (the TCP peer). ``None`` means "not limited".
    :param cost: units per request for ``limiter`` (an int or ``callable(scope) -> int``).
    :param limits: ``callable(scope) -> rate string | None``: each request's limits for
        ``limiter`` (per plan, per tenant); ``None`` means "not limited".
    :param count_when: ``callable(status) -> bool``: ``limiter`` counts only the responses it
        is true for; the others get their unit back before the fields are sent (``Rule`` takes
        both options too).
    :param exempt_paths: path prefixes never limited (``["/healthz", "/metrics"]``).
    :param exempt: ``callable(scope) -> bool``; true means not limited.
    :param headers: send ``RateLimit``/``RateLimit-Policy`` (``Retry-After`` is always sent on 429).
    :param headers_on_allowed: also on admitted responses (default True).
    :param shadow: decide and record, but never refuse; no fields are added in shadow mode.
    :param audit: an :class:`~fintech_resilience.audit.AuditLog` recording each refusal
        (``ratelimit.limit_hit`` with the client's principal and address); default
        :func:`fintech_resilience.audit.get_default`.

    A refusal is ``429`` with an RFC 9457 body of type ``quota-exceeded``; when the backend is
    down and the limiter's ``on_backend_error="deny"`` refused, ``503`` of type
    ``temporary-reduced-capacity``. Non-HTTP scopes (websocket, lifespan) pass untouched.
    """

    __slots__ = ()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        core = self.core
        verdict = core.check_now(scope["method"], scope["path"], scope)
        if verdict is None:
            verdict = await core.acheck(scope["method"], scope["path"], scope)
        if not verdict.allowed:
            await send({"type": "http.response.start", "status": verdict.status,
                        "headers": encode_fields(verdict.headers)})
            await send({"type": "http.response.body", "body": verdict.body})
            return
        if verdict.counted:
            await self._count_by_outcome(verdict, scope, receive, send)
            return
        if not verdict.headers:
            await self.app(scope, receive, send)
            return
        extra = encode_fields(verdict.headers)

        def send_with_fields(message: Message) -> Awaitable[None]:
            # a plain function returning send's awaitable: no coroutine of its own per message
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *extra]
            return send(message)

        await self.app(scope, receive, send_with_fields)

    async def _count_by_outcome(self, verdict: Verdict, scope: Scope, receive: Receive,
                                send: Send) -> None:
        """Run the app and settle the count once its response status is known (the fields go
        out with that status); an app that fails before answering is settled as a 500."""
        core = self.core
        settled = False

        async def send_settled(message: Message) -> None:
            nonlocal settled
            if message["type"] == "http.response.start" and not settled:
                settled = True
                fields = await core.asettle(verdict, message["status"])
                if fields:
                    message["headers"] = [*message.get("headers", ()), *encode_fields(fields)]
            await send(message)

        try:
            await self.app(scope, receive, send_settled)
        finally:
            if not settled:
                settled = True
                await core.asettle(verdict, 500)


def encode_fields(headers: Sequence[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """Response fields as ASGI sends them: lower-case latin-1 names, latin-1 values."""
    names = _NAMES
    out = []
    for name, value in headers:
        raw = names.get(name)
        if raw is None:
            raw = name.lower().encode("latin-1")
            if len(names) < 64:
                names[name] = raw
        out.append((raw, value.encode("latin-1")))
    return out


#: field names as ASGI sends them (the same few names on every response)
_NAMES: dict[str, bytes] = {}
