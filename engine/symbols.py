"""Which Databento symbol a configured symbol means: config > registry row > conf/ defaults."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import Engine

from engine.config import EngineConfig, SymbolDefaults, normalize_symbol
from engine.db import registry
from engine.errors import EngineError

ADD_SYMBOL_SQL = (
    "INSERT INTO symbol_registry (internal_symbol, dataset, root, roll_rule, rank, is_active) "
    "VALUES ('{symbol}', '{dataset}', '{root}', 'v', 0, TRUE);"
)


@dataclass(frozen=True)
class ResolvedSymbol:
    internal_symbol: str  # GLBX.MDP3:NQ
    dataset: str
    root: str
    roll_rule: str
    rank: int
    schema: str
    stype_in: str
    origin: dict[str, str]  # field -> "config" | "registry" | "defaults"

    @property
    def continuous(self) -> str:
        """Databento's continuous symbol, e.g. NQ.v.0."""
        return f"{self.root}.{self.roll_rule}.{self.rank}"

    @property
    def is_outright(self) -> bool:
        """One contract as its own series (stype_in raw_symbol, e.g. GLBX.MDP3:ESU4), not a continuous one."""
        return self.stype_in == "raw_symbol"

    @property
    def databento_symbol(self) -> str:
        """What Databento is asked for: the contract (ESU4) of an outright series, else the continuous NQ.v.0."""
        return self.internal_symbol.partition(":")[2] if self.is_outright else self.continuous

    @property
    def rule(self) -> str:
        """The roll rule and rank of a continuous series as Databento writes them, e.g. v.0."""
        return f"{self.roll_rule}.{self.rank}"


def seed_rows(defaults: SymbolDefaults, roots: list[str]) -> list[dict]:
    return [
        {
            "internal_symbol": f"{defaults.dataset}:{root.upper()}",
            "dataset": defaults.dataset,
            "root": root.upper(),
            "roll_rule": defaults.roll_rule,
            "rank": defaults.rank,
            "schema": defaults.schema,
            "stype_in": defaults.stype_in,
            "is_active": True,
        }
        for root in roots
    ]


def resolve_symbol(engine: Engine, cfg: EngineConfig, log: logging.Logger) -> ResolvedSymbol:
    defaults = cfg.registry.defaults
    internal = normalize_symbol(cfg.symbol, defaults.dataset)
    row = registry.registry_row(engine, internal)
    if row is None:
        known = [r["internal_symbol"] for r in registry.all_rows(engine)]
        dataset, _, root = internal.partition(":")
        raise EngineError(
            f"unknown symbol {internal!r}; the symbol registry has: {', '.join(known) or '(nothing)'}",
            "pick one of those, or add it with SQL: "
            + ADD_SYMBOL_SQL.format(symbol=internal, dataset=dataset, root=root),
        )
    if not row["is_active"]:
        raise EngineError(
            f"symbol {internal!r} is inactive in symbol_registry",
            f"enable it with SQL: UPDATE symbol_registry SET is_active = TRUE "
            f"WHERE internal_symbol = '{internal}';",
        )
    origin: dict[str, str] = {}
    chosen: dict[str, object] = {}
    for name, override in (("roll_rule", cfg.roll_rule), ("rank", cfg.rank), ("schema", None), ("stype_in", None)):
        if override is not None:
            chosen[name], origin[name] = override, "config"
        elif row.get(name) is not None:
            chosen[name], origin[name] = row[name], "registry"
        else:
            chosen[name], origin[name] = getattr(defaults, name), "defaults"
    resolved = ResolvedSymbol(
        internal_symbol=internal,
        dataset=row["dataset"],
        root=row["root"],
        roll_rule=str(chosen["roll_rule"]),
        rank=int(chosen["rank"]),
        schema=str(chosen["schema"]),
        stype_in=str(chosen["stype_in"]),
        origin=origin,
    )
    log.info(
        "symbol %s -> %s (roll_rule from %s, rank from %s, schema from %s, stype_in from %s)",
        internal, resolved.databento_symbol, origin["roll_rule"], origin["rank"], origin["schema"], origin["stype_in"],
    )
    return resolved
