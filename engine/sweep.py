"""After a multirun: one summary of every job, printed and written into the sweep directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.table import Table

from engine.console import console

# Set in the launching process by `on_multirun_end`, read by `python -m engine` to pick its exit code.
last_sweep: dict[str, Any] = {}


def collect(sweep_dir: Path) -> list[dict]:
    jobs = []
    for result_file in sorted(sweep_dir.glob("*/result.json"), key=lambda p: _job_number(p.parent.name)):
        result = json.loads(result_file.read_text())
        result["job"] = result_file.parent.name
        jobs.append(result)
    return jobs


def _job_number(name: str) -> tuple[int, str]:
    head = name.split("_", 1)[0]
    return (int(head), name) if head.isdigit() else (1 << 30, name)


def _counts(result: dict) -> str:
    stages = result.get("stages") or {}
    parts = []
    if "ingest" in stages:
        ingest = stages["ingest"]
        parts.append(f"bars +{ingest['bars_inserted']:,} ~{ingest['bars_updated']:,} ={ingest['bars_unchanged']:,} "
                     f"skipped {ingest['bars_skipped']:,}")
    if "detect" in stages:
        parts.append("events " + " ".join(f"{k} {v:,}" for k, v in stages["detect"]["events"].items()))
    return "; ".join(parts)


def write_summary(sweep_dir: Path, jobs: list[dict]) -> int:
    """Print and save the summary; returns the number of jobs that did not succeed."""
    table = Table(title=f"sweep {sweep_dir}", title_justify="left")
    for column in ("job", "symbol", "status", "run id", "counts", "run directory"):
        table.add_column(column)
    lines = ["| job | symbol | status | run id | counts | run directory |", "|---|---|---|---|---|---|"]
    for job in jobs:
        row = [job["job"], str(job.get("symbol", "")), job["status"], str(job.get("run_id")), _counts(job),
               job["run_dir"]]
        style = "green" if job["status"] == "success" else "red"
        table.add_row(*row[:2], f"[{style}]{row[2]}[/]", *row[3:])
        lines.append("| " + " | ".join(row) + " |")
    failed = sum(job["status"] != "success" for job in jobs)
    console.print(table)
    (sweep_dir / "sweep_summary.md").write_text("\n".join(lines) + f"\n\n{len(jobs)} jobs, {failed} failed\n")
    (sweep_dir / "sweep_summary.json").write_text(json.dumps(jobs, indent=2, default=str) + "\n")
    return failed


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = collect(sweep_dir)
        failed = write_summary(sweep_dir, jobs)
        last_sweep.update(dir=str(sweep_dir), jobs=len(jobs), failed=failed)
