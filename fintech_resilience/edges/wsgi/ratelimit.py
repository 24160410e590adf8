"""WSGI rate-limit middleware: the twin of the ASGI one, as a plain callable class.

Re-exported as :class:`fintech_resilience.wsgi.RateLimitMiddleware`. Same options and the same
answers (shared in ``edges.ratelimit_http``); the key function receives the WSGI ``environ``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ..http import reason_phrase
from ..ratelimit_http import RateLimitEdge, Verdict

if TYPE_CHECKING:
    from _typeshed.wsgi import (
        StartResponse,
        WSGIApplication,  # noqa: F401 - the base class's parameter
        WSGIEnvironment,
    )

__all__ = ["RateLimitMiddleware"]



class RateLimitMiddleware(RateLimitEdge["WSGIApplication"]):
    """Rate-limits WSGI requests per route, method and principal; answers 429 problem+json.

    ``app.wsgi_app = RateLimitMiddleware(app.wsgi_app, limiter=..., key=...)``. Options as for
    :class:`fintech_resilience.asgi.RateLimitMiddleware`; ``key``, ``cost`` and ``exempt``
    receive the ``environ``. Decisions use the limiter's sync path (one backend call per rule).
    """

    __slots__ = ()

    def __call__(self, environ: WSGIEnvironment,
                 start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        verdict = self.core.check(environ.get("REQUEST_METHOD", "GET"), path or "/", environ)
        if not verdict.allowed:
            start_response(f"{verdict.status} {reason_phrase(verdict.status)}",
                           list(verdict.headers))
            return [verdict.body]
        if verdict.counted:
            return self._count_by_outcome(verdict, environ, start_response)
        if not verdict.headers:
            return self.app(environ, start_response)
        extra = verdict.headers

        def start_with_fields(status: str, headers: list[tuple[str, str]],
                              exc_info: Any = None) -> Callable[[bytes], object]:
            return start_response(status, [*headers, *extra], exc_info)

        return self.app(environ, start_with_fields)

    def _count_by_outcome(self, verdict: Verdict, environ: WSGIEnvironment,
                          start_response: StartResponse) -> Iterable[bytes]:
        """Run the app and settle the count when it starts its response (the fields go out
        with that status); an app that raises before starting it is settled as a 500."""
        core = self.core
        settled = False

        def start_settled(status: str, headers: list[tuple[str, str]],
                          exc_info: Any = None) -> Callable[[bytes], object]:
            nonlocal settled
            if not settled:
                settled = True
                headers = [*headers, *core.settle(verdict, int(status.split(" ", 1)[0]))]
            return start_response(status, headers, exc_info)

        try:
            return self.app(environ, start_settled)
        except BaseException:
            if not settled:
                core.settle(verdict, 500)
            raise
