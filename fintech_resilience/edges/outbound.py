"""Outbound HTTP under a :class:`~fintech_resilience.Policy`: the logic the httpx transports and
the requests adapter share (they only translate their request and response objects).

For every request the core decides, without I/O:

* **which policy** applies: ``policies={"api.psp.example": p, "*.psp.example": q, "*": d}``
  (``host:port``, then ``host``, then the longest ``*.suffix``, then ``"*"``; no match = the
  request passes through unprotected);
* **whether it may be retried**: GET, HEAD, PUT, DELETE, OPTIONS and TRACE are idempotent (RFC
  9110); any other method (POST, PATCH) is retried only when it carries an idempotency key - one
  the caller set, or one generated once here (``generate_idempotency_key=True``) and sent
  unchanged on every attempt. A body that cannot be replayed (a generator, a file, a multipart
  stream) is sent exactly once;
* **what each attempt's outcome is** (:class:`~fintech_resilience.outcomes.Classifier`): by
  default 5xx, 429, connection errors and timeouts are FAILURES (retried, counted by the breaker);
  other 4xx are NEUTRAL (a card decline is not an outage: not retried, not counted); the rest
  SUCCESS.

Then thin sync and async drivers run ``rate limit -> bulkhead -> retry -> (each attempt) breaker
-> timeout -> send`` by reusing the policy's own parts. A failing response travels through the
retry loop as :class:`FailedResponse` (so the breaker counts it and the retry engine retries it,
honouring ``Retry-After``); when the retries end, the caller gets the last response back, as if
no exception had been involved. Responses of abandoned attempts are closed.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from opentelemetry import trace as _trace

from ..core import telemetry
from ..core.outcomes import (
    Classifier,
    Outcome,
    OutcomeRule,
    Rule,
    Verdict,
    on_exceptions,
    on_status,
)
from ..errors import ConfigurationError, RetryError
from ..policy.compose import Policy
from ..retries.core import Retry, current_attempt

__all__ = [
    "DEFAULT_NEUTRAL",
    "IDEMPOTENT_METHODS",
    "FailedResponse",
    "OutboundCore",
    "Plan",
    "default_failure",
]

#: Methods RFC 9110 defines as idempotent: safe to send again after an unknown outcome.
IDEMPOTENT_METHODS: Final = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
#: 4xx answers except 429: the server understood and refused; it is not unhealthy.
DEFAULT_NEUTRAL: Final = on_status(range(400, 429), range(430, 500))
_CACHE_SIZE: Final = 1024


def default_failure(transport_errors: tuple[type[BaseException], ...]) -> Rule:
    """5xx, 429, the client library's connection/timeout errors, and any ``TimeoutError`` or
    ``ConnectionError`` (:class:`~fintech_resilience.Timeout` is one)."""
    return on_status(429, range(500, 600)) | on_exceptions(
        *transport_errors, TimeoutError, ConnectionError)


class FailedResponse(Exception):
    """A response classified as a failure (default: 5xx, 429), as the retry loop and the breaker
    see it. It never reaches the caller: when the retries end, the response itself is returned.

    A breaker with its own ``failure=`` rule sees 5xx/429 answers as this exception: write e.g.
    ``failure=on_exceptions(TimeoutError, FailedResponse)``.
    """

    def __init__(self, response: Any) -> None:
        super().__init__(f"HTTP {getattr(response, 'status_code', '?')}")
        #: The response (its ``headers`` carry ``Retry-After`` for the retry loop).
        self.response = response

    @property
    def status_code(self) -> int | None:
        """The response's status code."""
        status = getattr(self.response, "status_code", None)
        return status if isinstance(status, int) else None

    @property
    def error_type(self) -> str:
        """``error.type`` of the attempt: the status code, as the HTTP conventions write it."""
        return str(self.status_code or "FailedResponse")


class _Neutral(BaseException):
    """Carries a NEUTRAL outcome out of ``with breaker:``.

    A ``BaseException`` that is not an ``Exception`` is neutral to the breaker (it counts for
    neither side and hands back a HALF_OPEN probe permit); it never leaves this module.
    """

    def __init__(self, outcome: Outcome) -> None:
        super().__init__()
        self.outcome = outcome


@dataclass(slots=True)
class _Route:
    policy: Policy
    retry: Retry | None  # for idempotent requests
    retry_keyed: Retry | None  # for the others: retried only when they carry a key


@dataclass(slots=True)
class Plan:
    """One logical request: its policy, its retry (None = exactly one attempt) and the response
    of the last attempt, closed when another attempt replaces it."""

    policy: Policy
    retry: Retry | None
    method: str
    host: str
    port: int | None
    key: str | None
    """The idempotency key every attempt carries (None: the request has none)."""
    pending: Any = None


def _check_pattern(pattern: object) -> str:
    if not isinstance(pattern, str) or not pattern or pattern != pattern.strip() or (
            "*" in pattern and pattern != "*" and not (
                pattern.startswith("*.") and pattern[2:] and "*" not in pattern[2:])):
        raise ConfigurationError(
            f"policies keys are 'host', 'host:port', '*.domain' or '*'; got {pattern!r}")
    return pattern.lower()


def _valid_header_key(value: object) -> str | None:
    """An idempotency key the retry engine accepts (1-255 printable ASCII), else None."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if isinstance(value, str) and 1 <= len(value) <= 255 and value.isascii() and (
            value.isprintable()):
        return value
    return None


class OutboundCore:
    """Policy selection, classification, idempotency-key decisions and the sync/async drivers.

    Built once per transport/adapter; see :class:`fintech_resilience.httpx.ResilientTransport`
    for the options.
    """

    def __init__(self, *, policy: Policy | None, policies: Mapping[str, Policy] | None,
                 failure: OutcomeRule | None, neutral: OutcomeRule | None,
                 idempotency_header: str | None, generate_idempotency_key: bool,
                 transport_errors: tuple[type[BaseException], ...],
                 never_sent: Callable[[BaseException], bool]) -> None:
        if (policy is None) == (policies is None):
            raise ConfigurationError(
                "pass policy=fr.Policy(...) for every host, or policies={'api.psp.example':"
                " policy, '*': default} per host (not both)")
        table = {"*": policy} if policy is not None else dict(policies or {})
        if not isinstance(policies, Mapping | None) or not table:
            raise ConfigurationError("policies must be a non-empty dict {host pattern: Policy}")
        if idempotency_header is not None and not (
                isinstance(idempotency_header, str) and idempotency_header.strip()
                and idempotency_header.isascii() and " " not in idempotency_header):
            raise ConfigurationError(
                f"idempotency_header must be a header name such as 'Idempotency-Key', or None;"
                f" got {idempotency_header!r}")
        if generate_idempotency_key and idempotency_header is None:
            raise ConfigurationError(
                "generate_idempotency_key=True needs idempotency_header='Idempotency-Key'")
        self.header = idempotency_header
        self.generate = bool(generate_idempotency_key)
        self.classifier = Classifier(
            failure=failure if failure is not None else default_failure(transport_errors),
            neutral=neutral if neutral is not None else DEFAULT_NEUTRAL)
        #: with the default rules a response below 400 is a SUCCESS: no rule needs to run
        self._default_rules = failure is None and neutral is None
        self._never_sent = never_sent
        self._exact: dict[str, _Route] = {}
        self._suffixes: list[tuple[str, _Route]] = []
        self._default: _Route | None = None
        for pattern, chosen in table.items():
            if not isinstance(chosen, Policy):
                raise ConfigurationError(
                    f"policies[{pattern!r}] must be a fr.Policy(...); got {chosen!r}")
            route = self._route_for(chosen)
            key = _check_pattern(pattern)
            if key == "*":
                self._default = route
            elif key.startswith("*."):
                self._suffixes.append((key[1:], route))
            else:
                self._exact[key] = route
        self._suffixes.sort(key=lambda item: -len(item[0]))
        self._cache: dict[tuple[str, int | None], _Route | None] = {}

    # --- decisions (no I/O) ------------------------------------------------------------------

    def _route_for(self, policy: Policy) -> _Route:
        base = policy.retry
        if base is None:
            return _Route(policy, None, None)
        return _Route(policy, self._derive(base, idempotent=base.idempotent),
                      self._derive(base, idempotent=False))

    def _derive(self, base: Retry, *, idempotent: bool) -> Retry:
        """The policy's retry, taught HTTP: FAILURE outcomes are retried, the idempotency key is
        the request's header, and connection failures before sending count as never sent."""
        classify = self.classifier.classify
        never_sent = self._never_sent

        def retry_on(exc: BaseException) -> bool:
            return isinstance(exc, FailedResponse) or classify(
                Outcome(exception=exc)) is Verdict.FAILURE or base.is_retryable(exc)

        def key_of(plan: Plan, *_args: Any, **_kwargs: Any) -> str | None:
            return plan.key

        return base.replace(
            on=retry_on, idempotent=idempotent, idempotency_key=key_of, key_argument=None,
            never_sent=lambda exc: never_sent(exc) or base.was_never_sent(exc))

    def _route(self, host: str, port: int | None) -> _Route | None:
        cached = self._cache.get((host, port), False)
        if cached is not False:
            return cached  # type: ignore[return-value]
        host = host.lower()
        route = self._exact.get(f"{host}:{port}") if port is not None else None
        if route is None:
            route = self._exact.get(host)
        if route is None:
            route = next((r for suffix, r in self._suffixes if host.endswith(suffix)),
                         self._default)
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.clear()
        self._cache[(host, port)] = route
        return route

    def policy_for(self, host: str, port: int | None = None) -> Policy | None:
        """The policy that applies to ``host`` (and ``port``), or None (not protected)."""
        route = self._route(host, port)
        return None if route is None else route.policy

    def plan(self, method: str, host: str, port: int | None, key: Any,
             replayable: bool) -> tuple[Plan | None, str | None]:
        """Decide a request: its :class:`Plan` (None: pass it through unprotected) and the
        idempotency key to add to its headers (None: add nothing).

        :param key: the value of the idempotency header the request carries, or None.
        :param replayable: False for a body that can be read only once (never retried).
        """
        route = self._route(host, port)
        if route is None:
            return None, None
        method = method.upper()
        idempotent = method in IDEMPOTENT_METHODS
        new_key = None
        if not idempotent and self.generate and key is None:
            key = new_key = str(uuid.uuid4())
        retry = None
        if replayable:
            retry = route.retry if idempotent else route.retry_keyed
        return Plan(route.policy, retry, method, host, port, _valid_header_key(key)), new_key

    def judge(self, outcome: Outcome, span: Any) -> BaseException | None:
        """What an attempt raises inside ``with breaker:`` so the breaker counts its verdict:
        None (success), the failure (a transport error, :class:`FailedResponse`), or a
        neutral carrier. Adds the outcome to the attempt's span (if recording)."""
        if self._default_rules and span is None and outcome.exception is None and (
                outcome.result.status_code < 400):
            return None
        verdict = self.classifier.classify(outcome)
        if span is not None:
            _end_span(span, outcome, verdict)
        if verdict is Verdict.FAILURE:
            return outcome.exception or FailedResponse(outcome.result)
        if verdict is Verdict.NEUTRAL or outcome.exception is not None:
            return _Neutral(outcome)
        return None

    # --- telemetry ---------------------------------------------------------------------------

    def _span(self, plan: Plan) -> contextlib.AbstractContextManager[Any]:
        if not telemetry.active():
            return contextlib.nullcontext()
        return _attempt_span(plan, own=plan.retry is None)

    def settle(self, plan: Plan, outcome: Outcome, span: Any) -> Outcome:
        """After one send: keep the response until the next attempt closes it, and raise what
        the breaker and the retry engine act on (see :meth:`judge`)."""
        plan.pending = outcome.result
        signal = self.judge(outcome, span)
        if signal is not None:
            raise signal
        return outcome

    # --- sync driver -------------------------------------------------------------------------

    def run(self, plan: Plan, request: Any, send: Callable[[], Any],
            close: Callable[[Any], None]) -> Any:
        """Send ``request`` under ``plan`` (sync); ``send()`` performs one attempt."""

        def attempt(plan: Plan) -> Any:
            if plan.pending is not None:
                close(plan.pending)
                plan.pending = None
            try:
                with plan.policy.attempt(), self._span(plan) as span:
                    try:
                        outcome = Outcome(send())
                    except Exception as exc:
                        outcome = Outcome(exception=exc)
                    outcome = self.settle(plan, outcome, span)
            except _Neutral as neutral:
                outcome = neutral.outcome
            return _unwrap(outcome)

        try:
            with plan.policy.admission((request,), {}):
                return attempt(plan) if plan.retry is None else plan.retry.call(attempt, plan)
        except (FailedResponse, RetryError) as done:
            return _last_response(done)
        except BaseException:
            if plan.pending is not None:
                close(plan.pending)
            raise

    # --- async driver ------------------------------------------------------------------------

    async def arun(self, plan: Plan, request: Any, send: Callable[[], Awaitable[Any]],
                   close: Callable[[Any], Awaitable[None]]) -> Any:
        """Async twin of :meth:`run`."""

        async def attempt(plan: Plan) -> Any:
            if plan.pending is not None:
                await close(plan.pending)
                plan.pending = None
            try:
                async with plan.policy.aattempt():
                    with self._span(plan) as span:
                        try:
                            outcome = Outcome(await send())
                        except Exception as exc:
                            outcome = Outcome(exception=exc)
                        outcome = self.settle(plan, outcome, span)
            except _Neutral as neutral:
                outcome = neutral.outcome
            return _unwrap(outcome)

        try:
            async with plan.policy.aadmission((request,), {}):
                if plan.retry is None:
                    return await attempt(plan)
                return await plan.retry.acall(attempt, plan)
        except (FailedResponse, RetryError) as done:
            return _last_response(done)
        except BaseException:
            if plan.pending is not None:
                await close(plan.pending)
            raise


def _unwrap(outcome: Outcome) -> Any:
    """An attempt's result, or its exception raised."""
    if outcome.exception is not None:
        raise outcome.exception
    return outcome.result


def _last_response(done: FailedResponse | RetryError) -> Any:
    """What the caller gets when the retries end on a response: that response (a failed one,
    or the one the retry's own ``on_result`` gave up on)."""
    return done.response if isinstance(done, FailedResponse) else done.last


@contextlib.contextmanager
def _attempt_span(plan: Plan, *, own: bool) -> Iterator[Any]:
    """The attempt's span: the retry engine's ``resilience.retry.attempt`` span when the request
    runs under a retry (one span per attempt, never two), else a CLIENT span of our own."""
    attempt = current_attempt()
    attrs: dict[str, str | int] = {telemetry.Attr.HTTP_METHOD: plan.method,
                                   telemetry.Attr.SERVER_ADDRESS: plan.host}
    if plan.port is not None:
        attrs[telemetry.Attr.SERVER_PORT] = plan.port
    if attempt is not None and attempt.number > 1:
        attrs[telemetry.Attr.HTTP_RESEND_COUNT] = attempt.number - 1
    if own:
        with telemetry.tracer.start_as_current_span(
                plan.method, kind=_trace.SpanKind.CLIENT, attributes=attrs,
                record_exception=False, set_status_on_exception=False) as span:
            yield span if span.is_recording() else None
        return
    span = _trace.get_current_span()
    if not span.is_recording():
        yield None
        return
    span.set_attributes(attrs)
    yield span


def _end_span(span: Any, outcome: Outcome, verdict: Verdict) -> None:
    status = getattr(outcome.result, "status_code", None)
    if isinstance(status, int):
        span.set_attribute(telemetry.Attr.HTTP_STATUS, status)
        if status >= 400:
            span.set_attribute(telemetry.Attr.ERROR_TYPE, str(status))
    elif outcome.exception is not None:
        span.set_attribute(telemetry.Attr.ERROR_TYPE, type(outcome.exception).__qualname__)
    if verdict is Verdict.FAILURE:
        span.set_status(_trace.Status(_trace.StatusCode.ERROR))
