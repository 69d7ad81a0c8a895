"""Structured-config schema: one dataclass per YAML group, registered in Hydra's ConfigStore.

Hydra checks keys, types and enum values while composing; `validate()` then checks what a type
cannot express (windows, stage names, symbol spelling) and turns the config into typed objects.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from engine.errors import EngineError

# A plugin's config node: `_target_` (the class) and its parameters.
PluginNode = dict[str, Any]


class DataKind(StrEnum):
    """Demo data must never share a database with market data."""

    demo = "demo"
    market = "market"


class Direction(StrEnum):
    BULL = "BULL"
    BEAR = "BEAR"


class Adjustment(StrEnum):
    """How a continuous series is back-adjusted at its rolls when read (engine/adjust.py)."""

    none = "none"  # the contracts' own prices (TradingView parity on unadjusted continuous charts)
    difference = "difference"  # backward Panama: earlier bars shifted by the incoming - outgoing close
    ratio = "ratio"  # backward ratio: earlier bars scaled by incoming / outgoing close (returns kept)


class BarsTable(StrEnum):
    clean = "market_bars_ohlcv_1m_clean"
    legacy = "market_bars_ohlcv_1m"


@dataclass
class DbConfig:
    url: str = MISSING
    echo: bool = False


class WindowMode(StrEnum):
    fixed = "fixed"  # [window.start, window.end) as given
    incremental = "incremental"  # from where the symbol's clean coverage ends to the latest minute the source has


@dataclass
class WindowConfig:
    start: str | None = MISSING  # null only with mode incremental (window=incremental)
    end: str | None = MISSING
    warmup_start: str | None = None
    chunk: str | None = None  # e.g. 1d, 7d, 12h: process a long window chunk by chunk, resumably
    max_chunks: int = 10_000  # a chunk plan longer than this is refused unless raised here deliberately
    mode: WindowMode = WindowMode.fixed
    since: str | None = None  # mode incremental: the start for a symbol the database has no coverage of yet


@dataclass
class PolicyConfig:
    name: str = MISSING
    allow_legacy: bool = False


@dataclass
class ParitySideConfig:
    """One side of `stages=[parity]`: events in the database, or a CSV export (columns ts, direction)."""

    source_table: str | None = None  # clean | legacy (or the table name); null: the table detect reads
    logic_version: str | None = None  # null: this run's logic version
    csv: str | None = None  # a file of events from another tool instead of the database
    adjust: Adjustment | None = None  # the adjustment the events were detected on; null: the run's `adjust`


@dataclass
class ParityConfig:
    left: ParitySideConfig = field(default_factory=ParitySideConfig)
    right: ParitySideConfig = field(default_factory=ParitySideConfig)
    tolerance: int = 0  # mismatches (only_left + only_right) accepted before the job fails


@dataclass
class SymbolDefaults:
    """Used for fields the registry row leaves empty (and the dataset of a bare root like `NQ`)."""

    dataset: str = "GLBX.MDP3"
    roll_rule: str = "v"
    rank: int = 0
    schema: str = "ohlcv-1m"
    stype_in: str = "continuous"


@dataclass
class RegistryConfig:
    # Roots (a continuous series each) and outright contracts (ESU4: one contract as its own series).
    seed: list[str] = field(default_factory=lambda: ["NQ", "ES", "YM", "RTY"])
    defaults: SymbolDefaults = field(default_factory=SymbolDefaults)
    # Minimum price increment per root, in points: ingest quarantines prices off it as `off_tick`. A root
    # missing here is not checked (the ingest says so). Add one with +registry.tick_sizes.CL=0.01.
    tick_sizes: dict[str, float] = field(default_factory=lambda: {"ES": 0.25, "NQ": 0.25, "YM": 1.0, "RTY": 0.1})


@dataclass
class DryRunConfig:
    """`dry_run=true` (short for dry_run.enabled=true) writes plan.md and runs nothing; `dry_run.compare=<run dir
    or plan.md>` adds the diff against that earlier plan and implies a dry run."""

    enabled: bool = False
    compare: str | None = None

    @property
    def active(self) -> bool:
        return self.enabled or self.compare is not None


@dataclass
class EngineConfig:
    db: DbConfig = MISSING
    # Plugins (engine/plugins.py): each node names its class with `_target_` and holds its parameters, which
    # are checked against that class when the job starts.
    source: PluginNode = MISSING
    detector: PluginNode = MISSING
    window: WindowConfig = MISSING
    policy: PolicyConfig = MISSING
    parity: ParityConfig = field(default_factory=ParityConfig)
    stages: list[str] = field(default_factory=lambda: ["registry"])  # run in this order
    # Each stage's plugin node, from conf/stage/<name>.yaml when the job starts (`stage.<name>.<key>=` sets one of
    # its parameters); the resolved config records them, so a rerun runs the same stages.
    stage: dict[str, PluginNode] = field(default_factory=dict)
    symbol: str = "NQ"
    roll_rule: str | None = None
    rank: int | None = None
    # Roll rule c from outright bars: leave the expiring contract this many trading sessions before its expiry.
    roll_days_before_expiry: int = 0
    adjust: Adjustment = Adjustment.none  # how detect, chart and parity read the series
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    data_dir: str = "data"
    dry_run: DryRunConfig = field(default_factory=DryRunConfig)
    force: bool = False  # redo chunks already done with the same settings
    rerun: str | None = None  # a run directory (or sweep directory) to run again from its saved config
    # The config options that selected the source and detector (source=dbn_file): recorded by the engine when a
    # job starts, so that a rerun keeps them.
    choices: dict[str, str] = field(default_factory=dict)


def expand_dry_run_argv(args: list[str]) -> list[str]:
    """`dry_run=true` (or `=false`, or a sweep `=true,false`) sets `dry_run.enabled`: Hydra cannot replace a config
    node with a bool, and `dry_run` is a node so that `dry_run.compare=...` can sit beside it."""
    out = []
    for arg in args:
        head, sep, value = arg.partition("=")
        out.append(f"{head}.enabled={value}" if sep and head in ("dry_run", "++dry_run") else arg)
    return out


def register_configs() -> None:
    """Store the schemas outside any group, so `--help` and "no match" errors list only options a user can pick.

    Each option file extends its schema with `- /<name>_schema@_here_` in its defaults list.
    """
    cs = ConfigStore.instance()
    cs.store(name="engine_schema", node=EngineConfig)
    cs.store(name="db_schema", node=DbConfig)
    cs.store(name="window_schema", node=WindowConfig)
    cs.store(name="policy_schema", node=PolicyConfig)
    cs.store(name="parity_schema", node=ParityConfig)


# ---------------------------------------------------------------------------------------------
# Checks a type cannot express


def normalize_symbol(symbol: str, default_dataset: str) -> str:
    """`NQ` -> `GLBX.MDP3:NQ`; `GLBX.MDP3:NQ` stays; likewise an outright contract (`esu4` -> `GLBX.MDP3:ESU4`,
    see ``engine.symbols``); names are upper-cased."""
    text = str(symbol).strip()
    dataset, _, root = text.rpartition(":")
    if not root or any(ch in root for ch in " .,/"):
        raise EngineError(
            f"symbol={text!r} is not a symbol",
            "use a root such as symbol=NQ, a contract such as symbol=ESU4 or a stored symbol such as "
            "symbol=GLBX.MDP3:NQ",
        )
    return f"{dataset or default_dataset}:{root.upper()}"


def suggest(word: str, known: list[str]) -> str:
    close = difflib.get_close_matches(word, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def to_typed(cfg: DictConfig) -> EngineConfig:
    """Resolve every interpolation and convert to dataclass instances (raises on MISSING values)."""
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# Misspelt override keys: caught before Hydra composes, with a suggestion

def known_keys(schema: type = EngineConfig, prefix: str = "") -> set[str]:
    """Every dotted key the schema accepts (a group's keys are the union over its options)."""
    keys: set[str] = set()
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        key = f"{prefix}{f.name}"
        keys.add(key)
        if dataclasses.is_dataclass(hints[f.name]):
            keys |= known_keys(hints[f.name], f"{key}.")
    return keys


def _field_type(key: str):
    """The annotated type of a dotted key of the schema (None for a key inside a source option)."""
    kind: object = EngineConfig
    for name in key.split("."):
        if not dataclasses.is_dataclass(kind):
            return None
        kind = typing.get_type_hints(kind).get(name)
    return kind


def _parsed(args: list[str]) -> list:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    candidates = [a for a in args if "=" in a and not a.startswith(("-", "+", "~", "hydra.", "hydra/"))]
    try:
        return OverridesParser.create().parse_overrides(candidates)
    except OverrideParseException:
        return []  # Hydra reports syntax errors itself


def plugin_parameter_overrides(args: list[str]) -> list[str]:
    """`source.seed=3` becomes `++source.seed=3`: a plugin's parameters are checked against its class when the job
    starts (engine/plugins.py), so one its YAML leaves out (a default of the class) can be set too."""
    out = []
    for arg in args:
        key = arg.partition("=")[0]
        plugin_key = "=" in arg and not arg.startswith(("-", "+", "~")) and (
            key.startswith(("source.", "detector.")) or (key.startswith("stage.") and key.count(".") >= 2))
        out.append(f"++{arg}" if plugin_key else arg)
    return out


def as_typed(override: str) -> str:
    """An override as the user typed it: `source.seed=3`, not the `++source.seed=3` it was rewritten to."""
    bare = override.removeprefix("++")
    return bare if plugin_parameter_overrides([bare]) == [override] else override


def check_override_keys(args: list[str]) -> None:
    """Refuse `windw.start=…` with 'did you mean window.start?' instead of Hydra's struct error."""
    overrides = _parsed(args)
    known = sorted(known_keys())
    # Keys under a mapping field (registry.tick_sizes.CL) are the user's own names.
    maps = tuple(f"{key}." for key in known if typing.get_origin(_field_type(key)) is dict)
    for override in overrides:
        key = override.key_or_group
        if key not in known and not key.startswith(maps):
            raise EngineError(
                f"unknown config key {key!r}{suggest(key, known)}",
                "check the spelling; `python -m engine --cfg job` prints every key",
            )
