"""When a Databento call is tried again, for how long, and what the person running the job is told.

The loop is tenacity's: a failure classified as transient (HTTP 429/408/5xx, a broken or stalled stream, a
connection problem, a body that is not the DBN asked for) is retried with exponential backoff or the
server's Retry-After (capped), at most `max_retries` times and within `retry_budget_seconds` over all
attempts and waits of one call; anything the user has to fix (4xx, bad arguments, a full disk) becomes an
EngineError at once.
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import requests
import tenacity
from databento.common.error import BentoClientError, BentoError, BentoHttpError, BentoServerError

from engine.errors import EngineError
from engine.sources import databento_ratelimit as ratelimit
from engine.sources.databento_request import RawRequest
from engine.sources.progress import notify

log = logging.getLogger(__name__)

API_KEY_ENV = "DATABENTO_API_KEY"
#: A server's Retry-After is honoured up to this many seconds (a broken header must not park a job for a day).
RETRY_AFTER_CAP_SECONDS = 900.0
#: How many times a complete 200 body that is not the DBN asked for is bought again.
BAD_BODY_RETRIES = 1

T = TypeVar("T")


@dataclass(frozen=True)
class Timeouts:
    """How long one HTTP call may wait, and how long all attempts and waits of one call may take together."""

    connect_seconds: float = 10.0
    read_seconds: float = 60.0
    retry_budget_seconds: float = 600.0


class BadBody(Exception):
    """A complete 200 body that is not the DBN asked for (paid for): bought again at most once."""

    kept: Path | None = None


class Transient(Exception):
    """A failure worth another attempt: why, and how long the server asked us to wait (Retry-After)."""

    def __init__(self, reason: str, retry_after: float | None = None, http_status: int | None = None) -> None:
        super().__init__(reason)
        self.reason, self.retry_after, self.http_status = reason, retry_after, http_status


@dataclass
class RetryPolicy:
    """Runs one Databento call after another with retries; counts the retries of all of them in `retries`."""

    max_retries: int
    backoff_seconds: float
    max_backoff_seconds: float
    sleep: Callable[[float], Any]
    timeouts: Timeouts = field(default_factory=Timeouts)
    clock: Callable[[], float] = time.monotonic
    on_status: Callable[[str], None] | None = None
    retries: int = 0
    started: float | None = None
    current_retry: int = 0
    _rejected: list[tuple[Path | None, str]] = field(default_factory=list)

    def elapsed(self) -> float:
        if self.started is None:
            self.started = self.clock()
        return self.clock() - self.started

    def attempt_timeout(self) -> float:
        """The read timeout, shortened so that one stalled attempt cannot outlast the retry budget."""
        left = self.timeouts.retry_budget_seconds - self.elapsed()
        return max(0.05, min(self.timeouts.read_seconds, left))

    def show_stall(self, seconds: float) -> None:
        text = f"stalled {seconds:.0f} s" if seconds else ""
        if self.current_retry:
            text = f"{text}, retry {self.current_retry}/{self.max_retries}" if text else ""
        notify(self.on_status, text)

    def run(self, action: Callable[[], T], what: str, req: RawRequest) -> T:
        """`action()`, tried again on transient failures; raises EngineError once retrying is pointless."""
        self.started = self.clock()  # each call (get_cost, get_record_count, get_range) has its own budget
        self.current_retry = 0

        def attempt() -> T:
            try:
                return action()
            except Exception as exc:  # classified: transient ones come back, the others are raised
                raise self._classify(exc, what, req) from exc

        backoff = tenacity.wait_exponential(multiplier=self.backoff_seconds, max=self.max_backoff_seconds)

        def wait(state: tenacity.RetryCallState) -> float:
            retry_after = _failure(state).retry_after
            return backoff(state) if retry_after is None else min(retry_after, RETRY_AFTER_CAP_SECONDS)

        def out_of_budget(state: tenacity.RetryCallState) -> bool:
            # Our clock, not tenacity's stop_before_delay: fetch_raw(clock=...) must govern the budget.
            return self.elapsed() + (state.upcoming_sleep or 0.0) >= self.timeouts.retry_budget_seconds

        def before_sleep(state: tenacity.RetryCallState) -> None:
            reason = _failure(state).reason
            self.retries += 1
            ratelimit.count_retry(_failure(state).http_status)
            self.current_retry = state.attempt_number
            log.warning(
                "Databento %s: %s; retry %d/%d in %.1fs",
                what, reason, state.attempt_number, self.max_retries, state.upcoming_sleep,
            )
            notify(self.on_status, f"{_short(reason)}, retry {state.attempt_number}/{self.max_retries}")

        def give_up(state: tenacity.RetryCallState) -> NoReturn:
            made, reason = state.attempt_number - 1, _failure(state).reason
            if made >= self.max_retries:
                raise EngineError(
                    f"Databento {what} for {req.describe()} kept failing; gave up after "
                    f"{made} retries. Last failure: {reason}",
                    "check your network and https://status.databento.com, then run again "
                    "(files that completed are reused, not bought again), or raise source.max_retries",
                ) from None
            raise EngineError(
                f"Databento {what} for {req.describe()} kept failing; gave up after "
                f"{made} retries and {self.elapsed():.1f} s: the retry budget "
                f"source.retry_budget_seconds={self.timeouts.retry_budget_seconds:g} is spent. "
                f"Last failure: {reason}",
                "check your network and https://status.databento.com, then run again; raise "
                "source.retry_budget_seconds (or source.read_timeout_seconds for a slow gateway)",
            ) from None

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(Transient),
            wait=wait,
            stop=tenacity.stop_after_attempt(self.max_retries + 1) | out_of_budget,
            sleep=self.sleep,
            before_sleep=before_sleep,
            retry_error_callback=give_up,
        )
        try:
            result = retrying(attempt)
        finally:
            self.current_retry = 0
        notify(self.on_status, "")
        return result

    def _classify(self, exc: Exception, what: str, req: RawRequest) -> Transient:
        if isinstance(exc, BadBody):
            self._rejected.append((exc.kept, str(exc)))
            if len(self._rejected) > BAD_BODY_RETRIES:
                kept = ", ".join(str(p) for p, _ in self._rejected if p is not None)
                raise EngineError(
                    f"Databento answered {what} for {req.describe()} {len(self._rejected)} times with a body "
                    f"that is not the DBN asked for (last: {exc}); stopped so as not to pay again. "
                    f"The bodies are kept for inspection: {kept}",
                    "look at the kept files and report them to support@databento.com; "
                    "run again to buy the data once more",
                ) from None
            return Transient(f"the body is not the DBN asked for ({exc})")
        return classify(exc, what, req, self.timeouts)


def _failure(state: tenacity.RetryCallState) -> Transient:
    exc = state.outcome.exception() if state.outcome is not None else None
    assert isinstance(exc, Transient), exc  # only Transient failures are retried
    return exc


def _short(reason: str) -> str:
    return reason if len(reason) <= 60 else reason[:59] + "…"


def classify(exc: Exception, what: str, req: RawRequest, timeouts: Timeouts) -> Transient:
    """Transient failures come back as Transient; everything else becomes EngineError or is re-raised."""
    if isinstance(exc, BentoHttpError):
        return _classify_http(exc, what, req)
    stalled = f"stalled: no data for {timeouts.read_seconds:g} s (source.read_timeout_seconds)"
    if isinstance(exc, BentoError):
        # Non-HTTP BentoError: the client wraps anything raised while reading the body
        # ("Error streaming response: ...").
        if "timed out" in str(exc).lower():
            return Transient(stalled)
        return Transient(f"the stream broke: {exc}")
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return Transient(f"connection problem: {exc}")
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return Transient(stalled)
    if isinstance(
        exc,
        requests.exceptions.ConnectionError
        | requests.exceptions.Timeout
        | requests.exceptions.ChunkedEncodingError
        | requests.exceptions.ContentDecodingError,
    ):
        return Transient(f"connection problem: {type(exc).__name__}: {exc}")
    if isinstance(exc, ValueError):  # the client's own argument validation (bad schema / stype_in ...)
        raise EngineError(
            f"Databento {what} rejected the request for {req.describe()}: {exc}",
            "check source.dataset, the symbol, schema and stype_in",
        ) from None
    if isinstance(exc, OSError):
        raise EngineError(
            f"could not write the Databento download for {req.describe()}: {exc}",
            "check free space and permissions under data_dir",
        ) from exc
    raise exc


def _classify_http(exc: BentoHttpError, what: str, req: RawRequest) -> Transient:
    status = exc.http_status
    said = _server_message(exc)
    if status == 429 or status == 408 or (isinstance(exc, BentoServerError) and status >= 500):
        return Transient(f"HTTP {status} {said}".rstrip(), _retry_after(exc.headers), status)
    if status in (401, 403):
        raise EngineError(
            f"Databento refused the API key (HTTP {status}) on {what}: {said}",
            f"check {API_KEY_ENV}: export a valid, active key from https://databento.com/portal/keys "
            "that has access to this dataset",
        ) from None
    if status == 402:
        raise EngineError(
            f"Databento refused {what} for {req.describe()} for billing reasons (HTTP 402): {said}",
            "check the billing / payment method and credit limits at https://databento.com/portal/billing",
        ) from None
    if isinstance(exc, BentoClientError):
        raise EngineError(
            f"Databento rejected {what} for {req.describe()} (HTTP {status}): {said}",
            "check the dataset, symbol, stype_in, schema and window (is it inside the dataset's "
            "available range and not in the future?)",
        ) from None
    return Transient(f"HTTP {status} {said}".rstrip(), _retry_after(exc.headers))


def _server_message(exc: BentoHttpError) -> str:
    message = exc.message
    if not message and exc.http_body:
        message = str(exc.http_body)[:500]
    text = "; ".join(line.strip() for line in str(message or "").splitlines() if line.strip())
    if exc.request_id:
        text = f"{text} (request {exc.request_id})"
    return text


def _retry_after(headers: Any) -> float | None:
    try:
        value = headers.get("Retry-After") if headers is not None else None
    except AttributeError:
        return None
    if value is None:
        return None
    value = str(value).strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def timeouts(source) -> Timeouts:
    """The Timeouts of a databento source."""
    return Timeouts(source.connect_timeout_seconds, source.read_timeout_seconds, source.retry_budget_seconds)


def policy_of(source, on_status: Callable[[str], None] | None = None) -> RetryPolicy:
    """The RetryPolicy of a databento source's calls (sleeps for real)."""
    return RetryPolicy(source.max_retries, source.backoff_seconds, 60.0, time.sleep, timeouts(source),
                       on_status=on_status)
