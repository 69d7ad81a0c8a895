"""Session-aware quality of a symbol's clean bars: per CME Globex session (``engine.calendar``) the minutes the
market was open, the bars present, the missing-minute ranges, the bars outside any session and the longest gap.

A bar at ts covers the minute [ts, ts + 1 min). It is inside the session with open <= ts < close. A bar outside
every session belongs to the session that opened last before it, i.e. the one that closed just before: a bar in
the daily 16:00-17:00 CT halt to the session that just closed, a weekend or holiday bar to the last session
before it (Friday's for a weekend). So each session owns the span [its open, the next session's open).

A minute without a trade has no bar: missing minutes are information for the coverage report, not an error.

``record_session_quality`` (called after an ingest) recomputes the sessions the ingest's window [start, end)
touched — those open during it, and the previous one when the window starts in closed time and holds bars that
belong to it — always over whole sessions (all of their bars, not only the window's), so a chunked ingest leaves
the same rows as one pass, and upserts one row per (symbol, trade date).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime

import numpy as np
from sqlalchemy import Engine

from engine import calendar
from engine.bars import NS_PER_MINUTE
from engine.db.bar_times import read_bar_times
from engine.db.quality import SessionQuality, write_quality
from engine.db.schema import CLEAN_BARS
from engine.db.types import datetime_to_ns, ns_to_datetime

__all__ = ["QualitySummary", "record_session_quality", "session_quality"]

# Far enough to find the session before a window and the one after it across any closure (weekend + holiday).
_REACH_NS = 14 * 24 * 3600 * 10**9


@dataclass(frozen=True)
class QualitySummary:
    """What ``record_session_quality`` computed, for the ingest's report."""

    sessions: int
    sessions_with_missing: int  # sessions with at least one missing minute
    missing_minutes: int
    bars_outside_session: int
    longest_gap_minutes: int  # over all the sessions (0: none)
    longest_gap_date: date | None  # the trade date of that gap (the first one of that length)
    first_date: date | None
    last_date: date | None


def record_session_quality(db: Engine, symbol: str, start: datetime, end: datetime, ingest_run_id: int | None,
                           window_ts: np.ndarray | None = None) -> QualitySummary:
    """Recompute and upsert the session_quality rows of ``symbol``'s sessions touched by [start, end) (see the
    module docstring) from the clean table, and summarise them.

    ``window_ts``: the ts of exactly the clean table's bars of ``symbol`` in [start, end), ascending, when the
    caller knows them (an ingest into a window that held no bar and that no other ingest wrote to): only the parts
    of the touched sessions outside the window are read from the table then."""
    start_ns, end_ns = datetime_to_ns(start), datetime_to_ns(end)
    opens, closes, span_end = _touched(start_ns, end_ns)
    if len(opens) == 0 or end_ns <= start_ns:
        return _summary([])
    span_start = ns_to_datetime(int(opens[0]))
    if window_ts is None:
        ts = read_bar_times(db, CLEAN_BARS, symbol, span_start, ns_to_datetime(span_end))
    else:
        ts = np.concatenate([read_bar_times(db, CLEAN_BARS, symbol, span_start, max(start, span_start)),
                             np.asarray(window_ts, dtype=np.int64),
                             read_bar_times(db, CLEAN_BARS, symbol, end, max(end, ns_to_datetime(span_end)))])
    if closes[0] <= start_ns:  # the session before the window: only when the window holds bars of it
        own_end = int(opens[1]) if len(opens) > 1 else span_end
        if not np.any((ts >= start_ns) & (ts < min(own_end, end_ns))):
            opens, closes, ts = opens[1:], closes[1:], ts[ts >= own_end]
            if len(opens) == 0:
                return _summary([])
    rows = session_quality(symbol, ts, opens, closes)
    with db.begin() as conn:
        write_quality(conn, symbol, ns_to_datetime(int(opens[0])), ns_to_datetime(span_end), rows, ingest_run_id,
                      datetime.now(UTC))
    return _summary(rows)


def _touched(start_ns: int, end_ns: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(opens, closes) of the sessions open during [start_ns, end_ns), led by the session before it when the
    window starts in closed time (the caller drops it without bars), and the end of the last one's span (the next
    session's open)."""
    opens, closes = calendar.session_bounds_ns(start_ns - _REACH_NS, max(end_ns, start_ns) + _REACH_NS)
    first = int(np.searchsorted(closes, start_ns, side="right"))  # first session closing after start
    last = int(np.searchsorted(opens, end_ns, side="left"))  # sessions [first, last) are open in the window
    if first > 0 and (first == len(opens) or opens[first] > start_ns):
        first -= 1  # start lies in the closed time after session first - 1
    if last <= first:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), end_ns
    span_end = int(opens[last]) if last < len(opens) else max(end_ns, int(closes[last - 1]))
    return opens[first:last], closes[first:last], span_end


def session_quality(symbol: str, ts_ns: np.ndarray, opens: np.ndarray, closes: np.ndarray) -> list[SessionQuality]:
    """The quality of sessions [opens[i], closes[i]) (ns, ascending, whole minutes) from the unique, whole-minute
    bar timestamps ``ts_ns`` of the span [opens[0], the next open after the last): vectorised over all bars."""
    ts = np.asarray(ts_ns, dtype=np.int64)
    opens, closes = np.asarray(opens, dtype=np.int64), np.asarray(closes, dtype=np.int64)
    n = len(opens)
    if np.any(ts % NS_PER_MINUTE) or np.any(opens % NS_PER_MINUTE) or np.any(closes % NS_PER_MINUTE):
        raise ValueError("session quality needs whole-minute bar timestamps and session bounds")
    sid = np.searchsorted(opens, ts, side="right") - 1  # the session each bar belongs to
    if np.any(sid < 0):
        raise ValueError(f"{int((sid < 0).sum())} bar(s) of {symbol} before the first session's open")
    inside = ts < closes[sid]
    expected = (closes - opens) // NS_PER_MINUTE
    present = np.bincount(sid[inside], minlength=n)
    outside = np.bincount(sid[~inside], minlength=n)

    # Per session: a virtual bar at open - 1 min and one at close around its bars; each step of more than one
    # minute between neighbours of one session is a missing range [previous + 1 min, next).
    points = np.concatenate([opens - NS_PER_MINUTE, ts[inside], closes])
    owner = np.concatenate([np.arange(n), sid[inside], np.arange(n)])
    order = np.lexsort((points, owner))
    points, owner = points[order], owner[order]
    gap = (owner[1:] == owner[:-1]) & (np.diff(points) > NS_PER_MINUTE)
    gap_start, gap_end, gap_owner = points[:-1][gap] + NS_PER_MINUTE, points[1:][gap], owner[:-1][gap]
    gap_minutes = (gap_end - gap_start) // NS_PER_MINUTE
    missing = np.zeros(n, dtype=np.int64)
    np.add.at(missing, gap_owner, gap_minutes)
    longest = np.zeros(n, dtype=np.int64)
    np.maximum.at(longest, gap_owner, gap_minutes)
    if not np.array_equal(missing, expected - present):
        raise ValueError(f"bar timestamps of {symbol} are not unique and ascending")

    texts = _range_texts(gap_start, gap_end)
    bounds = np.searchsorted(gap_owner, np.arange(n + 1))  # gap_owner ascends: session i's ranges are a slice
    dates = closes.astype("datetime64[ns]").astype("datetime64[D]").tolist()  # a close is on its trade date (UTC)
    return [
        SessionQuality(
            symbol=symbol, trade_date=dates[i], session_open=ns_to_datetime(int(opens[i])),
            session_close=ns_to_datetime(int(closes[i])), expected_minutes=int(expected[i]),
            bars_present=int(present[i]), missing_minutes=int(missing[i]),
            missing_ranges="[" + ",".join(texts[bounds[i]:bounds[i + 1]]) + "]",
            bars_outside_session=int(outside[i]), longest_gap_minutes=int(longest[i]),
        )
        for i in range(n)
    ]


def _range_texts(start_ns: np.ndarray, end_ns: np.ndarray) -> list[str]:
    """'["2024-07-03T14:02Z","2024-07-03T14:05Z"]' per range, formatted by numpy."""
    if len(start_ns) == 0:
        return []
    a = np.datetime_as_string(start_ns.astype("datetime64[ns]"), unit="m")
    b = np.datetime_as_string(end_ns.astype("datetime64[ns]"), unit="m")
    return np.char.add(np.char.add(np.char.add(np.char.add('["', a), 'Z","'), b), 'Z"]').tolist()


def _summary(rows: list[SessionQuality]) -> QualitySummary:
    worst = max(rows, key=lambda r: r.longest_gap_minutes, default=None)
    return QualitySummary(
        sessions=len(rows),
        sessions_with_missing=sum(r.missing_minutes > 0 for r in rows),
        missing_minutes=sum(r.missing_minutes for r in rows),
        bars_outside_session=sum(r.bars_outside_session for r in rows),
        longest_gap_minutes=worst.longest_gap_minutes if worst else 0,
        longest_gap_date=worst.trade_date if worst and worst.longest_gap_minutes else None,
        first_date=rows[0].trade_date if rows else None,
        last_date=rows[-1].trade_date if rows else None,
    )

