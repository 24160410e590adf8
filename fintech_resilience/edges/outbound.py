"""Outbound HTTP under a :class:`~fintech_resilience.Policy`: the logic the httpx transports and
the requests adapter share (they only translate their request and response objects).

For every request the core decides, without I/O:

* **which policy** applies (``outbound_routes.py``): the request's own choice
  (``using_policy(p)``, httpx's ``extensions={"fintech_resilience.policy": p}``), else the first
  matching route (``routes={"POST /v1/charges": p}``), else its host's policy
  (``policy=`` or ``policies={"api.psp.example": p, "*.psp.example": q, "*": d}``); no match =
  the request passes through unprotected;
* **whether it may be retried**: GET, HEAD, PUT, DELETE, OPTIONS and TRACE are idempotent (RFC
  9110); any other method (POST, PATCH) is retried only when it carries an idempotency key - one
  the caller set, or one generated once here (``generate_idempotency_key=True``) and sent
  unchanged on every attempt. A body that cannot be replayed (a generator, a file, a multipart
  stream) is sent exactly once;
* **what each attempt's outcome is** (:class:`~fintech_resilience.outcomes.Classifier`): by
  default 5xx, 429, connection errors and timeouts are FAILURES (retried, counted by the breaker);
  other 4xx are NEUTRAL (a card decline is not an outage: not retried, not counted); the rest
  SUCCESS.

Then thin sync and async drivers run ``fallback -> rate limit -> bulkhead -> retry -> (each
attempt) breaker -> timeout -> send`` by reusing the policy's own parts. A failing response
travels through the retry loop as :class:`FailedResponse` (so the breaker counts it and the retry
engine retries it, honouring ``Retry-After``); when the retries end, the caller gets the last
response back, as if no exception had been involved - unless the policy's fallback handles it
(as a ``FailedResponse``), or the exception that ended the call: then the fallback's response
is returned, ``fallback(error, request)``. Responses of abandoned attempts are closed. Each
attempt is a CLIENT span (``outbound_spans.py``).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

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
from ..retries.core import Retry
from .outbound_routes import UNSET, Routes, Target
from .outbound_spans import attempt_span, end_span

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
    scheme: str = "https"
    url: str = ""
    """The request's URL (redacted before it reaches a span)."""
    pending: Any = None

    @property
    def name(self) -> str:
        """Labels the request's telemetry: the retry's name, else the policy's."""
        return (self.retry.name if self.retry is not None else None) or self.policy.name


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
                 never_sent: Callable[[BaseException], bool],
                 routes: Mapping[str, Policy | None] | None = None) -> None:
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
        self.routes = Routes(policy=policy, policies=policies, routes=routes,
                             derive=self._target_for)

    # --- decisions (no I/O) ------------------------------------------------------------------

    def _target_for(self, policy: Policy) -> Target:
        base = policy.retry
        if base is None:
            return Target(policy, None, None)
        return Target(policy, self._derive(base, idempotent=base.idempotent),
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

    def policy_for(self, host: str, port: int | None = None, *, method: str = "GET",
                   path: str = "/") -> Policy | None:
        """The policy a ``method`` request to ``path`` on ``host`` (and ``port``) runs under,
        or None (not protected)."""
        target = self.routes.select(method.upper(), host, port, path)
        return None if target is None else target.policy

    def plan(self, method: str, host: str, port: int | None, key: Any, replayable: bool, *,
             path: str = "/", scheme: str = "https", url: str = "",
             chosen: Any = UNSET) -> tuple[Plan | None, str | None]:
        """Decide a request: its :class:`Plan` (None: pass it through unprotected) and the
        idempotency key to add to its headers (None: add nothing).

        :param key: the value of the idempotency header the request carries, or None.
        :param replayable: False for a body that can be read only once (never retried).
        :param chosen: the request's own choice of policy (a Policy, or None: unprotected).
        """
        method = method.upper()
        route = self.routes.select(method, host, port, path, chosen)
        if route is None:
            return None, None
        idempotent = method in IDEMPOTENT_METHODS
        new_key = None
        if not idempotent and self.generate and key is None:
            key = new_key = str(uuid.uuid4())
        retry = None
        if replayable:
            retry = route.retry if idempotent else route.retry_keyed
        return Plan(route.policy, retry, method, host, port, _valid_header_key(key), scheme,
                    url), new_key

    def judge(self, outcome: Outcome, span: Any) -> BaseException | None:
        """What an attempt raises inside ``with breaker:`` so the breaker counts its verdict:
        None (success), the failure (a transport error, :class:`FailedResponse`), or a
        neutral carrier. Adds the outcome to the attempt's span (if recording)."""
        if self._default_rules and span is None and outcome.exception is None and (
                outcome.result.status_code < 400):
            return None
        verdict = self.classifier.classify(outcome)
        if span is not None:
            end_span(span, outcome, verdict)
        if verdict is Verdict.FAILURE:
            return outcome.exception or FailedResponse(outcome.result)
        if verdict is Verdict.NEUTRAL or outcome.exception is not None:
            return _Neutral(outcome)
        return None

    # --- telemetry ---------------------------------------------------------------------------

    def _span(self, plan: Plan) -> contextlib.AbstractContextManager[Any]:
        if not telemetry.active():
            return contextlib.nullcontext()
        return attempt_span(plan)

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

        fallback = plan.policy.fallback
        try:
            with plan.policy.admission((request,), {}):
                if plan.retry is None:
                    return attempt(plan)
                return plan.retry._run(attempt, (plan,), {}, plan.name, spans=False)
        except (FailedResponse, RetryError) as done:
            response = _last_response(done)
            if fallback is None or not fallback.handles(done):
                return response
            answer = fallback(done, (request,), {})
            if answer is not response:
                close(response)
            return answer
        except BaseException as exc:
            if plan.pending is not None:
                close(plan.pending)
            if fallback is None or not fallback.handles(exc):
                raise
            return fallback(exc, (request,), {})

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

        fallback = plan.policy.fallback
        try:
            async with plan.policy.aadmission((request,), {}):
                if plan.retry is None:
                    return await attempt(plan)
                return await plan.retry._arun(attempt, (plan,), {}, plan.name, spans=False)
        except (FailedResponse, RetryError) as done:
            response = _last_response(done)
            if fallback is None or not fallback.handles(done):
                return response
            answer = await fallback.acall(done, (request,), {})
            if answer is not response:
                await close(response)
            return answer
        except BaseException as exc:
            if plan.pending is not None:
                await close(plan.pending)
            if fallback is None or not fallback.handles(exc):
                raise
            return await fallback.acall(exc, (request,), {})


def _unwrap(outcome: Outcome) -> Any:
    """An attempt's result, or its exception raised."""
    if outcome.exception is not None:
        raise outcome.exception
    return outcome.result


def _last_response(done: FailedResponse | RetryError) -> Any:
    """What the caller gets when the retries end on a response: that response (a failed one,
    or the one the retry's own ``on_result`` gave up on)."""
    return done.response if isinstance(done, FailedResponse) else done.last
