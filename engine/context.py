"""What every stage receives: validated config, its plugins, database, run record and logger."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from engine.config import EngineConfig
from engine.job_plugins import JobPlugins, load_plugins
from engine.provenance import CodeVersion
from engine.results import StageResult
from engine.symbols import ResolvedSymbol, resolve_symbol
from engine.windows import Window


@dataclass
class RunRecord:
    id: int
    dir: Path
    code: CodeVersion
    results: dict[str, StageResult] = field(default_factory=dict)


@dataclass
class StageContext:
    cfg: EngineConfig
    window: Window
    db: Engine
    run: RunRecord
    log: logging.Logger
    plugins: JobPlugins | None = None  # created from cfg when not given

    def __post_init__(self) -> None:
        if self.plugins is None:
            self.plugins = load_plugins(self.cfg)

    @property
    def source(self) -> Any:
        """The job's source object (engine/sources/__init__.py: Source)."""
        return self.plugins.source.obj

    @property
    def detector(self) -> Any:
        """The job's detector object (engine/detectors/__init__.py: Detector)."""
        return self.plugins.detector.obj

    @cached_property
    def symbol(self) -> ResolvedSymbol:
        """Resolved on first use, so a `registry` stage can seed the registry before it is read."""
        return resolve_symbol(self.db, self.cfg, self.log)
