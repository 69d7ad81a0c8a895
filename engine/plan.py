"""`dry_run=true`: resolve symbol, window, chunks, tables and cost; print the plan and render it as plan.md.

plan.md is deterministic: the same config, database state and landed raw files give the same bytes (no
timestamps, run ids or run directories; config keys sorted, costs at four decimals). `dry_run.compare` appends
the unified diff against an earlier plan. Nothing is written to the database.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from pathlib import Path

from omegaconf import OmegaConf
from rich.table import Table
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from engine.config import Adjustment, EngineConfig, normalize_symbol
from engine.console import console
from engine.db import registry
from engine.db.connect import current_revision, head_revision, masked_url
from engine.errors import EngineError
from engine.job_plugins import JobPlugins
from engine.sources.databento import DatabentoSource
from engine.symbols import ResolvedSymbol, resolve_row, resolve_symbol, seed_rows
from engine.windows import Window

PLAN_FILE = "plan.md"
_TITLE = "# Plan: "
_CHANGES = "## Changes since "
#: A plan of more chunks lists the first and the last _EDGE_CHUNKS of them.
_LISTED_CHUNKS = 40
_EDGE_CHUNKS = 10
_OFFLINE = "unknown (DATABENTO_API_KEY not set)"
_FIX_COMPARE = ("point dry_run.compare at the run directory of an earlier dry_run=true or at its plan.md, "
                "e.g. dry_run.compare=runs/2026-12-01/10-00-00")


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


def read_earlier(compare: str | None) -> str | None:
    """The plan `dry_run.compare` names (a run directory or a plan.md), without its own Changes section."""
    if compare is None:
        return None
    path = Path(compare)
    if path.is_dir():
        path = path / PLAN_FILE
        if not path.is_file():
            raise EngineError(f"dry_run.compare={compare}: the directory holds no {PLAN_FILE} "
                              "(it is not the run directory of a dry run)", _FIX_COMPARE)
    elif not path.exists():
        raise EngineError(f"dry_run.compare={compare}: no such file or directory", _FIX_COMPARE)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EngineError(f"dry_run.compare={compare}: cannot read {path}: {exc}", _FIX_COMPARE) from None
    if not text.startswith(_TITLE):
        raise EngineError(f"dry_run.compare={compare}: {path} is not a plan written by dry_run=true", _FIX_COMPARE)
    return _without_changes(text)


def plan(cfg: EngineConfig, plugins: JobPlugins, window: Window, log: logging.Logger, resolved_yaml: str,
         earlier: str | None = None) -> tuple[dict, str]:
    """The plan as a dict (for result.json) and as the text of plan.md; prints it as a table."""
    db = read_only_engine(cfg.db.url)
    try:
        revision = current_revision(db) if db is not None else None
        head = head_revision()
        at_head = revision == head
        symbol = resolve_symbol(db, cfg, log) if at_head and not _seeded_first(db, cfg) else _symbol_from_conf(cfg)
    finally:
        if db is not None:
            db.dispose()
    pieces = window.chunks()
    source = plugins.source.obj
    requests = _requests(cfg, source, symbol, pieces)
    steps = {
        "database": masked_url(cfg.db.url),
        "schema": f"at head ({head})" if at_head else f"would be migrated from {revision or 'empty'} to {head}",
        "symbol": symbol.internal_symbol,
        "databento_symbol": symbol.databento_symbol,
        "resolved_from": symbol.origin,
        "stages": list(cfg.stages),
        "source": plugins.source.name,
        "detector": f"{plugins.detector.name} ({_params(plugins.detector.params)})",
        "adjustment": _adjustment(cfg),
        "window": [_iso(window.start), _iso(window.end)],
        "chunks": [[_iso(p.start), _iso(p.end)] for p in pieces],
        "bars_table": _bars_table(cfg),
        "tables": _tables(cfg, isinstance(source, DatabentoSource), symbol.internal_symbol),
        "raw_files": requests,
        "cost_usd": _total(requests),
    }
    text = _render(cfg, window, symbol, steps, _config_yaml(resolved_yaml))
    if cfg.dry_run.compare is not None:
        steps["changes"] = _diff_lines(earlier or "", text)
        text += _changes(cfg.dry_run.compare, earlier or "", text)
    _print(steps, symbol)
    return steps, text


def _seeded_first(db, cfg: EngineConfig) -> bool:
    """Whether the registry stage of this job will add the symbol's row before anything reads it."""
    internal = normalize_symbol(cfg.symbol, cfg.registry.defaults.dataset)
    return "registry" in cfg.stages and registry.registry_row(db, internal) is None


def _symbol_from_conf(cfg: EngineConfig) -> ResolvedSymbol:
    """A database without the registry yet: the symbol as the seed would register it."""
    defaults = cfg.registry.defaults
    internal = normalize_symbol(cfg.symbol, defaults.dataset)
    dataset, _, root = internal.partition(":")
    if root not in [r.upper() for r in cfg.registry.seed]:
        raise EngineError(f"unknown symbol {internal!r} (the registry would be seeded with "
                          f"{', '.join(cfg.registry.seed)})", "pick a seeded symbol or add it to registry.seed")
    row = {**seed_rows(defaults, [root])[0], "dataset": dataset}
    return resolve_row(internal, row, cfg, row_origin="defaults")


def _bars_table(cfg: EngineConfig) -> str:
    return "market_bars_ohlcv_1m" if cfg.policy.allow_legacy else "market_bars_ohlcv_1m_clean"


def _adjustment(cfg: EngineConfig) -> str:
    """How detect, chart and parity read the series (engine/adjust.py)."""
    how = Adjustment(cfg.adjust)
    if how is Adjustment.none:
        return "none (the contracts' own prices)"
    return (f"{how.value} (back-adjusted at every roll to the latest contract; events stored beside the "
            "unadjusted ones)")


def _params(params: dict) -> str:
    return ", ".join(f"{key}={getattr(value, 'value', value)}" for key, value in params.items())


def _tables(cfg: EngineConfig, downloads: bool, symbol: str) -> dict[str, dict[str, list[str]]]:
    """What each stage reads and writes (tables, and files outside the database), in stage order."""
    bars = _bars_table(cfg)
    chunked = ["stage_chunks"] if cfg.window.chunk is not None else []
    coverage = ["clean_coverage", "clean_ingest_runs"] if bars == "market_bars_ohlcv_1m_clean" else []
    parity_reads = sorted({f"{side.csv} (csv)" if side.csv is not None else "triangle_events_v1"
                           for side in (cfg.parity.left, cfg.parity.right)})
    rolls = ["contract_rolls"] if Adjustment(cfg.adjust) is not Adjustment.none else []
    chart_file = f"chart_{re.sub(r'[^A-Za-z0-9._-]', '_', symbol)}.png (run directory)"
    raw = ["raw files under data_dir/raw"] if downloads else []
    known = {
        "registry": (["symbol_registry"], ["symbol_registry"]),
        "ingest": (["engine_database", "market_bars_ohlcv_1m_clean", "symbol_registry", *chunked],
                   ["clean_coverage", "clean_ingest_quarantine", "clean_ingest_runs", "contract_rolls",
                    "engine_database", "market_bars_ohlcv_1m_clean", "session_quality", *chunked, *raw]),
        "detect": ([bars, *rolls, *coverage, *chunked], ["triangle_events_v1", *chunked]),
        "parity": (parity_reads, ["parity_differences.csv (run directory)"]),
        "chart": ([bars, "contract_rolls", "triangle_events_v1"], [chart_file]),
    }
    tables = {"(every run)": {"reads": ["alembic_version", "engine_runs"], "writes": ["alembic_version",
                                                                                      "engine_runs"]}}
    for stage in cfg.stages:
        reads, writes = known.get(stage, (["(a plugin's own: not declared)"], ["(a plugin's own: not declared)"]))
        tables[stage] = {"reads": reads, "writes": writes}
    return tables


def _requests(cfg: EngineConfig, source, symbol: ResolvedSymbol, pieces: list[Window]) -> list[dict]:
    """The Databento requests of each chunk (its bars, then the extras of a continuous download: definitions and
    the outrights of each roll): landing file, whether it is there already, and cost."""
    if not isinstance(source, DatabentoSource) or "ingest" not in cfg.stages:
        return []
    from engine.sources.databento_api import BARS, estimate_cost, planned_requests, timeouts
    from engine.sources.databento_days import days_dir

    online = bool(os.environ.get("DATABENTO_API_KEY"))
    out = []
    for piece in pieces:
        for item in planned_requests(source, symbol, piece, Path(cfg.data_dir), online=online):
            path = item.req.landing_path(Path(cfg.data_dir))
            if item.kind == BARS and item.landed is not None:  # bars by day: the days folder, the days to buy
                path = days_dir(Path(cfg.data_dir), item.req)
            landed = item.is_landed(Path(cfg.data_dir))
            cost: float | None = 0.0
            if not landed:  # a landed file is reused, never paid again
                cost = round(estimate_cost(item.req, gateway=source.gateway, max_retries=source.max_retries,
                                           backoff_seconds=source.backoff_seconds, timeouts=timeouts(source)),
                             4) if online else None
            row = {"chunk": [_iso(item.req.start), _iso(item.req.end)], "path": path.as_posix(), "landed": landed,
                   "cost_usd": cost}
            if item.days:
                row["days"] = list(item.days)
            out.append(row if item.kind == BARS else {**row, "request": item.label()})
    return out


def _total(requests: list[dict]) -> float | str:
    if any(r["cost_usd"] is None for r in requests):
        return _OFFLINE
    return round(sum(r["cost_usd"] for r in requests), 4) if requests else 0.0


def _config_yaml(resolved_yaml: str) -> str:
    """The resolved config (already resolved and redacted) with sorted keys, without the dry_run node itself."""
    conf = OmegaConf.create(resolved_yaml)
    conf.pop("dry_run", None)
    return OmegaConf.to_yaml(conf, sort_keys=True)


# --------------------------------------------------------------------------------------------- plan.md


def _origin(origin: dict[str, str], symbol: ResolvedSymbol) -> str:
    """`roll_rule v from registry, rank 0 from config, ...`"""
    return ", ".join(f"{name} {getattr(symbol, name)} from {where}" for name, where in origin.items())


def _render(cfg: EngineConfig, window: Window, symbol: ResolvedSymbol, steps: dict, config_yaml: str) -> str:
    origin = _origin(steps["resolved_from"], symbol)
    chunks = steps["chunks"]
    chunk_note = f"{len(chunks)} (window.chunk={cfg.window.chunk})" if cfg.window.chunk is not None else "1 (unchunked)"
    span = f"[{steps['window'][0]}, {steps['window'][1]})"
    if window.warmup_start is not None:
        span += f", warm-up from {_iso(window.warmup_start)}"
    lines = [
        f"{_TITLE}{steps['symbol']} {span}",
        "",
        "Written by a dry run: nothing ran and nothing was written to the database. The same config, database",
        "state and landed raw files give the same plan, byte for byte.",
        "",
        "| what | value |",
        "|---|---|",
        f"| symbol | {steps['symbol']} |",
        f"| Databento symbol | {steps['databento_symbol']} ({origin}) |",
        f"| window | {span} |",
        f"| chunks | {chunk_note} |",
        f"| stages | {', '.join(steps['stages'])} |",
        f"| source | {steps['source']} |",
        f"| detector | {steps['detector']} |",
        f"| adjustment | {steps['adjustment']} |",
        f"| database | {_cell(steps['database'])} |",
        f"| schema | {steps['schema']} |",
        f"| Databento cost | {_cost_line(steps)} |",
        "",
        "## Tables",
        "",
        "| stage | reads | writes |",
        "|---|---|---|",
    ]
    for stage, used in steps["tables"].items():
        lines.append(f"| {stage} | {_cell(', '.join(used['reads']) or '-')} | {_cell(', '.join(used['writes']))} |")
    lines += ["", "## Chunks", ""]
    requests = steps["raw_files"]
    if requests:
        lines += [f"Raw files land under `{Path(requests[0]['path']).parent.as_posix()}/`.", "",
                  "| # | start | end | raw file | cost |", "|---|---|---|---|---|"]
        rows = [f"| {k} | {r['chunk'][0]} | {r['chunk'][1]} | {r['request'] + ': ' if 'request' in r else ''}"
                f"{'landed: reused' if r['landed'] else 'to download'} "
                f"| {_usd(r['cost_usd'])} |" for k, r in enumerate(requests, 1)]
        gap = "| … | | | | |"
    else:
        lines += ["| # | start | end |", "|---|---|---|"]
        rows = [f"| {k} | {a} | {b} |" for k, (a, b) in enumerate(chunks, 1)]
        gap = "| … | | |"
    if len(rows) > _LISTED_CHUNKS:
        hidden = len(rows) - 2 * _EDGE_CHUNKS
        rows = [*rows[:_EDGE_CHUNKS], gap.replace("| |", f"| {hidden} more chunks |", 1), *rows[-_EDGE_CHUNKS:]]
    lines += rows
    lines += ["", "## Resolved config", "", "Secrets masked; without the dry_run settings.", "", "```yaml",
              config_yaml.rstrip("\n"), "```"]
    return "\n".join(lines) + "\n"


def _cost_line(steps: dict) -> str:
    requests = steps["raw_files"]
    if not requests:
        why = "no ingest stage" if "ingest" not in steps["stages"] else f"source {steps['source']} buys nothing"
        return f"$0 ({why})"
    landed = sum(r["landed"] for r in requests)
    total = steps["cost_usd"]
    shown = total if isinstance(total, str) else _usd(total)
    return (f"{shown} for {len(requests) - landed} of {len(requests)} requests; {landed} landed raw "
            f"file{'' if landed == 1 else 's'} reused at $0")


def _usd(value: float | None) -> str:
    return "unknown" if value is None else f"${value:,.4f}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _iso(ts) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if ts.microsecond else "%Y-%m-%dT%H:%M:%SZ")


def _without_changes(text: str) -> str:
    cut = text.find("\n" + _CHANGES)
    return text if cut < 0 else text[:cut]


def _diff_lines(earlier: str, text: str) -> int:
    """How many lines differ (added plus removed) between two plans."""
    diff = difflib.unified_diff(earlier.splitlines(), text.splitlines(), lineterm="", n=0)
    return sum(1 for line in diff if line.startswith(("+", "-")) and not line.startswith(("+++", "---")))


def _changes(label: str, earlier: str, text: str) -> str:
    """The "Changes since" section: a unified diff of the two plans (4-backtick fence: the plans hold ```)."""
    head = f"\n{_CHANGES}{label}\n\n"
    diff = list(difflib.unified_diff(earlier.splitlines(), text.splitlines(), fromfile=label, tofile="this plan",
                                     lineterm=""))
    if not diff:
        return head + "No changes.\n"
    return head + "````diff\n" + "\n".join(diff) + "\n````\n"


def _print(steps: dict, symbol: ResolvedSymbol) -> None:
    table = Table(title="dry run: the plan (nothing written)", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value")
    for key, value in steps.items():
        if key == "chunks":
            shown = f"{len(value)}: " + ", ".join(f"[{a} → {b})" for a, b in value[:3])
            value = shown + (" …" if len(value) > 3 else "")
        elif key == "resolved_from":
            value = _origin(value, symbol)
        elif key in ("stages", "window"):
            value = ", ".join(value)
        elif key == "tables":
            key, value = "writes", ", ".join(sorted({t for used in value.values() for t in used["writes"]}))
        elif key == "raw_files":
            if not value:
                continue
            landed = sum(r["landed"] for r in value)
            value = f"{landed} landed (reused, $0), {len(value) - landed} to download"
        elif key == "changes":
            value = f"{value} lines changed" if value else "no changes"
        table.add_row(key, str(value))
    console.print(table)
