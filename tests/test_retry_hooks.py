"""fr.retry hooks (tenacity's before / after / before_sleep / retry_error_callback), tenacity's
own callbacks passed as they are, and the log line per retry (stamina's default logging)."""

from __future__ import annotations

import importlib
import logging
from typing import Any

import pytest
import tenacity
from test_retry import Flaky

import fintech_resilience as fr
from fintech_resilience.core.outcomes import Outcome
from fintech_resilience.errors import ConfigurationError, RetryError
from fintech_resilience.retries.core import retry
from fintech_resilience.retries.hooks import AttemptDetails, RetryDetails
from fintech_resilience.testing import ManualClock

retry_module = importlib.import_module("fintech_resilience.retries.core")
PAN = "4111111111111111"
LOGGER = "fintech_resilience"


class Declined(Exception):
    pass


def charge(card: str, amount_minor: int) -> str:
    raise ConnectionError(f"PSP unreachable while charging {card}")


def both_ways(fn: Any, **options: Any) -> tuple[Any, Any]:
    """The same policy around ``fn`` as a sync and as an async function."""

    async def afn(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    afn.__module__ = fn.__module__
    afn.__qualname__ = getattr(fn, "__qualname__", type(fn).__qualname__)
    return retry(**options)(fn), retry(**options)(afn)


async def run(mode: str, sync: Any, async_: Any, *args: Any) -> Any:
    return sync(*args) if mode == "sync" else await async_(*args)


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class TestHooks:
    async def test_before_after_and_before_sleep_see_every_attempt_in_order(
            self, mode: str, clock: ManualClock) -> None:
        seen: list[tuple[Any, ...]] = []
        fn = Flaky(2)
        sync, async_ = both_ways(
            fn, on=ValueError, attempts=3, wait=1.5, clock=clock, name="psp",
            idempotency_key=lambda: "key-1",
            before=lambda d: seen.append(("before", d.attempt, d.wait, d.waited)),
            after=lambda d: seen.append(("after", d.attempt, type(d.outcome.exception))),
            before_sleep=lambda d: seen.append(("sleep", d.attempt, d.wait, d.waited)))
        assert await run(mode, sync, async_) == "ok"
        assert seen == [
            ("before", 1, 0.0, 0.0),
            ("after", 1, ValueError), ("sleep", 1, 1.5, 0.0),
            ("before", 2, 1.5, 1.5),
            ("after", 2, ValueError), ("sleep", 2, 1.5, 1.5),
            ("before", 3, 1.5, 3.0),
        ]

    def test_hooks_receive_frozen_details_with_the_key_and_the_name(
            self, clock: ManualClock) -> None:
        got: list[Any] = []
        retry(on=ValueError, wait=0, clock=clock, idempotency_key=lambda: "key-1",
              before=got.append, after=got.append)(Flaky(1))()
        before, after, before_again = got
        assert isinstance(before, AttemptDetails) and isinstance(after, RetryDetails)
        assert before.idempotency_key == after.idempotency_key == "key-1"
        assert before.name.endswith("Flaky")  # no name given: the callable's qualified name
        with pytest.raises(AttributeError):
            after.attempt = 5  # type: ignore[misc]
        assert before_again.attempt == 2

    async def test_retry_error_callback_value_is_returned_when_retries_run_out(
            self, mode: str, clock: ManualClock) -> None:
        seen: list[RetryDetails] = []

        def fallback(details: RetryDetails) -> str:
            seen.append(details)
            return "queued"

        sync, async_ = both_ways(Flaky(9), on=ValueError, attempts=3, wait=0, clock=clock,
                                 retry_error_callback=fallback)
        assert await run(mode, sync, async_) == "queued"
        assert [(d.attempt, type(d.outcome.exception)) for d in seen] == [(3, ValueError)]

    def test_retry_error_callback_also_ends_result_retries_and_its_exception_propagates(
            self, clock: ManualClock) -> None:
        got = retry(on_result=lambda status: status >= 500, attempts=2, wait=0, clock=clock,
                    retry_error_callback=lambda d: ("gave up", d.outcome.result))(lambda: 503)()
        assert got == ("gave up", 503)

        def refuse(details: RetryDetails) -> None:
            raise Declined("no")

        with pytest.raises(Declined):  # what the callback raises is what the caller gets
            retry(on=ValueError, attempts=2, wait=0, clock=clock,
                  retry_error_callback=refuse)(Flaky(9))()

    def test_retry_error_callback_is_not_called_for_errors_that_are_not_retried(
            self, clock: ManualClock) -> None:
        called: list[int] = []
        with pytest.raises(KeyError):
            retry(on=ValueError, clock=clock, retry_error_callback=lambda d: called.append(1))(
                Flaky(1, KeyError))()
        assert called == []

    async def test_a_hook_that_raises_is_logged_and_the_call_goes_on(
            self, mode: str, clock: ManualClock, caplog: pytest.LogCaptureFixture) -> None:
        def broken(details: Any) -> None:
            raise RuntimeError("hook bug")

        fn = Flaky(1)
        sync, async_ = both_ways(fn, on=ValueError, wait=0, clock=clock, name="psp",
                                 before=broken, after=broken, before_sleep=broken)
        with caplog.at_level(logging.ERROR, LOGGER):
            assert await run(mode, sync, async_) == "ok"
        assert fn.calls == 2
        failures = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert [r.getMessage() for r in failures] == [
            f"retry psp: the {what} hook {broken.__qualname__} failed"
            for what in ("before", "after", "before_sleep", "before")]
        assert all(r.exc_info and r.exc_info[0] is RuntimeError for r in failures)

    def test_hooks_must_be_callable(self) -> None:
        for option in ("before", "after", "before_sleep", "retry_error_callback"):
            with pytest.raises(ConfigurationError, match=f"{option} must be callable"):
                retry(**{option: "log"})
        with pytest.raises(ConfigurationError, match="log_level must be a logging level"):
            retry(log_level="WARNING")  # type: ignore[arg-type]


class TestTenacityCallbacks:
    def test_tenacity_logging_callbacks_work_as_they_are(
            self, clock: ManualClock, caplog: pytest.LogCaptureFixture) -> None:
        log = logging.getLogger("app.retries")

        def fetch_status() -> str:
            return fn()

        fn = Flaky(2)
        wrapped = retry(on=ValueError, attempts=3, wait=0.25, clock=clock,
                        before=tenacity.before_log(log, logging.INFO),
                        after=tenacity.after_log(log, logging.INFO),
                        before_sleep=tenacity.before_sleep_log(log, logging.INFO))(fetch_status)
        with caplog.at_level(logging.INFO, "app.retries"):
            assert wrapped() == "ok"
        lines = [r.getMessage() for r in caplog.records if r.name == "app.retries"]
        name = f"{__name__}.TestTenacityCallbacks." \
               "test_tenacity_logging_callbacks_work_as_they_are.<locals>.fetch_status"
        assert lines == [
            f"Starting call to '{name}', this is the 1st time calling it.",
            f"Finished call to '{name}' after 0(s), this was the 1st time calling it.",
            f"Retrying {name} in 0.25 seconds as it raised ValueError: 1.",
            f"Starting call to '{name}', this is the 2nd time calling it.",
            f"Finished call to '{name}' after 0.25(s), this was the 2nd time calling it.",
            f"Retrying {name} in 0.25 seconds as it raised ValueError: 2.",
            f"Starting call to '{name}', this is the 3rd time calling it.",
        ]

    def test_a_callback_annotated_with_retry_call_state_gets_one(
            self, clock: ManualClock) -> None:
        seen: list[tuple[int, float, bool]] = []

        def hook(retry_state: tenacity.RetryCallState) -> None:
            assert retry_state.outcome is not None and retry_state.next_action is not None
            seen.append((retry_state.attempt_number, retry_state.next_action.sleep,
                         retry_state.outcome.failed))

        def last_result(retry_state: tenacity.RetryCallState) -> Any:
            assert retry_state.outcome is not None
            return ("last", retry_state.outcome.result())

        got = retry(on_result=lambda status: status >= 500, attempts=3, wait=0.5, clock=clock,
                    before_sleep=hook, retry_error_callback=last_result)(lambda: 503)()
        assert got == ("last", 503)
        assert seen == [(1, 0.5, False), (2, 0.5, False)]

    def test_an_unannotated_tenacity_style_callback_cannot_break_the_call(
            self, clock: ManualClock, caplog: pytest.LogCaptureFixture) -> None:
        def old_hook(retry_state):  # type: ignore[no-untyped-def]
            return retry_state.outcome.exception()  # RetryDetails has no such method

        with caplog.at_level(logging.ERROR, LOGGER):
            assert retry(on=ValueError, wait=0, clock=clock, before_sleep=old_hook)(
                Flaky(1))() == "ok"
        assert [r.exc_info[0] for r in caplog.records if r.exc_info] == [TypeError]


class TestLogging:
    async def test_each_retry_logs_one_warning_with_name_attempt_error_and_wait(
            self, mode: str, clock: ManualClock, caplog: pytest.LogCaptureFixture) -> None:
        fn = Flaky(2, ConnectionResetError)
        sync, async_ = both_ways(fn, on=ConnectionError, attempts=3, wait=0.5, clock=clock)
        with caplog.at_level(logging.DEBUG, LOGGER):
            assert await run(mode, sync, async_) == "ok"
        records = [r for r in caplog.records if r.name == LOGGER]
        assert [r.levelno for r in records] == [logging.WARNING] * 2
        name = "test_retry.Flaky"
        assert [r.getMessage() for r in records] == [
            f"retry {name}: attempt 1 failed (ConnectionResetError); retrying in 0.500s",
            f"retry {name}: attempt 2 failed (ConnectionResetError); retrying in 0.500s"]
        first = records[0].__dict__
        assert (first["resilience.name"], first["resilience.retry.attempt"],
                first["resilience.retry.wait"], first["error.type"]) == (
            name, 1, 0.5, "ConnectionResetError")

    def test_the_log_line_names_the_decorated_function_and_never_its_arguments(
            self, clock: ManualClock, caplog: pytest.LogCaptureFixture) -> None:
        with caplog.at_level(logging.DEBUG, LOGGER), pytest.raises(ConnectionError):
            retry(on=ConnectionError, wait=0, clock=clock)(charge)(PAN, 1999)
        records = [r for r in caplog.records if r.name == LOGGER]
        assert len(records) == 2
        assert records[0].getMessage() == (
            f"retry {__name__}.charge: attempt 1 failed (ConnectionError); retrying in 0.000s")
        for record in records:
            texts = [record.getMessage(), repr(record.args), repr(record.__dict__)]
            assert not any(PAN in text or "1999" in text for text in texts)

    async def test_under_a_policy_the_line_names_the_protected_function(
            self, mode: str, clock: ManualClock, caplog: pytest.LogCaptureFixture) -> None:
        policy = fr.Policy(name="psp", retry=retry(on=ConnectionError, wait=0, clock=clock))

        async def acharge(card: str, amount_minor: int) -> str:
            return charge(card, amount_minor)

        async def protected() -> str:
            if mode == "sync":
                return policy.call(charge, PAN, 1999)
            return await policy.acall(acharge, PAN, 1999)

        with caplog.at_level(logging.WARNING, LOGGER), pytest.raises(ConnectionError):
            await protected()
        names = {r.__dict__["resilience.name"] for r in caplog.records}
        assert names == {f"{__name__}.charge" if mode == "sync" else acharge.__module__ + "."
                         + acharge.__qualname__}
        assert "attempt" not in next(iter(names))  # not the Policy's inner wrapper

    def test_a_rejected_result_is_logged_with_its_status(
            self, clock: ManualClock, caplog: pytest.LogCaptureFixture) -> None:
        class Response:
            status_code = 503

        with caplog.at_level(logging.WARNING, LOGGER), pytest.raises(RetryError):
            retry(on_result=lambda r: r.status_code >= 500, attempts=2, wait=0, clock=clock,
                  name="psp")(Response)()
        assert [r.getMessage() for r in caplog.records] == [
            "retry psp: attempt 1 failed (result 503); retrying in 0.000s"]

    def test_log_level_sets_the_level_and_none_turns_the_line_off(
            self, clock: ManualClock, caplog: pytest.LogCaptureFixture) -> None:
        with caplog.at_level(logging.DEBUG, LOGGER):
            retry(on=ValueError, wait=0, clock=clock, log_level=logging.INFO)(Flaky(1))()
            retry(on=ValueError, wait=0, clock=clock, log_level=None)(Flaky(1))()
        assert [r.levelno for r in caplog.records if r.name == LOGGER] == [logging.INFO]

    def test_nothing_is_logged_when_the_first_attempt_succeeds(
            self, caplog: pytest.LogCaptureFixture) -> None:
        with caplog.at_level(logging.DEBUG, LOGGER):
            assert retry(on=ValueError)(Flaky(0))() == "ok"
        assert caplog.records == []


def test_without_hooks_the_first_attempt_takes_the_fast_path(
        monkeypatch: pytest.MonkeyPatch) -> None:
    no_tenacity: list[int] = []  # RetryCallState objects built (the fast path builds none)
    real = retry_module.RetryCallState

    def spy(*args: Any, **kwargs: Any) -> Any:
        no_tenacity.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(retry_module, "RetryCallState", spy)
    assert retry(on=ValueError, after=lambda d: None, before_sleep=lambda d: None,
                 retry_error_callback=lambda d: None)(Flaky(0))() == "ok"
    assert no_tenacity == []  # only `before` needs the loop for the first attempt
    seen: list[int] = []
    assert retry(on=ValueError, before=lambda d: seen.append(d.attempt))(Flaky(0))() == "ok"
    assert seen == [1] and no_tenacity == [1]


def test_outcome_details_are_the_shared_outcome_type() -> None:
    details = RetryDetails("psp", 1, 0.0, Outcome(exception=ValueError()), None)
    assert details.waited == 0.0 and details.outcome.failed
