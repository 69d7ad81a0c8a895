"""`dry_run=true`: resolve symbol, windows, chunks, tables and cost; print the plan; write nothing."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from rich.table import Table
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from engine.config import EngineConfig, normalize_symbol
from engine.console import console
from engine.db.connect import current_revision, head_revision, masked_url
from engine.errors import EngineError
from engine.symbols import ResolvedSymbol, resolve_symbol
from engine.windows import Window


def read_only_engine(url: str):
    """An engine that cannot write: SQLite opened read-only (never created), PostgreSQL read-only sessions."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = parsed.database
        if not path or path == ":memory:" or not Path(path).exists():
            return None
        return create_engine(f"sqlite:///file:{Path(path).resolve()}?mode=ro&uri=true")
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return create_engine(parsed, connect_args={"options": "-c default_transaction_read_only=on -c timezone=UTC"})


def plan(cfg: EngineConfig, window: Window, log: logging.Logger) -> dict:
    db = read_only_engine(cfg.db.url)
    try:
        revision = current_revision(db) if db is not None else None
        at_head = revision == head_revision()
        symbol = resolve_symbol(db, cfg, log) if at_head else _symbol_from_conf(cfg)
        pieces = window.chunks()
        steps = {
            "database": masked_url(cfg.db.url),
            "schema": "at head" if at_head else f"would be migrated from {revision or 'empty'} to {head_revision()}",
            "symbol": symbol.internal_symbol,
            "databento_symbol": symbol.continuous,
            "resolved_from": symbol.origin,
            "stages": list(cfg.stages),
            "source": cfg.source.name,
            "window": [window.start.isoformat(), window.end.isoformat()],
            "chunks": [[p.start.isoformat(), p.end.isoformat()] for p in pieces],
            "bars_table": "market_bars_ohlcv_1m" if cfg.policy.allow_legacy else "market_bars_ohlcv_1m_clean",
            "cost_usd": _cost(cfg, symbol, pieces) if "ingest" in cfg.stages else 0.0,
        }
    finally:
        if db is not None:
            db.dispose()
    _print(steps)
    return steps


def _symbol_from_conf(cfg: EngineConfig) -> ResolvedSymbol:
    """A database without the registry yet: the symbol as the seed would register it."""
    defaults = cfg.registry.defaults
    internal = normalize_symbol(cfg.symbol, defaults.dataset)
    dataset, _, root = internal.partition(":")
    if root not in [r.upper() for r in cfg.registry.seed]:
        raise EngineError(f"unknown symbol {internal!r} (the registry would be seeded with "
                          f"{', '.join(cfg.registry.seed)})", "pick a seeded symbol or add it to registry.seed")
    origin = {name: "config" if getattr(cfg, name, None) is not None else "defaults"
              for name in ("roll_rule", "rank", "schema", "stype_in")}
    return ResolvedSymbol(internal, dataset, root, cfg.roll_rule or defaults.roll_rule,
                          defaults.rank if cfg.rank is None else cfg.rank, defaults.schema, defaults.stype_in, origin)


def _cost(cfg: EngineConfig, symbol: ResolvedSymbol, pieces: list[Window]) -> float | str:
    if cfg.source.name != "databento":
        return 0.0
    from engine.sources.databento_api import RawRequest, estimate_cost, timeouts

    total = 0.0
    for piece in pieces:
        req = RawRequest(symbol.dataset, symbol.continuous, symbol.schema, symbol.stype_in, piece.start, piece.end)
        if req.landing_path(Path(cfg.data_dir)).exists():
            continue  # landed already: reused, never paid again
        if not os.environ.get("DATABENTO_API_KEY"):
            return "unknown (DATABENTO_API_KEY not set)"
        total += estimate_cost(req, gateway=cfg.source.gateway, max_retries=cfg.source.max_retries,
                               backoff_seconds=cfg.source.backoff_seconds, timeouts=timeouts(cfg.source))
    return round(total, 4)


def _print(steps: dict) -> None:
    table = Table(title="dry run: the plan (nothing written)", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value")
    for key, value in steps.items():
        if key == "chunks":
            shown = f"{len(value)}: " + ", ".join(f"[{a} → {b})" for a, b in value[:3])
            value = shown + (" …" if len(value) > 3 else "")
        table.add_row(key, str(value))
    console.print(table)
