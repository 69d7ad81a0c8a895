"""Run a saved run again from its own resolved config, not from today's conf/."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from engine.config import EngineConfig, as_typed
from engine.errors import EngineError
from engine.provenance import redact

SAVED_CONFIG = "resolved_config.yaml"
# Keys a rerun takes from its own command as before, not as overrides of the saved config.
_COMMAND_KEYS = ("rerun", "force", "dry_run")
_MASKED_PASSWORD = re.compile(r"(?P<head>://[^:/@]*):\*\*\*@")


@dataclass(frozen=True)
class RerunOf:
    run_id: int | None
    git_hash: str | None
    logic_version: str | None
    run_dir: Path
    overrides: list[str]  # this command's key overrides applied on top of the saved config


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


def load_saved(current: DictConfig, overrides: list[str], groups: list[str]) -> tuple[DictConfig, RerunOf]:
    """The saved resolved config of `current.rerun`, schema-checked, with this command's rerun/force/dry_run and
    its other key overrides (`overrides`, Hydra's task overrides) applied on top. `groups` are the config groups
    of this composition: selecting one (`source=databento`) would need a new composition, so it is refused."""
    run_dir = Path(current.rerun)
    saved_file = run_dir / SAVED_CONFIG
    if not saved_file.is_file():
        raise EngineError(
            f"rerun={run_dir} is not a run directory (no {SAVED_CONFIG} in it)",
            "point rerun= at a folder under runs/ that a finished job wrote, or at a sweep folder",
        )
    saved = _as_plugins(OmegaConf.load(saved_file), saved_file)
    saved.pop("dry_run", None)  # this command's replaces it; runs saved before dry_run was a node hold a bool
    try:
        config = OmegaConf.merge(OmegaConf.structured(EngineConfig), saved)
    except OmegaConfBaseException as exc:
        raise EngineError(f"{saved_file} is not a config this engine can rerun: {getattr(exc, 'msg', exc)}",
                          "run the job again without rerun= (compose it from conf/)") from None
    source_name = config.choices.get("source")
    config.rerun = str(run_dir)
    config.force = current.force
    config.dry_run = current.dry_run  # the whole node, whatever its shape
    applied = _apply_overrides(config, current, overrides, groups, source_name)
    _replay_incremental_window(config, run_dir, applied)
    # A password masked (***, older runs) or left out when the run was saved comes from PGPASSWORD or ~/.pgpass.
    config.db.url = _MASKED_PASSWORD.sub(r"\g<head>@", config.db.url)
    provenance_file = run_dir / "provenance.json"
    provenance = json.loads(provenance_file.read_text()) if provenance_file.is_file() else {}
    return config, RerunOf(provenance.get("run_id"), provenance.get("git_hash"), provenance.get("logic_version"),
                           run_dir, applied)


def _replay_incremental_window(config: DictConfig, run_dir: Path, applied: list[str]) -> None:
    """A rerun of a window=incremental run replays the window that run resolved (its result.json), not today's
    "since the coverage ends": rerunning a run means redoing its work. A command that sets a window key decides
    itself; a run that never resolved its window (it failed before) is resolved again."""
    if config.window.get("mode") != "incremental" or any(a.startswith("window.") for a in applied):
        return
    result_file = run_dir / "result.json"
    window = json.loads(result_file.read_text()).get("window") if result_file.is_file() else None
    if window:
        logging.getLogger("engine").info("rerun of a window=incremental run: its window [%s, %s)", window["start"],
                                         window["end"])
        config.window.mode = "fixed"
        config.window.start, config.window.end, config.window.since = window["start"], window["end"], None


def _as_plugins(saved: DictConfig, saved_file: Path) -> DictConfig:
    """A config saved before sources and detectors were plugins (`source.name: dbn_file`): each named option
    becomes the packaged plugin node it was, with its saved parameters (its stages load from conf/stage/)."""
    from engine.job_plugins import packaged_node, packaged_options

    with open_dict(saved):
        saved.setdefault("choices", {})
        for group in ("source", "detector"):
            node = saved.get(group)
            if isinstance(node, DictConfig) and "_target_" not in node and node.get("name") in packaged_options(group):
                name = node.pop("name")
                saved[group] = {**packaged_node(group, name), **OmegaConf.to_container(node)}
                saved.choices.setdefault(group, name)
    return saved


def _apply_overrides(config: DictConfig, current: DictConfig, overrides: list[str], groups: list[str],
                     saved_source: str) -> list[str]:
    """Copy the value of every key this command overrode from `current` (where Hydra already applied and typed
    it) into the saved `config`; refuse group selections (but the saved source's own) and deletions. Returns the
    overrides applied."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    groups = [group.split("@")[0] for group in groups]  # `local@_global_` is the group `local`
    applied = []
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if key.split(".")[0] in _COMMAND_KEYS:
            continue
        text = redact(as_typed(override.input_line))
        if key == "source" and override.value() == saved_source:
            continue  # composed with the saved run's source (expand_sweep_argv): no change
        if key.split("@")[0] in groups or override.is_delete():
            raise EngineError(
                f"rerun= cannot take {text!r}: it selects or removes a config group, which would compose a new "
                "config instead of replaying the saved one",
                f"drop {text!r} and change single keys instead (e.g. window.start=2025-01-02), or run without "
                "rerun= to compose a new config",
            )
        value = OmegaConf.select(current, key, throw_on_missing=False)
        if isinstance(value, DictConfig | ListConfig):
            value = OmegaConf.to_container(value, resolve=True)
        try:
            OmegaConf.update(config, key, value, merge=False, force_add=override.is_add() or override.is_force_add())
        except OmegaConfBaseException as exc:
            raise EngineError(f"rerun= cannot apply {text!r} to the saved config: {getattr(exc, 'msg', exc)}",
                              f"check {key!r} against the saved {SAVED_CONFIG}") from None
        applied.append(text)
    return applied
