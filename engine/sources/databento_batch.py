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
   all files must add up to the job's `record_count`; then each day that is still missing is landed as a day
   piece (engine/sources/databento_days.py: `land_day_body`, sidecar origin `batch:<job_id>`) and the row
   becomes `landed`. The window is then served from its day pieces like a streamed one.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import re
import shutil
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import databento
from sqlalchemy import Engine

from engine.db import batch_jobs
from engine.errors import EngineError
from engine.sources.databento_batch_download import download_files
from engine.sources.databento_client import (
    BatchFile,
    get_billable_size,
    historical,
    job_details,
    list_files,
    list_jobs,
    submit_job,
)
from engine.sources.databento_conditions import day_request
from engine.sources.databento_days import day_pieces, days_dir, land_day_body, locked_days
from engine.sources.databento_days import plan_days as days_plan
from engine.sources.databento_request import RawRequest
from engine.sources.databento_retry import RetryPolicy
from engine.sources.dbn import count_records
from engine.sources.landing import file_digest

log = logging.getLogger(__name__)

MODES = ("auto", "stream", "batch")
_DAY_IN_NAME = re.compile(r"-(\d{8})\.")


def wants_batch(source, runs: list[RawRequest], policy: RetryPolicy) -> bool:
    """Whether the missing `runs` of a window are bought as batch jobs (source.mode; for `auto`, whether the bytes
    Databento bills for them exceed source.batch_threshold_bytes)."""
    if not runs or source.mode != "auto":
        return bool(runs) and source.mode == "batch"
    client = historical(source.gateway)
    size = sum(get_billable_size(client, run, policy) for run in runs)
    chosen = size > source.batch_threshold_bytes
    log.info("Databento bills %d bytes for %d missing run(s) of %s: %s (source.batch_threshold_bytes=%d)", size,
             len(runs), runs[0].describe(), "batch jobs" if chosen else "streamed", source.batch_threshold_bytes)
    return chosen


def fetch_batch(req: RawRequest, data_dir: Path, db: Engine, run_id: int | None, source, policy: RetryPolicy,
                on_status: Callable[[str], None] | None = None, flags: dict[dt.date, dict] | None = None,
                sleep: Callable[[float], object] = time.sleep) -> int:
    """Land the missing days of `req` through one batch job (resumed when a row says one was submitted already);
    returns how many day pieces it landed. `flags`: each day's condition (databento_conditions), kept in its
    sidecar."""
    client = historical(source.gateway)
    row, job_id, job_req = _job_for(client, db, req, run_id, policy)
    _wait_done(client, db, row, job_id, source.batch_poll_seconds, policy, on_status, sleep)
    details = job_details(client, job_id, policy)
    manifest = [f for f in list_files(client, job_id, policy) if f.filename.endswith(".dbn.zst")]
    folder = Path(data_dir) / "batch"
    paths = _downloads_checked(source.gateway, job_id, manifest, folder, policy, on_status)
    counted = [(item, paths[item.filename], _check_file(paths[item.filename], job_req, job_id)) for item in manifest]
    total = sum(records for _, _, records in counted)
    if isinstance(details.get("record_count"), int) and total != details["record_count"]:
        raise EngineError(
            f"the files of Databento batch job {job_id} hold {total:,} records, the job says "
            f"{details['record_count']:,}; nothing was landed",
            f"run again to download them once more (free for 30 days); if it persists contact "
            f"support@databento.com about job {job_id}")
    landed = 0
    with locked_days(days_dir(data_dir, job_req), [job_req]):
        # Only pieces still missing, and only where the job's file is exactly that piece (a day piece never
        # overlaps another): what is left is streamed by the caller.
        missing = {piece: None for run in days_plan(data_dir, job_req).missing for piece in day_pieces(run)}
        for item, path, records in counted:
            day = _day_of(item.filename, job_id)
            piece = day_request(job_req, day)
            if piece not in missing:
                continue
            land_day_body(path, piece, expected_records=records, data_dir=data_dir, sidecar_extra={
                "origin": f"batch:{job_id}", "batch_job": job_id, "cost_usd": None,
                "records_checked": "batch.list_files sha256 and the job's record_count", **(flags or {}).get(day, {}),
            })
            landed += 1
    batch_jobs.record_state(db, row, "landed")
    with contextlib.suppress(OSError):
        shutil.rmtree(folder / job_id)
    log.info("Landed %d day pieces of batch job %s (%d records)", landed, job_id, total)
    return landed


def _job_for(client: databento.Historical, db: Engine, req: RawRequest, run_id: int | None,
             policy: RetryPolicy) -> tuple[int, str, RawRequest]:
    """(row id, Databento job id, the job's request) for `req`: a recorded job that covers it (or one found again at
    Databento), else a new one."""
    open_row = batch_jobs.open_job(db, req)
    if open_row is not None and open_row.job_id is not None:
        log.info("Resuming Databento batch job %s (%s) for %s", open_row.job_id, open_row.state, req.describe())
        return open_row.id, open_row.job_id, open_row.request
    if open_row is not None:  # killed between committing the row and recording Databento's answer
        found = _submitted_since(client, open_row.request, open_row.submitted_at - dt.timedelta(minutes=5), policy)
        if found is not None:
            batch_jobs.record_job(db, open_row.id, found["id"], found["state"], found.get("cost_usd"))
            log.info("Found Databento batch job %s submitted by an earlier run for %s", found["id"],
                     req.describe())
            return open_row.id, found["id"], open_row.request
        batch_jobs.record_state(db, open_row.id, "expired")  # never reached Databento
    row = batch_jobs.record_submitting(db, req, run_id)
    job = submit_job(client, req, policy)
    batch_jobs.record_job(db, row.id, job["id"], job["state"], job.get("cost_usd"))
    log.info("Submitted Databento batch job %s for %s", job["id"], req.describe())
    return row.id, job["id"], req


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


def _downloads_checked(gateway: str | None, job_id: str, manifest: list[BatchFile], folder: Path,
                       policy: RetryPolicy, on_status: Callable[[str], None] | None) -> dict[str, Path]:
    """The downloaded files of `manifest` by name, each of the manifest's size and sha256; a file that is not is
    downloaded afresh once."""
    paths = download_files(gateway, job_id, [item.filename for item in manifest], folder, policy, on_status)
    bad = [item for item in manifest if _mismatch(paths[item.filename], item, job_id, attempt=1)]
    if bad:
        paths.update(download_files(gateway, job_id, [item.filename for item in bad], folder, policy, on_status))
    for item in bad:
        if problem := _mismatch(paths[item.filename], item, job_id, attempt=2):
            raise EngineError(f"{problem}, twice; nothing was landed",
                              f"run again to download it once more (free for 30 days); if it persists contact "
                              f"support@databento.com about job {job_id}")
    return paths


def _mismatch(path: Path, item: BatchFile, job_id: str, attempt: int) -> str:
    """Empty if the file at `path` has the manifest's size and sha256; else why not (warned, the file removed)."""
    sha256, size = file_digest(path)
    if (sha256, size) == (item.sha256, item.size):
        return ""
    problem = (f"{item.filename} of Databento batch job {job_id} has {size:,} bytes with sha256 {sha256[:12]}…, "
               f"the manifest says {item.size:,} bytes with sha256 {item.sha256[:12]}…")
    log.warning("%s (download %d of 2)", problem, attempt)
    path.unlink(missing_ok=True)
    return problem


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
