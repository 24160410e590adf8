"""Data residency: pin every record to the Redis of its principal's region.

:class:`RegionalBackend` is a :class:`~fintech_resilience.backends.base.Backend` over one backend
per region (``{"eu": ..., "us": ..., "in": ...}``). Each operation runs on exactly one of them,
chosen from what is known at the call:

1. the region of the principal the code acts for - ``with residency.acting_for("merchant:42"):``
   and ``region_of(principal)`` (your directory: a dict lookup, a claim in the token, ...);
2. an explicit region - ``with residency.region("eu"):`` (e.g. set by middleware from the
   request's host name or the tenant's contract);
3. a region written into the pattern's name - ``RateLimiter(..., name="eu.payments")`` keeps its
   keys (``fr:rl.gcra:{eu.payments:...}``) in the EU, whoever calls;
4. else ``default_region`` (for state that is not personal data, such as a PSP's breaker).

When two of these disagree - code inside ``region("us")`` acting for an EU principal, or an
``eu.*`` limiter used for a US principal - the operation is refused with
:class:`ResidencyViolation` before anything is sent, and so is an operation whose region is unknown
or has no backend here. A record therefore never reaches the Redis of another region.

The region and principal live in context variables: they follow ``await`` and asyncio tasks
created inside the block, but not new threads (use ``contextvars.copy_context().run``).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from .backends.base import Arg, Backend
from .backends.memory import MemoryBackend
from .backends.resolve import resolve_backend
from .errors import ConfigurationError, ResidencyViolation

if TYPE_CHECKING:
    from .audit.log import AuditLog

__all__ = [
    "RegionalBackend",
    "ResidencyViolation",
    "acting_for",
    "current_principal",
    "current_region",
    "region",
]


_region: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "fintech_resilience_region", default=None
)
_principal: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "fintech_resilience_residency_principal", default=None
)


@contextlib.contextmanager
def region(name: str) -> Iterator[None]:
    """Run the block in region ``name``: operations go to that region's backend."""
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"a region is a non-empty string such as 'eu'; got {name!r}")
    token = _region.set(name)
    try:
        yield
    finally:
        _region.reset(token)


@contextlib.contextmanager
def acting_for(principal: str) -> Iterator[None]:
    """Run the block on behalf of ``principal``: operations go to ``region_of(principal)``."""
    if not isinstance(principal, str) or not principal:
        raise ConfigurationError(f"a principal is a non-empty string; got {principal!r}")
    token = _principal.set(principal)
    try:
        yield
    finally:
        _principal.reset(token)


def current_region() -> str | None:
    """The region set by :func:`region`, or None."""
    return _region.get()


def current_principal() -> str | None:
    """The principal set by :func:`acting_for`, or None."""
    return _principal.get()


def _tag_name(key: str) -> str | None:
    """The pattern name inside a key's hash tag: ``fr:rl:{eu.payments:abc}`` → ``eu.payments``."""
    start = key.find("{")
    end = key.find("}", start + 1)
    if start < 0 or end < 0:
        return None
    return key[start + 1:end].split(":", 1)[0]


class RegionalBackend(Backend):
    """Routes each operation to the backend of its region and refuses cross-region operations.

    :param backends: one backend (or URL) per region name, e.g. ``{"eu": eu, "us": us,
        "in": "redis://redis.in:6379/0"}``; ``"memory://"`` is a memory backend of its own.
    :param region_of: ``region_of(principal) -> region | None`` for :func:`acting_for`. A
        principal without a region is refused.
    :param default_region: region for operations with no principal, region or name marker
        (``None``: refuse them).
    :param name_regions: read a region prefix from pattern names (``"eu.payments"``).
    :param audit: an :class:`~fintech_resilience.audit.AuditLog` that records every refusal
        (event ``residency.violation``).
    """

    kind = "regional"

    def __init__(self, backends: Mapping[str, Backend | str], *,
                 region_of: Callable[[str], str | None] | None = None,
                 default_region: str | None = None, name_regions: bool = True,
                 audit: AuditLog | None = None) -> None:
        if not backends or not all(isinstance(b, Backend | str) for b in backends.values()):
            raise ConfigurationError(
                "backends maps region names to backends: {'eu': RedisBackend.from_url(...), ...}"
            )
        if default_region is not None and default_region not in backends:
            raise ConfigurationError(
                f"default_region {default_region!r} has no backend; choose one of"
                f" {sorted(backends)}"
            )
        self.backends = {region: resolve_backend(b, MemoryBackend)
                         for region, b in backends.items()}
        self.region_of = region_of
        self.default_region = default_region
        self.name_regions = name_regions
        self.audit = audit

    def for_region(self, name: str) -> Backend:
        """The backend of region ``name`` (operator tools, migrations)."""
        try:
            return self.backends[name]
        except KeyError:
            raise ConfigurationError(f"no backend for region {name!r}") from None

    def resolve(self, keys: Sequence[str]) -> str:
        """The region an operation on ``keys`` runs in, or raise :class:`ResidencyViolation`."""
        markers: dict[str, str] = {}
        who = _principal.get()
        if who is not None:
            if self.region_of is None:
                self._refuse("acting_for() needs RegionalBackend(region_of=...) to find the"
                             " principal's region", who)
            home = self.region_of(who)
            if not home:
                self._refuse("the principal has no region", who)
            markers["principal"] = str(home)
        explicit = _region.get()
        if explicit is not None:
            markers["region()"] = explicit
        if self.name_regions:
            for key in keys:
                name = _tag_name(key)
                prefix = name.split(".", 1)[0] if name and "." in name else None
                if prefix is not None and prefix in self.backends:
                    markers[f"name {name!r}"] = prefix
        regions = set(markers.values())
        if len(regions) > 1:
            detail = ", ".join(f"{source} says {r!r}" for source, r in markers.items())
            self._refuse(f"cross-region operation refused: {detail}", who)
        chosen = regions.pop() if regions else self.default_region
        if chosen is None:
            self._refuse("no region known for this operation: wrap it in residency.acting_for("
                         "principal) or residency.region('eu'), or set default_region", who)
        if chosen not in self.backends:
            self._refuse(f"region {chosen!r} has no backend here (configured:"
                         f" {sorted(self.backends)})", who)
        return chosen

    def _refuse(self, reason: str, who: str | None) -> NoReturn:
        if self.audit is not None:
            from .audit.log import EventType

            self.audit.record(EventType.RESIDENCY_VIOLATION, resource="residency:backend",
                              principal=who, outcome="failure", details={"reason": reason})
        raise ResidencyViolation(reason)

    def run(self, script: str, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """Run on the backend of the operation's region."""
        return self.backends[self.resolve(keys)].run(script, keys, args)

    async def arun(self, script: str, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """Async twin of :meth:`run`."""
        return await self.backends[self.resolve(keys)].arun(script, keys, args)

    def close(self) -> None:
        """Close every region's backend."""
        for backend in self.backends.values():
            backend.close()

    async def aclose(self) -> None:
        """Async twin of :meth:`close`."""
        for backend in self.backends.values():
            await backend.aclose()

    def __repr__(self) -> str:
        return f"RegionalBackend(regions={sorted(self.backends)}, default={self.default_region!r})"
