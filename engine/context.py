"""What every stage receives: validated config, database, run record and logger."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from sqlalchemy import Engine

from engine.config import EngineConfig
from engine.provenance import CodeVersion
from engine.symbols import ResolvedSymbol, resolve_symbol
from engine.windows import Window


@dataclass
class RunRecord:
    id: int
    dir: Path
    code: CodeVersion
    summary: dict[str, dict] = field(default_factory=dict)


@dataclass
class StageContext:
    cfg: EngineConfig
    window: Window
    db: Engine
    run: RunRecord
    log: logging.Logger

    @cached_property
    def symbol(self) -> ResolvedSymbol:
        """Resolved on first use, so a `registry` stage can seed the registry before it is read."""
        return resolve_symbol(self.db, self.cfg, self.log)
