"""Which Databento symbol a configured symbol means: config > registry row > conf/ defaults.

Two kinds of registry row:
* a continuous series (``GLBX.MDP3:ES``): root ES, roll_rule and rank (NULL: conf/ defaults), stype_in
  continuous (or NULL); Databento is asked for ``ES.v.0``;
* an outright contract as its own series (``GLBX.MDP3:ESU4``): root ES (the product root, so
  ``registry.tick_sizes.ES`` applies), stype_in ``raw_symbol``, roll_rule and rank NULL (a roll rule means nothing
  for one contract: a roll_rule/rank override or a registry value for one is refused); Databento is asked for
  ``ESU4``. ``registry.seed`` makes one from a name of the CME pattern ``<root><month code><1-2 digits>``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from sqlalchemy import Engine

from engine.config import EngineConfig, SymbolDefaults, normalize_symbol
from engine.db import registry
from engine.errors import EngineError

ADD_SYMBOL_SQL = (
    "INSERT INTO symbol_registry (internal_symbol, dataset, root, roll_rule, rank, is_active) "
    "VALUES ('{symbol}', '{dataset}', '{root}', 'v', 0, TRUE);"
)
ADD_OUTRIGHT_SQL = (
    "INSERT INTO symbol_registry (internal_symbol, dataset, root, roll_rule, rank, stype_in, is_active) "
    "VALUES ('{symbol}', '{dataset}', '{root}', NULL, NULL, 'raw_symbol', TRUE);"
)
OUTRIGHT_STYPE = "raw_symbol"
MONTH_CODES = "FGHJKMNQUVXZ"  # CME contract months January..December
_OUTRIGHT = re.compile(rf"^([A-Z0-9]+?)[{MONTH_CODES}][0-9]{{1,2}}$")


def outright_root(name: str) -> str | None:
    """The product root of a CME outright contract name ("ESU4" -> "ES", "RTYZ24" -> "RTY"); None for anything
    else (a root such as "ES" or "M2K", a spread, a continuous symbol)."""
    match = _OUTRIGHT.match(name.upper())
    return match.group(1) if match else None


@dataclass(frozen=True)
class ResolvedSymbol:
    internal_symbol: str  # GLBX.MDP3:NQ
    dataset: str
    root: str
    roll_rule: str | None  # None for an outright
    rank: int | None  # None for an outright
    schema: str
    stype_in: str
    origin: dict[str, str]  # field -> "config" | "registry" | "defaults" (no roll_rule, rank for an outright)

    @property
    def continuous(self) -> str:
        """Databento's continuous symbol, e.g. NQ.v.0. An outright series has none: ValueError."""
        if self.is_outright:
            raise ValueError(f"{self.internal_symbol} is one contract: it has no continuous symbol")
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
        """The roll rule and rank of a continuous series as Databento writes them, e.g. v.0. An outright series
        has none: ValueError."""
        if self.is_outright:
            raise ValueError(f"{self.internal_symbol} is one contract: it has no roll rule")
        return f"{self.roll_rule}.{self.rank}"


def seed_rows(defaults: SymbolDefaults, roots: list[str]) -> list[dict]:
    """The registry rows of ``registry.seed``: a continuous series per root, an outright row per contract name
    (e.g. ESU4, see the module docstring)."""
    rows = []
    for name in roots:
        name = name.upper()
        root = outright_root(name)
        rows.append({
            "internal_symbol": f"{defaults.dataset}:{name}",
            "dataset": defaults.dataset,
            "root": root or name,
            "roll_rule": None if root else defaults.roll_rule,
            "rank": None if root else defaults.rank,
            "schema": defaults.schema,
            "stype_in": OUTRIGHT_STYPE if root else defaults.stype_in,
            "is_active": True,
        })
    return rows


def add_symbol_sql(internal: str) -> str:
    """The SQL that registers ``internal`` (DATASET:NAME) by hand: an outright row for a contract name."""
    dataset, _, name = internal.partition(":")
    root = outright_root(name)
    if root:
        return ADD_OUTRIGHT_SQL.format(symbol=internal, dataset=dataset, root=root)
    return ADD_SYMBOL_SQL.format(symbol=internal, dataset=dataset, root=name)


def resolve_symbol(engine: Engine, cfg: EngineConfig, log: logging.Logger) -> ResolvedSymbol:
    defaults = cfg.registry.defaults
    internal = normalize_symbol(cfg.symbol, defaults.dataset)
    row = registry.registry_row(engine, internal)
    if row is None:
        known = [r["internal_symbol"] for r in registry.all_rows(engine)]
        raise EngineError(
            f"unknown symbol {internal!r}; the symbol registry has: {', '.join(known) or '(nothing)'}",
            f"pick one of those, add {internal.partition(':')[2]} to registry.seed with the registry stage, "
            f"or add it with SQL: {add_symbol_sql(internal)}",
        )
    if not row["is_active"]:
        raise EngineError(
            f"symbol {internal!r} is inactive in symbol_registry",
            f"enable it with SQL: UPDATE symbol_registry SET is_active = TRUE "
            f"WHERE internal_symbol = '{internal}';",
        )
    resolved = resolve_row(internal, row, cfg)
    if resolved.is_outright:
        log.info("symbol %s -> %s (one contract of %s; schema from %s, stype_in from %s)", internal,
                 resolved.databento_symbol, resolved.root, resolved.origin["schema"], resolved.origin["stype_in"])
    else:
        log.info(
            "symbol %s -> %s (roll_rule from %s, rank from %s, schema from %s, stype_in from %s)",
            internal, resolved.databento_symbol, *(resolved.origin[name] for name in
                                                   ("roll_rule", "rank", "schema", "stype_in")),
        )
    return resolved


def resolve_row(internal: str, row: dict, cfg: EngineConfig, row_origin: str = "registry") -> ResolvedSymbol:
    """The symbol ``internal`` from its registry row (``row_origin`` names where the row's values come from: a
    seed row's are the conf/ defaults). EngineError when roll_rule/rank are set for an outright series, or when
    a row named like a contract is not one."""
    defaults = cfg.registry.defaults
    origin: dict[str, str] = {}
    chosen: dict[str, object] = {}
    for name in ("schema", "stype_in"):
        if row.get(name) is not None:
            chosen[name], origin[name] = row[name], row_origin
        else:
            chosen[name], origin[name] = getattr(defaults, name), "defaults"
    contract = internal.partition(":")[2]
    if chosen["stype_in"] == OUTRIGHT_STYPE:
        _refuse_roll_settings(internal, row, cfg)
        return ResolvedSymbol(internal, row["dataset"], row["root"], None, None, str(chosen["schema"]),
                              OUTRIGHT_STYPE, origin)
    if outright_root(contract):
        raise EngineError(
            f"symbol {internal!r} is named like one contract but its registry row has stype_in "
            f"{chosen['stype_in']!r} (a continuous series of root {row['root']!r})",
            f"make it an outright series with SQL: UPDATE symbol_registry SET stype_in = 'raw_symbol', "
            f"roll_rule = NULL, rank = NULL WHERE internal_symbol = '{internal}';",
        )
    for name, override in (("roll_rule", cfg.roll_rule), ("rank", cfg.rank)):
        if override is not None:
            chosen[name], origin[name] = override, "config"
        elif row.get(name) is not None:
            chosen[name], origin[name] = row[name], row_origin
        else:
            chosen[name], origin[name] = getattr(defaults, name), "defaults"
    origin = {name: origin[name] for name in ("roll_rule", "rank", "schema", "stype_in")}
    return ResolvedSymbol(internal, row["dataset"], row["root"], str(chosen["roll_rule"]), int(chosen["rank"]),
                          str(chosen["schema"]), str(chosen["stype_in"]), origin)


def _refuse_roll_settings(internal: str, row: dict, cfg: EngineConfig) -> None:
    contract = internal.partition(":")[2]
    given = [f"{name}={value}" for name, value in (("roll_rule", cfg.roll_rule), ("rank", cfg.rank))
             if value is not None]
    if given:
        raise EngineError(
            f"{' '.join(given)} does not apply to symbol {internal!r}: it is one contract ({contract}, stype_in "
            "raw_symbol), and roll rules choose among the contracts of a continuous series",
            f"drop {' and '.join(g.partition('=')[0] for g in given)} from the command line, or ask for the "
            f"continuous series, e.g. symbol={row['dataset']}:{row['root']} {' '.join(given)}",
        )
    stored = [f"{name}={row[name]}" for name in ("roll_rule", "rank") if row.get(name) is not None]
    if stored:
        raise EngineError(
            f"symbol_registry row {internal!r} is one contract (stype_in raw_symbol) but has {', '.join(stored)}: "
            "roll rules do not apply to one contract",
            f"clear them with SQL: UPDATE symbol_registry SET roll_rule = NULL, rank = NULL "
            f"WHERE internal_symbol = '{internal}';",
        )
