"""What a clean ingest covers: closed market time always, a trading session only where the ingest landed bars.

Coverage is decided per CME Globex session (engine/calendar.py): the part of a session inside the ingest's
window is covered when the ingest accepted at least one bar in that part (inserted, updated or unchanged
alike); a part shorter than QUIET needs none. Minutes without a bar inside a covered part are normal (no trade,
no bar). The intervals go to
clean_coverage, which the clean-only contract of the detect stage reads instead of trusting the window.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

from sqlalchemy import Engine

from engine import calendar
from engine.db import coverage as coverage_db
from engine.db.types import datetime_to_ns
from engine.errors import EngineError
from engine.validate import SeenTimestamps

Interval = tuple[datetime, datetime]
_MAX_LISTED_FILES = 3
# A session part shorter than this needs no bar to be covered: a quiet stretch (no trade, no bar) inside a short
# window or chunk (e.g. window.chunk=1min) is normal; longer parts without any bar are holes.
QUIET = timedelta(minutes=30)


def covered_intervals(window_start: datetime, window_end: datetime, accepted_minutes: SeenTimestamps
                      ) -> list[Interval]:
    """The covered parts of [window_start, window_end), merged and in order, given the accepted bar minutes."""
    covered: list[Interval] = []
    for a, b, is_covered in _parts(window_start, window_end, accepted_minutes):
        if not is_covered:
            continue
        if covered and covered[-1][1] == a:
            covered[-1] = (covered[-1][0], b)
        else:
            covered.append((a, b))
    return covered


def missing_ranges(intervals: list[Interval], start: datetime, end: datetime) -> list[Interval]:
    """Parts of [start, end) that no [a, b) of `intervals` covers, in order."""
    gaps = []
    cursor = start
    for a, b in sorted(intervals):
        if cursor >= end:
            break
        if b <= cursor:
            continue
        if a > cursor:
            gaps.append((cursor, min(a, end)))
        cursor = max(cursor, b)
    if cursor < end:
        gaps.append((cursor, end))
    return gaps


def uncovered_ranges(db: Engine, symbol: str, start: datetime, end: datetime) -> list[Interval]:
    """Parts of [start, end) outside the clean coverage of `symbol` that hold open-market time: what the clean-only
    contract refuses (the calendar is only consulted, and imported, when there are such parts)."""
    gaps = missing_ranges(coverage_db.covered_intervals(db, symbol, start, end), start, end)
    return open_market_ranges(gaps) if gaps else []


def open_market_ranges(ranges: Sequence[Interval]) -> list[Interval]:
    """The ranges that contain open market time (those lying wholly in closed time are dropped)."""
    return [(a, b) for a, b in ranges if calendar.sessions(a, b)]


class IngestCoverage:
    """What one ingest covers. Made before the first bar is written (it loads the calendar for the window, so
    the end of the ingest is quick); ``record`` runs at the end, before the ingest is marked successful."""

    def __init__(self, window_start: datetime, window_end: datetime):
        self.start, self.end = window_start, window_end
        self.market_open = any(close - open_ >= QUIET for open_, close in calendar.open_parts(window_start,
                                                                                            window_end))

    def record(self, db: Engine, ingest_run_id: int, symbol: str, root: str, accepted_minutes: SeenTimestamps,
               paths: Sequence[Path], day_conditions: dict | None = None) -> None:
        """Store the covered intervals in clean_coverage, and the source's flagged days (`day_conditions`, UTC day
        -> {condition, last_modified_date, provisional, bought}) in clean_coverage_conditions; days not bought
        (Databento had no data for them yet) are not covered, closed market time in them neither.

        An ingest that accepted no bar at all over a window in which the market was open is refused (EngineError,
        exit 2): it read the wrong file, symbol or roll rule, and must not count as coverage -- unless every
        session of the window lies in days that were not bought.
        """
        not_bought = [(datetime.combine(day, time(), UTC), datetime.combine(day, time(), UTC) + timedelta(days=1))
                      for day, flag in (day_conditions or {}).items() if flag.get("bought") is False]
        coverage_db.record_day_conditions(db, ingest_run_id, symbol, day_conditions or {})
        open_bought = [(a, b) for a, b in calendar.open_parts(self.start, self.end)
                       if b - a >= QUIET and not any(lo <= a and b <= hi for lo, hi in not_bought)]
        if not len(accepted_minutes) and self.market_open and (open_bought or not not_bought):
            names = ", ".join(str(p) for p in paths[:_MAX_LISTED_FILES])
            if len(paths) > _MAX_LISTED_FILES:
                names += f" and {len(paths) - _MAX_LISTED_FILES} more"
            raise EngineError(
                f"no {root} bars in {names or 'the source'} for [{_fmt(self.start)}, {_fmt(self.end)}): wrong file, "
                "symbol or roll rule?",
                f"check that the files hold {root} bars of this window (the ingest row lists other instruments as "
                "ignored_instruments and rejected bars in clean_ingest_quarantine), and that symbol, roll_rule and "
                "rank match them",
            )
        intervals = covered_intervals(self.start, self.end, accepted_minutes)
        for lo, hi in not_bought:
            intervals = [piece for a, b in intervals for piece in ((a, min(b, lo)), (max(a, hi), b))
                         if piece[0] < piece[1]]
        coverage_db.record_coverage(db, ingest_run_id, symbol, intervals)


def _parts(start: datetime, end: datetime, accepted: SeenTimestamps):
    """(a, b, covered) for consecutive parts of [start, end): closed time, then each session clipped to it."""
    cursor = start
    for open_, close in calendar.open_parts(start, end):
        if cursor < open_:
            yield cursor, open_, True
        yield open_, close, close - open_ < QUIET or accepted.any_between(datetime_to_ns(open_), datetime_to_ns(close))
        cursor = close
    if cursor < end:
        yield cursor, end, True


def _fmt(value: datetime) -> str:
    return f"{value:%Y-%m-%dT%H:%M:%SZ}" if value.second or value.microsecond else f"{value:%Y-%m-%dT%H:%MZ}"
