"""Sweeps with each launcher, concurrent writers, reruns from saved configs, resumable chunks, dry runs."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from fake_databento import GET_COST, GET_RANGE, Reply
from sql_rows import all_tables, query

DAY = ["window.start=2025-12-09T00:00:00Z", "window.end=2025-12-10T00:00:00Z"]




def events(url: str) -> list[tuple]:
    return [tuple(r.values()) for r in query(
        url, "SELECT symbol, ts, direction, price, confirm_ts, n, source_table, logic_version "
             "FROM triangle_events_v1 ORDER BY symbol, ts, direction")]


def bars(url: str) -> list[tuple]:
    return [tuple(r.values()) for r in query(
        url, "SELECT symbol, ts, open, high, low, close, volume, instrument_id FROM market_bars_ohlcv_1m_clean "
             "ORDER BY symbol, ts")]


# -------------------------------------------------------------------------------------------------- sweeps

LAUNCHERS = {
    "basic": [],
    "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    "submitit_local": ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"],
}


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_sweep_runs_every_job_reports_and_fails_when_one_fails(engine_cli, db_url, launcher):
    # `-m` where a person types it, before more overrides (argparse alone would refuse that order)
    run = engine_cli(f"db.url={db_url}", "symbol=ES,ZN,NQ", "-m", "stages=[registry,ingest,detect]", *DAY,
                     *LAUNCHERS[launcher])
    assert run.returncode == 1, run.output
    assert "database is locked" not in run.output
    [sweep_dir] = {p.parent for p in (run.cwd / "runs" / "multirun").rglob("sweep_summary.json")}
    jobs = json.loads((sweep_dir / "sweep_summary.json").read_text())
    assert [(j["symbol"], j["status"]) for j in jobs] == [("ES", "success"), ("ZN", "failed"), ("NQ", "success")]
    assert "unknown symbol 'GLBX.MDP3:ZN'" in jobs[1]["error"]
    table = (sweep_dir / "sweep_summary.md").read_text()
    assert "3 jobs, 1 failed" in table and table.count("| success |") == 2
    stored = query(db_url, "SELECT symbol, count(*) AS n FROM market_bars_ohlcv_1m_clean GROUP BY symbol")
    assert {r["symbol"] for r in stored} == {"GLBX.MDP3:ES", "GLBX.MDP3:NQ"}
    statuses = query(db_url, "SELECT symbol, status FROM engine_runs ORDER BY symbol")
    assert [r["status"] for r in statuses] == ["success", "success", "failed"]
    for job in jobs:
        if job["status"] == "success":
            assert job["stages"]["ingest"]["bars_inserted"] > 1000


def test_concurrent_writers_of_one_symbol_and_window_on_postgres(pg_url, tmp_path):
    command = [sys.executable, "-m", "engine", f"db.url={pg_url}", "stages=[ingest,detect]", *DAY]
    subprocess.run([*command, "stages=[registry]"], cwd=tmp_path, check=True, capture_output=True)  # migrate once
    workdirs = [tmp_path / f"w{i}" for i in range(3)]
    for workdir in workdirs:
        workdir.mkdir()
    procs = [subprocess.Popen(command, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for workdir in workdirs]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    results = [json.loads(next((workdir / "runs").rglob("result.json")).read_text()) for workdir in workdirs]
    ingests = [r["stages"]["ingest"] for r in results]
    received = ingests[0]["bars_received"]
    assert all(i["bars_received"] == received for i in ingests)
    assert sum(i["bars_inserted"] for i in ingests) == received, "every bar inserted exactly once"
    assert all(i["bars_inserted"] + i["bars_unchanged"] + i["bars_updated"] == received for i in ingests)
    assert query(pg_url, "SELECT count(*) AS n FROM market_bars_ohlcv_1m_clean")[0]["n"] == received
    dupes = query(pg_url, "SELECT count(*) AS n FROM (SELECT symbol, ts, direction, n, source_table, logic_version "
                          "FROM triangle_events_v1 GROUP BY 1,2,3,4,5,6 HAVING count(*) > 1) d")
    assert dupes[0]["n"] == 0
    written = {r["stages"]["detect"]["events_written"] for r in results}
    assert len(written) == 1 and query(pg_url, "SELECT count(*) AS n FROM triangle_events_v1")[0]["n"] == written.pop()


# -------------------------------------------------------------------------------------------------- reruns


def local_override(tmp_path: Path, text: str) -> str:
    folder = tmp_path / "site"
    (folder / "local").mkdir(parents=True, exist_ok=True)
    (folder / "local" / "default.yaml").write_text(text)
    return f"hydra.searchpath=[file://{folder}]"


def test_rerun_uses_the_saved_config_not_todays_defaults(engine_cli, db_url, tmp_path):
    first = engine_cli(f"db.url={db_url}", "stages=[ingest,detect]", *DAY)
    assert first.returncode == 0, first.output
    bars_before, events_before = bars(db_url), events(db_url)
    # Today's defaults change (here: a machine-local override); the rerun must not see it.
    changed = local_override(tmp_path, "detector:\n  n: 7\nwindow:\n  start: 2025-12-01\n  end: 2025-12-02\n")
    provenance = json.loads((first.run_dir / "provenance.json").read_text())
    provenance["git_hash"] = "0000000"  # as if the code had moved on since
    (first.run_dir / "provenance.json").write_text(json.dumps(provenance))
    rerun = engine_cli(f"rerun={first.run_dir}", f"db.url={db_url}", changed)
    assert rerun.returncode == 0, rerun.output
    saved = (first.run_dir / "resolved_config.yaml").read_text().replace(
        "rerun: null", f"rerun: {first.run_dir}")
    assert (rerun.run_dir / "resolved_config.yaml").read_text() == saved
    assert "the code changed since run" in rerun.output
    assert bars(db_url) == bars_before and events(db_url) == events_before
    ingest = rerun.result["stages"]["ingest"]
    assert (ingest["bars_inserted"], ingest["bars_updated"]) == (0, 0)
    row = query(db_url, f"SELECT rerun_of, rerun_of_git_hash FROM engine_runs WHERE id = {rerun.result['run_id']}")
    assert row == [{"rerun_of": first.result["run_id"], "rerun_of_git_hash": "0000000"}]


def test_a_whole_sweep_reruns_from_its_directory(engine_cli, db_url):
    sweep = engine_cli(f"db.url={db_url}", "symbol=ES,NQ", "stages=[ingest]", *DAY, "-m")
    assert sweep.returncode == 0, sweep.output
    [sweep_dir] = {p.parent for p in (sweep.cwd / "runs" / "multirun").rglob("sweep_summary.json")}
    originals = {j["symbol"]: j["run_id"] for j in json.loads((sweep_dir / "sweep_summary.json").read_text())}
    again = engine_cli(f"rerun={sweep_dir}", f"db.url={db_url}")
    assert again.returncode == 0, again.output
    reruns = query(db_url, "SELECT symbol, rerun_of FROM engine_runs WHERE rerun_of IS NOT NULL ORDER BY id")
    assert {r["symbol"]: r["rerun_of"] for r in reruns} == originals


def test_rerun_of_a_folder_that_is_not_a_run_is_refused(engine_cli, tmp_path):
    run = engine_cli(f"rerun={tmp_path}")
    assert run.returncode == 2 and "is not a run directory" in run.output


# -------------------------------------------------------------------------------------------------- chunks

KEY = "db-CHUNKTESTKEY00000000000"
THREE_DAYS = ["window.start=2025-12-09T00:00:00Z", "window.end=2025-12-12T00:00:00Z", "window.chunk=1d"]


@pytest.fixture
def fake(fake_databento):
    # 50 bars a day, 29 minutes apart: every part of a Globex session in a day has bars (clean coverage)
    return fake_databento(KEY, records=50, stride=29, subprocess=True)


def test_chunked_backfill_resumes_after_a_failure_in_the_middle_chunk(engine_cli, db_url, fake):
    source = ["source=databento", f"source.gateway={fake.gateway}", "source.definitions=false", f"db.url={db_url}",
              "stages=[ingest,detect]"]
    fake.script(GET_RANGE, Reply(), Reply.error(401, "key revoked mid-backfill"))
    failed = engine_cli(*source, *THREE_DAYS)
    assert failed.returncode == 2 and "DATABENTO_API_KEY" in failed.output
    done = query(db_url, "SELECT stage, start_ts FROM stage_chunks ORDER BY id")
    assert [d["stage"] for d in done] == ["ingest"], "only chunk 1's ingest; its detect waits for chunk 2's bars"

    resumed = engine_cli(*source, *THREE_DAYS)
    assert resumed.returncode == 0, resumed.output
    summary = resumed.result["stages"]
    assert (summary["ingest"]["chunks_skipped"], summary["ingest"]["chunks_done"]) == (1, 2)
    assert summary["ingest"]["bars_inserted"] == 100
    detect = summary["detect"]
    assert (detect["chunks_skipped"], detect["chunks_done"], detect["chunks_pending"]) == (0, 2, 1)
    assert detect["lookahead_complete"] is False, "the last chunk has no bars after it yet"
    assert query(db_url, "SELECT count(*) AS n FROM market_bars_ohlcv_1m_clean")[0]["n"] == 150
    ranges = [seen.params["start"][:10] for seen in fake.seen(GET_RANGE)]
    assert ranges == ["2025-12-09", "2025-12-10", "2025-12-10", "2025-12-11"], "chunk 1 never fetched again"

    forced = engine_cli(*source, *THREE_DAYS, "force=true")
    assert forced.returncode == 0, forced.output
    assert forced.result["stages"]["ingest"]["chunks_done"] == 3
    assert forced.result["stages"]["ingest"]["bars_unchanged"] == 150
    assert len(fake.seen(GET_RANGE)) == 4, "forced chunks reuse the landed raw files"


def test_dry_run_prints_the_plan_and_leaves_the_database_untouched(engine_cli, db_url, fake):
    source = ["source=databento", f"source.gateway={fake.gateway}", "source.definitions=false", f"db.url={db_url}",
              "stages=[ingest,detect]"]
    fake.script(GET_RANGE, Reply())
    first_day = engine_cli(*source, "window.start=2025-12-09", "window.end=2025-12-10")
    assert first_day.returncode == 0, first_day.output
    before = all_tables(db_url)
    sqlite_file = Path(db_url.removeprefix("sqlite:///")) if db_url.startswith("sqlite") else None
    digest = hashlib.sha256(sqlite_file.read_bytes()).hexdigest() if sqlite_file else None
    requests = len(fake.seen(GET_RANGE))

    plan = engine_cli(*source, *THREE_DAYS, "dry_run=true")
    assert plan.returncode == 0, plan.output
    steps = plan.result["plan"]
    assert len(steps["chunks"]) == 3 and steps["databento_symbol"] == "NQ.v.0"
    assert steps["cost_usd"] == pytest.approx(0.5), "two chunks to buy, the landed one is free"
    assert steps["bars_table"] == "market_bars_ohlcv_1m_clean" and "dry run" in plan.output
    assert all_tables(db_url) == before
    if sqlite_file:
        assert hashlib.sha256(sqlite_file.read_bytes()).hexdigest() == digest
    assert len(fake.seen(GET_RANGE)) == requests and len(fake.seen(GET_COST)) >= 2


def test_dry_run_never_creates_a_database(engine_cli, tmp_path):
    target = tmp_path / "fresh" / "never.sqlite"
    plan = engine_cli(f"db.url=sqlite:///{target}", "dry_run=true")
    assert plan.returncode == 0, plan.output
    assert plan.result["plan"]["schema"].startswith("would be migrated")
    assert not target.exists()


def test_submitit_and_ray_launcher_recipes_compose(engine_cli):
    for launcher in ("slurm", "submitit_local"):
        run = engine_cli("--cfg", "hydra", f"hydra/launcher={launcher}")
        assert run.returncode == 0, run.output
    assert "cpus_per_task" in engine_cli("--cfg", "hydra", "hydra/launcher=slurm").stdout
    launcher_dir = Path(__file__).resolve().parents[1] / "engine" / "conf" / "hydra" / "launcher"
    assert (launcher_dir / "ray_cluster.yaml").is_file()
