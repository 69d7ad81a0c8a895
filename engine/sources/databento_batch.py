"""Big pulls through Databento's batch API: submit a job once, wait for it, download and land its days.

Chosen by `source.mode` (auto | stream | batch): `auto` uses a batch job when the bytes Databento bills for the
request (`metadata.get_billable_size`, free) exceed `source.batch_threshold_bytes` (Databento recommends batch
above ~5 GB; its files can be downloaded again free of charge for 30 days).

A job is DBN, zstd, `split_duration=day`: one file per UTC day. Its life, and what a killed run finds again:

1. a `databento_batch_jobs` row (state `submitting`) is committed, then `batch.submit_job` is sent once (never
   retried: a retry after a lost answer could buy the job twice) and its id committed to the row -- all before
   anything is waited for. A run that finds a `submitting` row without an id looks for a job of exactly its
   request among Databento's recent jobs (`batch.list_jobs`) before it submits one;
2. `batch.get_job_details` every `source.batch_poll_seconds` with a progress line (state, elapsed) until `done`;
3. `batch.list_files` is the manifest: each day's file is downloaded with the client's own downloader into
   `<data_dir>/batch/<job_id>/`, which resumes a partial file (one a killed run left, too) with an HTTP Range
   request; its size and sha256 must be the manifest's (once more from scratch, then the run stops);
4. every file is read through the ingest's DBN reader (whole records, dataset and schema) and the records of
   all files must add up to the job's `record_count`; then each day is landed with its sidecar beside the
   streamed landings and the row becomes `landed`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import databento
from sqlalchemy import Engine

from engine.db import batch_jobs
from engine.errors import EngineError
from engine.sources.databento_client import (
    BatchFile,
    download_job_file,
    get_billable_size,
    historical,
    job_details,
    list_files,
    list_jobs,
    submit_job,
)
from engine.sources.databento_conditions import day_request, days_of
from engine.sources.databento_request import RawRequest
from engine.sources.databento_retry import RetryPolicy
from engine.sources.dbn import count_records
from engine.sources.landing import (
    exclusive,
    file_digest,
    fsync_dir,
    fsync_file,
    read_sidecar,
    set_aside,
    sidecar_path,
    write_json_atomic,
)

log = logging.getLogger(__name__)

MODES = ("auto", "stream", "batch")
_DAY_IN_NAME = re.compile(r"-(\d{8})\.")


@dataclass(frozen=True)
class LandedDay:
    path: Path
    sha256: str
    bytes: int
    records: int
    job_id: str
    reused: bool = False


def batch_landed(req: RawRequest, data_dir: Path) -> bool:
    """Whether a batch job landed every day of `req` (by the sidecars; `landed_days` checks the files)."""
    return all("batch_job" in (read_sidecar(day_request(req, day).landing_path(data_dir)) or {})
               for day in days_of(req))


def landed_days(req: RawRequest, data_dir: Path) -> list[LandedDay] | None:
    """The days of `req` a batch job landed, each checked again against its sidecar (size, sha256, records);
    None unless every day is landed so. A landing that fails the check is moved aside and EngineError raised."""
    paths = [day_request(req, day).landing_path(data_dir) for day in days_of(req)]
    sidecars = [read_sidecar(path) for path in paths]
    if any(sidecar is None or "batch_job" not in sidecar for sidecar in sidecars):
        return None
    days = []
    for path, sidecar in zip(paths, sidecars, strict=True):
        if sidecar.get("file") is None and sidecar.get("records") == 0:
            continue  # a day the job had no file for: nothing to read
        if not path.is_file():
            return None
        sha256, size = file_digest(path)
        records = None
        with contextlib.suppress(EngineError):
            records = count_records(path)[1]
        if (sha256, size, records) != (sidecar.get("sha256"), sidecar.get("bytes"), sidecar.get("records")):
            kept = set_aside(path, path)
            raise EngineError(
                f"the landed Databento file {path} is not the day batch job {sidecar['batch_job']} delivered "
                f"(size, sha256 or record count differ). Moved it (and its sidecar) to {kept} for inspection",
                "run again to buy that window once more")
        days.append(LandedDay(path, sha256, size, records, sidecar["batch_job"], reused=True))
    log.info("Reusing %d days landed by batch jobs for %s", len(days), req.describe())
    return days


def wants_batch(source, req: RawRequest, policy: RetryPolicy) -> bool:
    """Whether `req` is bought as a batch job (source.mode, and for `auto` its billable size)."""
    if source.mode != "auto":
        return source.mode == "batch"
    size = get_billable_size(historical(source.gateway), req, policy)
    chosen = size > source.batch_threshold_bytes
    log.info("Databento bills %d bytes for %s: %s (source.batch_threshold_bytes=%d)", size, req.describe(),
             "a batch job" if chosen else "streamed", source.batch_threshold_bytes)
    return chosen


def fetch_batch(req: RawRequest, data_dir: Path, db: Engine, run_id: int | None, source, policy: RetryPolicy,
                on_status: Callable[[str], None] | None = None, flags: dict[dt.date, dict] | None = None,
                sleep: Callable[[float], object] = time.sleep) -> list[LandedDay]:
    """Land `req` day by day through one batch job (resumed when a row says one was submitted already), or reuse
    the days a job landed before. `flags`: each day's condition (databento_conditions), kept in its sidecar."""
    landed = landed_days(req, data_dir)
    if landed is not None:
        return landed
    client = historical(source.gateway)
    row, job_id = _job_for(client, db, req, run_id, policy)
    _wait_done(client, db, row, job_id, source.batch_poll_seconds, policy, on_status, sleep)
    details = job_details(client, job_id, policy)
    manifest = [f for f in list_files(client, job_id, policy) if f.filename.endswith(".dbn.zst")]
    folder = Path(data_dir) / "batch"
    downloads = []
    for number, item in enumerate(manifest, 1):
        if on_status:
            on_status(f"batch job {job_id}: downloading file {number}/{len(manifest)}")
        downloads.append((item, _download_checked(client, job_id, item, folder, policy)))
    counted = [(item, path, _check_file(path, req, job_id)) for item, path in downloads]
    total = sum(records for _, _, records in counted)
    if isinstance(details.get("record_count"), int) and total != details["record_count"]:
        raise EngineError(
            f"the files of Databento batch job {job_id} hold {total:,} records, the job says "
            f"{details['record_count']:,}; nothing was landed",
            f"run again to download them once more (free for 30 days); if it persists contact "
            f"support@databento.com about job {job_id}")
    landed = [_land_day(req, data_dir, item, path, records, job_id, flags or {}) for item, path, records in counted]
    for day in set(days_of(req)) - {_day_of(item.filename, job_id) for item in manifest}:
        _land_empty_day(day_request(req, day).landing_path(data_dir), day_request(req, day), job_id)
    batch_jobs.record_state(db, row, "landed")
    with contextlib.suppress(OSError):
        shutil.rmtree(folder / job_id)
    log.info("Landed %d days of batch job %s (%d records)", len(landed), job_id, total)
    return landed


def _job_for(client: databento.Historical, db: Engine, req: RawRequest, run_id: int | None,
             policy: RetryPolicy) -> tuple[int, str]:
    """(row id, Databento job id) of `req`'s job: the one recorded (or found again at Databento), else a new one."""
    open_row = batch_jobs.open_job(db, req)
    if open_row is not None and open_row.job_id is not None:
        log.info("Resuming Databento batch job %s (%s) for %s", open_row.job_id, open_row.state, req.describe())
        return open_row.id, open_row.job_id
    if open_row is not None:  # killed between committing the row and recording Databento's answer
        found = _submitted_since(client, req, open_row.submitted_at - dt.timedelta(minutes=5), policy)
        if found is not None:
            batch_jobs.record_job(db, open_row.id, found["id"], found["state"], found.get("cost_usd"))
            log.info("Found Databento batch job %s submitted by an earlier run for %s", found["id"],
                     req.describe())
            return open_row.id, found["id"]
        batch_jobs.record_state(db, open_row.id, "expired")  # never reached Databento
    row = batch_jobs.record_submitting(db, req, run_id)
    job = submit_job(client, req, policy)
    batch_jobs.record_job(db, row.id, job["id"], job["state"], job.get("cost_usd"))
    log.info("Submitted Databento batch job %s for %s", job["id"], req.describe())
    return row.id, job["id"]


def _submitted_since(client, req: RawRequest, since: datetime, policy: RetryPolicy) -> dict | None:
    from engine.sources.databento_api import parse_iso_ns

    for job in list_jobs(client, since, policy):
        full = job_details(client, job["id"], policy)
        same = (full.get("dataset"), full.get("symbols"), full.get("schema"), full.get("stype_in")) == (
            req.dataset, ",".join(req.symbols), req.schema, req.stype_in)
        with contextlib.suppress(KeyError, TypeError, ValueError):
            if same and (parse_iso_ns(full["start"]), parse_iso_ns(full["end"])) == (req.start, req.end):
                return full
    return None


def _wait_done(client, db: Engine, row: int, job_id: str, poll_seconds: float, policy: RetryPolicy,
               on_status: Callable[[str], None] | None, sleep: Callable[[float], object]) -> None:
    started = time.monotonic()
    last = None
    while True:
        state = job_details(client, job_id, policy)["state"]
        elapsed = time.monotonic() - started
        if state != last:
            batch_jobs.record_state(db, row, state)
            log.info("Databento batch job %s: %s (%.0f s)", job_id, state, elapsed)
            last = state
        if on_status:
            on_status(f"batch job {job_id}: {state}, {elapsed:.0f} s")
        if state == "done":
            return
        if state == "expired":
            raise EngineError(
                f"Databento batch job {job_id} expired before its files were downloaded; nothing was landed",
                "run again to submit a new job (Databento charges for it again)")
        sleep(poll_seconds)


def _download_checked(client, job_id: str, item: BatchFile, folder: Path, policy: RetryPolicy) -> Path:
    """The downloaded file of `item`, its size and sha256 the manifest's; downloaded afresh once if not."""
    problem = ""
    for attempt in (1, 2):
        path = download_job_file(client, job_id, item.filename, folder, policy)
        sha256, size = file_digest(path)
        if (sha256, size) == (item.sha256, item.size):
            return path
        problem = (f"{item.filename} of Databento batch job {job_id} has {size:,} bytes with sha256 "
                   f"{sha256[:12]}…, the manifest says {item.size:,} bytes with sha256 {item.sha256[:12]}…")
        log.warning("%s (download %d of 2)", problem, attempt)
        path.unlink(missing_ok=True)
    raise EngineError(f"{problem}, twice; nothing was landed",
                      f"run again to download it once more (free for 30 days); if it persists contact "
                      f"support@databento.com about job {job_id}")


def _check_file(path: Path, req: RawRequest, job_id: str) -> int:
    info, records = count_records(path)  # EngineError naming the file when it is cut or damaged
    if (info.schema or "").lower() != req.schema.lower() or info.dataset != req.dataset:
        raise EngineError(
            f"Databento batch job {job_id} sent {info.dataset} {info.schema or 'mixed-schema'} data in "
            f"{path.name} for {req.describe()}", "report this to support@databento.com; nothing was landed")
    return records


def _day_of(filename: str, job_id: str) -> dt.date:
    match = _DAY_IN_NAME.search(filename)
    if match is None:
        raise EngineError(f"Databento batch job {job_id} has a file {filename} without a day in its name",
                          "report this to support@databento.com; nothing was landed")
    return datetime.strptime(match.group(1), "%Y%m%d").date()


def _land_empty_day(final: Path, day_req: RawRequest, job_id: str) -> None:
    """A day of the job without a file (no data that day): only a sidecar, so the day is not bought again."""
    final.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(sidecar_path(final), {"request": day_req.as_dict(), "file": None, "records": 0,
                                            "batch_job": job_id})


def _land_day(req: RawRequest, data_dir: Path, item: BatchFile, path: Path, records: int,
              job_id: str, flags: dict[dt.date, dict]) -> LandedDay:
    day = _day_of(item.filename, job_id)
    day_req = day_request(req, day)
    final = day_req.landing_path(data_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(final):
        fsync_file(path)
        write_json_atomic(sidecar_path(final), {
            "request": day_req.as_dict(), "file": final.name, "sha256": item.sha256, "bytes": item.size,
            "records": records, "records_checked": "batch.list_files sha256 and the job's record_count",
            "batch_job": job_id, "cost_usd": None, "retries": 0,
            "downloaded_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "client": f"databento {databento.__version__}", **flags.get(day, {}),
        })
        os.replace(path, final)
        fsync_dir(final.parent)
    return LandedDay(final, item.sha256, item.size, records, job_id)
