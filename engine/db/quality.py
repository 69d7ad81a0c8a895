"""SQL of session_quality: one row per (symbol, trade date) of CME session quality, typed rows, idempotent writes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime

from sqlalchemy import Connection, Engine, delete
from sqlalchemy.dialects import postgresql, sqlite

from engine.db.schema import session_quality
from engine.db.typed_rows import symbol_rows

__all__ = ["SessionQuality", "quality_of", "write_quality"]


@dataclass(frozen=True)
class SessionQuality:
    """What the clean table holds for one trading session of one symbol (see ``engine.quality``)."""

    symbol: str
    trade_date: date
    session_open: datetime  # [open, close) in UTC, from engine.calendar
    session_close: datetime
    expected_minutes: int  # minutes the market is open in the session
    bars_present: int  # bars with open <= ts < close
    missing_minutes: int  # expected_minutes - bars_present: minutes of the session without a bar
    missing_ranges: str  # JSON [["2024-07-03T14:02Z", "2024-07-03T14:05Z"], ...]: the missing [start, end)
    bars_outside_session: int  # bars in the closed time after this session, up to the next session's open
    longest_gap_minutes: int  # the longest run of missing minutes (0: none)
    ingest_run_id: int | None = None  # the ingest run that last computed the row
    computed_at: datetime | None = None

    @property
    def ranges(self) -> list[tuple[datetime, datetime]]:
        """missing_ranges as UTC datetimes."""
        return [(_minute(a), _minute(b)) for a, b in json.loads(self.missing_ranges)]


def _minute(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%MZ").replace(tzinfo=UTC)


_COLUMNS = [f.name for f in fields(SessionQuality)]


def write_quality(conn: Connection, symbol: str, span_start: datetime, span_end: datetime,
                  rows: Sequence[SessionQuality], ingest_run_id: int | None, computed_at: datetime) -> None:
    """Upsert ``rows`` by (symbol, trade_date) (in the caller's transaction), stamped with the run and time, and
    delete the symbol's other rows of sessions opening in [span_start, span_end) (sessions the calendar no longer
    has): afterwards the span holds exactly ``rows``."""
    for row in rows:
        if row.symbol != symbol or not span_start <= row.session_open < span_end:
            raise ValueError(f"session {row.trade_date} of {row.symbol} is not in {symbol} [{span_start}, {span_end})")
    c = session_quality.c
    stale = delete(session_quality).where(c.symbol == symbol, c.session_open >= span_start, c.session_open < span_end)
    if rows:
        stale = stale.where(c.trade_date.not_in([row.trade_date for row in rows]))
    conn.execute(stale)
    if not rows:
        return
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    stmt = insert(session_quality)
    stmt = stmt.on_conflict_do_update(
        index_elements=[c.symbol, c.trade_date],
        set_={name: stmt.excluded[name] for name in _COLUMNS if name not in ("symbol", "trade_date")},
    )
    stamp = {"ingest_run_id": ingest_run_id, "computed_at": computed_at}
    conn.execute(stmt, [{**{name: getattr(row, name) for name in _COLUMNS}, **stamp} for row in rows])


def quality_of(engine: Engine | Connection, symbol: str, start: date | None = None, end: date | None = None
               ) -> list[SessionQuality]:
    """The symbol's rows with start <= trade_date < end (None = unbounded), in date order."""
    return symbol_rows(engine, session_quality, SessionQuality, symbol, "trade_date", start, end)
