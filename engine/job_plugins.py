"""The plugins of one job: its source, its detector and its stages, created from their config nodes."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from engine.config import EngineConfig, suggest
from engine.errors import EngineError
from engine.plugins import BadParameter, Plugin, build, checked

# What the engine calls on each kind of plugin.
SOURCE_NEEDS = ("acquire", "data_kind", "batch_size", "local")
DETECTOR_NEEDS = ("warmup_bars", "lookahead_bars", "detect")
STAGE_NEEDS = ("run",)


@dataclass(frozen=True)
class JobPlugins:
    source: Plugin
    detector: Plugin
    stages: dict[str, Plugin]  # in the order they run


def load_plugins(cfg: EngineConfig) -> JobPlugins:
    """Create every plugin of the job (all of them, so a bad parameter anywhere fails before anything runs)."""
    check_stages(list(cfg.stages), [*packaged_options("stage"), *cfg.stage])
    return JobPlugins(
        source=build("source", option_name(cfg, "source"), cfg.source, SOURCE_NEEDS),
        detector=build("detector", option_name(cfg, "detector"), cfg.detector, DETECTOR_NEEDS),
        stages={name: build(f"stage.{name}", name, cfg.stage.get(name) or packaged_node("stage", name), STAGE_NEEDS)
                for name in cfg.stages},
    )


def add_stage_nodes(cfg: DictConfig) -> None:
    """Put the node of each stage in `stages` into `cfg.stage` (from conf/stage/<name>.yaml on the config search
    path: the packaged ones, ./conf, hydra.searchpath, --config-dir), under any `stage.<name>.<key>=` given on the
    command line; a node already there with its class (a rerun's saved config) stays. Call inside a Hydra app."""
    from hydra import compose
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import MissingConfigException

    searchpath = _searchpath_override()
    with warnings.catch_warnings(), open_dict(cfg):
        warnings.simplefilter("ignore", UserWarning)  # a search path folder that does not exist: told at start-up
        check_stages(list(cfg.stages), GlobalHydra.instance().config_loader().get_group_options(
            "stage", overrides=searchpath))
        for name in cfg.stages:
            given = cfg.stage.get(name)
            if given is not None and "_target_" in given:
                continue
            try:
                # An option of the group, not a primary config: Hydra looks for those in hydra.searchpath too.
                node = compose(overrides=[*searchpath, f"+stage={name}"]).stage
                OmegaConf.set_struct(node, False)  # a key the class does not take is refused when it is created
            except MissingConfigException:  # listed by get_group_options but unreadable: say which
                raise EngineError(f"cannot read conf/stage/{name}.yaml", "check the file") from None
            cfg.stage[name] = OmegaConf.merge(node, given) if given is not None else node


def _searchpath_override() -> list[str]:
    """The job's `hydra.searchpath` (config.yaml's ./conf, or the command line's) as an override: without it
    `compose` and `get_group_options` search only the packaged config and --config-dir."""
    from hydra.core.hydra_config import HydraConfig

    quoted = ("'" + path.replace("\\", "\\\\").replace("'", "\\'") + "'" for path in HydraConfig.get().searchpath)
    return [f"hydra.searchpath=[{','.join(quoted)}]"]


def check_stages(stages: list[str], known: list[str]) -> None:
    known = sorted(known, key=lambda name: (_ORDER.index(name) if name in _ORDER else len(_ORDER), name))
    for stage in stages:
        if stage not in known:
            raise EngineError(
                f"unknown stage {stage!r} in stages={list(stages)}{suggest(stage, known)}",
                f"use stages from: {', '.join(known)} (or add conf/stage/{stage}.yaml)",
            )
    if not stages:
        raise EngineError("stages is empty", f"name at least one of: {', '.join(known)}")
    repeated = sorted({s for s in stages if stages.count(s) > 1})
    if repeated:
        raise EngineError(f"stages=[{','.join(stages)}] names {', '.join(repeated)} more than once",
                          "name each stage once; stages run in the order given")


# The packaged stages in the order a pipeline runs them (how error messages list stages).
_ORDER = ("registry", "ingest", "detect", "parity", "chart", "export")


def option_name(cfg: EngineConfig, group: str) -> str:
    """The config option that selected the group's plugin (`source=dbn_file`), as the engine recorded it when the
    job started; for a config built without Hydra, the packaged option with the same class."""
    if group in cfg.choices:
        return cfg.choices[group]
    target = getattr(cfg, group).get("_target_")
    for name in packaged_options(group):
        if packaged_node(group, name).get("_target_") == target:
            return name
    raise EngineError(f"no option name recorded for {group} ({target})", f"select it with {group}=<option>")


@cache
def packaged_options(group: str) -> tuple[str, ...]:
    folder = resources.files("engine.conf").joinpath(group)
    return tuple(sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")))


@cache
def packaged_node(group: str, name: str) -> dict:
    """A packaged option's node."""
    text = resources.files("engine.conf").joinpath(group, f"{name}.yaml").read_text()
    node = OmegaConf.to_container(OmegaConf.create(text))
    node.pop("defaults", None)
    return node


class CheckPlugins(Callback):
    """Check the source's and detector's parameters against their classes before Hydra starts the run or sweep, so
    that an unknown key or a wrong type is refused as Hydra's own refusals are (`ERROR …`, exit 2, nothing
    written). The values' own checks (detector.n 2…1440) run when each job creates its plugins, with the pre-run
    checks. Hydra 1.3 turns an exception in a callback into a warning, so a refusal exits here."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        _refuse_bad_plugins(config)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        _refuse_bad_plugins(config)


def _refuse_bad_plugins(config: DictConfig) -> None:
    from rich.markup import escape

    from engine.console import console

    if config.get("rerun"):
        return  # the job checks the saved run's plugins, which this composition does not hold
    choices = config.hydra.runtime.choices
    try:
        for group in ("source", "detector"):
            try:
                checked(group, choices.get(group) or group, OmegaConf.to_container(config[group], resolve=True))
            except BadParameter as exc:  # named again with the file that set it
                raise BadParameter(exc.key, exc.value, exc.expected, _file_setting(config, exc.key)) from None
    except EngineError as exc:
        console.print(f"[red]ERROR[/] {escape(str(exc))}", highlight=False)
        raise SystemExit(exc.exit_code) from exc
    except OmegaConfBaseException:
        return  # a missing or unresolvable value: the job reports it with its key


def _file_setting(config: DictConfig, key: str) -> str | None:
    """The config file that set `key` (None: the command line did): the machine's conf/local/default.yaml, the
    job file or the group option's YAML, whichever merges last, on the run's config search path."""
    if any(o.lstrip("+~").partition("=")[0] == key for o in config.hydra.overrides.task):
        return None
    choices = config.hydra.runtime.choices
    group, _, rest = key.partition(".")
    candidates = [(f"{group}/{choices.get(group)}", rest)]
    if choices.get("job"):
        candidates.append((f"job/{choices.job}", key))
    candidates.append(("local/default", key))
    folders = [Path(s.path) for s in config.hydra.runtime.config_sources if s.schema == "file"]
    found = None
    for name, inner in candidates:
        for folder in folders:
            path = folder / f"{name}.yaml"
            if path.is_file() and OmegaConf.select(OmegaConf.load(path), inner, default=None) is not None:
                found = f"conf/{name}.yaml" if folder == Path("conf") else str(path)
    return found
