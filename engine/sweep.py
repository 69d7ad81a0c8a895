"""After a multirun: one summary of every job, printed and written into the sweep directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from rich.table import Table

from engine.console import console

# Set in the launching process by `on_multirun_end`, read by `python -m engine` to pick its exit code.
last_sweep: dict[str, Any] = {}
# Jobs a launcher saw end without a result (engine/slurm_launcher.py): job directory -> the job's summary entry.
_lost: dict[Path, dict] = {}


def lost_job(job_dir: Path, overrides: list[str], reason: str) -> None:
    """Record a job that ended without writing result.json (killed, cancelled, its node lost): it gets a row in the
    sweep summary with status `lost` and counts as failed."""
    symbol = next((o.split("=", 1)[1] for o in overrides if o.startswith("symbol=")), None)
    _lost[job_dir.resolve()] = {"status": "lost", "symbol": symbol, "run_id": None, "run_dir": str(job_dir.resolve()),
                                "overrides": overrides, "error": reason}


def collect(sweep_dir: Path) -> list[dict]:
    jobs = {}
    for result_file in sweep_dir.glob("*/result.json"):
        result = json.loads(result_file.read_text())
        result["job"] = result_file.parent.name
        jobs[result_file.parent.resolve()] = result
    for job_dir, entry in _lost.items():
        if job_dir.parent == sweep_dir.resolve() and job_dir not in jobs:  # a result written before the kill wins
            jobs[job_dir] = {**entry, "job": job_dir.name}
    return sorted(jobs.values(), key=lambda job: _job_number(job["job"]))


def launched_jobs(config: DictConfig) -> list[list[str]] | None:
    """The overrides of each job Hydra's basic sweeper launched for this sweep, in job order (None with another
    sweeper, whose jobs cannot be listed here)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if OmegaConf.select(config, "hydra.sweeper._target_") != f"{BasicSweeper.__module__}.{BasicSweeper.__name__}":
        return None
    params = [f"{key}={value}" for key, value in (OmegaConf.select(config, "hydra.sweeper.params") or {}).items()]
    parsed = OverridesParser.create().parse_overrides([*params, *config.hydra.overrides.task])
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def add_missing(sweep_dir: Path, jobs: list[dict], launched: list[list[str]]) -> list[dict]:
    """`jobs` with a `missing` entry for every launched job that left no result.json in the sweep directory."""
    found = {_job_number(job["job"])[0] for job in jobs}
    for number, overrides in enumerate(launched):
        if number in found:
            continue
        symbol = next((o.split("=", 1)[1] for o in overrides if o.startswith("symbol=")), None)
        jobs.append({"job": str(number), "symbol": symbol, "status": "missing", "run_dir": str(sweep_dir / str(number)),
                     "error": f"no result.json in {sweep_dir / str(number)}: the job did not run, died before writing "
                              "it, or wrote it on another machine (a relative hydra.sweep.dir resolves in the working "
                              "directory of the node that ran the job). Fix: rerun the job; on a cluster, put "
                              "hydra.sweep.dir and data_dir on a path every node shares (README, Scale-out: two "
                              "nodes)"})
    return sorted(jobs, key=lambda job: _job_number(job["job"]))


def _job_number(name: str) -> tuple[int, str]:
    head = name.split("_", 1)[0]
    return (int(head), name) if head.isdigit() else (1 << 30, name)


def _counts(result: dict) -> str:
    """The job's counts for its row of the sweep summary, from its typed stage results."""
    from engine.results import from_json

    parts = [from_json(data).brief(name) for name, data in (result.get("stages") or {}).items()
             if from_json(data) is not None]
    return "; ".join(part for part in parts if part)


def write_summary(sweep_dir: Path, jobs: list[dict]) -> int:
    """Print and save the summary (run directories in full; the .md adds each failed job's error); returns the
    number of jobs that did not succeed."""
    sweep_dir = sweep_dir.resolve()
    table = Table(title=f"sweep {sweep_dir}", title_justify="left")
    for column in ("job", "symbol", "status", "run id", "counts"):
        table.add_column(column)
    widest = max((len(job["run_dir"]) for job in jobs), default=0)
    table.add_column("run directory", no_wrap=True, min_width=widest)  # whole, never folded: it is copied
    lines = ["| job | symbol | status | run id | counts | run directory |", "|---|---|---|---|---|---|"]
    for job in jobs:
        run_id = "" if job.get("run_id") is None else str(job["run_id"])
        row = [job["job"], str(job.get("symbol") or ""), job["status"], run_id, _counts(job), job["run_dir"]]
        style = "green" if job["status"] == "success" else "red"
        table.add_row(*row[:2], f"[{style}]{row[2]}[/]", *row[3:])
        lines.append("| " + " | ".join(row) + " |")
    failed = [job for job in jobs if job["status"] != "success"]
    lines.append(f"\n{len(jobs)} jobs, {len(failed)} failed")
    for job in failed:
        lines += ["", f"## job {job['job']} ({job.get('symbol') or 'no symbol'}): {job['status']}", "",
                  f"Run directory: `{job['run_dir']}`", "", "```", str(job.get("error") or "no error recorded"),
                  "```"]
    console.print(table)
    (sweep_dir / "sweep_summary.md").write_text("\n".join(lines) + "\n")
    (sweep_dir / "sweep_summary.json").write_text(json.dumps(jobs, indent=2, default=str) + "\n")
    return len(failed)


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = collect(sweep_dir)
        if (launched := launched_jobs(config)) is not None:
            jobs = add_missing(sweep_dir.resolve(), jobs, launched)
        failed = write_summary(sweep_dir, jobs)
        last_sweep.update(dir=str(sweep_dir), jobs=len(jobs), failed=failed)
