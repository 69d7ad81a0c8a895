"""SQL of `engine status` and `engine runs`: per-symbol aggregates and the run log, computed in the database.

Nothing here reads bars into Python: bar counts and first/last bar are one aggregate per symbol, sessions come from
session_quality (one row per session), coverage from clean_coverage (about one row per ingest).

engine_runs.symbol holds the symbol as the job was given it (`NQ`, `nq`, `GLBX.MDP3:NQ`); the other tables hold
the stored symbol (`GLBX.MDP3:NQ`). Runs are matched on the upper-cased name against both spellings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import Connection, case, func, select

from engine.db.schema import (
    clean_bars,
    clean_coverage,
    clean_coverage_conditions,
    clean_ingest_runs,
    engine_runs,
    session_quality,
    stage_chunks,
    symbol_registry,
    triangle_events,
)

RUN_STATUSES = ("running", "success", "failed", "interrupted", "abandoned")


@dataclass(frozen=True)
class BarSummary:
    bars: int
    first_bar: datetime | None
    last_bar: datetime | None


@dataclass(frozen=True)
class QualityDay:
    trade_date: date
    expected_minutes: int
    bars_present: int
    missing_minutes: int
    longest_gap_minutes: int


@dataclass(frozen=True)
class IngestRow:
    id: int
    engine_run_id: int | None
    status: str
    run_at: datetime
    start_ts: datetime
    end_ts: datetime
    bars_inserted: int
    bars_updated: int
    bars_unchanged: int
    bars_skipped: int
    logic_version: str | None  # of its engine run (NULL: an ingest without one)


@dataclass(frozen=True)
class EventGroup:
    detector: str
    detector_params: str
    adjustment: str
    logic_version: str | None
    source_table: str | None
    events: int
    first_event: datetime
    last_event: datetime


@dataclass(frozen=True)
class FlaggedDay:
    """A UTC day Databento flags, as the latest successful ingest covering it left it (clean_coverage_conditions)."""

    day: date
    condition: str  # degraded, pending, missing (or available, when only provisional)
    last_modified_date: date | None
    provisional: bool  # within the last 24 hours when bought: not final yet
    bought: bool
    ingest_id: int


@dataclass(frozen=True)
class RunRow:
    id: int
    status: str
    symbol: str | None
    stages: list[str]
    started_at: datetime
    finished_at: datetime | None
    window_start: datetime | None  # NULL for runs before migration 0013
    window_end: datetime | None
    detector: str | None
    detector_params: str | None
    adjustment: str | None
    logic_version: str
    data_kind: str
    run_dir: str
    error: str | None


@dataclass(frozen=True)
class RunCounts:
    """What a run left in the tables: its ingests' bar counts, the events still carrying its id, its chunks."""

    bars_received: int = 0
    bars_inserted: int = 0
    bars_updated: int = 0
    bars_unchanged: int = 0
    bars_skipped: int = 0
    events: int = 0
    chunks_done: int = 0
    chunks: int = 0


def symbol_names(symbol: str) -> list[str]:
    """The upper-cased spellings engine_runs may hold for the stored symbol `GLBX.MDP3:NQ`: itself and `NQ`."""
    return sorted({symbol.upper(), symbol.rpartition(":")[2].upper()})


def stored_symbols(conn: Connection) -> list[str]:
    """Symbols that some clean ingest was run for, sorted (a small table, unlike the bars)."""
    return list(conn.execute(select(clean_ingest_runs.c.symbol).distinct().order_by(clean_ingest_runs.c.symbol))
                .scalars())


def registered_symbols(conn: Connection) -> list[str]:
    return list(conn.execute(select(symbol_registry.c.internal_symbol).order_by(symbol_registry.c.internal_symbol))
                .scalars())


def bar_summary(conn: Connection, symbol: str) -> BarSummary:
    """The symbol's bar count (one scan of its part of the primary key) and first/last bar (two index seeks)."""
    c = clean_bars.c
    count = conn.execute(select(func.count()).where(c.symbol == symbol)).scalar_one()
    first = conn.execute(select(c.ts).where(c.symbol == symbol).order_by(c.ts).limit(1)).scalar()
    last = conn.execute(select(c.ts).where(c.symbol == symbol).order_by(c.ts.desc()).limit(1)).scalar()
    return BarSummary(int(count), first, last)


def covered(conn: Connection, symbol: str) -> list[tuple[datetime, datetime]]:
    """[start, end) of the coverage of the symbol's successful clean ingests, sorted (see engine/coverage.py)."""
    cc, runs = clean_coverage.c, clean_ingest_runs.c
    query = (select(cc.start_ts, cc.end_ts).join(clean_ingest_runs, runs.id == cc.ingest_run_id)
             .where(cc.symbol == symbol, runs.status == "success").order_by(cc.start_ts, cc.end_ts))
    return [(a, b) for a, b in conn.execute(query)]


def flagged_days(conn: Connection, symbol: str) -> list[FlaggedDay]:
    """The symbol's days whose latest successful ingest flagged them, by day. A flag is cleared by a later successful
    ingest that covered the day without flagging it (it was bought again once final, or regenerated)."""
    f, runs, cc = clean_coverage_conditions.c, clean_ingest_runs.c, clean_coverage.c
    flags = conn.execute(
        select(f.day, f.condition, f.last_modified_date, f.provisional, f.bought, f.ingest_run_id)
        .join(clean_ingest_runs, runs.id == f.ingest_run_id)
        .where(f.symbol == symbol, runs.status == "success").order_by(f.ingest_run_id)).all()
    latest = {_as_date(r.day): FlaggedDay(_as_date(r.day), r.condition, _as_date(r.last_modified_date),
                                          bool(r.provisional), bool(r.bought), r.ingest_run_id) for r in flags}
    if not latest:
        return []
    later = conn.execute(
        select(cc.ingest_run_id, cc.start_ts, cc.end_ts).join(clean_ingest_runs, runs.id == cc.ingest_run_id)
        .where(cc.symbol == symbol, runs.status == "success",
               cc.ingest_run_id > min(d.ingest_id for d in latest.values()))).all()

    def cleared(flag: FlaggedDay) -> bool:
        start = datetime(flag.day.year, flag.day.month, flag.day.day, tzinfo=UTC)
        end = start + timedelta(days=1)
        return any(r.ingest_run_id > flag.ingest_id and _aware(r.start_ts)[0] < end and _aware(r.end_ts)[0] > start
                   for r in later)

    return [flag for _day, flag in sorted(latest.items()) if not cleared(flag)]


def quality_days(conn: Connection, symbol: str) -> list[QualityDay]:
    """The symbol's session_quality rows in date order."""
    c = session_quality.c
    query = select(c.trade_date, c.expected_minutes, c.bars_present, c.missing_minutes,
                   c.longest_gap_minutes).where(c.symbol == symbol)
    return [QualityDay(_as_date(r[0]), *r[1:]) for r in conn.execute(query.order_by(c.trade_date))]


def last_ingest(conn: Connection, symbol: str) -> IngestRow | None:
    i, r = clean_ingest_runs.c, engine_runs.c
    query = (select(i.id, i.engine_run_id, i.status, i.run_at, i.start_ts, i.end_ts, i.bars_inserted,
                    i.bars_updated, i.bars_unchanged, i.bars_skipped, r.logic_version)
             .outerjoin(engine_runs, r.id == i.engine_run_id).where(i.symbol == symbol).order_by(i.id.desc()).limit(1))
    row = conn.execute(query).first()
    return None if row is None else IngestRow(*row)


def event_groups(conn: Connection, symbol: str) -> list[EventGroup]:
    """The symbol's events per (detector, parameters, adjustment, logic version, source table)."""
    e = triangle_events.c
    keys = (e.detector, e.detector_params, e.adjustment, e.logic_version, e.source_table)
    query = (select(*keys, func.count(), func.min(e.ts), func.max(e.ts)).where(e.symbol == symbol)
             .group_by(*keys).order_by(*keys))
    return [EventGroup(*row[:6], *_aware(row[6], row[7])) for row in conn.execute(query)]


def runs(conn: Connection, *, symbols: list[str] | None = None, statuses: list[str] | None = None,
         stage: str | None = None, last: int | None = None) -> list[RunRow]:
    """engine_runs rows, newest first: of these stored symbols (either spelling), statuses, with this stage."""
    r = engine_runs.c
    query = select(r.id, r.status, r.symbol, r.stages, r.started_at, r.finished_at, r.window_start, r.window_end,
                   r.detector, r.detector_params, r.adjustment, r.logic_version, r.data_kind, r.run_dir, r.error)
    if symbols is not None:
        query = query.where(func.upper(r.symbol).in_(sorted({n for s in symbols for n in symbol_names(s)})))
    if statuses is not None:
        query = query.where(r.status.in_(statuses))
    if stage is not None:
        query = query.where(r.stages.like(f'%"{stage}"%'))
    query = query.order_by(r.id.desc())
    if last is not None:
        query = query.limit(last)
    return [RunRow(row[0], row[1], row[2], json.loads(row[3]), *row[4:]) for row in conn.execute(query)]


def run_counts(conn: Connection, run_ids: list[int]) -> dict[int, RunCounts]:
    """RunCounts of each run id (zeros for a run that left nothing)."""
    if not run_ids:
        return {}
    i, e, s = clean_ingest_runs.c, triangle_events.c, stage_chunks.c
    ingests = {row[0]: row[1:] for row in conn.execute(
        select(i.engine_run_id, func.sum(i.bars_received), func.sum(i.bars_inserted), func.sum(i.bars_updated),
               func.sum(i.bars_unchanged), func.sum(i.bars_skipped))
        .where(i.engine_run_id.in_(run_ids)).group_by(i.engine_run_id))}
    events = dict(conn.execute(select(e.run_id, func.count()).where(e.run_id.in_(run_ids)).group_by(e.run_id)).all())
    chunks = {row[0]: row[1:] for row in conn.execute(
        select(s.engine_run_id, func.sum(case((s.status == "success", 1), else_=0)), func.count())
        .where(s.engine_run_id.in_(run_ids)).group_by(s.engine_run_id))}
    return {run_id: RunCounts(*(int(v or 0) for v in ingests.get(run_id, (0,) * 5)), int(events.get(run_id, 0)),
                              *(int(v or 0) for v in chunks.get(run_id, (0, 0))))
            for run_id in run_ids}


def troubled_windows(conn: Connection, symbol: str) -> list[tuple[str, datetime, datetime]]:
    """(status, window_start, window_end) of the symbol's failed and abandoned runs that recorded a window."""
    r = engine_runs.c
    query = (select(r.status, r.window_start, r.window_end)
             .where(func.upper(r.symbol).in_(symbol_names(symbol)), r.status.in_(["failed", "abandoned"]),
                    r.window_start.is_not(None), r.window_end.is_not(None))
             .order_by(r.id))
    return [(status, a, b) for status, a, b in conn.execute(query)]


def _aware(*values):
    """Timestamps of an aggregate: SQLite returns text (min/max bypass the column type), PostgreSQL datetimes."""
    from engine.db.types import UtcTimestamp

    kind = UtcTimestamp()
    return tuple(kind.process_result_value(v, None) for v in values)


def _as_date(value) -> date | None:
    return date.fromisoformat(value) if isinstance(value, str) else value
