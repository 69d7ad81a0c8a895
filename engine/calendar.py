"""CME Globex equity-futures trading sessions (ES, NQ, YM, RTY), from pandas_market_calendars.

A session of trade date D runs from D-1 17:00 to D 16:00 America/Chicago (Sunday 17:00 opens Monday's
session), with the daily 16:00-17:00 halt between sessions, US holidays closed or halted early. The library's
"CME Globex Equity" calendar has those hours, the 12:00 CT holiday halts and the 12:15 CT early closes
(July 3, the day after Thanksgiving, Christmas Eve); exchange_calendars' "CMES" does not (it runs sessions to
17:00 CT, ignores Juneteenth and July 3, and closes at 12:00 instead of 12:15 CT).

One correction (pandas_market_calendars 5.5.0): from 2023 on it gives every Good Friday a session to 08:15 CT.
CME opens equity futures on Good Friday only when the monthly jobs report is published that morning, which
is the first Friday of April (2023-04-07, 2026-04-03); other Good Fridays (2024-03-29, 2025-04-18) are
closed, so their session is dropped here.

pandas (through the library) takes about half a second to import: it is imported on first use only, so
``python -m engine --help`` never pays for it.
"""

from __future__ import annotations

import functools
from datetime import date, datetime, timedelta

import numpy as np

from engine.db.types import datetime_to_ns, ns_to_datetime

CALENDAR_NAME = "CME Globex Equity"
_CORRECTED_FROM_YEAR = 2023


def sessions(start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    """The [open, close) of every session overlapping [start, end), in order, as UTC datetimes."""
    opens, closes = session_bounds_ns(datetime_to_ns(start), datetime_to_ns(end))
    return [(ns_to_datetime(int(a)), ns_to_datetime(int(b))) for a, b in zip(opens, closes, strict=True)]


def session_bounds_ns(start_ns: int, end_ns: int) -> tuple[np.ndarray, np.ndarray]:
    """(opens, closes) in ns since the epoch of the sessions overlapping [start_ns, end_ns), in order."""
    if end_ns <= start_ns:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    first = ns_to_datetime(start_ns).year
    last = ns_to_datetime(end_ns).year + 1  # a session opening on Dec 31 belongs to the next year's first trade date
    parts = [_decade(d) for d in range(first // 10 * 10, last // 10 * 10 + 1, 10)]
    opens = np.concatenate([p[0] for p in parts])
    closes = np.concatenate([p[1] for p in parts])
    keep = (closes > start_ns) & (opens < end_ns)
    return opens[keep], closes[keep]


def open_parts(start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    """The parts of [start, end) during which the market is open (sessions clipped to the range)."""
    return [(max(a, start), min(b, end)) for a, b in sessions(start, end)]


@functools.lru_cache(maxsize=8)
def _decade(first_year: int) -> tuple[np.ndarray, np.ndarray]:
    """Sessions of the trade dates of ten calendar years (one library call: each costs ~0.4 s)."""
    import pandas_market_calendars as pmc  # noqa: PLC0415 - heavy (pandas), only when coverage is decided

    schedule = pmc.get_calendar(CALENDAR_NAME).schedule(f"{first_year}-01-01", f"{first_year + 9}-12-31")
    trade_dates = [d.date() for d in schedule.index]
    keep = np.array([not _closed_good_friday(d) for d in trade_dates], dtype=bool)
    opens = schedule["market_open"].to_numpy(dtype="datetime64[ns]").astype(np.int64)
    closes = schedule["market_close"].to_numpy(dtype="datetime64[ns]").astype(np.int64)
    return opens[keep], closes[keep]


def _closed_good_friday(day: date) -> bool:
    """A Good Friday the library opens but CME keeps closed (see the module docstring)."""
    from dateutil.easter import easter  # noqa: PLC0415 - installed with pandas

    return day.year >= _CORRECTED_FROM_YEAR and day == easter(day.year) - timedelta(days=2) and day.day > 7
