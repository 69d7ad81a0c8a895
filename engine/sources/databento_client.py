"""The calls this engine makes through `databento.Historical`, each with its timeouts and retries.

The API key comes only from the DATABENTO_API_KEY environment variable and is never logged or written.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import databento
import databento_dbn
import requests
from databento.common.error import BentoError, BentoHttpError

from engine.errors import EngineError
from engine.sources import databento_ratelimit as ratelimit
from engine.sources.databento_request import RawRequest
from engine.sources.databento_retry import API_KEY_ENV, RetryPolicy

_EPOCH = dt.date(1970, 1, 1)


def api_key() -> str:
    key = os.environ.get(API_KEY_ENV, "")
    if not key.strip():
        raise EngineError(
            f"{API_KEY_ENV} is not set, so Databento's API cannot be used",
            f"export {API_KEY_ENV}=<your key from https://databento.com/portal/keys> "
            "(or use source=dbn_file with files you already have)",
        )
    return key.strip()


def historical(gateway: str | None) -> databento.Historical:
    key = api_key()
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


def _prepare(client: databento.Historical, api: Any, policy: RetryPolicy) -> None:
    """Before each call: the connect timeout (probed), the host's rate-limit budget of the endpoint class, then
    the read timeout on this client instance.

    The client passes its one `TIMEOUT` (read per instance) as both the connect and the read timeout to
    requests, so the connect timeout is checked by `probe_connect` first.
    """
    probe_connect(client.gateway, policy.timeouts.connect_seconds)
    ratelimit.throttle(next((name for name in ratelimit.CLASSES if getattr(client, name) is api), None))
    api.TIMEOUT = policy.attempt_timeout()


def get_cost(client: databento.Historical, req: RawRequest, policy: RetryPolicy) -> float:
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


def get_dataset_range(client: databento.Historical, dataset: str, policy: RetryPolicy) -> dict:
    """`metadata.get_dataset_range` (free): {"start", "end", "schema": {name: {"start", "end"}}}, ISO-8601 UTC."""

    def call() -> dict:
        _prepare(client, client.metadata, policy)
        return client.metadata.get_dataset_range(dataset=dataset)

    answer = policy.run(call, "metadata.get_dataset_range", DatasetQuery(dataset))
    if not isinstance(answer, dict) or not isinstance(answer.get("end"), str):
        raise EngineError(
            f"Databento's metadata.get_dataset_range answered {str(answer)[:200]!r} for {dataset}",
            "try again later; if it persists contact support@databento.com",
        )
    return answer


@dataclass(frozen=True)
class DatasetQuery:
    """What a dataset-wide call is about, as the retry policy names it in its messages."""

    dataset: str

    def describe(self) -> str:
        return f"{self.dataset} (dataset range)"


def get_record_count(client: databento.Historical, req: RawRequest, policy: RetryPolicy) -> int:
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


def resolve(client: databento.Historical, req: RawRequest, policy: RetryPolicy) -> dict:
    """`symbology.resolve` (free) of `req`'s symbols to instrument ids over its UTC days, as Databento answers:
    {"result": {symbol: [{"d0", "d1", "s"}]}, "partial", "not_found", "message", "status", ...}."""
    start = req.start.date()
    end = (req.end - dt.timedelta(microseconds=1)).date() + dt.timedelta(days=1)

    def call() -> dict:
        _prepare(client, client.symbology, policy)
        return client.symbology.resolve(dataset=req.dataset, symbols=req.symbols, stype_in=req.stype_in,
                                        stype_out="instrument_id", start_date=start, end_date=end)

    answer = policy.run(call, "symbology.resolve", req)
    if not isinstance(answer, dict) or not isinstance(answer.get("result"), dict):
        raise EngineError(
            f"Databento's symbology.resolve answered {str(answer)[:200]!r} for {req.describe()}",
            "try again later; if it persists contact support@databento.com",
        )
    return answer


def intervals_of(answer: dict, req: RawRequest) -> list[tuple[int, int, int, str]]:
    """The mappings of a `resolve` answer as `DbnFileInfo.intervals` ((instrument_id, start_day, end_day, symbol),
    days since the epoch, end exclusive). Symbols Databento does not find map to nothing."""
    intervals = []
    try:
        for symbol, entries in answer["result"].items():
            for entry in entries:
                first, last = dt.date.fromisoformat(entry["d0"]), dt.date.fromisoformat(entry["d1"])
                if entry.get("s") and last > first:
                    intervals.append((int(entry["s"]), (first - _EPOCH).days, (last - _EPOCH).days, symbol))
    except (KeyError, TypeError, ValueError) as exc:
        raise EngineError(
            f"Databento's symbology.resolve answered an unreadable mapping for {req.describe()}: {exc!r}",
            "try again later; if it persists contact support@databento.com",
        ) from None
    return intervals


def resolve_intervals(
    client: databento.Historical, req: RawRequest, policy: RetryPolicy
) -> list[tuple[int, int, int, str]]:
    """The symbology mappings of `req`'s symbols over its UTC days (`resolve`, then `intervals_of`)."""
    return intervals_of(resolve(client, req, policy), req)


def download(client: databento.Historical, req: RawRequest, part: Path, policy: RetryPolicy) -> None:
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


def probe_connect(gateway: str, seconds: float) -> None:
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


# --------------------------------------------------------------------------------------------- batch jobs, conditions
# Issue 14 items 2 and 3: the batch API (submit a job, watch its state, list and download its files) and the free
# metadata calls that decide what is bought (billable size, per-day dataset condition).

JOB_STATES = ("received", "queued", "processing", "done", "expired")
CONDITIONS = ("available", "degraded", "pending", "missing")
_UNREADABLE = "try again later; if it persists contact support@databento.com"


@dataclass(frozen=True)
class JobQuery:
    """What a call about one batch job is about, as the retry policy names it in its messages."""

    job_id: str

    def describe(self) -> str:
        return f"batch job {self.job_id}"


@dataclass(frozen=True)
class BatchFile:
    """One file of a done batch job, as `batch.list_files` lists it."""

    filename: str
    size: int
    sha256: str  # hex, from the listed "sha256:<hex>"


@dataclass(frozen=True)
class DayCondition:
    """`metadata.get_dataset_condition` for one UTC day."""

    day: dt.date
    condition: str  # available | degraded | pending | missing
    last_modified: dt.date | None


def get_billable_size(client: databento.Historical, req: RawRequest, policy: RetryPolicy) -> int:
    """The bytes Databento bills for `req` (`metadata.get_billable_size`, free): what decides stream or batch."""

    def call() -> int:
        _prepare(client, client.metadata, policy)
        return client.metadata.get_billable_size(**req.client_params())

    size = policy.run(call, "metadata.get_billable_size", req)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise EngineError(f"Databento's metadata.get_billable_size answered {size!r} for {req.describe()}",
                          _UNREADABLE)
    return size


def get_dataset_condition(client: databento.Historical, dataset: str, first: dt.date, last: dt.date,
                          policy: RetryPolicy) -> dict[dt.date, DayCondition]:
    """The condition of each UTC day in [first, last] (both inclusive, as the endpoint takes them), free."""

    def call() -> list:
        _prepare(client, client.metadata, policy)
        return client.metadata.get_dataset_condition(dataset=dataset, start_date=first, end_date=last)

    answer = policy.run(call, "metadata.get_dataset_condition", DatasetQuery(dataset))
    days: dict[dt.date, DayCondition] = {}
    try:
        for entry in answer:
            modified = entry.get("last_modified_date")
            item = DayCondition(dt.date.fromisoformat(entry["date"]), entry["condition"],
                                dt.date.fromisoformat(modified) if modified else None)
            if item.condition not in CONDITIONS:
                raise ValueError(f"condition {item.condition!r}")
            days[item.day] = item
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise EngineError(f"Databento's metadata.get_dataset_condition answered an unreadable list for {dataset} "
                          f"{first}..{last}: {exc!r}", _UNREADABLE) from None
    return days


def submit_job(client: databento.Historical, req: RawRequest, policy: RetryPolicy) -> dict:
    """`batch.submit_job` for `req`: DBN, zstd, one file per UTC day. This is what costs money, so it is sent
    once and never retried (a retry after a lost answer could buy the job twice); see databento_batch."""

    def call() -> dict:
        ratelimit.throttle(ratelimit.BATCH_SUBMIT)
        _prepare(client, client.batch, policy)
        return client.batch.submit_job(**req.client_params(), encoding="dbn", compression="zstd",
                                       split_duration="day", delivery="download", stype_out="instrument_id")

    once = dataclasses.replace(policy, max_retries=0)
    job = once.run(call, "batch.submit_job", req)
    return _checked_job(job, "batch.submit_job", req.describe())


def job_details(client: databento.Historical, job_id: str, policy: RetryPolicy) -> dict:
    """`batch.get_job_details`: every field of the job, its `state` one of JOB_STATES."""

    def call() -> dict:
        _prepare(client, client.batch, policy)
        return client.batch.get_job_details(job_id=job_id)

    return _checked_job(policy.run(call, "batch.get_job_details", JobQuery(job_id)), "batch.get_job_details",
                        f"batch job {job_id}")


def list_jobs(client: databento.Historical, since: dt.datetime, policy: RetryPolicy) -> list[dict]:
    """`batch.list_jobs` of jobs submitted since `since` that are not expired: [{"id", "state", "ts_received"}]."""

    def call() -> list:
        _prepare(client, client.batch, policy)
        return client.batch.list_jobs(states="queued,processing,done", since=since)

    answer = policy.run(call, "batch.list_jobs", DatasetQuery("batch jobs"))
    if not isinstance(answer, list):
        raise EngineError(f"Databento's batch.list_jobs answered {str(answer)[:200]!r}", _UNREADABLE)
    return [_checked_job(job, "batch.list_jobs", "batch jobs") for job in answer]


def list_files(client: databento.Historical, job_id: str, policy: RetryPolicy) -> list[BatchFile]:
    """`batch.list_files` of a done job: each file's name, size and sha256 (the manifest the downloads are
    checked against)."""

    def call() -> list:
        _prepare(client, client.batch, policy)
        return client.batch.list_files(job_id=job_id)

    answer = policy.run(call, "batch.list_files", JobQuery(job_id))
    files = []
    try:
        for entry in answer:
            algorithm, _, digest = str(entry["hash"]).partition(":")
            if algorithm != "sha256" or len(digest) != 64:
                raise ValueError(f"hash {entry['hash']!r} is not sha256:<hex>")
            files.append(BatchFile(str(entry["filename"]), int(entry["size"]), digest.lower()))
    except (KeyError, TypeError, ValueError) as exc:
        raise EngineError(f"Databento's batch.list_files answered an unreadable manifest for batch job {job_id}: "
                          f"{exc!r}", _UNREADABLE) from None
    if not files:
        raise EngineError(f"Databento's batch.list_files lists no files for batch job {job_id}", _UNREADABLE)
    return files


def _checked_job(job: Any, what: str, about: str) -> dict:
    if not isinstance(job, dict) or not isinstance(job.get("id"), str) or job.get("state") not in JOB_STATES:
        raise EngineError(f"Databento's {what} answered {str(job)[:200]!r} for {about}", _UNREADABLE)
    return job
