"""What a database holds, per symbol, and its run log: the records behind `engine status` and `engine runs`, and
their JSON.

Coverage is read from clean_coverage (engine/coverage.py) and judged with the CME calendar (engine/calendar.py):
ranges separated only by closed market time (a weekend, the daily halt, a holiday) are one covered range; a gap is
the open-market part of what lies between two covered ranges, named [start, end) from its first open minute to the
end of its last, with its length in trading minutes. Time after the last covered range is not a gap (not yet
ingested).

JSON shapes (times ISO 8601 UTC with `Z`, dates `YYYY-MM-DD`; documented in README "What do I have?"):
``status_json`` -> {"database", "generated_at", "heatmap", "symbols": [symbol_json ...]};
``runs_json`` -> {"database", "generated_at", "runs": [run_json ...]}.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime

from sqlalchemy import Connection

from engine import calendar
from engine.bars import NS_PER_MINUTE
from engine.db import status_queries as q
from engine.db.types import datetime_to_ns

Interval = tuple[datetime, datetime]


@dataclass(frozen=True)
class Gap:
    start: datetime
    end: datetime
    trading_minutes: int


@dataclass(frozen=True)
class Sessions:
    with_quality: int  # sessions with a session_quality row
    with_missing_minutes: int
    missing_minutes: int
    without_quality: int  # sessions inside the covered ranges without a row (ingested before session quality)


@dataclass(frozen=True)
class Run:
    row: q.RunRow
    counts: q.RunCounts

    @property
    def duration_seconds(self) -> float | None:
        if self.row.finished_at is None:
            return None
        return round((self.row.finished_at - self.row.started_at).total_seconds(), 3)


@dataclass(frozen=True)
class DayCells:
    """One symbol's heatmap row: per trade date the share of expected minutes present (None: covered, unknown)."""

    share: dict[date, float | None]
    gap_days: set[date]
    failed_days: set[date]
    abandoned_days: set[date]


@dataclass(frozen=True)
class SymbolStatus:
    symbol: str
    bars: q.BarSummary
    covered: list[Interval]
    gaps: list[Gap]
    sessions: Sessions
    missing_sessions: list[q.QualityDay]
    last_ingest: q.IngestRow | None
    last_detect: Run | None
    events: list[q.EventGroup]
    abandoned: list[q.RunRow]
    days: DayCells = field(repr=False)
    flagged: list[q.FlaggedDay] = field(default_factory=list)  # Databento's data-quality flags still standing


def ranges_and_gaps(intervals: list[Interval]) -> tuple[list[Interval], list[Gap]]:
    """Covered ranges (overlapping, touching or separated only by closed market time: merged) and the gaps between
    them, from sorted [start, end) intervals."""
    ranges: list[Interval] = []
    gaps: list[Gap] = []
    for start, end in intervals:
        parts = calendar.open_parts(ranges[-1][1], start) if ranges and start > ranges[-1][1] else []
        if parts:
            gaps.append(Gap(parts[0][0], parts[-1][1], sum(_minutes(a, b) for a, b in parts)))
        if ranges and not parts:
            ranges[-1] = (ranges[-1][0], max(ranges[-1][1], end))
        else:
            ranges.append((start, end))
    return ranges, gaps


def symbol_status(conn: Connection, symbol: str) -> SymbolStatus:
    covered_ranges, gaps = ranges_and_gaps(q.covered(conn, symbol))
    covered_dates = _session_dates(covered_ranges)
    gap_dates = _session_dates([(g.start, g.end) for g in gaps])
    # Sessions outside the covered ranges and gaps (e.g. the one before a window starting in closed time) were not
    # ingested: their rows say nothing about what the database holds.
    quality = [d for d in q.quality_days(conn, symbol) if d.trade_date in covered_dates or d.trade_date in gap_dates]
    quality_dates = {d.trade_date for d in quality}
    share: dict[date, float | None] = dict.fromkeys(covered_dates - quality_dates)
    share.update({d.trade_date: d.bars_present / d.expected_minutes if d.expected_minutes else None for d in quality})
    troubled = q.troubled_windows(conn, symbol)
    days = DayCells(share, gap_dates, _session_dates([(a, b) for s, a, b in troubled if s == "failed"]),
                    _session_dates([(a, b) for s, a, b in troubled if s == "abandoned"]))
    missing = [d for d in quality if d.missing_minutes > 0]
    sessions = Sessions(len(quality), len(missing), sum(d.missing_minutes for d in missing),
                        len(covered_dates - quality_dates))
    detects = q.runs(conn, symbols=[symbol], stage="detect", last=1)
    last_detect = Run(detects[0], q.run_counts(conn, [detects[0].id])[detects[0].id]) if detects else None
    return SymbolStatus(symbol, q.bar_summary(conn, symbol), covered_ranges, gaps, sessions, missing,
                        q.last_ingest(conn, symbol), last_detect, q.event_groups(conn, symbol),
                        q.runs(conn, symbols=[symbol], statuses=["abandoned"]), days, q.flagged_days(conn, symbol))


def recent_runs(conn: Connection, *, symbols: list[str] | None, statuses: list[str] | None, last: int) -> list[Run]:
    rows = q.runs(conn, symbols=symbols, statuses=statuses, last=last)
    counts = q.run_counts(conn, [r.id for r in rows])
    return [Run(r, counts[r.id]) for r in rows]


def _session_dates(ranges: list[Interval]) -> set[date]:
    """Trade dates (the UTC date of the close, as session_quality has them) of the sessions overlapping `ranges`."""
    dates: set[date] = set()
    for start, end in ranges:
        _opens, closes = calendar.session_bounds_ns(datetime_to_ns(start), datetime_to_ns(end))
        dates.update(closes.astype("datetime64[ns]").astype("datetime64[D]").tolist())
    return dates


def _minutes(start: datetime, end: datetime) -> int:
    return (datetime_to_ns(end) - datetime_to_ns(start)) // NS_PER_MINUTE


# ------------------------------------------------------------------------------------------------------------------
# JSON


def iso(value: datetime | date | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        text = value.astimezone(UTC).isoformat(timespec="seconds")
        return text.replace("+00:00", "Z")
    return value.isoformat()


def run_json(run: Run) -> dict:
    r = run.row
    return {
        "id": r.id, "status": r.status, "symbol": r.symbol, "stages": r.stages,
        "window_start": iso(r.window_start), "window_end": iso(r.window_end),
        "started_at": iso(r.started_at), "finished_at": iso(r.finished_at), "duration_seconds": run.duration_seconds,
        "detector": r.detector, "detector_params": r.detector_params, "adjustment": r.adjustment,
        "logic_version": r.logic_version, "data_kind": r.data_kind, "run_dir": r.run_dir, "error": r.error,
        "counts": asdict(run.counts),
    }


def symbol_json(s: SymbolStatus) -> dict:
    ingest = s.last_ingest
    return {
        "symbol": s.symbol,
        "bars": s.bars.bars, "first_bar": iso(s.bars.first_bar), "last_bar": iso(s.bars.last_bar),
        "covered": [{"start": iso(a), "end": iso(b)} for a, b in s.covered],
        "gaps": [{"start": iso(g.start), "end": iso(g.end), "trading_minutes": g.trading_minutes} for g in s.gaps],
        "sessions": asdict(s.sessions),
        "sessions_with_missing_minutes": [
            {"trade_date": iso(d.trade_date), "expected_minutes": d.expected_minutes, "bars_present": d.bars_present,
             "missing_minutes": d.missing_minutes, "longest_gap_minutes": d.longest_gap_minutes}
            for d in s.missing_sessions],
        "last_ingest": None if ingest is None else {
            "ingest_id": ingest.id, "run_id": ingest.engine_run_id, "status": ingest.status,
            "run_at": iso(ingest.run_at), "window_start": iso(ingest.start_ts), "window_end": iso(ingest.end_ts),
            "bars_inserted": ingest.bars_inserted, "bars_updated": ingest.bars_updated,
            "bars_unchanged": ingest.bars_unchanged, "bars_skipped": ingest.bars_skipped,
            "logic_version": ingest.logic_version},
        "last_detect": None if s.last_detect is None else run_json(s.last_detect),
        "events": [{**asdict(g), "first_event": iso(g.first_event), "last_event": iso(g.last_event)}
                   for g in s.events],
        "flagged_days": [{"day": iso(d.day), "condition": d.condition, "provisional": d.provisional,
                          "bought": d.bought, "last_modified_date": iso(d.last_modified_date),
                          "ingest_id": d.ingest_id} for d in s.flagged],
        "abandoned_runs": [{"id": r.id, "started_at": iso(r.started_at), "finished_at": iso(r.finished_at),
                            "window_start": iso(r.window_start), "window_end": iso(r.window_end),
                            "run_dir": r.run_dir, "error": r.error} for r in s.abandoned],
    }
