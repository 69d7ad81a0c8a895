"""Dead runs are reconciled as `abandoned` with what they had committed; live runs are never touched.

Real processes throughout: `python -m engine` killed with SIGKILL, kept alive (SIGSTOP: a stopped process is alive),
and rows naming real pids. On PostgreSQL liveness is the run's advisory lock, on SQLite host + pid + start time.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from sql_rows import query

from engine.db import liveness, runs
from engine.db.connect import create_db_engine, upgrade

SLOW_INGEST = ["stages=[ingest]", "window.start=2019-01-01", "window.end=2025-01-01"]  # ~2.5 s landing, then 2M bars
HOST = socket.gethostname()


def run_rows(url: str) -> dict[int, dict]:
    return {r["id"]: r for r in query(url, "SELECT * FROM engine_runs ORDER BY id")}


def start_engine(url: str, cwd: Path, *overrides: str) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "engine", f"db.url={url}", *overrides], cwd=cwd,
                            env={**os.environ, "COLUMNS": "160"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_for(condition, what: str, timeout: float = 90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if value := condition():
                return value
        except sa.exc.SQLAlchemyError:
            pass  # the database or its tables are not there yet
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def ingest_row_of(url: str, pid: int) -> dict | None:
    rows = query(url, "SELECT i.* FROM clean_ingest_runs i JOIN engine_runs r ON r.id = i.engine_run_id "
                      "WHERE r.pid = :pid", pid=pid)
    return rows[0] if rows else None


def reconcile_lines(run) -> list[str]:
    return [line for line in (run.run_dir / "engine.log").read_text().splitlines() if "reconcile:" in line]


def holds_no_write(url: str, pid: int) -> bool:
    """The stopped process `pid` holds no transaction open (so other runs never wait on it)."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 0.2, "isolation_level": None})
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                conn.exec_driver_sql("ROLLBACK")
            return True
        except sa.exc.OperationalError:
            return False
        finally:
            engine.dispose()
    busy = query(url, "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() "
                      "AND application_name = 'futures-engine' AND state <> 'idle'")
    return busy[0]["n"] == 0


def stop_while_idle(proc: subprocess.Popen, url: str) -> None:
    """SIGSTOP `proc` at a moment it holds no database transaction (retrying: it keeps running in between)."""
    for _ in range(200):
        os.kill(proc.pid, signal.SIGSTOP)
        if holds_no_write(url, proc.pid):
            return
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.02)
    raise AssertionError("could not stop the run outside a transaction")


@pytest.mark.slow
def test_kill_9_mid_ingest_is_marked_abandoned_with_what_it_committed(db_url, tmp_path, engine_cli):
    proc = start_engine(db_url, tmp_path, *SLOW_INGEST)
    try:
        wait_for(lambda: query(db_url, "SELECT count(*) AS n FROM market_bars_ohlcv_1m_clean")[0]["n"] > 0,
                 "the first committed batch")
    finally:
        proc.kill()
        proc.wait()
    [dead] = run_rows(db_url).values()
    assert (dead["status"], dead["pid"], dead["host"]) == ("running", proc.pid, HOST)
    assert dead["process_start"].startswith(Path("/proc/sys/kernel/random/boot_id").read_text().strip() + ":")
    ingest = ingest_row_of(db_url, proc.pid)
    assert ingest["status"] == "running"
    carried = query(db_url, "SELECT count(*) AS n FROM market_bars_ohlcv_1m_clean WHERE ingest_run_id = :i",
                    i=ingest["id"])[0]["n"]
    assert carried >= 50_000

    run = engine_cli(f"db.url={db_url}", "stages=[registry]")
    assert run.returncode == 0, run.output
    rows = run_rows(db_url)
    abandoned = rows[dead["id"]]
    assert abandoned["status"] == "abandoned" and abandoned["finished_at"] is not None
    who = f"process {proc.pid} on host {HOST} (started "
    assert who in abandoned["error"] and "is gone" in abandoned["error"]
    assert f"found by run {run.result['run_id']}" in abandoned["error"]
    assert f"ingest {ingest['id']} had committed" in abandoned["error"]
    assert f"({carried:,} clean bars carry its id)" in abandoned["error"]
    [ingest_after] = query(db_url, "SELECT * FROM clean_ingest_runs WHERE id = :i", i=ingest["id"])
    assert ingest_after["status"] == "abandoned"
    assert who in ingest_after["error"] and f"({carried:,} clean bars carry its id)" in ingest_after["error"]
    assert rows[run.result["run_id"]]["status"] == "success"
    [line] = reconcile_lines(run)
    assert f"run {dead['id']}, process {proc.pid} on host {HOST} is gone" in line and "abandoned" in line

    again = engine_cli(f"db.url={db_url}", "stages=[registry]")
    assert again.returncode == 0 and reconcile_lines(again) == []
    assert run_rows(db_url)[dead["id"]]["error"] == abandoned["error"], "an abandoned row is never rewritten"


@pytest.mark.slow
def test_two_live_runs_never_mark_each_other(db_url, tmp_path, engine_cli):
    stopped = start_engine(db_url, tmp_path / "a", *SLOW_INGEST)
    running = None
    try:
        wait_for(lambda: ingest_row_of(db_url, stopped.pid), "the first run's ingest row")
        stop_while_idle(stopped, db_url)  # stopped, yet alive: its pid, start time and lock are all still there
        running = start_engine(db_url, tmp_path / "b", *SLOW_INGEST)
        wait_for(lambda: ingest_row_of(db_url, running.pid), "the second run's ingest row")
        third = engine_cli(f"db.url={db_url}", "stages=[registry]")
        assert third.returncode == 0, third.output
        assert reconcile_lines(third) == []
        rows = run_rows(db_url)
        by_pid = {r["pid"]: r["status"] for r in rows.values()}
        assert by_pid[stopped.pid] == by_pid[running.pid] == "running"
        assert rows[third.result["run_id"]]["status"] == "success"
    finally:
        for proc in (stopped, running):
            if proc is not None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
        for proc in (stopped, running):
            if proc is not None:
                proc.wait(timeout=120)
    assert stopped.returncode == running.returncode == 130
    assert sorted(r["status"] for r in run_rows(db_url).values()) == ["interrupted", "interrupted", "success"]
    assert {r["status"] for r in query(db_url, "SELECT status FROM clean_ingest_runs")} <= {"failed", "interrupted"}


def _insert_running(url: str, **fields) -> int:
    engine = create_db_engine(url)
    try:
        upgrade(engine)
        return runs.start_run(engine, symbol="NQ", stages='["ingest"]', run_dir="/nowhere", git_hash=None,
                              git_dirty=None, logic_version="test", config_sha256="0" * 64, overrides="[]",
                              data_kind="demo", **fields)
    finally:
        engine.dispose()


@pytest.mark.slow
def test_rows_are_judged_by_pid_and_start_time_on_sqlite_and_by_the_lock_on_postgres(db_url, engine_cli):
    me = liveness.Process.current()
    boot = me.start.split(":")[0]
    reused = _insert_running(db_url, host=HOST, pid=me.pid, process_start=f"{boot}:1")  # pid alive, another process
    rebooted = _insert_running(db_url, host=HOST, pid=me.pid, process_start=f"not-{boot}:{me.start.split(':')[1]}")
    alive = _insert_running(db_url, host=HOST, pid=me.pid, process_start=me.start)  # this very test process
    elsewhere = _insert_running(db_url, host="another-host", pid=1, process_start="x:1")
    postgres = db_url.startswith("postgresql")
    holder = sa.create_engine(db_url, connect_args={"application_name": "futures-engine"}) if postgres else None
    try:
        if postgres:  # this process plays a live run: it holds the lock of `alive`
            lock_conn = holder.connect()
            lock_conn.execute(sa.text("SELECT pg_advisory_lock(:ns, :id)"), {"ns": liveness.NAMESPACE, "id": alive})
            lock_conn.commit()
        run = engine_cli(f"db.url={db_url}", "stages=[registry]")
    finally:
        if holder is not None:
            holder.dispose()
    assert run.returncode == 0, run.output
    rows = run_rows(db_url)
    assert rows[reused]["status"] == rows[rebooted]["status"] == "abandoned"
    assert rows[alive]["status"] == "running", "a live run is never touched"
    [line] = reconcile_lines(run)
    if postgres:  # the lock decides, wherever the run's process is
        assert rows[elsewhere]["status"] == "abandoned"
        assert "is gone (holds no run lock)" in rows[reused]["error"]
    else:  # another host's pids mean nothing here
        assert rows[elsewhere]["status"] == "running"
        assert f"run {elsewhere} of host another-host" in line and "left running" in line
        assert f"pid {me.pid} is now another process" in rows[reused]["error"]
        assert "the host rebooted since" in rows[rebooted]["error"]
    assert f"process {me.pid} on host {HOST}" in rows[reused]["error"]


@pytest.mark.slow
def test_rows_of_older_versions(db_url, engine_cli):
    """Rows without host/pid (before migration 0009): SQLite cannot judge them; PostgreSQL can when no other program
    (so no older engine, which holds pooled sessions while it lives) is connected."""
    old = _insert_running(db_url)
    postgres = db_url.startswith("postgresql")
    other_program = sa.create_engine(db_url)  # e.g. psql, or an engine of an older version
    try:
        with other_program.connect():
            first = engine_cli(f"db.url={db_url}", "stages=[registry]")
    finally:
        other_program.dispose()
    assert first.returncode == 0, first.output
    assert run_rows(db_url)[old]["status"] == "running"
    [line] = reconcile_lines(first)
    assert f"run {old} (no pid: written before migration 0009" in line
    assert f"UPDATE engine_runs SET status = 'abandoned' WHERE id IN ({old})" in line

    second = engine_cli(f"db.url={db_url}", "stages=[registry]")
    assert second.returncode == 0, second.output
    row = run_rows(db_url)[old]
    if postgres:
        assert row["status"] == "abandoned" and "a process of an older version" in row["error"]
    else:
        assert row["status"] == "running" and len(reconcile_lines(second)) == 1
