"""Sweeps on the Ray launcher (the `ray` extra), and the warning for a SQLite store on any non-local launcher."""

from __future__ import annotations

import json
import os

import pytest
from hydra import compose, initialize_config_module
from sql_rows import query

from engine.config import register_configs
from engine.shared_store import unshared_store_warning

IN_CI = os.environ.get("CI", "").lower() == "true"
DAY = ["window.start=2025-12-09T00:00:00Z", "window.end=2025-12-10T00:00:00Z"]


@pytest.fixture(scope="module")
def ray_installed():
    """The Ray launcher must be installed (`pip install -e '.[test,ray]'`): a skip here, a failure with CI=true."""
    try:
        import hydra_plugins.hydra_ray_launcher  # noqa: F401
        import ray  # noqa: F401
    except ImportError as exc:
        message = f"the Ray launcher is not installed ({exc}): pip install -e '.[test,ray]'"
        if IN_CI:
            pytest.fail(f"{message}; CI=true requires it")
        pytest.skip(message)


def test_ray_sweep_runs_every_job_as_a_ray_task_and_fails_when_one_fails(ray_installed, engine_cli, db_url):
    run = engine_cli(f"db.url={db_url}", "symbol=ES,ZN,NQ", "-m", "stages=[registry,ingest,detect]", *DAY,
                     "hydra/launcher=ray_local")
    assert run.returncode == 1, run.output
    assert "Ray Launcher is launching 3 jobs" in run.output
    assert run.output.count("(_run_job pid=") > 3, "the jobs' output comes back from Ray worker processes"
    [sweep_dir] = {p.parent for p in (run.cwd / "runs" / "multirun").rglob("sweep_summary.json")}
    jobs = json.loads((sweep_dir / "sweep_summary.json").read_text())
    assert [(j["symbol"], j["status"]) for j in jobs] == [("ES", "success"), ("ZN", "failed"), ("NQ", "success")]
    assert "unknown symbol 'GLBX.MDP3:ZN'" in jobs[1]["error"]
    assert "3 jobs, 1 failed" in (sweep_dir / "sweep_summary.md").read_text()
    stored = query(db_url, "SELECT symbol, count(*) AS n FROM market_bars_ohlcv_1m_clean GROUP BY symbol ORDER BY 1")
    assert [(r["symbol"], r["n"]) for r in stored] == [
        ("GLBX.MDP3:ES", jobs[0]["stages"]["ingest"]["bars_inserted"]),
        ("GLBX.MDP3:NQ", jobs[2]["stages"]["ingest"]["bars_inserted"])]
    assert all(r["n"] > 1000 for r in stored)
    statuses = query(db_url, "SELECT symbol, status FROM engine_runs ORDER BY symbol")
    assert [(r["symbol"], r["status"]) for r in statuses] == [("ES", "success"), ("NQ", "success"), ("ZN", "failed")]
    warned = "is a SQLite file, and hydra/launcher=ray_local can run jobs on other machines" in run.output
    assert warned == db_url.startswith("sqlite")


# -------------------------------------------------------------------------------------------------- the warning

@pytest.fixture(scope="module")
def compose_sweep():
    register_configs()
    with initialize_config_module("engine.conf", version_base="1.3"):
        yield lambda *overrides: compose("config", overrides=list(overrides), return_hydra_config=True)


@pytest.mark.parametrize("launcher", ["slurm", "ray_local", "ray_cluster"])
def test_a_sqlite_store_on_a_launcher_of_other_machines_is_warned_about(ray_installed, compose_sweep, launcher):
    message = unshared_store_warning(compose_sweep(f"hydra/launcher={launcher}", "db.url=sqlite:////srv/e.sqlite"))
    assert message.startswith(f"db.url=sqlite:////srv/e.sqlite is a SQLite file, and hydra/launcher={launcher} ")
    assert "Fix: use PostgreSQL as the shared store, e.g. db=postgres" in message
    default_sqlite = unshared_store_warning(compose_sweep(f"hydra/launcher={launcher}"))
    assert "db.url=sqlite:///data/demo.sqlite is a SQLite file" in default_sqlite
    assert unshared_store_warning(compose_sweep(f"hydra/launcher={launcher}", "db=postgres")) is None


@pytest.mark.parametrize("launcher", ["basic", "joblib", "submitit_local"])
def test_a_sqlite_store_on_a_launcher_of_this_machine_is_fine(compose_sweep, launcher):
    assert unshared_store_warning(compose_sweep(f"hydra/launcher={launcher}", "db.url=sqlite:////srv/e.sqlite")) is None
