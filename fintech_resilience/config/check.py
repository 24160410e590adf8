"""The start-up check: does this configuration work here, now?"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import redis.exceptions as rex

from ..backends.memory import MemoryBackend
from ..backends.resolve import redact_url
from ..errors import BackendUnavailable, ConfigurationError
from .build import build_backend, idempotency_options, import_object, rate_limit_core
from .schema import Config

__all__ = ["check_config"]

logger = logging.getLogger("fintech_resilience")


def check_config(config: Config | Mapping[str, Any] | None = None, *,
                 timeout: float = 2.0) -> list[Any]:
    """Check a configuration as an application's start-up would, and say what is wrong.

    ``config`` is a :class:`Config`, a settings dict, or None to read the environment
    (:meth:`Config.from_env`). It is validated, every dotted path it names is imported, and,
    when the backend is Redis, the server is reached within ``timeout`` seconds and given the
    checks of ``fintech-resilience check`` (version, ``maxmemory-policy``, Cluster slots, cached
    scripts, clock skew).

    Returns the findings (each with ``name``, ``level`` and ``detail``); warnings are also
    logged. Raises :class:`~fintech_resilience.ConfigurationError` for a setting that cannot
    work (including an ``error`` finding, e.g. Redis older than 6) and
    :class:`~fintech_resilience.BackendUnavailable` when Redis cannot be reached (a wrong host
    or port, a server down, a refused password).
    """
    from ..inspection.redis import Finding

    if config is None:
        config = Config.from_env()
    elif not isinstance(config, Config):
        config = Config.from_mapping(config)
    scratch = MemoryBackend()  # builds the rate-limit rules without touching the real backend
    if config.rate_limit is not None:
        rate_limit_core(config, config.rate_limit, backend=scratch, default_name="default")
    if config.idempotency is not None:
        options = idempotency_options(config.idempotency)
        from ..idempotency.store import IdempotencyStore

        if not isinstance(options["store"], IdempotencyStore):
            raise ConfigurationError("FINTECH_RESILIENCE['IDEMPOTENCY']['STORE'] names"
                                     f" {options['store']!r}, not an IdempotencyStore")
    if config.rate_limit is not None and config.rate_limit.key is not None:
        import_object(config.rate_limit.key)
    found = _backend_findings(config, timeout)
    for finding in found:
        if finding.level == "warn":
            logger.warning("fintech_resilience check: %s: %s", finding.name, finding.detail)
    errors = [f for f in found if f.level == "error"]
    if errors:
        raise ConfigurationError("; ".join(f"{f.name}: {f.detail}" for f in errors))
    return found if found else [Finding("backend", "ok", "in-memory backend (this process)")]


def _backend_findings(config: Config, timeout: float) -> list[Any]:
    from ..backends.redis import RedisBackend
    from ..inspection.redis import Finding, RedisOps, check

    url = config.backend if isinstance(config.backend, str) else None
    if url is not None and not url.lower().startswith("memory:"):
        ops = None
        try:
            ops = RedisOps(url, timeout=timeout)
            ops.ping()
            return check(ops)
        except (rex.RedisError, OSError) as exc:
            raise BackendUnavailable(f"cannot reach Redis at {redact_url(url)}:"
                                     f" {type(exc).__name__}: {exc}") from exc
        finally:
            if ops is not None:
                ops.close()
    backend = build_backend(config, MemoryBackend)
    if not isinstance(backend, RedisBackend):
        return []
    try:
        backend.client.ping()
        policies = backend.eviction_policies()
    except (rex.RedisError, OSError, BackendUnavailable) as exc:
        raise BackendUnavailable(f"cannot reach the configured Redis: {type(exc).__name__}:"
                                 f" {exc}") from exc
    risky = sorted({p for p in policies if p != "noeviction"})
    return [Finding("ping", "ok", f"Redis answers ({backend.topology})"),
            Finding("eviction", "warn" if risky else "ok",
                    f"maxmemory-policy {', '.join(sorted(set(policies)))}"
                    + (": idempotency records may be evicted; set noeviction" if risky else ""))]


