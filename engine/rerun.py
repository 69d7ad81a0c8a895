"""Run a saved run again from its own resolved config, not from today's conf/."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from engine.config import SOURCE_SCHEMAS, EngineConfig
from engine.errors import EngineError
from engine.provenance import redact

SAVED_CONFIG = "resolved_config.yaml"


@dataclass(frozen=True)
class RerunOf:
    run_id: int | None
    git_hash: str | None
    logic_version: str | None
    run_dir: Path


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The job directories of a sweep, in job order."""
    found = [p.parent for p in sweep_dir.glob(f"*/{SAVED_CONFIG}")]
    return sorted(found, key=lambda p: (int(p.name) if p.name.isdigit() else 1 << 30, p.name))


def expand_sweep_argv(argv: list[str]) -> list[str]:
    """`rerun=<sweep dir>` becomes a multirun over the sweep's job directories."""
    out: list[str] = []
    multirun = False
    for arg in argv:
        key, _, value = arg.partition("=")
        path = Path(value)
        if key == "rerun" and value and not (path / SAVED_CONFIG).exists() and (path / "multirun.yaml").exists():
            jobs = job_dirs(path)
            if not jobs:
                raise EngineError(f"sweep directory {path} holds no saved job configs", "rerun a run directory")
            out.append("rerun=" + ",".join(str(j) for j in jobs))
            multirun = "-m" not in argv and "--multirun" not in argv
        else:
            out.append(arg)
    return ["--multirun", *out] if multirun else out


def load_saved(current: DictConfig) -> tuple[DictConfig, RerunOf]:
    """The saved resolved config of `current.rerun`, schema-checked, with this command's rerun/force/dry_run."""
    run_dir = Path(current.rerun)
    saved_file = run_dir / SAVED_CONFIG
    if not saved_file.is_file():
        raise EngineError(
            f"rerun={run_dir} is not a run directory (no {SAVED_CONFIG} in it)",
            "point rerun= at a folder under runs/ that a finished job wrote, or at a sweep folder",
        )
    saved = OmegaConf.load(saved_file)
    source_name = saved.get("source", {}).get("name")
    schemas = {schema.name: schema for schema in SOURCE_SCHEMAS}
    if source_name not in schemas:
        raise EngineError(f"{saved_file} names an unknown source {source_name!r}",
                          f"known sources: {', '.join(schemas)}")
    saved.pop("dry_run", None)  # this command's replaces it; runs saved before dry_run was a node hold a bool
    config = OmegaConf.merge(OmegaConf.structured(EngineConfig), saved)
    with open_dict(config):
        config.source = OmegaConf.merge(OmegaConf.structured(schemas[source_name]), saved.source)
    config.rerun = str(run_dir)
    config.force = current.force
    config.dry_run = current.dry_run
    if "***" in config.db.url:
        # The password was masked when the run was saved: take it from this machine's config if it is the same URL.
        if redact(current.db.url) != config.db.url:
            raise EngineError(
                f"the saved db.url {config.db.url} had its password masked and this machine's db.url differs",
                "give the password via ~/.pgpass or PGPASSWORD, or set db.url in conf/local/default.yaml",
            )
        config.db.url = current.db.url
    provenance_file = run_dir / "provenance.json"
    provenance = json.loads(provenance_file.read_text()) if provenance_file.is_file() else {}
    return config, RerunOf(provenance.get("run_id"), provenance.get("git_hash"), provenance.get("logic_version"),
                           run_dir)
