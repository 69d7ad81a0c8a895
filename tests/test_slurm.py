"""Sweeps on a real Slurm cluster (`scripts/slurm-local start`; .ci/run starts it): jobs as array tasks, a failing
job, jobs killed inside Slurm. Skipped when no cluster answers `srun true`; with CI=true that is a failure."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from fake_databento import GET_RANGE, Reply
from sql_rows import query

IN_CI = os.environ.get("CI", "").lower() == "true"
DAY = ["window.start=2025-12-09T00:00:00Z", "window.end=2025-12-10T00:00:00Z"]
SLURM = ["hydra/launcher=slurm", "hydra.launcher.timeout_min=10"]
KEY = "db-SLURMTESTKEY000000000000"
YM_TICKS = ["registry.tick_sizes.YM=0.25"]  # the fake's prices are on NQ's ticks


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    """A Slurm cluster that runs jobs: skips without one, fails with CI=true."""
    problem = None
    if shutil.which("srun") is None:
        problem = "Slurm's srun is not installed"
    else:
        try:
            probe = subprocess.run(["srun", "--quiet", "--time=1", "true"], capture_output=True, text=True, timeout=30)
            if probe.returncode != 0:
                problem = f"`srun true` failed: {probe.stderr.strip()}"
        except subprocess.TimeoutExpired:
            problem = "`srun true` did not answer within 30 s"
    if problem:
        message = f"no Slurm cluster answers ({problem}); start one with scripts/slurm-local start"
        if IN_CI:
            pytest.fail(f"{message}; CI=true requires it")
        pytest.skip(message)


def sweep_dir_of(cwd: Path) -> Path:
    [sweep_dir] = {p.parent for p in (cwd / "runs" / "multirun").rglob("sweep_summary.json")}
    return sweep_dir


def slurm_states(sweep_dir: Path, tasks: int, timeout: float = 60) -> dict[str, str]:
    """Array task id (`<job>_<task>`) -> its state in Slurm's accounting (sacct), for the sweep's `tasks` jobs.

    slurmctld hands its records to slurmdbd asynchronously: right after the sweep, sacct may still show the array
    as one pending record (`14`) or miss a task, so this asks until every task has a final state."""
    array_ids = {p.name.split("_")[0] for p in (sweep_dir / ".submitit").iterdir() if p.name[0].isdigit()}
    assert len(array_ids) == 1, f"one job array, got {array_ids}"
    array_id = array_ids.pop()
    expected = {f"{array_id}_{task}" for task in range(tasks)}
    deadline = time.monotonic() + timeout
    while True:
        listing = subprocess.run(["sacct", "--noheader", "--parsable2", "--allocations", "--jobs", array_id,
                                  "--format=JobID,State"], capture_output=True, text=True, check=True).stdout
        states = dict(line.split("|") for line in listing.splitlines())
        settled = set(states) == expected and not {"PENDING", "RUNNING", "COMPLETING"} & set(states.values())
        if settled or time.monotonic() > deadline:
            return states
        time.sleep(0.5)


def test_every_job_runs_as_an_array_task(slurm_cluster, engine_cli, db_url):
    run = engine_cli(f"db.url={db_url}", "symbol=ES,NQ", "-m", "stages=[registry,ingest,detect]", *DAY, *SLURM)
    assert run.returncode == 0, run.output
    sweep_dir = sweep_dir_of(run.cwd)
    jobs = json.loads((sweep_dir / "sweep_summary.json").read_text())
    assert [(j["symbol"], j["status"]) for j in jobs] == [("ES", "success"), ("NQ", "success")]
    assert all(j["stages"]["ingest"]["bars_inserted"] > 1000 for j in jobs)
    states = slurm_states(sweep_dir, tasks=2)
    assert sorted(s.split("_")[-1] for s in states) == ["0", "1"] and set(states.values()) == {"COMPLETED"}, states
    rows = query(db_url, "SELECT symbol, status FROM engine_runs ORDER BY symbol")
    assert [(r["symbol"], r["status"]) for r in rows] == [("ES", "success"), ("NQ", "success")]


def test_a_failing_job_in_the_middle_fails_the_sweep_after_the_others(slurm_cluster, engine_cli, db_url):
    run = engine_cli(f"db.url={db_url}", "symbol=ES,ZN,NQ", "-m", "stages=[registry,ingest,detect]", *DAY, *SLURM)
    assert run.returncode == 1, run.output
    assert "1 of 3 jobs failed" in run.output
    jobs = json.loads((sweep_dir_of(run.cwd) / "sweep_summary.json").read_text())
    assert [(j["symbol"], j["status"]) for j in jobs] == [("ES", "success"), ("ZN", "failed"), ("NQ", "success")]
    assert "unknown symbol 'GLBX.MDP3:ZN'" in jobs[1]["error"]
    stored = query(db_url, "SELECT DISTINCT symbol FROM market_bars_ohlcv_1m_clean ORDER BY symbol")
    assert [r["symbol"] for r in stored] == ["GLBX.MDP3:ES", "GLBX.MDP3:NQ"]


def running_rows(url: str) -> list[dict]:
    try:
        return query(url, "SELECT id, symbol, pid FROM engine_runs WHERE status = 'running' ORDER BY id")
    except sa.exc.DBAPIError:  # the jobs have not made the tables yet
        return []


def slurm_task_of(pid: int) -> str:
    """`<array job>_<task>` of the Slurm job that process `pid` runs in (from its environment)."""
    env = dict(item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item)
    return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"


def test_jobs_killed_inside_slurm_end_the_sweep_marked_and_are_reconciled(slurm_cluster, fake_databento, db_url,
                                                                          tmp_path, engine_cli):
    fake = fake_databento(KEY, records=50, stride=29, subprocess=True)
    fake.script(GET_RANGE, Reply(delay=50), Reply(delay=50))  # the first two downloads hang: those jobs get killed
    source = ["source=databento", f"source.gateway={fake.gateway}", "source.definitions=false", f"db.url={db_url}"]
    engine_cli(*source, "stages=[registry]")  # the schema, before the jobs start
    sweep = subprocess.Popen([sys.executable, "-m", "engine", "-m", "symbol=ES,NQ,YM", "stages=[ingest]", *source,
                              *YM_TICKS, *DAY, *SLURM],
                             cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        while len(fake.seen(GET_RANGE)) < 2 or len(hanging := running_rows(db_url)) < 2:
            assert time.monotonic() < deadline and sweep.poll() is None, "two jobs never hung in their download"
            time.sleep(0.5)
        killed, cancelled = hanging[:2]
        os.kill(killed["pid"], signal.SIGKILL)
        subprocess.run(["scancel", slurm_task_of(cancelled["pid"])], check=True)
        killed_at = time.monotonic()
        output = sweep.communicate(timeout=120)[0]
        took = time.monotonic() - killed_at
    finally:
        if sweep.poll() is None:
            sweep.kill()
            sweep.wait()
    assert took < 45, f"the sweep took {took:.0f} s to end after its jobs were killed:\n{output}"
    assert sweep.returncode == 1, output
    assert "Traceback" not in output and "2 of 3 jobs failed" in output, output
    jobs = {j["symbol"]: j for j in json.loads((sweep_dir_of(tmp_path) / "sweep_summary.json").read_text())}
    lost = jobs[killed["symbol"]]
    assert lost["status"] == "lost" and "ended FAILED without a result" in lost["error"], lost
    stopped = jobs[cancelled["symbol"]]
    # scancel sends SIGTERM first: the job records itself interrupted (result.json and its row), as on any SIGTERM
    assert stopped["status"] == "interrupted", stopped
    [done] = [j for j in jobs.values() if j["status"] == "success"]
    assert done["stages"]["ingest"]["bars_inserted"] == 50
    summary = (sweep_dir_of(tmp_path) / "sweep_summary.md").read_text()
    assert "3 jobs, 2 failed" in summary and "| lost |" in summary

    [row] = query(db_url, f"SELECT status FROM engine_runs WHERE id = {cancelled['id']}")
    assert row["status"] == "interrupted"
    after = engine_cli(*source, "stages=[registry]")  # an ordinary run (or the third job already) reconciles
    assert after.returncode == 0, after.output
    [row] = query(db_url, f"SELECT status, error FROM engine_runs WHERE id = {killed['id']}")
    assert row["status"] == "abandoned" and f"process {killed['pid']}" in row["error"], row
    ingests = query(db_url, f"SELECT status FROM clean_ingest_runs WHERE engine_run_id = {killed['id']}")
    assert [i["status"] for i in ingests] in ([], ["abandoned"])
