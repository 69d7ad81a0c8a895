"""Issue 14 item 2: big pulls through Databento's batch API -- submit once, poll, download with the client's
resumable downloader, check the manifest, land each UTC day; a run killed while its job is pending or while it
downloads resumes that job. Full `python -m engine` runs against the local fake gateway (real TLS, real DBN
bytes, the official client unmodified), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import databento
import pytest
from fake_databento import BATCH_DOWNLOAD, GET_BILLABLE_SIZE, GET_RANGE, SUBMIT_JOB
from sql_rows import query

KEY = "db-BATCHTESTKEY0123456789abcdef"
RECORDS = 3000  # 1-minute bars from the window's start: 1440 + 1440 + 120 over three UTC days
WINDOW = ["window.start=2025-12-09T00:00:00Z", "window.end=2025-12-12T00:00:00Z"]
DAYS = ("20251209", "20251210", "20251211")


def job_args(db_url: str, fake, *extra: str) -> list[str]:
    return [f"db.url={db_url}", "symbol=NQ", "stages=[ingest]", "source=databento", f"source.gateway={fake.gateway}",
            "source.backoff_seconds=0.01", "source.definitions=false", "source.roll_outrights=false",
            "source.batch_poll_seconds=0.05", *WINDOW, *extra]


def batch_rows(url: str) -> list[dict]:
    return query(url, "SELECT * FROM databento_batch_jobs ORDER BY id")


def ingested(url: str) -> int:
    return query(url, "SELECT count(*) AS n FROM market_bars_ohlcv_1m_clean")[0]["n"]


def day_landings(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "data" / "raw" / "GLBX.MDP3" / "ohlcv-1m" / "NQ.v.0" / "days").glob("*.dbn.zst"))


def assert_landed_by_days(tmp_path: Path, job_id: str) -> None:
    landed = day_landings(tmp_path)
    assert [p.name[:8] for p in landed] == list(DAYS)
    records = []
    for path in landed:
        sidecar = json.loads(path.with_name(path.name + ".json").read_text())
        assert sidecar["origin"] == f"batch:{job_id}" and sidecar["file"] == path.name
        records.append(sidecar["records"])
    assert records == [1440, 1440, 120]
    assert not (tmp_path / "data" / "batch" / job_id).exists(), "the downloads are removed once landed"


def test_the_fake_batch_api_works_with_the_official_client_unmodified(fake_databento, tmp_path):
    fake = fake_databento(KEY, records=RECORDS)
    client = databento.Historical(key=KEY, gateway=fake.gateway)
    window = {"dataset": "GLBX.MDP3", "symbols": "NQ.v.0", "schema": "ohlcv-1m", "stype_in": "continuous",
              "start": "2025-12-09T00:00:00+00:00", "end": "2025-12-12T00:00:00+00:00"}
    assert client.metadata.get_billable_size(**window) > 56 * RECORDS  # uncompressed DBN: 56 bytes a bar
    job = client.batch.submit_job(**window, encoding="dbn", compression="zstd", split_duration="day")
    assert job["state"] == "received" and job["record_count"] == 1440 * 2 + 120
    states = [client.batch.list_jobs(states="queued,processing,done")[0]["state"] for _ in range(3)]
    assert states == ["queued", "processing", "done"]
    files = client.batch.list_files(job["id"])
    assert [f["filename"] for f in files] == [f"glbx-mdp3-{d}.ohlcv-1m.dbn.zst" for d in DAYS] + ["manifest.json"]
    first = files[0]
    fake.batch.cut_after[first["filename"]] = first["size"] // 2  # the connection breaks mid-file once
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a checksum warning would fail here
        [path] = client.batch.download(job["id"], output_dir=tmp_path, filename_to_download=first["filename"])
    assert path.stat().st_size == first["size"]
    ranges = [s.headers.get("range") for s in fake.seen(BATCH_DOWNLOAD)]
    assert ranges[0] is None and ranges[1].startswith("bytes=") and not ranges[1].startswith("bytes=0-")
    conditions = client.metadata.get_dataset_condition(dataset="GLBX.MDP3", start_date="2025-12-09",
                                                       end_date="2025-12-11")
    assert [c["condition"] for c in conditions] == ["available"] * 3 and conditions[0]["date"] == "2025-12-09"


def test_a_batch_job_is_submitted_once_polled_downloaded_checked_and_landed_by_day(
        engine_cli, db_url, fake_databento, tmp_path):
    fake = fake_databento(KEY, records=RECORDS, subprocess=True)
    fake.batch.queued_polls, fake.batch.processing_polls = 3, 2
    run = engine_cli(*job_args(db_url, fake, "source.mode=batch"))
    assert run.returncode == 0, run.output
    assert fake.batch.submitted() == 1 and not fake.seen(GET_RANGE)
    [job] = fake.seen(SUBMIT_JOB)
    assert (job.params["encoding"], job.params["compression"], job.params["split_duration"]) == ("dbn", "zstd", "day")
    [row] = batch_rows(db_url)
    assert row["state"] == "landed" and row["job_id"] == next(iter(fake.batch.jobs))
    assert_landed_by_days(tmp_path, row["job_id"])
    assert ingested(db_url) == RECORDS

    calls = len(fake.seen())
    again = engine_cli(*job_args(db_url, fake, "source.mode=batch"))
    assert again.returncode == 0, again.output
    assert fake.batch.submitted() == 1, "landed days are reused: nothing is bought again"
    assert not [s.endpoint for s in fake.seen()[calls:] if s.endpoint.startswith("batch")]
    assert ingested(db_url) == RECORDS


def test_auto_mode_batches_above_the_billable_threshold_and_streams_below(engine_cli, db_url, fake_databento):
    fake = fake_databento(KEY, records=RECORDS, subprocess=True)
    small = engine_cli(*job_args(db_url, fake, f"source.batch_threshold_bytes={10**9}"))
    assert small.returncode == 0, small.output
    assert len(fake.seen(GET_BILLABLE_SIZE)) == 1 and len(fake.seen(GET_RANGE)) == 1 and not fake.seen(SUBMIT_JOB)

    fake.batch.billable_size = 6 * 10**9
    big = engine_cli(*job_args(db_url, fake, "window.end=2025-12-13T00:00:00Z"))
    assert big.returncode == 0, big.output
    assert fake.batch.submitted() == 1 and len(fake.seen(GET_RANGE)) == 1


def test_a_file_whose_hash_is_not_the_manifests_is_downloaded_twice_then_the_run_stops_and_resumes(
        engine_cli, db_url, fake_databento, tmp_path):
    fake = fake_databento(KEY, records=RECORDS, subprocess=True)
    bad = f"glbx-mdp3-{DAYS[1]}.ohlcv-1m.dbn.zst"
    fake.batch.corrupt = {bad}
    failed = engine_cli(*job_args(db_url, fake, "source.mode=batch"))
    assert failed.returncode == 2, failed.output
    text = " ".join(failed.output.replace("│", " ").split())
    assert bad in text and "sha256" in text and "Traceback" not in failed.output
    downloads = [s.path.rsplit("/", 1)[-1] for s in fake.seen(BATCH_DOWNLOAD)]
    assert downloads.count(bad) == 2
    assert day_landings(tmp_path) == [] and ingested(db_url) == 0
    [row] = batch_rows(db_url)
    assert row["state"] == "done"

    fake.batch.corrupt = set()
    again = engine_cli(*job_args(db_url, fake, "source.mode=batch"))
    assert again.returncode == 0, again.output
    assert fake.batch.submitted() == 1, "the same job is downloaded again, not bought again"
    assert_landed_by_days(tmp_path, row["job_id"])
    assert ingested(db_url) == RECORDS


# ------------------------------------------------------------------------------------------------ killed runs


def start(tmp_path: Path, args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "engine", *args], cwd=tmp_path,
                            env={**os.environ, "COLUMNS": "160"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_until(proc: subprocess.Popen, condition, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the engine ended (exit {proc.returncode}) too early:\n{proc.communicate()[0][-3000:]}")
        assert time.monotonic() < deadline, "timed out waiting for the engine"
        time.sleep(0.02)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_a_run_killed_while_its_job_is_pending_resumes_the_same_job(engine_cli, db_url, fake_databento, tmp_path,
                                                                     signum):
    fake = fake_databento(KEY, records=RECORDS, subprocess=True)
    fake.batch.queued_polls = 10**9  # queued until the test says otherwise
    args = job_args(db_url, fake, "source.mode=batch")
    proc = start(tmp_path, args)
    try:
        wait_until(proc, lambda: any(r["job_id"] and r["state"] == "queued" for r in _rows(db_url)))
        time.sleep(0.2)  # a few polls
    finally:
        proc.send_signal(signum)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0, out
    [row] = batch_rows(db_url)
    assert row["job_id"] == next(iter(fake.batch.jobs)) and ingested(db_url) == 0

    fake.batch.queued_polls = 0
    again = engine_cli(*args)
    assert again.returncode == 0, again.output
    assert fake.batch.submitted() == 1
    [row] = batch_rows(db_url)
    assert row["state"] == "landed"
    assert_landed_by_days(tmp_path, row["job_id"])
    assert ingested(db_url) == RECORDS


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_a_run_killed_mid_download_resumes_the_file_with_a_range_request(engine_cli, db_url, fake_databento,
                                                                        tmp_path, signum):
    fake = fake_databento(KEY, records=RECORDS, subprocess=True)
    fake.batch.queued_polls = fake.batch.processing_polls = 0
    second = f"glbx-mdp3-{DAYS[1]}.ohlcv-1m.dbn.zst"
    fake.batch.stall_after = {second: (20_000, 60.0)}  # 20 kB of the file, then the connection hangs
    args = job_args(db_url, fake, "source.mode=batch")
    proc = start(tmp_path, args)

    def partial() -> bool:
        return any(p.name == second and p.stat().st_size > 0 for p in (tmp_path / "data" / "batch").rglob("*.zst"))

    try:
        wait_until(proc, lambda: (tmp_path / "data" / "batch").is_dir() and partial())
    finally:
        proc.send_signal(signum)
        out, _ = proc.communicate(timeout=60)
    [part] = [p for p in (tmp_path / "data" / "batch").rglob(second)]
    kept = part.stat().st_size
    assert 0 < kept < 40_000 and ingested(db_url) == 0
    if signum == signal.SIGTERM:  # the stalled download is interrupted at once, and the run says so
        assert proc.returncode == 130 and "Traceback" not in out, out[-3000:]
        [run] = query(db_url, "SELECT status, run_dir FROM engine_runs")
        result = json.loads((Path(run["run_dir"]) / "result.json").read_text())
        assert run["status"] == result["status"] == "interrupted" and result["error"] == "interrupted (SIGTERM)"
        [row] = batch_rows(db_url)
        assert row["state"] == "done", "the job stays the run's to resume"

    again = engine_cli(*args)
    assert again.returncode == 0, again.output
    assert fake.batch.submitted() == 1
    ranges = [s.headers.get("range") for s in fake.seen(BATCH_DOWNLOAD) if s.path.endswith(second)]
    assert ranges[-1].startswith(f"bytes={kept}-"), ranges
    [row] = batch_rows(db_url)
    assert row["state"] == "landed"
    assert_landed_by_days(tmp_path, row["job_id"])
    assert ingested(db_url) == RECORDS


def test_a_stalled_download_is_ended_and_resumed_within_the_run(engine_cli, db_url, fake_databento, tmp_path):
    """The client's downloader has no read timeout; the run's watch ends the stalled download after
    source.read_timeout_seconds and the retry resumes the kept part with a Range request."""
    fake = fake_databento(KEY, records=RECORDS, subprocess=True)
    fake.batch.queued_polls = fake.batch.processing_polls = 0
    second = f"glbx-mdp3-{DAYS[1]}.ohlcv-1m.dbn.zst"
    fake.batch.stall_after = {second: (20_000, 120.0)}  # once: 20 kB, then the connection hangs for 2 minutes
    started = time.monotonic()
    done = engine_cli(*job_args(db_url, fake, "source.mode=batch", "source.read_timeout_seconds=2"))
    assert done.returncode == 0, done.output
    assert time.monotonic() - started < 60, "the stall was waited out, not ended"
    ranges = [s.headers.get("range") for s in fake.seen(BATCH_DOWNLOAD) if s.path.endswith(second)]
    assert len(ranges) == 2 and ranges[0] is None and ranges[1].startswith("bytes="), ranges
    assert 0 < int(ranges[1].removeprefix("bytes=").split("-")[0]) <= 20_000, "the kept part is resumed"
    [run] = query(db_url, "SELECT run_dir FROM engine_runs")
    assert json.loads((Path(run["run_dir"]) / "result.json").read_text())["stages"]["ingest"]["retries"] >= 1
    assert fake.batch.submitted() == 1 and ingested(db_url) == RECORDS
    assert_landed_by_days(tmp_path, next(iter(fake.batch.jobs)))


def _rows(url: str) -> list[dict]:
    try:
        return batch_rows(url)
    except Exception:  # noqa: BLE001 -- the table appears when the run has migrated the database
        return []


# ------------------------------------------------------------------------------------------ in process: rare paths


def _source(fake):
    from types import SimpleNamespace

    return SimpleNamespace(gateway=fake.gateway, mode="batch", batch_threshold_bytes=0, batch_poll_seconds=0.01,
                           max_retries=1, backoff_seconds=0.01)


def _request():
    import datetime as dt

    from engine.sources.databento_request import RawRequest

    return RawRequest("GLBX.MDP3", "NQ.v.0", "ohlcv-1m", "continuous", dt.datetime(2025, 12, 9, tzinfo=dt.UTC),
                      dt.datetime(2025, 12, 12, tzinfo=dt.UTC))


def _policy():
    from engine.sources.databento_retry import RetryPolicy

    return RetryPolicy(1, 0.01, 0.1, time.sleep)


def test_a_job_submitted_by_a_run_killed_before_its_answer_is_found_again_not_bought_again(
        db, fake_databento, tmp_path):
    from engine.db import batch_jobs
    from engine.sources.databento_batch import fetch_batch

    fake = fake_databento(KEY, records=RECORDS)
    req = _request()
    batch_jobs.record_submitting(db, req, None)  # the row was committed, then the run died before the answer
    databento.Historical(key=KEY, gateway=fake.gateway).batch.submit_job(  # ...which Databento had received
        **req.client_params(), encoding="dbn", compression="zstd", split_duration="day")
    landed = fetch_batch(req, tmp_path, db, None, _source(fake), _policy(), sleep=lambda s: None)
    assert landed == 3 and fake.batch.submitted() == 1
    [row] = batch_jobs.job_rows(db)
    assert row["job_id"] == next(iter(fake.batch.jobs)) and row["state"] == "landed"


def test_an_expired_job_stops_the_run_and_the_next_one_submits_anew(db, fake_databento, tmp_path):
    from engine.db import batch_jobs
    from engine.errors import EngineError
    from engine.sources.databento_batch import fetch_batch

    fake = fake_databento(KEY, records=RECORDS)
    fake.batch.queued_polls = 10**9
    req = _request()
    calls = []

    def expire_on_second_poll(seconds: float) -> None:
        calls.append(seconds)
        if len(calls) == 2:
            fake.batch.expire(next(iter(fake.batch.jobs)))

    with pytest.raises(EngineError, match="expired before its files were downloaded"):
        fetch_batch(req, tmp_path, db, None, _source(fake), _policy(), sleep=expire_on_second_poll)
    assert [r["state"] for r in batch_jobs.job_rows(db)] == ["expired"]
    fake.batch.queued_polls = 0
    assert fetch_batch(req, tmp_path, db, None, _source(fake), _policy(), sleep=lambda s: None) == 3
    assert fake.batch.submitted() == 2 and [r["state"] for r in batch_jobs.job_rows(db)] == ["expired", "landed"]
