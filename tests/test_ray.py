"""Sweeps on the Ray launcher (the `ray` extra), and the warning for a SQLite store on any non-local launcher."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

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


@pytest.fixture(scope="module")
def ray_head(ray_installed, tmp_path_factory):
    """A running Ray cluster, as `ray start --head` on a head node (token authentication on, 2 CPUs, small
    object store), started in a folder of its own as on another node: yields the environment that joins it
    (RAY_ADDRESS, the token) and that folder; stopped by its process group."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{port}", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    node_dir = tmp_path_factory.mktemp("ray_node")
    log_file = node_dir / "head.log"
    with open(log_file, "w") as log:
        head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
                                 f"--port={port}", "--num-cpus=2", "--object-store-memory=78643200",
                                 "--include-dashboard=false", "--disable-usage-stats"],
                                cwd=node_dir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while "Ray runtime started" not in log_file.read_text():
            assert head.poll() is None and time.monotonic() < deadline, log_file.read_text()[-3000:]
            time.sleep(0.5)
        yield env, node_dir
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()


def test_a_sweep_joins_a_running_cluster_through_ray_address(ray_head, engine_cli, db_url, tmp_path):
    env, _ = ray_head
    shared = tmp_path / "shared"  # as a folder every node mounts
    run = engine_cli(f"db.url={db_url}", "symbol=ES,NQ", "-m", "stages=[registry,ingest]", *DAY,
                     "hydra/launcher=ray_cluster", f"data_dir={shared / 'data'}",
                     f"hydra.sweep.dir={shared / 'runs' / 'sweep'}", env=env)
    assert run.returncode == 0, run.output
    assert "Connecting to existing Ray cluster" in run.output and "Started a local Ray instance" not in run.output
    assert " relative: each Ray job resolves it" not in run.output
    jobs = json.loads((shared / "runs" / "sweep" / "sweep_summary.json").read_text())
    assert [(j["symbol"], j["status"]) for j in jobs] == [("ES", "success"), ("NQ", "success")]
    stored = query(db_url, "SELECT symbol, count(*) AS n FROM market_bars_ohlcv_1m_clean GROUP BY symbol ORDER BY 1")
    assert [(r["symbol"], r["n"]) for r in stored] == [
        ("GLBX.MDP3:ES", jobs[0]["stages"]["ingest"]["bars_inserted"]),
        ("GLBX.MDP3:NQ", jobs[1]["stages"]["ingest"]["bars_inserted"])]


def test_a_cluster_sweep_with_relative_folders_is_warned_about_and_fails_instead_of_reporting_nothing(
        ray_head, engine_cli, pg_url):
    """The jobs run in the node's working directory, so their run directories are not in this sweep's: the sweep
    says so before it starts, and ends with every job `missing` and exit 1, never a success with no jobs."""
    env, node_dir = ray_head
    run = engine_cli(f"db.url={pg_url}", "symbol=ES,NQ", "-m", "stages=[registry]", "hydra/launcher=ray_cluster",
                     env=env)
    assert "data_dir=data and hydra.sweep.dir=runs/multirun/" in run.output
    assert "are relative: each Ray job resolves it in the working directory of the node" in run.output
    assert run.returncode == 1, run.output
    [sweep_dir] = {p.parent for p in (run.cwd / "runs" / "multirun").rglob("sweep_summary.json")}
    jobs = json.loads((sweep_dir / "sweep_summary.json").read_text())
    assert [(j["job"], j["symbol"], j["status"]) for j in jobs] == [("0", "ES", "missing"), ("1", "NQ", "missing")]
    assert "put hydra.sweep.dir and data_dir on a path every node shares" in jobs[0]["error"]
    assert "2 jobs, 2 failed" in (sweep_dir / "sweep_summary.md").read_text()
    on_the_node = sorted(p.parent.name for p in (node_dir / sweep_dir.relative_to(run.cwd)).glob("*/result.json"))
    assert on_the_node == ["0", "1"], "the jobs ran, and wrote their records on the node"


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
