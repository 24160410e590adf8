"""The ``fintech-resilience`` command: the demo (``demo``, ``demo_app``) and live state for
operators (``commands``, ``ops``)."""

from .commands import main

__all__ = ["main"]
