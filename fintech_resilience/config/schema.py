"""The configuration schema: one frozen, typed tree read by every framework edge.

:meth:`Config.from_mapping` reads a dict - Django's ``settings.FINTECH_RESILIENCE``, Flask's
``app.config["FINTECH_RESILIENCE"]`` or one of your own - and :meth:`Config.from_env` reads
``FINTECH_RESILIENCE_*`` environment variables. Both validate everything they read at once: an
unknown name, a rate that does not parse, a bad backend URL or a wrong type raises
:class:`~fintech_resilience.ConfigurationError` naming the setting. Names are case-insensitive
(Django writes them upper case).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, TypeVar

from ..backends.base import ON_BACKEND_ERROR_CHOICES, Backend
from ..backends.resolve import check_url
from ..core.storage_keys import validate_name
from ..edges.asgi.idempotency import DEFAULT_MAX_BODY
from ..errors import ConfigurationError
from ..keys import principal_or_ip
from ..ratelimit.limiter import ALGORITHMS
from ..ratelimit.rates import parse_limits

__all__ = ["Config", "IdempotencyConfig", "RateLimitConfig", "RuleConfig"]

ENV_PREFIX = "FINTECH_RESILIENCE_"
DOTTED_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+$")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_Convert = Callable[[Any, str], Any]
C = TypeVar("C")


# -- converters: (value, where) -> the typed value, or ConfigurationError naming ``where`` ---------
def _bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ConfigurationError(f"{where} is True or False (or 'true'/'false'); got {value!r}")


def _number(kind: type[int] | type[float], low: float, high: float = float("inf")) -> _Convert:
    def convert(value: Any, where: str) -> Any:
        number: float | None = None
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                number = kind(value.strip())
        elif isinstance(value, int | float) and not isinstance(value, bool) and (
                kind is float or isinstance(value, int)):
            number = value
        if number is None or not low <= number <= high:
            bounds = f"from {low} to {high}" if high != float("inf") else f">= {low}"
            raise ConfigurationError(f"{where} is a number {bounds}; got {value!r}")
        return kind(number)

    return convert


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"{where} is a non-empty string; got {value!r}")
    return value.strip()


def _optional(convert: _Convert) -> _Convert:
    return lambda value, where: None if value is None else convert(value, where)


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):  # the environment's form: "a,b,c"
        value = [part for part in value.split(",") if part.strip()]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigurationError(f"{where} is a list of strings; got {value!r}")
    return tuple(v.strip() for v in value)


def _methods(value: Any, where: str) -> tuple[str, ...]:
    methods = tuple(m.upper() for m in _strings(value, where))
    if not methods or not all(m.isalpha() for m in methods):
        raise ConfigurationError(f"{where} names HTTP methods, e.g. ['POST']; got {value!r}")
    return methods


def _choice(choices: tuple[str, ...]) -> _Convert:
    def convert(value: Any, where: str) -> str:
        if value not in choices:
            raise ConfigurationError(
                f"{where} is one of {', '.join(map(repr, choices))}; got {value!r}")
        return str(value)

    return convert


def _rate(value: Any, where: str) -> str:
    try:
        parse_limits(value)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{where}: {exc}") from None
    return str(value)


def _limits(value: Any, where: str) -> Any:
    """A rate (``"100/minute"``), or a ``callable(request) -> rate | None`` or its dotted path
    (limits per request: per plan). A rate never looks like a dotted path."""
    if callable(value) or (isinstance(value, str) and DOTTED_PATH.match(value)):
        return value
    return _rate(value, where)


def _name(value: Any, where: str) -> str:
    return validate_name(value, where)


def _callable(value: Any, where: str) -> Any:
    """A callable, or the dotted path of one (imported when an edge is built)."""
    if callable(value) or (isinstance(value, str) and DOTTED_PATH.match(value)):
        return value
    raise ConfigurationError(
        f"{where} is a callable or its dotted path ('myapp.resilience.key'); got {value!r}")


def _cost(value: Any, where: str) -> Any:
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        return _number(int, 1)(value, where)
    return _callable(value, where)


def _backend(value: Any, where: str) -> Backend | str:
    if isinstance(value, Backend):
        return value
    try:
        return check_url(value)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{where}: {exc}") from None


_BACKEND_OPTIONS: dict[str, _Convert] = {
    "timeout": _number(float, 0.001, 60.0), "connect_timeout": _number(float, 0.001, 60.0),
    "failure_threshold": _number(int, 1, 1000), "cooldown": _number(float, 0.0, 3600.0),
}


def _backend_options(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{where} is a dict such as {{'TIMEOUT': 0.05}}; got {value!r}")
    out = {}
    for raw, item in value.items():
        name = str(raw).lower()
        if name not in _BACKEND_OPTIONS:
            raise ConfigurationError(f"{where}: unknown option {raw!r}; known:"
                                     f" {', '.join(n.upper() for n in _BACKEND_OPTIONS)}")
        out[name] = _BACKEND_OPTIONS[name](item, f"{where}['{name.upper()}']")
    return out


def _proxies(value: Any, where: str) -> tuple[str, ...]:
    proxies = _strings(value, where)
    try:
        principal_or_ip(trusted_proxies=proxies)  # parses every CIDR now
    except ConfigurationError as exc:
        raise ConfigurationError(f"{where}: {exc}") from None
    return proxies


def _store(value: Any, where: str) -> Any:
    from ..idempotency.store import IdempotencyStore

    if isinstance(value, IdempotencyStore) or (isinstance(value, str) and DOTTED_PATH.match(value)):
        return value
    raise ConfigurationError(
        f"{where} is an IdempotencyStore or its dotted path ('myapp.resilience.store');"
        f" got {value!r}")


def _convert(convert: _Convert) -> dict[str, _Convert]:
    """A field's metadata: how :func:`_read` converts and checks its value."""
    return {"convert": convert}


def _section(cls: type[C]) -> _Convert:
    return lambda value, where: _read(cls, value, where)


def _read(cls: type[C], mapping: Any, where: str) -> C:
    """``cls`` from ``mapping``: each known name converted, unknown names refused."""
    if not isinstance(mapping, Mapping):
        raise ConfigurationError(f"{where} is a dict; got {type(mapping).__name__}")
    known = {f.name.upper(): f for f in fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for raw, value in mapping.items():
        spec = known.get(str(raw).upper())
        if spec is None:
            raise ConfigurationError(
                f"{where}: unknown setting {raw!r}; known: {', '.join(known)}")
        values[spec.name] = spec.metadata["convert"](value, f"{where}['{spec.name.upper()}']")
    missing = [n for n, f in known.items() if f.default is MISSING and f.name not in values]
    if missing:
        raise ConfigurationError(f"{where} needs {', '.join(missing)}")
    return cls(**values)


@dataclass(frozen=True, slots=True)
class RuleConfig:
    """One rate-limit rule (``RATE_LIMIT["RULES"]``): a limit for some paths or methods."""

    #: a rate, or ``callable(request) -> rate | None`` (or its dotted path): per request
    limits: Any = field(metadata=_convert(_limits))
    #: the limiter's name: labels its ``RateLimit-Policy`` item and its stored state
    name: str = field(default="default", metadata=_convert(_name))
    #: a path prefix, or a regular expression when it starts with ``^``; None: every path
    path: str | None = field(default=None, metadata=_convert(_optional(_text)))
    methods: tuple[str, ...] | None = field(default=None, metadata=_convert(_optional(_methods)))
    #: ``callable(request) -> key | None`` or its dotted path; None: the section's key
    key: Any = field(default=None, metadata=_convert(_optional(_callable)))
    #: units per request, or ``callable(request) -> int`` (or its dotted path)
    cost: Any = field(default=1, metadata=_convert(_cost))
    #: ``callable(status) -> bool`` (or its dotted path): count only the responses it is true
    #: for (Flask-Limiter's ``deduct_when``); None: every admitted request counts
    count_when: Any = field(default=None, metadata=_convert(_optional(_callable)))


def _rules(value: Any, where: str) -> tuple[RuleConfig, ...]:
    if isinstance(value, str):  # the environment's form: a JSON list
        try:
            value = json.loads(value)
        except ValueError:
            raise ConfigurationError(f"{where} is a JSON list of rules in the environment"
                                     ) from None
    if not isinstance(value, list | tuple):
        raise ConfigurationError(f"{where} is a list of dicts; got {value!r}")
    return tuple(_read(RuleConfig, rule, f"{where}[{i}]") for i, rule in enumerate(value))


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    """``RATE_LIMIT``: app-wide limits (Django middleware, Flask extension, FastAPI)."""

    #: a limit for every request (``"100/minute"``), or ``callable(request) -> rate | None``
    #: (or its dotted path) resolved per request; optional when ``rules`` are given
    limits: Any = field(default=None, metadata=_convert(_optional(_limits)))
    #: the limiter's name (default: ``"django"`` for Django, ``"default"`` elsewhere)
    name: str | None = field(default=None, metadata=_convert(_optional(_name)))
    rules: tuple[RuleConfig, ...] = field(default=(), metadata=_convert(_rules))
    #: ``count_when`` of ``limits`` (see :class:`RuleConfig`)
    count_when: Any = field(default=None, metadata=_convert(_optional(_callable)))
    #: path prefixes no app-wide limit applies to
    exempt_paths: tuple[str, ...] = field(default=(), metadata=_convert(_strings))
    #: ``callable(request) -> key | None`` or its dotted path; default: principal, else client IP
    key: Any = field(default=None, metadata=_convert(_optional(_callable)))
    headers: bool = field(default=True, metadata=_convert(_bool))
    headers_on_allowed: bool = field(default=True, metadata=_convert(_bool))
    shadow: bool = field(default=False, metadata=_convert(_bool))
    on_backend_error: str = field(default="local",
                                  metadata=_convert(_choice(ON_BACKEND_ERROR_CHOICES)))
    algorithm: str = field(default="gcra", metadata=_convert(_choice(ALGORITHMS)))


@dataclass(frozen=True, slots=True)
class IdempotencyConfig:
    """``IDEMPOTENCY``: the idempotency middleware of every edge."""

    #: an :class:`~fintech_resilience.IdempotencyStore` or its dotted path
    store: Any = field(metadata=_convert(_store))
    #: ``callable(request) -> principal`` or its dotted path (Django default: ``request.user``)
    scope: Any = field(default=None, metadata=_convert(_optional(_callable)))
    global_scope: bool = field(default=False, metadata=_convert(_bool))
    methods: tuple[str, ...] = field(default=("POST", "PATCH"), metadata=_convert(_methods))
    required: bool = field(default=False, metadata=_convert(_bool))
    header: str = field(default="Idempotency-Key", metadata=_convert(_text))
    max_body_bytes: int = field(default=DEFAULT_MAX_BODY, metadata=_convert(_number(int, 0)))
    max_response_bytes: int = field(default=DEFAULT_MAX_BODY, metadata=_convert(_number(int, 0)))


@dataclass(frozen=True, slots=True)
class Config:
    """All of fintech_resilience's settings for one application.

    >>> Config.from_mapping({"BACKEND": "redis://redis:6379/0",
    ...                      "RATE_LIMIT": {"LIMITS": "100/minute"}}).rate_limit.limits
    '100/minute'
    """

    #: a :class:`~fintech_resilience.Backend` or a URL; None: the edge's default memory backend
    backend: Backend | str | None = field(default=None, metadata=_convert(_optional(_backend)))
    #: :meth:`RedisBackend.from_url` options for a URL backend: ``TIMEOUT``,
    #: ``CONNECT_TIMEOUT`` (seconds), ``FAILURE_THRESHOLD``, ``COOLDOWN`` (seconds)
    backend_options: Mapping[str, Any] | None = field(
        default=None, metadata=_convert(_optional(_backend_options)))
    #: CIDRs of your proxies, for the default key function (see :mod:`fintech_resilience.keys`)
    trusted_proxies: tuple[str, ...] = field(default=(), metadata=_convert(_proxies))
    forwarded_header: str = field(
        default="X-Forwarded-For", metadata=_convert(_choice(("X-Forwarded-For", "Forwarded"))))
    #: a header your authentication proxy sets to the principal, if any
    principal_header: str | None = field(default=None, metadata=_convert(_optional(_text)))
    #: False switches every limit of the Flask extension off (Flask: also ``RESILIENCE_ENABLED``)
    enabled: bool = field(default=True, metadata=_convert(_bool))
    #: connect to the backend and check it when the edge starts (:func:`check_config`)
    check: bool = field(default=False, metadata=_convert(_bool))
    rate_limit: RateLimitConfig | None = field(
        default=None, metadata=_convert(_optional(_section(RateLimitConfig))))
    idempotency: IdempotencyConfig | None = field(
        default=None, metadata=_convert(_optional(_section(IdempotencyConfig))))

    def __post_init__(self) -> None:
        if self.backend_options and not isinstance(self.backend, str):
            raise ConfigurationError("BACKEND_OPTIONS apply to a BACKEND given as a URL")

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | None, *,
                     where: str = "FINTECH_RESILIENCE") -> Config:
        """Read and validate a settings dict (``None`` or ``{}``: every default)."""
        return _read(cls, mapping or {}, where)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *,
                 prefix: str = ENV_PREFIX) -> Config:
        """Read ``FINTECH_RESILIENCE_<NAME>`` variables; a section's fields are
        ``FINTECH_RESILIENCE_<SECTION>__<NAME>`` (two underscores)::

            FINTECH_RESILIENCE_BACKEND=redis://redis:6379/0
            FINTECH_RESILIENCE_BACKEND_OPTIONS__TIMEOUT=0.1
            FINTECH_RESILIENCE_TRUSTED_PROXIES=10.0.0.0/8,192.168.0.0/16
            FINTECH_RESILIENCE_RATE_LIMIT__LIMITS=100/minute
            FINTECH_RESILIENCE_RATE_LIMIT__RULES=[{"LIMITS": "5/second", "PATH": "/pay"}]

        Lists are comma-separated, ``RULES`` is JSON, booleans ``true``/``false``. Without
        ``FINTECH_RESILIENCE_BACKEND``, ``FINTECH_RESILIENCE_REDIS_URL`` (what the command line
        reads) names the backend. Variables with other names (``FINTECH_RESILIENCE_CHAOS``, ...)
        belong to other features and are left alone; an unknown field of a section is refused.
        """
        env = os.environ if environ is None else environ
        top = {f.name.upper(): f for f in fields(cls)}
        sections = {"BACKEND_OPTIONS", "RATE_LIMIT", "IDEMPOTENCY"}
        data: dict[str, Any] = {}
        for name, value in env.items():
            if not name.upper().startswith(prefix):
                continue
            head, nested, rest = name[len(prefix):].upper().partition("__")
            if head not in top:
                continue
            if (head in sections) != bool(nested):
                shape = f"{prefix}{head}__<NAME>" if head in sections else f"{prefix}{head}"
                raise ConfigurationError(f"environment variable {name}: write {shape}")
            if nested:
                data.setdefault(head, {})[rest] = value
            elif value.strip():  # FOO= (empty) means "not set"
                data[head] = value
        legacy = env.get(f"{prefix}REDIS_URL", "").strip()  # the CLI's and examples' variable
        if legacy and "BACKEND" not in data:
            data["BACKEND"] = legacy
        return _read(cls, data, f"environment ({prefix}*)")

    def client_key(self) -> Any:
        """The default key function these settings describe (principal, else client IP)."""
        return principal_or_ip(trusted_proxies=self.trusted_proxies,
                               header=self.forwarded_header,
                               principal_header=self.principal_header)
