"""The `job` group: shipped job files and a team's own, composed over the packaged defaults; `--help` options."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from engine.config import WindowMode, register_configs, to_typed
from engine.job_plugins import load_plugins
from engine.windows import parse_window

CONF = Path(__file__).resolve().parents[1] / "engine" / "conf"
JOBS = sorted(p.stem for p in (CONF / "job").glob("*.yaml"))

TEAM_JOB = """\
# @package _global_
defaults:
  - override /source: databento
symbol: NQ
stages: [registry, ingest, detect]
window:
  start: 2024-01-01T00:00:00Z
  end: 2024-03-01T00:00:00Z
  chunk: 1w
detector:
  n: 3
data_dir: team_data
"""


def engine(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "160", **(env or {})})


def leaves(node, prefix: str = ""):
    """(dotted key, value) of every leaf of a job file, its defaults list left out."""
    for key, value in node.items():
        if key == "defaults":
            continue
        if isinstance(value, dict):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@pytest.fixture(scope="module")
def hydra_conf():
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield


def test_the_three_example_jobs_ship():
    assert JOBS == ["daily_update", "multi_year_backfill", "parity_check"]
    for name in JOBS:
        assert (CONF / "job" / f"{name}.yaml").read_text().startswith("# @package _global_\n")


@pytest.mark.parametrize("name", JOBS)
def test_shipped_job_composes_and_validates(hydra_conf, name):
    # `+job=<name>` on the command line fills the `job: null` slot, i.e. composes as `job=<name>`.
    cfg = compose("config", overrides=[f"job={name}"])
    typed = to_typed(cfg)
    plugins = load_plugins(typed)
    if name == "daily_update":  # window=incremental: resolved from the database's coverage and the source's end
        assert typed.window.mode is WindowMode.incremental and (typed.window.start, typed.window.end) == (None, None)
        assert callable(plugins.source.obj.available_end)
    else:
        window = parse_window(typed.window)
        assert window.start < window.end
    job = OmegaConf.to_container(OmegaConf.load(CONF / "job" / f"{name}.yaml"))
    for key, value in leaves(job):
        assert OmegaConf.select(cfg, key) == value, key
    if name != "parity_check":
        assert plugins.source.name == "databento" and "ingest" in typed.stages


def test_multi_year_backfill_is_chunked_weekly(hydra_conf):
    typed = to_typed(compose("config", overrides=["job=multi_year_backfill"]))
    pieces = parse_window(typed.window).chunks()
    assert typed.window.chunk == "1w" and 250 < len(pieces) < 270


@pytest.mark.parametrize("name", JOBS)
@pytest.mark.parametrize("form", ["+job", "job"])
def test_job_on_the_command_line(tmp_path, name, form):
    proc = engine(f"{form}={name}", "--cfg", "job", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    printed = yaml.safe_load(proc.stdout)
    job = yaml.safe_load((CONF / "job" / f"{name}.yaml").read_text())
    assert printed["stages"] == job["stages"]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()


def test_local_settings_merge_after_the_job(tmp_path):
    (tmp_path / "conf" / "local").mkdir(parents=True)
    (tmp_path / "conf" / "local" / "default.yaml").write_text("parity:\n  tolerance: 3\n")
    proc = engine("+job=parity_check", "--cfg", "job", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    printed = yaml.safe_load(proc.stdout)
    assert printed["parity"]["tolerance"] == 3 and printed["stages"] == ["parity"]


def test_team_job_from_its_own_config_dir_dry_run(tmp_path, monkeypatch):
    """`engine --config-dir ./conf +job=<team job>`: the team's file over the packaged defaults, the machine's
    conf/local/default.yaml last; a dry run offline (no key: cost unknown) exits 0 and writes no database."""
    monkeypatch.delenv("DATABENTO_API_KEY", raising=False)
    (tmp_path / "conf" / "job").mkdir(parents=True)
    (tmp_path / "conf" / "local").mkdir()
    (tmp_path / "conf" / "job" / "nq_backfill_2024.yaml").write_text(TEAM_JOB)
    (tmp_path / "conf" / "local" / "default.yaml").write_text("detector:\n  n: 7\n")
    proc = engine("--config-dir", "./conf", "+job=nq_backfill_2024", "dry_run=true", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [run_dir] = [p.parent for p in (tmp_path / "runs").rglob("result.json")]
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "success" and result["dry_run"] is True
    resolved = yaml.safe_load((run_dir / "resolved_config.yaml").read_text())
    assert resolved["choices"]["source"] == "databento" and resolved["source"]["max_cost_usd"] == 5.0  # packaged
    assert resolved["window"] == {"start": "2024-01-01T00:00:00Z", "end": "2024-03-01T00:00:00Z",
                                  "warmup_start": None, "chunk": "1w", "max_chunks": 10_000, "mode": "fixed",
                                  "since": None}  # the team's job
    assert resolved["detector"]["n"] == 7  # conf/local/default.yaml merges last
    assert resolved["db"]["url"] == "sqlite:///team_data/market.sqlite"
    assert not (tmp_path / "team_data").exists()  # a dry run writes no database


def test_help_lists_only_options_a_user_can_pick(tmp_path):
    proc = engine("--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    section = proc.stdout.split("== Configuration groups ==")[1].split("== Config ==")[0]
    listed = {}
    for line in section.splitlines():
        group, sep, options = line.partition(": ")
        if sep and " " not in group:
            listed[group] = options.split(", ")
    expected = {d.name: sorted(p.stem for p in d.glob("*.yaml"))
                for d in CONF.iterdir() if d.is_dir() and d.name not in {"hydra", "local"}}
    assert listed == expected
    assert listed["job"] == JOBS and listed["db"] == ["postgres", "sqlite"]
    assert "_schema" not in proc.stdout
