"""Priority load shedding for WSGI apps: the twin of the ASGI middleware, as a plain callable.

Re-exported as :class:`fintech_resilience.wsgi.LoadSheddingMiddleware`. Same options and the
same answers (shared in ``fintech_resilience.shedding``); ``classify`` receives the WSGI
``environ``, routes match ``SCRIPT_NAME + PATH_INFO``. A request holds its slot until the
server closes its response iterable (PEP 3333), so a streamed body keeps it while it streams.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ...shedding.shedder import LoadShedder
from ..http import shed_answer, start_answer

if TYPE_CHECKING:
    from _typeshed.wsgi import (
        StartResponse,
        WSGIApplication,  # noqa: F401 - the base class's parameter
        WSGIEnvironment,
    )

__all__ = ["LoadSheddingMiddleware"]


class LoadSheddingMiddleware(LoadShedder["WSGIApplication"]):
    """Sheds lower-priority WSGI requests first when in-flight work nears ``max_in_flight``.

    ``app.wsgi_app = LoadSheddingMiddleware(app.wsgi_app, max_in_flight=64, routes=[...])``
    (Flask), ``application = LoadSheddingMiddleware(get_wsgi_application(), ...)`` (Django).
    Options as for :class:`fintech_resilience.asgi.LoadSheddingMiddleware`; size
    ``max_in_flight`` to the worker's threads (a request is in flight from the call until the
    server closes its response).
    """

    __slots__ = ()

    def class_of(self, environ: WSGIEnvironment) -> str:
        """The priority class of a request (route rules, then ``classify``, then default)."""
        path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        return self.class_for(path or "/", environ)

    def __call__(self, environ: WSGIEnvironment,
                 start_response: StartResponse) -> Iterable[bytes]:
        if not self.enter(self.class_of(environ)):
            return start_answer(start_response, shed_answer(self.retry_after))
        try:
            result = self.app(environ, start_response)
        except BaseException:
            self.leave()
            raise
        return _Held(result, self.leave)


class _Held:
    """The app's response iterable; closing it (the server must, PEP 3333) frees the slot."""

    __slots__ = ("_leave", "_result")

    def __init__(self, result: Iterable[bytes], leave: Callable[[], None]) -> None:
        self._result = result
        self._leave: Callable[[], None] | None = leave

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._result)

    def close(self) -> None:
        leave, self._leave = self._leave, None
        try:
            close: Any = getattr(self._result, "close", None)
            if close is not None:
                close()
        finally:
            if leave is not None:  # once, however often the server closes
                leave()
