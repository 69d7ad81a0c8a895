"""The locks that guard shared files (raw landings, Parquet export roots, SQLite migrations) are POSIX record locks,
the kind NFS carries between machines; two real processes landing one Databento file download it once."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fake_databento import GET_RANGE, Reply

from engine.file_lock import exclusive_lock

REPO = Path(__file__).resolve().parents[1]
KEY = "db-LOCKTESTKEY000000000000"
DAY = ["window.start=2025-12-09T00:00:00Z", "window.end=2025-12-10T00:00:00Z"]

# A child process that takes one of the project's locks, says so, and holds it until its stdin closes.
HOLDERS = {
    "landing": ("from engine.sources.landing import exclusive as lock\n"
                "held = lock(root / 'GLBX.MDP3' / 'NQ.dbn.zst')", "GLBX.MDP3/NQ.dbn.zst.lock"),
    "export": ("from engine.parquet_export import export_lock as lock\nheld = lock(root)", ".export.lock"),
    "migrate": ("from engine.file_lock import exclusive_lock as lock\nheld = lock(root / 'e.sqlite.migrate.lock')",
                "e.sqlite.migrate.lock"),
}


def locked_by_another_process(lock_file: Path) -> bool:
    """Whether a POSIX record lock on `lock_file` is held elsewhere (the test process holds none of its own)."""
    with open(lock_file, "a") as handle:
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.lockf(handle, fcntl.LOCK_UN)
        return False


@pytest.mark.parametrize("lock", list(HOLDERS))
def test_each_lock_of_shared_files_is_a_posix_record_lock_other_processes_see(tmp_path, lock):
    code, lock_file = HOLDERS[lock]
    (tmp_path / "GLBX.MDP3").mkdir()
    script = (f"import sys\nfrom pathlib import Path\nroot = Path({str(tmp_path)!r})\n{code}\n"
              "with held:\n    print('held', flush=True)\n    sys.stdin.readline()\n")
    holder = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        assert locked_by_another_process(tmp_path / lock_file), "a BSD flock would not show here"
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert holder.returncode == 0
    assert not locked_by_another_process(tmp_path / lock_file), "released when the block ends"


def test_threads_of_one_process_wait_for_each_other(tmp_path):
    """A record lock alone would let two threads of one process in at once; the per-path thread lock does not."""
    inside: list[int] = []
    overlaps: list[int] = []

    def hold() -> None:
        with exclusive_lock(tmp_path / "x.lock"):
            inside.append(1)
            if len(inside) > 1:
                overlaps.append(len(inside))
            time.sleep(0.2)
            inside.pop()

    threads = [threading.Thread(target=hold) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert overlaps == [] and inside == []


def test_two_processes_landing_one_file_in_a_shared_data_dir_download_it_once(fake_databento, db_url, tmp_path):
    """Two jobs (as on two nodes: own working folders, one data_dir) land the same Databento request at once: the
    first to take the lock downloads, the other waits for it and reuses the landed file."""
    fake = fake_databento(KEY, records=50, stride=29, subprocess=True)
    fake.script(GET_RANGE, Reply(delay=2.0))  # hold the first download open while the other job arrives
    shared = tmp_path / "shared"
    command = [sys.executable, "-m", "engine", "source=databento", f"source.gateway={fake.gateway}",
               "source.definitions=false", f"db.url={db_url}", f"data_dir={shared}", "stages=[ingest]", *DAY]
    subprocess.run([*command, "stages=[registry]"], cwd=tmp_path, check=True, capture_output=True)  # migrate once
    workdirs = [tmp_path / f"node{i}" for i in range(2)]
    procs = []
    for workdir in workdirs:
        workdir.mkdir()
        procs.append(subprocess.Popen(command, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, env={**os.environ, "COLUMNS": "160"}))
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    assert len(fake.seen(GET_RANGE)) == 1, "one download for both jobs"
    ingests = [json.loads(next((w / "runs").rglob("result.json")).read_text())["stages"]["ingest"] for w in workdirs]
    raw = [i["raw_files"] for i in ingests]
    assert sorted(r[0]["reused"] for r in raw) == [False, True]
    assert raw[0][0]["path"] == raw[1][0]["path"] and raw[0][0]["sha256"] == raw[1][0]["sha256"]
    assert Path(raw[0][0]["path"]).is_relative_to(shared)
    assert sorted(i["bars_inserted"] for i in ingests)[0] == 0 and sum(i["bars_inserted"] for i in ingests) > 0
    assert [p.name for p in shared.rglob("*.part")] == []
