"""Rate limiting over HTTP, once for every edge: rules, decisions -> status, fields and body.

The ASGI and WSGI middlewares, the Flask extension, the FastAPI dependency and the Django
middleware only translate a request into ``(method, path, request)`` and a :class:`Verdict` back
into their framework's response. Everything else - which rules apply, the key, the cost, the
limits of this request, shadow mode, the 429/503 choice, the IETF ``RateLimit``/
``RateLimit-Policy`` fields, ``Retry-After`` and the RFC 9457 problem body - lives here, computed
from the decisions themselves (no extra round trip to the backend).

A rule with ``count_when`` counts only some responses: the request acquires its unit before the
app runs (so at most the limit is ever in flight), and once the response status is known
(:meth:`RateLimitCore.settle`) a response that ``count_when`` does not count gets its unit back
(``refund``, one more round trip) before the fields are sent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar

from opentelemetry import trace as _trace

from ..audit import log as _audit
from ..core import telemetry
from ..errors import ConfigurationError
from ..keys import ClientKey, principal_or_ip
from ..ratelimit.decision import Decision, retry_after_field
from ..ratelimit.limiter import RateLimiter
from ..ratelimit.specs import LimitsArg
from .http import QUOTA_EXCEEDED, TEMPORARY_REDUCED_CAPACITY, problem
from .ratelimit_rules import (
    Counted,
    CountWhen,
    KeyFunc,
    LimitsFunc,
    Rule,
    limits_from_requests,
)

__all__ = [
    "CountWhen",
    "Counted",
    "KeyFunc",
    "LimitsFunc",
    "RateLimitCore",
    "RateLimitEdge",
    "Rule",
    "Verdict",
    "limits_from_requests",
]

_TITLES: Final = {
    429: "Request cannot be satisfied as assigned quota has been exceeded",
    503: "Request cannot be satisfied due to temporary server capacity constraints",
}



@dataclass(slots=True)
class Verdict:
    """What an edge does with a request: pass it (adding ``headers``) or answer with ``body``.

    ``counted`` lists the acquisitions that count only some responses: a passed request with
    any must be settled (:meth:`RateLimitCore.settle`) once its response status is known, and
    ``headers`` is empty until then.
    """

    allowed: bool
    status: int = 200
    headers: Sequence[tuple[str, str]] = ()
    body: bytes = b""
    decisions: list[Decision] = field(default_factory=list)
    counted: Sequence[Counted] = ()


_PASS: Final = Verdict(True)
_edge = _audit.edge_audits
#: Who a refused request came from, for audit records, when the key function is not a ClientKey.
_IDENTITY: Final = principal_or_ip()


class RateLimitCore:
    """The configuration and decision logic shared by every rate-limiting edge.

    See :class:`fintech_resilience.asgi.RateLimitMiddleware` for the meaning of each option.
    """

    __slots__ = ("_exempt_prefixes", "_in_process", "_simple", "audit", "exempt", "headers",
                 "headers_on_allowed", "key", "rules", "shadow")

    def __init__(self, limiter: RateLimiter | None = None, *, rules: Sequence[Rule] = (),
                 key: KeyFunc | None = None, cost: int | Callable[[Any], int] = 1,
                 limits: LimitsFunc | None = None, count_when: CountWhen | None = None,
                 exempt_paths: Iterable[str] = (), exempt: Callable[[Any], bool] | None = None,
                 headers: bool = True, headers_on_allowed: bool = True,
                 shadow: bool = False, audit: _audit.AuditLog | None = None) -> None:
        if audit is not None and not isinstance(audit, _audit.AuditLog):
            raise ConfigurationError(f"audit must be a fintech_resilience AuditLog; got {audit!r}")
        self.audit = audit
        all_rules = list(rules)
        if limiter is not None:
            all_rules.insert(0, Rule(limiter, cost=cost, limits=limits, count_when=count_when))
        if not all_rules:
            raise ConfigurationError(
                "give a limiter=RateLimiter('100/minute') or rules=[Rule(limiter, path=...)]"
            )
        if not all(isinstance(r, Rule) for r in all_rules):
            raise ConfigurationError("rules is a list of fintech_resilience Rule objects")
        names = [r.limiter.name for r in all_rules]
        if len(set(names)) != len(names):
            raise ConfigurationError(
                f"each rule's limiter needs its own name (they label the RateLimit-Policy items);"
                f" got {names}"
            )
        if key is not None and not callable(key):
            raise ConfigurationError("key must be a callable(request) -> str | None")
        if exempt is not None and not callable(exempt):
            raise ConfigurationError("exempt must be a callable(request) -> bool")
        if isinstance(exempt_paths, str):
            raise ConfigurationError(
                f"exempt_paths is a list; write exempt_paths=[{exempt_paths!r}]"
            )
        self.rules = tuple(all_rules)
        self.key: KeyFunc = key if key is not None else principal_or_ip()
        self.exempt = exempt
        self._exempt_prefixes = tuple(p.rstrip("/") for p in exempt_paths)
        self.headers = bool(headers)
        self.headers_on_allowed = bool(headers_on_allowed)
        self.shadow = bool(shadow)
        self._in_process = all(rule._sync for rule in self.rules)
        # the common case - one limiter for every request - skips matching and loops
        only = self.rules[0]
        self._simple = only if (
            len(self.rules) == 1 and only.methods is None and only.path is None
            and only.key is None and not callable(only.cost) and only.limits is None
            and only.count_when is None and not self._exempt_prefixes
            and exempt is None) else None

    def check_now(self, method: str, path: str, request: Any) -> Verdict | None:
        """:meth:`check` when every limiter decides in this process (memory) and no audit log
        needs an await: an async edge then decides without a coroutine. Else None."""
        if self._in_process and self.audit is None and _audit.get_default() is None:
            return self._check(method, path, request)
        return None

    def plan(self, method: str, path: str,
             request: Any) -> list[tuple[Rule, Any, int, LimitsArg | None]]:
        """The (rule, key, cost, limits) acquisitions this request needs - pure, no I/O
        (``limits`` None: the limiter's own)."""
        for prefix in self._exempt_prefixes:
            if path == prefix or path.startswith(prefix + "/"):
                return []
        if self.exempt is not None and self.exempt(request):
            return []
        out = []
        default_key: Any = ...
        for rule in self.rules:
            if not rule.matches(method, path):
                continue
            if rule.key is not None:
                key = rule.key(request)
            else:
                if default_key is ...:
                    default_key = self.key(request)
                key = default_key
            if key is None:
                continue
            limits = None
            if rule.limits is not None:
                limits = rule.limits(request)
                if limits is None:  # e.g. a plan without this limit
                    continue
            cost = rule.cost(request) if callable(rule.cost) else rule.cost
            out.append((rule, key, cost, limits))
        return out

    def check(self, method: str, path: str, request: Any) -> Verdict:
        """Decide (sync): acquire every matching rule in order, stop at the first refusal."""
        if (self.audit is not None or _audit.get_default() is not None) and not _edge.get():
            return self._audited_check(method, path, request)
        return self._check(method, path, request)

    def _check(self, method: str, path: str, request: Any) -> Verdict:
        """:meth:`check` once the audit is settled (none, or this edge records refusals)."""
        rule = self._simple
        if rule is not None:
            key = self.key(request)
            if key is None:
                return _PASS
            return self.verdict([(rule, rule.limiter.acquire(key, rule.cost))])  # type: ignore[arg-type]
        decided: list[tuple[Rule, Decision]] = []
        counted: list[Counted] = []
        for rule, key, cost, limits in self.plan(method, path, request):
            decision = rule.limiter.acquire(key, cost, limits=limits)
            if not _noted(decided, counted, rule, key, cost, limits, decision):
                break
        return self.verdict(decided, counted) if decided else _PASS

    async def acheck(self, method: str, path: str, request: Any) -> Verdict:
        """Async twin of :meth:`check` (memory-backed limiters decide without awaiting)."""
        if (self.audit is not None or _audit.get_default() is not None) and not _edge.get():
            return await self._audited_acheck(method, path, request)
        if self._in_process:  # nothing to await
            return self._check(method, path, request)
        decided: list[tuple[Rule, Decision]] = []
        counted: list[Counted] = []
        for rule, key, cost, limits in self.plan(method, path, request):
            if rule._sync:
                decision = rule.limiter.acquire(key, cost, limits=limits)
            else:
                decision = await rule.limiter.aacquire(key, cost, limits=limits)
            if not _noted(decided, counted, rule, key, cost, limits, decision):
                break
        return self.verdict(decided, counted) if decided else _PASS

    # -- audit (only with an AuditLog configured) ---------------------------------------------
    def _audited_check(self, method: str, path: str, request: Any) -> Verdict:
        token = _edge.set(True)  # the limiters leave the record to this edge
        try:
            verdict = self.check(method, path, request)
        finally:
            _edge.reset(token)
        if not verdict.allowed:
            log = _audit.resolve(self.audit)
            if log is not None:
                log.record(_audit.EventType.LIMIT_HIT, **self._refusal(request, verdict))
        return verdict

    async def _audited_acheck(self, method: str, path: str, request: Any) -> Verdict:
        token = _edge.set(True)
        try:
            verdict = await self.acheck(method, path, request)
        finally:
            _edge.reset(token)
        if not verdict.allowed:
            log = _audit.resolve(self.audit)
            if log is not None:
                await log.arecord(_audit.EventType.LIMIT_HIT, **self._refusal(request, verdict))
        return verdict

    def _refusal(self, request: Any, verdict: Verdict) -> dict[str, Any]:
        """The fields of a ``ratelimit.limit_hit`` record: who (principal, else ``anonymous``),
        from where (client address), which limiter and policy."""
        who = self.key if isinstance(self.key, ClientKey) else _IDENTITY
        refused = verdict.decisions[-1]
        return {"resource": f"ratelimit:{refused.name}",
                "principal": who.principal(request) or "anonymous",
                "outcome": "failure", "origination": who.ip(request),
                "details": {"policy": refused.policy, "status": verdict.status}}

    def verdict(self, decided: list[tuple[Rule, Decision]],
                counted: Sequence[Counted] = ()) -> Verdict:
        """Translate (rule, decision) pairs into a pass (with fields) or a 429/503 problem;
        ``counted``: the acquisitions to settle once the response is known."""
        if len(decided) == 1 and not counted and not telemetry.active():
            only = decided[0][1]
            if only.allowed and not only.shadowed:  # one plain admission: the usual request
                return Verdict(True, headers=self._allowed_fields([only], False),
                               decisions=[only])
        last = decided[-1][1]
        refused = last if not last.allowed else None
        shadowed = any(d.shadowed for _, d in decided)
        if refused is not None and self.shadow:
            shadowed, refused = True, None
        decisions = [d for _, d in decided]
        if telemetry.active():
            _annotate_span(decisions, refused, shadowed)
        if refused is None:
            if counted:  # the fields wait for the response status (settle)
                return Verdict(True, decisions=decisions, counted=list(counted))
            return Verdict(True, headers=self._allowed_fields(decisions, shadowed),
                           decisions=decisions)
        label = refused.policy_label
        if not refused.measured:  # on_backend_error="deny" refused: not the client's fault
            answer = problem(
                503, type_=TEMPORARY_REDUCED_CAPACITY, title=_TITLES[503],
                retry_after=refused.retry_after, violated_policies=[label],
                detail="The rate limit store is unavailable; retry later.")
        else:
            wait = refused.retry_after
            seconds = retry_after_field(wait)
            answer = problem(
                429, type_=QUOTA_EXCEEDED, title=_TITLES[429], retry_after=wait,
                detail=("The request costs more than the policy allows in one window."
                        if seconds is None else f"Quota exceeded; retry in {seconds} second(s)."),
                violated_policies=[label], headers=_fields(decisions) if self.headers else ())
        return Verdict(False, answer.status, answer.wsgi_headers(), answer.body, decisions)

    def _allowed_fields(self, decisions: list[Decision],
                        shadowed: bool) -> list[tuple[str, str]]:
        """The fields of a passed request: none when a shadowed refusal let it pass, or when
        switched off."""
        if shadowed or not (self.headers and self.headers_on_allowed):
            return []
        return _fields(decisions)

    def _settled(self, verdict: Verdict) -> list[tuple[str, str]]:
        decisions = verdict.decisions
        shadowed = (any(d.shadowed for d in decisions)
                    or (self.shadow and not decisions[-1].allowed))
        verdict.counted = ()
        headers = verdict.headers = self._allowed_fields(decisions, shadowed)
        return headers

    # -- count_when: settle a passed request once its response status is known -----------------
    def refunds(self, verdict: Verdict, status: int) -> list[Counted]:
        """The acquisitions of ``verdict`` to give back for a response of ``status`` - pure.

        Only units really taken are given back: not a shadowed decision (nothing was consumed)
        and not one an ``on_backend_error`` policy took (nothing, or a per-process copy)."""
        out = []
        for counted in verdict.counted:
            decision = verdict.decisions[counted.index]
            count_when = counted.rule.count_when
            if (decision.allowed and not decision.shadowed and decision.fallback is None
                    and count_when is not None and not count_when(status)):
                out.append(counted)
        return out

    def settle(self, verdict: Verdict, status: int) -> list[tuple[str, str]]:
        """Give back the units of a response ``count_when`` does not count (one round trip
        each); the fields to send with it, from the state after (sync)."""
        for counted in self.refunds(verdict, status):
            verdict.decisions[counted.index] = counted.rule.limiter.refund(
                counted.key, counted.cost, limits=counted.limits)
        return self._settled(verdict)

    async def asettle(self, verdict: Verdict, status: int) -> list[tuple[str, str]]:
        """Async twin of :meth:`settle`."""
        for counted in self.refunds(verdict, status):
            verdict.decisions[counted.index] = await counted.rule.limiter.arefund(
                counted.key, counted.cost, limits=counted.limits)
        return self._settled(verdict)


AppT = TypeVar("AppT")


class RateLimitEdge(Generic[AppT]):
    """What the ASGI and WSGI rate-limit middlewares share: the wrapped app and the core built
    from their options (see :class:`fintech_resilience.asgi.RateLimitMiddleware`)."""

    __slots__ = ("app", "core")

    def __init__(self, app: AppT, limiter: RateLimiter | None = None, *,
                 rules: Sequence[Rule] = (), key: KeyFunc | None = None,
                 cost: int | Callable[[Any], int] = 1, limits: LimitsFunc | None = None,
                 count_when: CountWhen | None = None, exempt_paths: Iterable[str] = (),
                 exempt: Callable[[Any], bool] | None = None, headers: bool = True,
                 headers_on_allowed: bool = True, shadow: bool = False,
                 audit: _audit.AuditLog | None = None) -> None:
        self.app = app
        self.core = RateLimitCore(limiter, rules=rules, key=key, cost=cost, limits=limits,
                                  count_when=count_when,
                                  exempt_paths=exempt_paths, exempt=exempt, headers=headers,
                                  headers_on_allowed=headers_on_allowed, shadow=shadow,
                                  audit=audit)


def _noted(decided: list[tuple[Rule, Decision]], counted: list[Counted], rule: Rule, key: Any,
           cost: int, limits: LimitsArg | None, decision: Decision) -> bool:
    """Add one rule's decision to a request's (and to ``counted`` when the rule counts by
    outcome); False once refused: later rules are not consumed."""
    if rule.count_when is not None:
        counted.append(Counted(len(decided), rule, key, cost, limits))
    decided.append((rule, decision))
    return decision.allowed


def _fields(decisions: Sequence[Decision]) -> list[tuple[str, str]]:
    """``RateLimit-Policy`` and ``RateLimit`` (one List item per limiter) from the decisions:
    each decision's own policy (with limits per request, the limits it applied)."""
    if len(decisions) == 1:
        decision = decisions[0]
        item = decision.ratelimit_field()
        if item is None:  # an on_backend_error policy decided: nothing measured
            return [("RateLimit-Policy", decision.policy_field)]
        return [("RateLimit-Policy", decision.policy_field), ("RateLimit", item)]
    fields = [("RateLimit-Policy", ", ".join(d.policy_field for d in decisions))]
    items = [item for d in decisions if (item := d.ratelimit_field()) is not None]
    if items:
        fields.append(("RateLimit", ", ".join(items)))
    return fields


def _annotate_span(decisions: Sequence[Decision], refused: Decision | None,
                   shadowed: bool) -> None:
    span = _trace.get_current_span()
    if not span.is_recording():
        return
    tight = refused or min(decisions, key=lambda d: d.remaining)
    span.set_attributes({
        telemetry.Attr.PATTERN: "ratelimit",
        telemetry.Attr.DECISION: ("deny" if refused is not None
                                  else "shadow_deny" if shadowed else "allow"),
        telemetry.Attr.POLICY: tight.policy,
        telemetry.Attr.REMAINING: tight.remaining,
        telemetry.Attr.SHADOW: shadowed,
    })
