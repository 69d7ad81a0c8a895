"""A full disk exits 2 naming the path and the fix; run files are written atomically (never left empty).

Real faults: a small tmpfs (mounted here, unmounted at teardown) for the SQLite file and for the run directory,
and RLIMIT_FSIZE for the atomic-write check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pg_cluster import pg_cluster  # noqa: F401 - the fixture
from sql_rows import table_rows

SEED = ("stages=[ingest]", "window.start=2025-09-01", "window.end=2025-09-01T02:00:00Z")
INGEST = ("stages=[ingest]", "window.start=2025-09-01", "window.end=2025-12-13", "source.batch_size=2000")


@pytest.fixture
def tmpfs(tmp_path):
    """Factory: tmpfs(name, size) -> a directory on a fresh tmpfs of that size (e.g. "2m"), unmounted at teardown."""
    mounts: list[Path] = []

    def mount(name: str, size: str) -> Path:
        where = tmp_path / name
        where.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                              capture_output=True, text=True)
        if proc.returncode:
            pytest.fail(f"cannot mount a tmpfs here ({proc.stderr.strip()}): these tests need root")
        mounts.append(where)
        return where

    yield mount
    for where in reversed(mounts):
        subprocess.run(["umount", "-l", str(where)], check=False)


def remount(where: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(where)], check=True)


def fill(where: Path, leave_pages: int = 0) -> Path:
    """Fill a tmpfs completely, then free `leave_pages` pages of 4 KiB."""
    filler = where / "filler"
    with open(filler, "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass
    size = filler.stat().st_size
    os.truncate(filler, max(0, size - size % 4096 - leave_pages * 4096))
    return filler


def run(cwd: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", *overrides], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "160"}, timeout=300)


def one_line(proc: subprocess.CompletedProcess) -> str:
    return " ".join((proc.stdout + proc.stderr).split())


def assert_completes(cwd: Path, url: str, *overrides: str) -> None:
    proc = run(cwd, f"db.url={url}", *INGEST, *overrides)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    row = engine_run_rows(url)[-1]
    assert row["status"] == "success"
    ingest = ingest_run_rows(url)[-1]
    assert ingest["status"] == "success" and ingest["bars_received"] > 100_000


@pytest.mark.slow
def test_a_full_sqlite_database_exits_2_naming_the_file_and_the_fix(tmpfs, tmp_path):
    disk = tmpfs("db", "2m")
    url = f"sqlite:///{disk / 'engine.sqlite'}"
    assert run(tmp_path, f"db.url={url}", *SEED).returncode == 0
    proc = run(tmp_path, f"db.url={url}", *INGEST)
    text = one_line(proc)
    assert proc.returncode == 2, text
    assert "Traceback" not in text
    assert f"the SQLite database {disk / 'engine.sqlite'} is full (database or disk is full)" in text
    assert f"Fix: free space on {disk} or point db.url elsewhere" in text
    [result_file] = [p for p in (tmp_path / "runs").rglob("result.json") if json.loads(p.read_text())["exit_code"]]
    result = json.loads(result_file.read_text())
    assert result["status"] == "failed" and result["exit_code"] == 2 and "is full" in result["error"]
    # The full database could not take the run's end either: its rows are not `success` (reconciled later).
    assert engine_run_rows(url)[-1]["status"] != "success"
    assert ingest_run_rows(url)[-1]["status"] != "success"

    remount(disk, "64m")
    assert_completes(tmp_path, url)


@pytest.mark.slow
def test_a_full_run_directory_exits_2_and_leaves_no_partial_file(tmpfs, tmp_path, db_url):
    """The run directory fills after resolved_config.yaml: provenance.json cannot be written. Exit 2 naming the
    file and the fix; the run row says `failed` with that error; no empty or temporary file is left."""
    disk = tmpfs("runs", "1m")
    filler = fill(disk, leave_pages=1)
    run_dir = disk / "run"
    hydra_files = [f"hydra.output_subdir={tmp_path / 'hydra-files'}",
                   f"hydra.job_logging.handlers.file.filename={tmp_path / 'engine.log'}"]
    proc = run(tmp_path, f"db.url={db_url}", "stages=[registry]", f"hydra.run.dir={run_dir}", *hydra_files)
    text = one_line(proc)
    assert proc.returncode == 2, text
    assert "Traceback" not in text
    assert f"cannot write {run_dir / 'provenance.json'}: No space left on device" in text
    assert f"Fix: free space on {disk} or point db.url/hydra.run.dir elsewhere" in text
    assert sorted(p.name for p in run_dir.iterdir()) == ["resolved_config.yaml"]  # no result.json, no temp file
    assert (run_dir / "resolved_config.yaml").stat().st_size > 0
    [row] = engine_run_rows(db_url)
    assert row["status"] == "failed" and "No space left on device" in row["error"]

    filler.unlink()
    proc = run(tmp_path, f"db.url={db_url}", "stages=[registry]", f"hydra.run.dir={run_dir}", *hydra_files)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads((run_dir / "result.json").read_text())["status"] == "success"
    assert engine_run_rows(db_url)[-1]["status"] == "success"


_WRITE_UNDER_LIMIT = """
import resource, signal, sys
from pathlib import Path
from engine.app import _write_json
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
try:
    _write_json(Path(sys.argv[1]), {"status": "success", "padding": "x" * 10_000})
except OSError as exc:
    print(exc.errno)
"""


@pytest.mark.parametrize("previous", ['{"status": "failed"}\n', None])
def test_a_failed_write_leaves_the_previous_content_or_none(tmp_path, previous):
    """RLIMIT_FSIZE cuts the write of result.json (EFBIG): the old file stays whole, or there is none."""
    target = tmp_path / "result.json"
    if previous is not None:
        target.write_text(previous)
    proc = subprocess.run([sys.executable, "-c", _WRITE_UNDER_LIMIT, str(target)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "27"  # EFBIG
    assert [p.name for p in tmp_path.iterdir()] == ([] if previous is None else ["result.json"])
    if previous is not None:
        assert target.read_text() == previous


@pytest.mark.slow
def test_a_full_postgresql_server_exits_2_naming_the_server(pg_cluster, tmp_path):  # noqa: F811
    """A throwaway server whose data directory is on a small, nearly full tmpfs: DiskFull (53100) mid-ingest
    exits 2 naming the server's problem; committed batches stay; after freeing space the next run completes."""
    cluster = pg_cluster(tmpfs_mb=64)
    url = cluster.create_database("engine")
    assert run(tmp_path, f"db.url={url}", *SEED).returncode == 0
    filler = fill(cluster.data, leave_pages=256)  # 1 MiB left: a few batches fit, then the table cannot grow
    proc = run(tmp_path, f"db.url={url}", *INGEST)
    text = one_line(proc)
    assert proc.returncode == 2, text
    assert "Traceback" not in text
    assert f"the PostgreSQL server at {url} is out of disk space: could not extend file" in text
    assert "Fix: free space on the server's data volume" in text
    [result_file] = [p for p in (tmp_path / "runs").rglob("result.json") if json.loads(p.read_text())["exit_code"]]
    assert json.loads(result_file.read_text())["exit_code"] == 2
    row = engine_run_rows(url)[-1]
    assert row["status"] == "failed" and "out of disk space" in row["error"]
    ingest = ingest_run_rows(url)[-1]
    assert ingest["status"] == "failed" and ingest["bars_inserted"] > 0  # the batches before the full disk stay

    filler.unlink()
    assert_completes(tmp_path, url)


def engine_run_rows(url: str) -> list[dict]:
    return table_rows(url, "engine_runs")


def ingest_run_rows(url: str) -> list[dict]:
    return table_rows(url, "clean_ingest_runs")
