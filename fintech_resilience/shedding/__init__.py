"""Priority load shedding: keep capacity for payments when reporting piles up. The ASGI and WSGI
middlewares (``fintech_resilience.asgi`` / ``.wsgi``) drive the one :class:`LoadShedder`."""

from .shedder import LoadShedder, Route

__all__ = ["LoadShedder", "Route"]
