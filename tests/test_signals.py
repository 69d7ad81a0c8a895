"""Signals and lost connections end cleanly: real signals to a real `python -m engine` process, a backend
terminated with pg_terminate_backend, a throwaway server stopped mid-run.

Every case asserts the exit code, what engine_runs / clean_ingest_runs / result.json say, and that the next
ordinary run completes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from pg_cluster import pg_cluster  # noqa: F401 - the fixture

from engine.db.bars_postgres import PG_LOCK_NAMESPACE

SYMBOL = "GLBX.MDP3:NQ"
# ~240k synthetic bars in ~120 batches of 2,000: every batch a PostgreSQL COPY / a SQLite transaction; long enough
# that the random moments below fall inside the ingest on an idle machine too.
INGEST = ("stages=[ingest]", "window.start=2025-03-01", "window.end=2025-12-13", "source.batch_size=2000")
SEED = ("stages=[ingest]", "window.start=2025-09-01", "window.end=2025-09-01T02:00:00Z")
PG_TRIALS = 14
SQLITE_TRIALS = 5


def _env() -> dict:
    return {**os.environ, "COLUMNS": "160"}


def start(cwd: Path, url: str, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "engine", f"db.url={url}", *overrides], cwd=cwd, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run(cwd: Path, url: str, *overrides: str) -> tuple[int, str]:
    proc = start(cwd, url, *overrides)
    out, _ = proc.communicate(timeout=300)
    return proc.returncode, out


def wait_until(proc: subprocess.Popen, condition, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the engine ended (exit {proc.returncode}) before the moment to interrupt it:\n"
                        f"{proc.communicate()[0][-3000:]}")
        assert time.monotonic() < deadline, "timed out waiting for the engine"
        time.sleep(0.005)


def last_rows(url: str) -> tuple[dict, dict | None]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        run_row = dict(conn.execute(sa.text("SELECT * FROM engine_runs ORDER BY id DESC LIMIT 1")).mappings().one())
        ingest = conn.execute(sa.text("SELECT * FROM clean_ingest_runs WHERE engine_run_id = :r ORDER BY id DESC"),
                              {"r": run_row["id"]}).mappings().first()
    engine.dispose()
    return run_row, dict(ingest) if ingest else None


def result_of(run_row: dict) -> dict:
    return json.loads((Path(run_row["run_dir"]) / "result.json").read_text())


def one_line(out: str) -> str:
    """The console output with rich's line wrapping undone."""
    return " ".join(out.split())


def scalar(url: str, sql: str, **params):
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        value = conn.execute(sa.text(sql), params).scalar()
    engine.dispose()
    return value


def assert_next_run_completes(cwd: Path, url: str) -> None:
    code, out = run(cwd, url, *INGEST)
    assert code == 0, out
    run_row, ingest = last_rows(url)
    assert run_row["status"] == "success" and ingest["status"] == "success"
    received = ingest["bars_received"]
    assert received == (ingest["bars_inserted"] + ingest["bars_updated"] + ingest["bars_unchanged"]
                        + ingest["bars_skipped"])
    stored = scalar(url, "SELECT count(*) FROM market_bars_ohlcv_1m_clean WHERE symbol = :s", s=SYMBOL)
    assert stored == received - ingest["bars_skipped"] > 100_000


def assert_interrupted(proc: subprocess.Popen, out: str, url: str, signame: str) -> dict:
    assert proc.returncode == 130, out[-3000:]
    assert "another command is already in progress" not in out
    assert "Traceback" not in out, out[-3000:]
    run_row, ingest = last_rows(url)
    assert run_row["status"] == "interrupted", run_row
    assert ingest is not None and ingest["status"] == "interrupted", ingest
    result = result_of(run_row)
    assert result["status"] == "interrupted" and result["exit_code"] == 130
    assert result["error"] == f"interrupted ({signame})"
    return ingest


def _copy_running(url: str):
    """True once the engine's backend has sent a COPY (it is in its batch loop)."""
    return lambda: scalar(url, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                               "AND query LIKE 'COPY%' AND pid <> pg_backend_pid()") > 0


def _ingest_running(url: str):
    return lambda: scalar(url, "SELECT count(*) FROM clean_ingest_runs WHERE status = 'running'") > 0


@pytest.mark.slow
def test_a_signal_at_any_moment_of_an_ingest_ends_it_interrupted(db_url, tmp_path):
    """SIGTERM at random moments of a multi-batch ingest (the last trial: SIGINT, as Ctrl-C sends): always exit
    130, both rows `interrupted`, never "another command is already in progress"; then a plain run completes."""
    code, out = run(tmp_path, db_url, *SEED)
    assert code == 0, out
    postgres = db_url.startswith("postgresql")
    trials = PG_TRIALS if postgres else SQLITE_TRIALS
    rng = random.Random(9)
    errors = []
    for trial in range(trials):
        signum = signal.SIGINT if trial == trials - 1 else signal.SIGTERM
        proc = start(tmp_path, db_url, *INGEST)
        # PostgreSQL: from the first COPY on, over the ~1 s the batches take; SQLite: from the ingest row on
        # (landing the file, then the batches).
        wait_until(proc, _copy_running(db_url) if postgres else _ingest_running(db_url))
        time.sleep(rng.uniform(0, 0.8 if postgres else 1.2))
        proc.send_signal(signum)
        out, _ = proc.communicate(timeout=120)
        if proc.returncode in (0, -signum) and last_rows(db_url)[0]["status"] == "success":
            continue  # the signal came after the run had recorded its end: too late to interrupt, nothing to check
        ingest = assert_interrupted(proc, out, db_url, signal.Signals(signum).name)
        errors.append(ingest["error"])
    assert len(errors) >= trials - 2, "most signals must land during the ingest"
    print(f"{len(errors)} interrupted trials; errors: {sorted(set(errors))}")
    assert_next_run_completes(tmp_path, db_url)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_a_blocked_statement_cancels_it(pg_url, tmp_path, signum):
    """The engine's batch waits on a lock the test holds: the signal must cancel that statement (not raise
    inside psycopg), roll back cleanly and end `interrupted`."""
    code, out = run(tmp_path, pg_url, *SEED)
    assert code == 0, out
    locker = sa.create_engine(pg_url)
    with locker.connect() as conn:
        conn.execute(sa.text("LOCK TABLE market_bars_ohlcv_1m_clean IN SHARE MODE"))
        proc = start(tmp_path, pg_url, *INGEST)
        wait_until(proc, lambda: scalar(pg_url, "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                                                "current_database() AND wait_event_type = 'Lock'") > 0)
        proc.send_signal(signum)
        out, _ = proc.communicate(timeout=60)
        conn.rollback()
    locker.dispose()
    ingest = assert_interrupted(proc, out, pg_url, signal.Signals(signum).name)
    assert "canceling statement due to user request" in ingest["error"]
    assert scalar(pg_url, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                          "AND state <> 'idle' AND pid <> pg_backend_pid()") == 0
    assert_next_run_completes(tmp_path, pg_url)


def _hold_symbol_lock(conn) -> None:
    """Take the ingest's per-symbol advisory lock: the engine's next batch then waits inside its transaction."""
    conn.execute(sa.text("SELECT pg_advisory_lock(:ns, hashtext(:s))"), {"ns": PG_LOCK_NAMESPACE, "s": SYMBOL})


def _engine_waiting(url: str):
    return lambda: scalar(url, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                               "AND wait_event_type = 'Lock' AND wait_event = 'advisory'") > 0


def test_a_terminated_backend_ends_the_run_with_one_line(pg_url, tmp_path):
    """pg_terminate_backend on the engine's own connection mid-ingest: exit 1, one clear line, result.json and
    both rows `failed` (the server is still there to take them); the next run completes."""
    code, out = run(tmp_path, pg_url, *SEED)
    assert code == 0, out
    locker = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with locker.connect() as conn:
        _hold_symbol_lock(conn)
        proc = start(tmp_path, pg_url, *INGEST)
        wait_until(proc, _engine_waiting(pg_url))
        terminated = scalar(pg_url, "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                    "WHERE datname = current_database() AND wait_event = 'advisory') t")
        assert terminated == 1
        out, _ = proc.communicate(timeout=60)
    locker.dispose()
    assert proc.returncode == 1, out
    assert "Traceback" not in out
    assert "went away during ingest: terminating connection due to administrator command" in one_line(out)
    run_row, ingest = last_rows(pg_url)
    assert run_row["status"] == "failed" and "went away during ingest" in run_row["error"]
    assert ingest["status"] == "failed"
    result = result_of(run_row)
    assert result["exit_code"] == 1 and result["status"] == "failed"
    assert result["error"].startswith("the database server at postgresql+psycopg://postgres@127.0.0.1")
    assert result["error"].endswith("the run's rows will be reconciled by the next run")
    assert_next_run_completes(tmp_path, pg_url)


@pytest.mark.slow
def test_a_server_stopped_mid_run_ends_with_one_line_and_result_json(pg_cluster, tmp_path):  # noqa: F811
    """A throwaway server stopped (-m immediate) while a batch is in flight: exit 1, one line naming the masked
    URL and the stage, result.json written; after a restart the next ordinary run completes and marks the dead
    run's rows `abandoned`."""
    cluster = pg_cluster()
    url = cluster.create_database("engine")
    code, out = run(tmp_path, url, *SEED)
    assert code == 0, out
    locker = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    conn = locker.connect()
    _hold_symbol_lock(conn)
    proc = start(tmp_path, url, *INGEST)
    wait_until(proc, _engine_waiting(url))
    cluster.stop("immediate")
    out, _ = proc.communicate(timeout=120)
    conn.invalidate()
    locker.dispose()
    assert proc.returncode == 1, out
    assert "Traceback" not in out, out[-3000:]
    assert f"the database server at {url} went away during ingest" in one_line(out)
    assert "the run's rows will be reconciled by the next run" in one_line(out)
    [result_file] = [p for p in (tmp_path / "runs").rglob("result.json")
                     if json.loads(p.read_text())["exit_code"] == 1]
    result = json.loads(result_file.read_text())
    assert result["status"] == "failed" and "went away during ingest" in result["error"]

    cluster.start()
    run_row, ingest = last_rows(url)
    assert run_row["id"] == result["run_id"] and run_row["status"] == "running", "its end could not be recorded"
    assert ingest["status"] == "running"
    assert_next_run_completes(tmp_path, url)
    # The next run proved the dead run gone (its session lock vanished with the server) and closed its rows.
    engine = sa.create_engine(url)
    with engine.connect() as db:
        dead = db.execute(sa.text("SELECT status, error FROM engine_runs WHERE id = :id"), {"id": run_row["id"]}).one()
        dead_ingest = db.execute(sa.text("SELECT status FROM clean_ingest_runs WHERE id = :id"),
                                 {"id": ingest["id"]}).scalar()
    engine.dispose()
    assert dead.status == "abandoned" and dead.error.startswith("abandoned:") and dead_ingest == "abandoned"


_SWALLOWED = {
    # The garbage collector runs a weakref callback / __del__ while the signal arrives: Python prints "Exception
    # ignored" for the handler's exception and goes on (seen in CI: a SIGTERMed ingest that ended `success`).
    "weakref callback": """
import weakref
class Payload: pass
payload = Payload()
keep = weakref.ref(payload, lambda _ref: wait_for_signal())
del payload
""",
    "__del__": """
class Payload:
    def __del__(self): wait_for_signal()
payload = Payload()
del payload
""",
    # A library that catches BaseException and carries on: only the run's last safe point can notice.
    "caught by a library": """
try:
    wait_for_signal()
except BaseException:
    pass
""",
}

_DRIVER = """
import os, signal, sys, time
from engine import interrupts

def wait_for_signal():
    os.kill(os.getpid(), signal.SIGTERM)  # a real signal, delivered while this frame runs
    time.sleep(1)

interrupts.install()
point = "check"
try:
{body}
    interrupts.check()  # the next transaction's safe point
    point = "finish"
    interrupts.finish()
    print("success")
except interrupts.Interrupted as exc:
    print("interrupted", exc, "at", point)
"""


@pytest.mark.parametrize("where", list(_SWALLOWED))
def test_a_signal_whose_exception_is_swallowed_still_interrupts_the_run(where):
    body = "\n".join("    " + line for line in _SWALLOWED[where].strip().splitlines())
    proc = subprocess.run([sys.executable, "-c", _DRIVER.format(body=body)], capture_output=True, text=True,
                          timeout=60, env=_env())
    assert proc.returncode == 0, proc.stderr
    point = "finish" if where == "caught by a library" else "check"
    assert proc.stdout.strip() == f"interrupted SIGTERM at {point}", proc.stdout + proc.stderr
    assert "Exception ignored" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
