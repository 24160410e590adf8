"""httpx edge: transports that send every request under a :class:`~fintech_resilience.Policy`.

>>> import httpx                                                           # doctest: +SKIP
>>> import fintech_resilience as fr
>>> from fintech_resilience.httpx import AsyncResilientTransport, ResilientTransport
>>> policy = fr.Policy(name="psp", retry=fr.retry(attempts=3), breaker=fr.CircuitBreaker("psp"),
...                    timeout=2.0)
>>> client = httpx.Client(transport=ResilientTransport(policy=policy))
>>> aclient = httpx.AsyncClient(transport=AsyncResilientTransport(
...     policies={"api.psp.example": policy, "*": fr.Policy(name="other")},
...     routes={"POST /v1/charges": policy, "GET /health": None},
...     generate_idempotency_key=True))
>>> client.post(url, extensions={POLICY_EXTENSION: refunds})  # this request's own policy

What the transports do (the decisions live in ``fintech_resilience.edges.outbound``, shared with
the requests adapter): a policy per request (the ``fintech_resilience.policy`` extension or
:func:`using_policy`), per route (method + path pattern) or per host; 5xx/429/connection
errors/timeouts are failures (retried, counted by the breaker), other 4xx are neutral; POST and
PATCH are retried only under an ``Idempotency-Key`` that stays the same on every attempt;
``Retry-After`` is honoured (capped by the retry's ``max_retry_after``); bodies that cannot be
replayed are sent once; each attempt's socket timeouts are bounded by the policy's timeout and
the retry deadline; the policy's fallback may answer instead (``fallback(error, request)``
returning an ``httpx.Response``); each attempt is an OpenTelemetry CLIENT span.

After the retries the caller gets the last response (check ``response.status_code`` as usual);
the library's own decisions raise its exceptions: :class:`~fintech_resilience.CircuitOpen`,
:class:`~fintech_resilience.RateLimited`, :class:`~fintech_resilience.BulkheadFull`,
:class:`~fintech_resilience.RetryBudgetExhausted`; an async attempt cancelled by the policy's
timeout raises :class:`~fintech_resilience.Timeout`. Transport errors are httpx's own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

try:
    import httpx
except ModuleNotFoundError as _missing:  # the framework's extra is not installed: say which
    from .core.extras import install_hint

    install_hint(_missing, "httpx")
    raise

from .core.outcomes import OutcomeRule
from .edges.outbound import IDEMPOTENT_METHODS, FailedResponse, OutboundCore, Plan
from .edges.outbound_routes import POLICY_EXTENSION, UNSET, using_policy
from .policy.compose import Policy
from .policy.deadline import time_remaining

__all__ = ["IDEMPOTENT_METHODS", "POLICY_EXTENSION", "AsyncResilientTransport", "FailedResponse",
           "ResilientTransport", "using_policy"]

#: httpx errors that say the dependency (or the path to it) is unhealthy.
TRANSPORT_ERRORS: Final = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
#: httpx errors raised before any byte of the request left: safe to send again without a key.
NEVER_SENT: Final = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_PHASES: Final = ("connect", "read", "write", "pool")


def _never_sent(exc: BaseException) -> bool:
    return isinstance(exc, NEVER_SENT)


class _Routing:
    """What both transports hold: the outbound core, built once from their options."""

    _core: OutboundCore

    def _setup(self, policy: Policy | None, policies: Mapping[str, Policy] | None,
               routes: Mapping[str, Policy | None] | None, failure: OutcomeRule | None,
               neutral: OutcomeRule | None, idempotency_header: str | None,
               generate_idempotency_key: bool) -> None:
        self._core = OutboundCore(
            policy=policy, policies=policies, routes=routes, failure=failure, neutral=neutral,
            idempotency_header=idempotency_header,
            generate_idempotency_key=generate_idempotency_key,
            transport_errors=TRANSPORT_ERRORS, never_sent=_never_sent)

    def policy_for(self, host: str, port: int | None = None, *, method: str = "GET",
                   path: str = "/") -> Policy | None:
        """The policy a ``method`` request to ``path`` on ``host`` runs under, by the routes
        and host policies (None: not protected)."""
        return self._core.policy_for(host, port, method=method, path=path)


def _plan(core: OutboundCore, request: httpx.Request) -> Plan | None:
    header = core.header
    key = request.headers.get(header) if header is not None else None
    url = request.url
    plan, new_key = core.plan(request.method, url.host, url.port, key,
                              isinstance(request.stream, httpx.ByteStream), path=url.path,
                              scheme=url.scheme, url=str(url),
                              chosen=request.extensions.get(POLICY_EXTENSION, UNSET))
    if new_key is not None:
        request.headers[header] = new_key  # type: ignore[index]  # header is set with a key
    return plan


def _bound(request: httpx.Request, timeouts: Any) -> None:
    """Cap the attempt's socket timeouts at the time left (policy timeout, retry deadline)."""
    left = time_remaining()
    if left is None:
        if timeouts is not None:
            request.extensions["timeout"] = timeouts
        return
    left = max(left, 0.001)
    base = timeouts if isinstance(timeouts, dict) else {}
    request.extensions["timeout"] = {
        phase: left if base.get(phase) is None else min(base[phase], left) for phase in _PHASES}


class ResilientTransport(_Routing, httpx.BaseTransport):
    """An httpx transport sending each request under a policy; wraps another transport.

    :param transport: the transport that does the I/O (default ``httpx.HTTPTransport()``).
    :param policy: the :class:`~fintech_resilience.Policy` for every host, or
    :param policies: one per host: ``{"api.psp.example": p, "api.psp.example:8443": p2,
        "*.psp.example": q, "*": default}``. A host matching no key (and no ``"*"``) is sent
        without protection.
    :param routes: policies per method and path, checked first, in order:
        ``{"POST /v1/charges": p, "GET /v1/payments/*": q, "* /v1/refunds/**": r,
        "GET api.psp.example/health": None}`` (``*`` / ``{name}``: one path segment; a final
        ``**``: the rest; a host pattern may precede the path; None: send unprotected). A
        request's own choice - ``extensions={"fintech_resilience.policy": p}`` or
        :func:`using_policy` - comes before the routes.
    :param failure: rule for FAILURE outcomes (default
        :func:`~fintech_resilience.edges.outbound.default_failure`: 5xx, 429, timeouts, connection
        errors), e.g. ``on_status(range(500, 600)) | on_exceptions(httpx.TransportError)``.
    :param neutral: rule for NEUTRAL outcomes, counted by neither the breaker nor the retry
        (default: 4xx except 429).
    :param idempotency_header: the header carrying the idempotency key (default
        ``"Idempotency-Key"``; None: non-idempotent requests are never retried).
    :param generate_idempotency_key: add a UUID4 key to POST/PATCH requests that have none,
        decided once per request and sent unchanged on every attempt (default False: only do this
        when the server honours the header, or a retried POST may run twice).
    """

    def __init__(self, transport: httpx.BaseTransport | None = None, *,
                 policy: Policy | None = None, policies: Mapping[str, Policy] | None = None,
                 routes: Mapping[str, Policy | None] | None = None,
                 failure: OutcomeRule | None = None, neutral: OutcomeRule | None = None,
                 idempotency_header: str | None = "Idempotency-Key",
                 generate_idempotency_key: bool = False) -> None:
        self._setup(policy, policies, routes, failure, neutral, idempotency_header,
                    generate_idempotency_key)
        self.transport = transport if transport is not None else httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` under its policy."""
        plan = _plan(self._core, request)
        inner = self.transport
        if plan is None:
            return inner.handle_request(request)
        timeouts = request.extensions.get("timeout")

        def send() -> httpx.Response:
            _bound(request, timeouts)
            return inner.handle_request(request)

        response: httpx.Response = self._core.run(plan, request, send, httpx.Response.close)
        return response

    def close(self) -> None:
        """Close the wrapped transport."""
        self.transport.close()

    def __repr__(self) -> str:
        return f"ResilientTransport({self.transport!r})"


async def _aclose(response: httpx.Response) -> None:
    await response.aclose()


class AsyncResilientTransport(_Routing, httpx.AsyncBaseTransport):
    """Async twin of :class:`ResilientTransport` (default inner transport
    ``httpx.AsyncHTTPTransport()``); same options."""

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None, *,
                 policy: Policy | None = None, policies: Mapping[str, Policy] | None = None,
                 routes: Mapping[str, Policy | None] | None = None,
                 failure: OutcomeRule | None = None, neutral: OutcomeRule | None = None,
                 idempotency_header: str | None = "Idempotency-Key",
                 generate_idempotency_key: bool = False) -> None:
        self._setup(policy, policies, routes, failure, neutral, idempotency_header,
                    generate_idempotency_key)
        self.transport = transport if transport is not None else httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` under its policy."""
        plan = _plan(self._core, request)
        inner = self.transport
        if plan is None:
            return await inner.handle_async_request(request)
        timeouts = request.extensions.get("timeout")

        async def send() -> httpx.Response:
            _bound(request, timeouts)
            return await inner.handle_async_request(request)

        response: httpx.Response = await self._core.arun(plan, request, send, _aclose)
        return response

    async def aclose(self) -> None:
        """Close the wrapped transport."""
        await self.transport.aclose()

    def __repr__(self) -> str:
        return f"AsyncResilientTransport({self.transport!r})"
