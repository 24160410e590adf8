"""Install hints: importing a framework edge without its framework says which extra to install,
instead of a bare ``ModuleNotFoundError``."""

from __future__ import annotations

from typing import Final

__all__ = ["EXTRAS", "install_hint"]

#: Top-level packages each optional extra installs (``pip install 'fintech-resilience[x]'``).
EXTRAS: Final = {"fastapi": "fastapi", "starlette": "fastapi", "pydantic": "fastapi",
                 "flask": "flask", "werkzeug": "flask", "django": "django",
                 "rest_framework": "django", "asgiref": "django", "httpx": "httpx",
                 "httpcore": "httpx", "requests": "requests", "urllib3": "requests"}


def install_hint(exc: ModuleNotFoundError, extra: str) -> None:
    """Raise a ``ModuleNotFoundError`` that names the extra to install when ``exc`` is about a
    package ``extra`` installs; otherwise return, and the caller re-raises ``exc`` unchanged
    (a broken install of something else must not read as a missing extra)."""
    missing = (exc.name or "").partition(".")[0]
    if EXTRAS.get(missing) == extra:
        raise ModuleNotFoundError(
            f"fintech_resilience.{extra} needs {missing!r}, which is not installed: "
            f"pip install 'fintech-resilience[{extra}]'", name=exc.name) from exc
