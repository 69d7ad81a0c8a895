"""Download raw DBN from Databento's historical API -- safely, and never paying twice.

One request (dataset, symbol, schema, stype_in, [start, end)) lands as one file:

    <data_dir>/raw/<dataset>/<schema>/<symbol>/<start>_<end>.dbn.zst       the verified data
    <data_dir>/raw/<dataset>/<schema>/<symbol>/<start>_<end>.dbn.zst.json  sidecar (request, sha256, bytes,
                                                                            records, cost)

The data file only ever appears through an atomic rename of `<name>.part` after the download was checked
to be complete: every zstd frame finished, every record whole, exactly as many records as Databento's
(free) `metadata.get_record_count` says for the same request, and the requested dataset and schema.
urllib3 already refuses a body shorter than its Content-Length. A complete file is reused without any HTTP
call (no key needed) after its size, sha256 and record count are checked again; a landing that fails the
check is moved aside to `<name>.rejected-<n>` (with its sidecar) and the run stops, so the next run buys it
again exactly once. A left-over `.part` is deleted.

A 200 body that is not the DBN asked for is paid for, so it is downloaded again at most once; then the run
stops and the bodies stay as `<name>.rejected-<n>` for inspection. Timeouts and a total retry budget bound
how long a stalled gateway can hold a job.

The API key comes only from the DATABENTO_API_KEY environment variable and is never logged or written.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import json
import logging
import math
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import databento
import databento_dbn
import requests
from databento.common.error import BentoClientError, BentoError, BentoHttpError, BentoServerError

from engine.errors import EngineError
from engine.sources import Landing
from engine.sources.dbn import count_records

try:  # POSIX only; without it concurrent fetches of the same request are simply not serialised
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

API_KEY_ENV = "DATABENTO_API_KEY"
#: A server's Retry-After is honoured up to this many seconds (a broken header must not park a job for a day).
RETRY_AFTER_CAP_SECONDS = 900.0
#: How often the size of the growing `.part` file is reported to `on_bytes`.
PROGRESS_INTERVAL_SECONDS = 0.2
#: A download that has not grown for this long is shown as stalled.
STALL_REPORT_SECONDS = 1.0
#: How many times a complete 200 body that is not the DBN asked for is bought again.
BAD_BODY_RETRIES = 1

_SAFE_PATH_CHARS = re.compile(r"[^A-Za-z0-9._+\-=^]")

T = TypeVar("T")


# --------------------------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class RawRequest:
    """One Databento time-series request: `symbol` in `dataset`/`schema` over [start, end) UTC."""

    dataset: str  # "GLBX.MDP3"
    symbol: str  # continuous symbol, e.g. "NQ.v.0"
    schema: str  # "ohlcv-1m"
    stype_in: str  # "continuous"
    start: datetime  # tz-aware UTC, inclusive
    end: datetime  # tz-aware UTC, exclusive

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            value = getattr(self, name)
            if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
                raise EngineError(
                    f"Databento request {name}={value!r} is not a timezone-aware datetime",
                    "give window times with a timezone, e.g. 2025-11-30T23:00:00Z",
                )
            object.__setattr__(self, name, value.astimezone(UTC))
        if self.end <= self.start:
            raise EngineError(
                f"Databento request window is empty: end {self.end.isoformat()} is not after "
                f"start {self.start.isoformat()}",
                "make the window end later than its start",
            )
        for name in ("dataset", "symbol", "schema", "stype_in"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise EngineError(f"Databento request {name}={value!r} is empty", f"set a {name}")

    def landing_path(self, data_dir: Path) -> Path:
        """data_dir/raw/GLBX.MDP3/ohlcv-1m/NQ.v.0/20251130T230000Z_20251202T050000Z.dbn.zst"""
        name = f"{_stamp(self.start)}_{_stamp(self.end)}.dbn.zst"
        return Path(data_dir) / "raw" / _safe(self.dataset) / _safe(self.schema) / _safe(self.symbol) / name

    def as_dict(self) -> dict[str, str]:
        return {
            "dataset": self.dataset,
            "symbol": self.symbol,
            "schema": self.schema,
            "stype_in": self.stype_in,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
        }

    def client_params(self) -> dict:
        """The request as keyword arguments of the Databento client's metadata.get_cost / timeseries.get_range."""
        return {
            "dataset": self.dataset,
            "symbols": [self.symbol],
            "schema": self.schema,
            "stype_in": self.stype_in,
            "start": self.start,
            "end": self.end,
        }

    def describe(self) -> str:
        return (
            f"{self.dataset} {self.symbol} ({self.stype_in}) {self.schema} "
            f"[{self.start.isoformat()}, {self.end.isoformat()})"
        )


@dataclass
class FetchResult:
    path: Path
    sha256: str
    reused: bool
    retries: int
    cost_usd: float | None
    bytes: int


def _stamp(ts: datetime) -> str:
    return ts.strftime("%Y%m%dT%H%M%S.%fZ" if ts.microsecond else "%Y%m%dT%H%M%SZ")


def _safe(part: str) -> str:
    cleaned = _SAFE_PATH_CHARS.sub("_", part.strip())
    return "_" + cleaned if cleaned in {".", ".."} else cleaned


def _sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _part_path(path: Path) -> Path:
    return path.with_name(path.name + ".part")


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


# --------------------------------------------------------------------------------------------- public API


@dataclass(frozen=True)
class Timeouts:
    """How long one HTTP call may wait, and how long all attempts and waits of one call may take together."""

    connect_seconds: float = 10.0
    read_seconds: float = 60.0
    retry_budget_seconds: float = 600.0


def fetch_raw(
    req: RawRequest,
    data_dir: Path,
    *,
    max_cost_usd: float,
    max_retries: int = 5,
    backoff_seconds: float = 1.0,
    max_backoff_seconds: float = 60.0,
    timeouts: Timeouts = Timeouts(),  # noqa: B008 -- frozen
    gateway: str | None = None,
    on_bytes: Callable[[int], None] | None = None,
    on_status: Callable[[str], None] | None = None,
    sleep: Callable[[float], Any] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> FetchResult:
    """Land the raw DBN for `req` under `data_dir` (see `RawRequest.landing_path`), or reuse it.

    `on_bytes(n)` is told the bytes written so far, `on_status(text)` what is going wrong ("stalled 3 s,
    retry 1/5", "" when nothing); both may be called from a background thread.
    Raises EngineError for anything the person running the job has to fix. Any exception raised after at
    least one retry carries the number of retries made as its `retries` attribute.
    """
    policy = _RetryPolicy(max_retries, backoff_seconds, max_backoff_seconds, sleep, timeouts, clock, on_status)
    try:
        return _fetch(req, Path(data_dir), max_cost_usd, policy, gateway, on_bytes)
    except BaseException as exc:
        if policy.retries:
            with contextlib.suppress(AttributeError):
                exc.retries = policy.retries  # type: ignore[attr-defined]
        raise


def _fetch(
    req: RawRequest,
    data_dir: Path,
    max_cost_usd: float,
    policy: _RetryPolicy,
    gateway: str | None,
    on_bytes: Callable[[int], None] | None,
) -> FetchResult:
    final = req.landing_path(data_dir)
    reused = _reuse(req, final, on_bytes, gateway, policy)
    if reused is not None:
        return reused

    client = _client(gateway)
    cost = _get_cost(client, req, policy)
    if cost > max_cost_usd:
        raise EngineError(
            f"Databento quotes ${cost:,.2f} for {req.describe()}, "
            f"above the limit source.max_cost_usd=${max_cost_usd:,.2f}; nothing was downloaded",
            f"raise the limit, e.g. source.max_cost_usd={math.ceil(cost * 100) / 100:.2f}, "
            "or request a shorter window",
        )
    expected = _get_record_count(client, req, policy)

    log.info(
        "Databento quotes $%.4f for %s, %d records (limit source.max_cost_usd=$%.2f)",
        cost, req.describe(), expected, max_cost_usd,
    )
    final.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(final):
        # Another process may have landed the same request while we waited for the lock.
        reused = _reuse(req, final, on_bytes, gateway, policy)
        if reused is not None:
            reused.retries = policy.retries
            return reused
        part = _part_path(final)
        part.unlink(missing_ok=True)  # left over from a crash: never trusted, never resumed

        def attempt() -> int:
            part.unlink(missing_ok=True)  # the client insists on creating the file itself
            try:
                with _ProgressPoller(part, on_bytes, policy.show_stall):
                    _download(client, req, part, policy)
                return _verify_download(part, req, expected)
            except _BadBody as bad:
                bad.kept = _set_aside(part, final)
                raise
            except BaseException:
                part.unlink(missing_ok=True)  # a partial download is never kept, not even while waiting
                raise

        try:
            records = policy.run(attempt, "timeseries.get_range", req)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        sha256, size = _sha256(part)
        _fsync_file(part)
        sidecar = {
            "request": req.as_dict(),
            "file": final.name,
            "sha256": sha256,
            "bytes": size,
            "records": records,
            "records_checked": "metadata.get_record_count",
            "cost_usd": cost,
            "retries": policy.retries,
            "downloaded_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "client": f"databento {databento.__version__}",
        }
        _write_json_atomic(_sidecar_path(final), sidecar)
        os.replace(part, final)
        _fsync_dir(final.parent)
        with contextlib.suppress(OSError):  # safe once the data file exists: any waiter re-checks and reuses
            _lock_path(final).unlink()

    log.info("Downloaded %s -> %s (%d bytes, %d records, $%.4f)", req.describe(), final, size, records, cost)
    _notify(on_bytes, size)
    return FetchResult(
        path=final, sha256=sha256, reused=False, retries=policy.retries, cost_usd=cost, bytes=size
    )


def estimate_cost(
    req: RawRequest,
    gateway: str | None = None,
    *,
    max_retries: int = 5,
    backoff_seconds: float = 1.0,
    max_backoff_seconds: float = 60.0,
    timeouts: Timeouts = Timeouts(),  # noqa: B008 -- frozen
    sleep: Callable[[float], Any] = time.sleep,
) -> float:
    """What Databento would charge (USD) for `req` -- `metadata.get_cost`, free of charge."""
    policy = _RetryPolicy(max_retries, backoff_seconds, max_backoff_seconds, sleep, timeouts)
    return _get_cost(_client(gateway), req, policy)


# --------------------------------------------------------------------------------------------- reuse


def _reuse(
    req: RawRequest,
    final: Path,
    on_bytes: Callable[[int], None] | None,
    gateway: str | None,
    policy: _RetryPolicy,
) -> FetchResult | None:
    """The landed file for `req` after checking it again (size, sha256, records), or None when there is none.

    A landing that fails the check is moved aside and EngineError raised: the next run buys it again.
    """
    if not final.is_file():
        return None
    sha256, size = _sha256(final)
    sidecar_path = _sidecar_path(final)
    recorded: dict[str, Any] | None = None
    if sidecar_path.is_file():
        try:
            recorded = json.loads(sidecar_path.read_text())
        except (OSError, ValueError):
            recorded = None
    if recorded is not None and recorded.get("request") not in (None, req.as_dict()):
        raise EngineError(
            f"{final} was downloaded for a different request ({recorded.get('request')}) "
            f"than {req.describe()}",
            f"move {final} and {sidecar_path.name} aside, then run again",
        )
    recorded = recorded or {}
    problems: list[str] = []
    if recorded.get("bytes") not in (None, size):
        problems.append(f"it has {size:,} bytes but {recorded['bytes']:,} were downloaded")
    if recorded.get("sha256") not in (None, sha256):
        problems.append(f"its sha256 {sha256[:12]}… differs from the {recorded['sha256'][:12]}… downloaded")
    count: int | None = None
    try:
        count = count_records(final)[1]
    except EngineError as exc:
        problems.append(exc.problem.replace(f"{final} ", "it ").replace(str(final), "it"))
    expected = recorded.get("records")
    if count is not None and expected is not None and recorded.get("records_checked") and count != expected:
        problems.append(f"received {count:,} of {expected:,} records")
    if count is not None and not problems and not recorded.get("records_checked"):
        # Landed before record counts were checked (or placed by hand): ask Databento once, for free.
        expected = _check_legacy_count(req, final, count, gateway, policy)
        if expected is not None and expected != count:
            problems.append(f"received {count:,} of {expected:,} records (metadata.get_record_count)")
        elif expected is not None:
            recorded = {
                **recorded, "request": req.as_dict(), "file": final.name, "sha256": sha256, "bytes": size,
                "records": count, "records_checked": "metadata.get_record_count",
            }
            with contextlib.suppress(OSError):
                _write_json_atomic(sidecar_path, recorded)
    if problems:
        kept = _set_aside(final, final)
        last = recorded.get("cost_usd")
        raise EngineError(
            f"the landed Databento file {final} is not a complete download: {'; '.join(problems)}. "
            f"Moved it (and its sidecar) to {kept} for inspection",
            "run again to download it once more"
            + (f" (Databento charges again, last time ${last})" if last is not None else ""),
        )
    log.info("Reusing %s (%d bytes, %d records, sha256 %s)", final, size, count, sha256[:12])
    _notify(on_bytes, size)
    return FetchResult(
        path=final, sha256=sha256, reused=True, retries=0, cost_usd=recorded.get("cost_usd"), bytes=size
    )


def _check_legacy_count(
    req: RawRequest, final: Path, count: int, gateway: str | None, policy: _RetryPolicy
) -> int | None:
    """Databento's record count for a landing whose sidecar has none checked; None (with a warning) if no key."""
    if not os.environ.get(API_KEY_ENV, "").strip():
        log.warning(
            "%s holds %d records that were never checked against Databento's record count; set %s to check "
            "it (free)", final, count, API_KEY_ENV,
        )
        return None
    return _get_record_count(_client(gateway), req, policy)


def _set_aside(path: Path, final: Path) -> Path:
    """Move `path` (and, when it is the landing, its sidecar) to `<final>.rejected-<n>`; return the new path."""
    n = 1
    while (target := final.with_name(f"{final.name}.rejected-{n}")).exists():
        n += 1
    os.replace(path, target)
    sidecar = _sidecar_path(final)
    if path == final and sidecar.exists():
        os.replace(sidecar, _sidecar_path(target))
    log.warning("kept the rejected Databento body as %s", target)
    return target


# --------------------------------------------------------------------------------------------- client calls


def _api_key() -> str:
    key = os.environ.get(API_KEY_ENV, "")
    if not key.strip():
        raise EngineError(
            f"{API_KEY_ENV} is not set, so Databento's API cannot be used",
            f"export {API_KEY_ENV}=<your key from https://databento.com/portal/keys> "
            "(or use source=dbn_file with files you already have)",
        )
    return key.strip()


def _client(gateway: str | None) -> databento.Historical:
    key = _api_key()
    try:
        if gateway:
            return databento.Historical(key=key, gateway=gateway)
        return databento.Historical(key=key)
    except ValueError as exc:
        # The only ValueErrors here are about the gateway URL (the key was checked above; never echo it).
        raise EngineError(
            f"Databento gateway {gateway!r} is not usable: {exc}",
            "fix source.gateway or remove it to use Databento's default",
        ) from None


def _prepare(client: databento.Historical, api: Any, policy: _RetryPolicy) -> None:
    """Before each call: the connect timeout (probed), then the read timeout on this client instance.

    The client passes its one `TIMEOUT` (read per instance) as both the connect and the read timeout to
    requests, so the connect timeout is checked by `_probe_connect` first.
    """
    _probe_connect(client.gateway, policy.timeouts.connect_seconds)
    api.TIMEOUT = policy.attempt_timeout()


def _get_cost(client: databento.Historical, req: RawRequest, policy: _RetryPolicy) -> float:
    def call() -> float:
        _prepare(client, client.metadata, policy)
        return client.metadata.get_cost(**req.client_params())

    cost = policy.run(call, "metadata.get_cost", req)
    try:
        value = float(cost)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise EngineError(
            f"Databento's metadata.get_cost answered {cost!r} for {req.describe()}",
            "try again later; if it persists contact support@databento.com",
        )
    return value


def _get_record_count(client: databento.Historical, req: RawRequest, policy: _RetryPolicy) -> int:
    """How many records `timeseries.get_range` must deliver for `req` (`metadata.get_record_count`, free)."""

    def call() -> int:
        _prepare(client, client.metadata, policy)
        return client.metadata.get_record_count(**req.client_params())

    count = policy.run(call, "metadata.get_record_count", req)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise EngineError(
            f"Databento's metadata.get_record_count answered {count!r} for {req.describe()}",
            "try again later; if it persists contact support@databento.com",
        )
    return count


def _download(client: databento.Historical, req: RawRequest, part: Path, policy: _RetryPolicy) -> None:
    """Stream the body into `part`; raises only when the transfer itself failed (our checks judge the body)."""
    _prepare(client, client.timeseries, policy)
    try:
        client.timeseries.get_range(**req.client_params(), path=part)
    except BentoHttpError:
        raise
    except (BentoError, databento_dbn.DBNError, ValueError) as exc:
        # "Error streaming response: ..." is the transfer breaking. Anything else comes after the body was
        # received in full, when the client opens the file it wrote (DBNStore.from_file); ValueErrors raised
        # *before* the request (argument validation) leave no file.
        if str(exc).startswith("Error streaming response") or not part.exists():
            raise


def _probe_connect(gateway: str, seconds: float) -> None:
    """Fail within source.connect_timeout_seconds when the gateway does not accept a TCP connection.

    Skipped when a proxy is configured (the client then connects to the proxy, not the gateway).
    """
    if requests.utils.get_environ_proxies(gateway):
        return
    url = urlsplit(gateway if "://" in gateway else f"https://{gateway}")
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((url.hostname or "", port), timeout=seconds).close()
    except TimeoutError:
        raise requests.exceptions.ConnectTimeout(
            f"no connection to {url.hostname}:{port} within {seconds:g} s (source.connect_timeout_seconds)"
        ) from None
    except OSError as exc:
        raise requests.exceptions.ConnectionError(f"cannot connect to {url.hostname}:{port}: {exc}") from None


# --------------------------------------------------------------------------------------------- retries


class _BadBody(Exception):
    """A complete 200 body that is not the DBN asked for (paid for): bought again at most once."""

    kept: Path | None = None


@dataclass
class _Transient:
    reason: str
    retry_after: float | None = None


@dataclass
class _RetryPolicy:
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

    def delay(self, retry_number: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, RETRY_AFTER_CAP_SECONDS)
        return min(self.max_backoff_seconds, self.backoff_seconds * 2 ** (retry_number - 1))

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
        _notify(self.on_status, text)

    def run(self, action: Callable[[], T], what: str, req: RawRequest) -> T:
        self.started = self.clock()  # each call (get_cost, get_record_count, get_range) has its own budget
        attempt_retries = 0
        try:
            while True:
                self.current_retry = attempt_retries
                try:
                    result = action()
                    _notify(self.on_status, "")
                    return result
                except Exception as exc:  # classified below; unknown ones re-raised
                    transient = self._classify(exc, what, req)
                if attempt_retries >= self.max_retries:
                    raise EngineError(
                        f"Databento {what} for {req.describe()} kept failing; gave up after "
                        f"{attempt_retries} retries. Last failure: {transient.reason}",
                        "check your network and https://status.databento.com, then run again "
                        "(files that completed are reused, not bought again), or raise source.max_retries",
                    ) from None
                delay = self.delay(attempt_retries + 1, transient.retry_after)
                elapsed = self.elapsed()
                if elapsed + delay >= self.timeouts.retry_budget_seconds:
                    raise EngineError(
                        f"Databento {what} for {req.describe()} kept failing; gave up after "
                        f"{attempt_retries} retries and {elapsed:.1f} s: the retry budget "
                        f"source.retry_budget_seconds={self.timeouts.retry_budget_seconds:g} is spent. "
                        f"Last failure: {transient.reason}",
                        "check your network and https://status.databento.com, then run again; raise "
                        "source.retry_budget_seconds (or source.read_timeout_seconds for a slow gateway)",
                    ) from None
                attempt_retries += 1
                self.retries += 1
                log.warning(
                    "Databento %s: %s; retry %d/%d in %.1fs",
                    what, transient.reason, attempt_retries, self.max_retries, delay,
                )
                _notify(self.on_status, f"{_short(transient.reason)}, retry {attempt_retries}/{self.max_retries}")
                self.sleep(delay)
        finally:
            self.current_retry = 0

    def _classify(self, exc: Exception, what: str, req: RawRequest) -> _Transient:
        if isinstance(exc, _BadBody):
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
            return _Transient(f"the body is not the DBN asked for ({exc})")
        return _classify(exc, what, req, self.timeouts)


def _notify(callback: Callable[[T], object] | None, value: T) -> None:
    """Tell a progress callback (`on_bytes`, `on_status`); a progress bar must never break a download."""
    if callback is None:
        return
    try:
        callback(value)
    except Exception:  # noqa: BLE001
        log.debug("progress callback failed", exc_info=True)


def _short(reason: str) -> str:
    return reason if len(reason) <= 60 else reason[:59] + "…"


def _classify(exc: Exception, what: str, req: RawRequest, timeouts: Timeouts) -> _Transient:
    """Transient failures come back as _Transient; everything else becomes EngineError or is re-raised."""
    if isinstance(exc, BentoHttpError):
        return _classify_http(exc, what, req)
    stalled = f"stalled: no data for {timeouts.read_seconds:g} s (source.read_timeout_seconds)"
    if isinstance(exc, BentoError):
        # Non-HTTP BentoError: the client wraps anything raised while reading the body
        # ("Error streaming response: ...").
        if "timed out" in str(exc).lower():
            return _Transient(stalled)
        return _Transient(f"the stream broke: {exc}")
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return _Transient(f"connection problem: {exc}")
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return _Transient(stalled)
    if isinstance(
        exc,
        requests.exceptions.ConnectionError
        | requests.exceptions.Timeout
        | requests.exceptions.ChunkedEncodingError
        | requests.exceptions.ContentDecodingError,
    ):
        return _Transient(f"connection problem: {type(exc).__name__}: {exc}")
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


def _classify_http(exc: BentoHttpError, what: str, req: RawRequest) -> _Transient:
    status = exc.http_status
    said = _server_message(exc)
    if status == 429 or status == 408 or (isinstance(exc, BentoServerError) and status >= 500):
        return _Transient(f"HTTP {status} {said}".rstrip(), _retry_after(exc.headers))
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
    return _Transient(f"HTTP {status} {said}".rstrip(), _retry_after(exc.headers))


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


# --------------------------------------------------------------------------------------------- verification


def _verify_download(part: Path, req: RawRequest, expected: int) -> int:
    """Check the body in `part` is the complete DBN asked for; return its record count.

    Read through the same stream as ingest (engine.sources.dbn): every zstd frame finished, every record
    whole, `expected` records. Complete DBN of the wrong dataset or schema raises EngineError straight away
    (buying it again would give the same answer); any other fault raises _BadBody.
    """
    try:
        info, count = count_records(part)
    except EngineError as exc:
        raise _BadBody(exc.problem.replace(str(part), "the body")) from None
    if (info.schema or "").lower() != req.schema.lower() or info.dataset != req.dataset:
        raise EngineError(
            f"Databento sent {info.dataset} {info.schema or 'mixed-schema'} data for {req.describe()}",
            "report this to support@databento.com; nothing was saved",
        )
    if count != expected:
        raise _BadBody(f"received {count:,} of {expected:,} records (metadata.get_record_count)")
    return count


# --------------------------------------------------------------------------------------------- files


def _sha256(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def _exclusive(final: Path) -> Iterator[None]:
    """Serialise fetches of the same request across processes (e.g. parallel multirun jobs)."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    with open(_lock_path(final), "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


class _ProgressPoller:
    """Reports the size of the file the client is writing, and how long it has not grown, from a thread."""

    def __init__(
        self,
        path: Path,
        on_bytes: Callable[[int], None] | None,
        on_stall: Callable[[float], None] | None = None,
        interval: float = PROGRESS_INTERVAL_SECONDS,
    ) -> None:
        self._path = path
        self._on_bytes = on_bytes
        self._on_stall = on_stall
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last = -1
        self._since = time.monotonic()
        self._shown = 0

    def __enter__(self) -> _ProgressPoller:
        if self._on_bytes is not None or self._on_stall is not None:
            self._poll()
            self._thread = threading.Thread(target=self._run, name="databento-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._poll()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._poll()

    def _poll(self) -> None:
        try:
            size = self._path.stat().st_size
        except OSError:
            size = 0
        now = time.monotonic()
        if size != self._last:
            self._last, self._since = size, now
            if self._on_bytes is not None:
                _notify(self._on_bytes, size)
            if self._shown and self._on_stall is not None:
                self._shown = 0
                self._on_stall(0.0)
            return
        stalled = int(now - self._since)
        if self._on_stall is not None and stalled >= STALL_REPORT_SECONDS and stalled != self._shown:
            self._shown = stalled
            self._on_stall(float(stalled))


def acquire(ctx, progress) -> Landing:
    """Download (or reuse) the job's window from Databento, with a byte counter on the progress bar."""
    symbol, source = ctx.symbol, ctx.cfg.source
    req = RawRequest(symbol.dataset, symbol.continuous, symbol.schema, symbol.stype_in, ctx.window.start,
                     ctx.window.end)
    label = f"download {symbol.continuous}"
    task = progress.add_task(label, total=None, unit="bytes")
    result = fetch_raw(
        req, Path(ctx.cfg.data_dir), max_cost_usd=source.max_cost_usd, max_retries=source.max_retries,
        backoff_seconds=source.backoff_seconds, timeouts=timeouts(source), gateway=source.gateway,
        on_bytes=lambda n: progress.update(task, completed=n),
        on_status=lambda text: progress.update(task, description=f"{label} ({text})" if text else label),
    )
    progress.update(task, visible=False)
    return Landing(
        [result.path],
        retries=result.retries,
        raw_files=[{"path": str(result.path), "sha256": result.sha256, "reused": result.reused,
                    "bytes": result.bytes, "cost_usd": result.cost_usd}],
    )


def timeouts(source: Any) -> Timeouts:
    """The Timeouts of a DatabentoSourceConfig."""
    return Timeouts(source.connect_timeout_seconds, source.read_timeout_seconds, source.retry_budget_seconds)
