"""requests edge: an adapter that sends every request under a
:class:`~fintech_resilience.Policy`.

>>> import requests                                                        # doctest: +SKIP
>>> from fintech_resilience.requests import ResilientAdapter
>>> session = requests.Session()
>>> session.mount("https://", ResilientAdapter(policy=policy))
>>> with using_policy(refunds):                 # this request's own policy
...     session.post(url, json=body)

Same behaviour as :class:`fintech_resilience.httpx.ResilientTransport` (the decisions are shared
in ``fintech_resilience.edges.outbound``): a policy per request (:func:`using_policy`: requests
has no per-request extensions, and a header would reach the server), per route (method + path
pattern) or per host; 5xx/429/connection errors/timeouts are failures and other 4xx neutral,
POST/PATCH retried only under an unchanged ``Idempotency-Key``, ``Retry-After`` honoured, bodies
that cannot be replayed (generators, files) sent once, socket timeouts bounded by the policy's
timeout and the retry deadline, the policy's fallback (``fallback(error, prepared_request)``
returning a ``requests.Response``), a CLIENT span per attempt. urllib3's own retries stay off
(``max_retries=0``): retrying is the policy's job.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit

try:
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.exceptions import NewConnectionError
except ModuleNotFoundError as _missing:  # the framework's extra is not installed: say which
    from .core.extras import install_hint

    install_hint(_missing, "requests")
    raise

from .core.outcomes import OutcomeRule
from .edges.outbound import IDEMPOTENT_METHODS, FailedResponse, OutboundCore
from .edges.outbound_routes import using_policy
from .errors import ConfigurationError
from .policy.compose import Policy
from .policy.deadline import time_remaining

__all__ = ["IDEMPOTENT_METHODS", "FailedResponse", "ResilientAdapter", "using_policy"]

#: requests errors that say the dependency (or the path to it) is unhealthy.
TRANSPORT_ERRORS: Final = (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                           requests.exceptions.ChunkedEncodingError)


def _never_sent(exc: BaseException) -> bool:
    """A connect timeout, or a refused/unreachable connection: the request never left."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    if isinstance(exc, requests.exceptions.ConnectionError) and exc.args:
        return isinstance(getattr(exc.args[0], "reason", None), NewConnectionError)
    return False


def _bound(timeout: Any) -> Any:
    """The attempt's timeout: the caller's, capped at the time left (policy timeout, retry
    deadline). ``timeout`` is None, seconds or a ``(connect, read)`` pair."""
    left = time_remaining()
    if left is None:
        return timeout
    left = max(left, 0.001)
    if timeout is None:
        return left
    if isinstance(timeout, tuple):
        return tuple(left if t is None else min(t, left) for t in timeout)
    if isinstance(timeout, int | float):
        return min(timeout, left)
    return timeout  # a urllib3 Timeout object: the caller's, unchanged


class ResilientAdapter(HTTPAdapter):
    """A requests transport adapter sending each request under a policy.

    Options as for :class:`fintech_resilience.httpx.ResilientTransport` (``policy`` or
    ``policies``, ``routes``, ``failure``, ``neutral``, ``idempotency_header``,
    ``generate_idempotency_key``), plus the connection-pool options of ``HTTPAdapter``
    (``pool_connections``, ``pool_maxsize``, ``pool_block``). A request's own policy:
    ``with using_policy(p): session.post(...)``.
    """

    def __init__(self, *, policy: Policy | None = None,
                 policies: Mapping[str, Policy] | None = None,
                 routes: Mapping[str, Policy | None] | None = None,
                 failure: OutcomeRule | None = None, neutral: OutcomeRule | None = None,
                 idempotency_header: str | None = "Idempotency-Key",
                 generate_idempotency_key: bool = False, pool_connections: int = 10,
                 pool_maxsize: int = 10, pool_block: bool = False,
                 max_retries: int = 0) -> None:
        if max_retries != 0:
            raise ConfigurationError(
                "ResilientAdapter retries through its policy; leave max_retries=0 and set"
                " fr.Policy(retry=fr.retry(attempts=...)) instead")
        self._core = OutboundCore(
            policy=policy, policies=policies, routes=routes, failure=failure, neutral=neutral,
            idempotency_header=idempotency_header,
            generate_idempotency_key=generate_idempotency_key,
            transport_errors=TRANSPORT_ERRORS, never_sent=_never_sent)
        super().__init__(pool_connections=pool_connections, pool_maxsize=pool_maxsize,
                         max_retries=0, pool_block=pool_block)

    def policy_for(self, host: str, port: int | None = None, *, method: str = "GET",
                   path: str = "/") -> Policy | None:
        """The policy a ``method`` request to ``path`` on ``host`` runs under, by the routes
        and host policies (None: not protected)."""
        return self._core.policy_for(host, port, method=method, path=path)

    def send(self, request: requests.PreparedRequest, stream: bool = False,
             timeout: Any = None, verify: bool | str = True, cert: Any = None,
             proxies: dict[str, str] | None = None) -> requests.Response:
        """Send ``request`` under its policy."""
        core = self._core
        url = request.url or ""
        parts = urlsplit(url)
        header = core.header
        key = request.headers.get(header) if header is not None else None
        body = request.body
        plan, new_key = core.plan(request.method or "GET", parts.hostname or "", parts.port,
                                  key, body is None or isinstance(body, bytes | str),
                                  path=parts.path or "/", scheme=parts.scheme, url=url)
        once = super().send
        if plan is None:
            return once(request, stream=stream, timeout=timeout, verify=verify, cert=cert,
                        proxies=proxies)
        if new_key is not None and header is not None:
            request.headers[header] = new_key

        def send() -> requests.Response:
            return once(request, stream=stream, timeout=_bound(timeout), verify=verify,
                        cert=cert, proxies=proxies)

        response: requests.Response = core.run(plan, request, send, requests.Response.close)
        return response

    def __repr__(self) -> str:
        return "ResilientAdapter()"
