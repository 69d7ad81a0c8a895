"""engine.calendar: CME Globex equity-futures sessions on dates whose schedule CME published.

Expected values are CME's schedule for ES/NQ, not the library's answer: Sunday-Friday 17:00-16:00
America/Chicago with the daily 16:00-17:00 halt, holidays closed, 12:00 CT holiday halts, 12:15 CT early closes.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from engine import calendar
from engine.db.types import datetime_to_ns, ns_to_datetime


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def sessions(start: str, end: str) -> list[tuple[str, str]]:
    return [(f"{a:%Y-%m-%d %H:%M}", f"{b:%Y-%m-%d %H:%M}") for a, b in calendar.sessions(utc(start), utc(end))]


def test_an_ordinary_week_runs_sunday_to_friday_with_the_daily_halt():
    # 2024-06-02 is a Sunday (CDT: 17:00 CT = 22:00 UTC, 16:00 CT = 21:00 UTC).
    assert sessions("2024-06-01", "2024-06-09") == [
        ("2024-06-02 22:00", "2024-06-03 21:00"),
        ("2024-06-03 22:00", "2024-06-04 21:00"),
        ("2024-06-04 22:00", "2024-06-05 21:00"),
        ("2024-06-05 22:00", "2024-06-06 21:00"),
        ("2024-06-06 22:00", "2024-06-07 21:00"),
    ]


def test_a_weekend_is_closed():
    assert sessions("2024-06-07T21:00", "2024-06-09T22:00") == []
    assert calendar.open_parts(utc("2024-06-08"), utc("2024-06-09")) == []


def test_christmas_is_closed_and_christmas_eve_closes_at_12_15():
    assert sessions("2024-12-24", "2024-12-27") == [
        ("2024-12-23 23:00", "2024-12-24 18:15"),  # Christmas Eve: 12:15 CT
        ("2024-12-25 23:00", "2024-12-26 22:00"),  # no session for trade date Dec 25; reopens 17:00 CT
        ("2024-12-26 23:00", "2024-12-27 22:00"),
    ]


def test_new_years_day_is_closed():
    assert sessions("2023-12-29T22:00", "2024-01-02T22:00") == [("2024-01-01 23:00", "2024-01-02 22:00")]


def test_independence_day_early_close_and_holiday_halt():
    assert sessions("2024-07-03", "2024-07-05T12:00") == [
        ("2024-07-02 22:00", "2024-07-03 17:15"),  # July 3: 12:15 CT
        ("2024-07-03 22:00", "2024-07-04 17:00"),  # July 4: halt at 12:00 CT
        ("2024-07-04 22:00", "2024-07-05 21:00"),
    ]


def test_thanksgiving_halt_and_the_friday_after_closes_at_12_15():
    assert sessions("2024-11-28", "2024-12-01") == [
        ("2024-11-27 23:00", "2024-11-28 18:00"),  # Thanksgiving: halt at 12:00 CT
        ("2024-11-28 23:00", "2024-11-29 18:15"),  # Friday: 12:15 CT
    ]


@pytest.mark.parametrize(("sunday", "first_open", "friday_close"), [
    ("2024-03-10", "2024-03-10 22:00", "2024-03-08 22:00"),  # DST starts: the open moves an hour earlier in UTC
    ("2024-11-03", "2024-11-03 23:00", "2024-11-01 21:00"),  # DST ends: an hour later
])
def test_daylight_saving_changes_move_the_session_open_in_utc(sunday, first_open, friday_close):
    day = utc(sunday)
    around = sessions(f"{day - timedelta(days=2):%Y-%m-%d}T12:00", f"{day + timedelta(days=1):%Y-%m-%d}T12:00")
    assert around[0][1] == friday_close
    assert around[1][0] == first_open
    assert around[1][0][:10] == sunday


def test_good_friday_is_closed_except_on_a_jobs_report_friday():
    """Library correction (pandas_market_calendars 5.5.0 opens every Good Friday from 2023 to 08:15 CT)."""
    assert sessions("2024-03-28T21:00", "2024-03-31T21:00") == []  # 2024-03-29: closed
    assert sessions("2025-04-17T21:00", "2025-04-20T21:00") == []  # 2025-04-18: closed
    assert sessions("2023-04-06T21:00", "2023-04-09T21:00") == [("2023-04-06 22:00", "2023-04-07 13:15")]


def test_sessions_across_a_decade_boundary_and_empty_ranges():
    assert sessions("2029-12-31T12:00", "2030-01-02T23:30") == [
        ("2029-12-30 23:00", "2029-12-31 22:00"), ("2030-01-01 23:00", "2030-01-02 22:00"),
        ("2030-01-02 23:00", "2030-01-03 22:00")]
    assert sessions("2024-06-04", "2024-06-04") == []
    assert calendar.open_parts(utc("2024-06-04T12:00"), utc("2024-06-04T22:30")) == [
        (utc("2024-06-04T12:00"), utc("2024-06-04T21:00")), (utc("2024-06-04T22:00"), utc("2024-06-04T22:30"))]


def test_a_monday_holiday_halts_at_noon_and_reopens_at_17_00():
    # 2024-01-15 Martin Luther King Jr. Day (CST): Monday's session halts at 12:00 CT = 18:00 UTC, Tuesday's
    # opens at 17:00 CT as usual. Juneteenth 2024-06-19 (CDT) the same, an hour earlier in UTC.
    assert sessions("2024-01-15", "2024-01-16") == [
        ("2024-01-14 23:00", "2024-01-15 18:00"), ("2024-01-15 23:00", "2024-01-16 22:00")]
    assert sessions("2024-06-19", "2024-06-19T23:00") == [
        ("2024-06-18 22:00", "2024-06-19 17:00"), ("2024-06-19 22:00", "2024-06-20 21:00")]


def test_good_friday_2024_the_thursday_closes_as_usual_and_sunday_reopens():
    # CME kept equity futures closed on 2024-03-29 (the March jobs report came out on April 5).
    assert sessions("2024-03-28", "2024-04-01") == [
        ("2024-03-27 22:00", "2024-03-28 21:00"), ("2024-03-31 22:00", "2024-04-01 21:00")]


def test_a_session_closes_on_its_trade_date_in_utc():
    """engine.quality dates a session by the UTC date of its close: true of every session the library has."""
    import pandas_market_calendars as pmc

    schedule = pmc.get_calendar(calendar.CALENDAR_NAME).schedule("2015-01-01", "2030-12-31")
    closes = schedule["market_close"].to_numpy(dtype="datetime64[ns]").astype("datetime64[D]")
    assert (closes == schedule.index.to_numpy().astype("datetime64[D]")).all()
    opens, closes = calendar.session_bounds_ns(datetime_to_ns(utc("2024-01-01T23:00")),
                                               datetime_to_ns(utc("2024-12-31T22:00")))
    # 2024 has 262 weekdays; equity futures are closed on three of them (New Year's Day, Good Friday,
    # Christmas) and halt early on the other holidays, so there is a session for 259 trade dates.
    dates = closes.astype("datetime64[ns]").astype("datetime64[D]")
    assert (len(dates), str(dates[0]), str(dates[-1])) == (259, "2024-01-02", "2024-12-31")
    assert not {"2024-01-01", "2024-03-29", "2024-12-25"} & set(dates.astype(str).tolist())


@pytest.mark.parametrize(("name", "symbol", "bars", "first", "last", "session"), [
    ("dbpy_GLBX_ESH1_20201228.ohlcv-1m.dbn.zst", "ES", 4, "2020-12-28 00:00", "2020-12-28 00:03",
     ("2020-12-27 23:00", "2020-12-28 22:00")),  # Sunday's open (CST) after the Christmas closure
    ("nt_ESM4_NQM4_20240509T0955-1005.ohlcv-1m.dbn.zst", "NQ", 10, "2024-05-09 09:55", "2024-05-09 10:04",
     ("2024-05-08 22:00", "2024-05-09 21:00")),
    # Crosses UTC midnight but not a session boundary: 18:40-19:09 CDT on the evening of July 1 is early in the
    # session of trade date July 2.
    ("nt_ESU4_NQU4_20240701T2340-0010.ohlcv-1m.dbn.zst", "ES", 30, "2024-07-01 23:40", "2024-07-02 00:09",
     ("2024-07-01 22:00", "2024-07-02 21:00")),
    # Friday 2026-01-09 in CST (UTC-6): 20:55-21:04 UTC is 14:55-15:04 CT, the last hour before the 16:00 CT
    # close at 22:00 UTC (21:00 UTC is the close only in summer, CDT).
    ("nt_ESH6_20260109T2055-2105.ohlcv-1m.dbn.zst", "ES", 10, "2026-01-09 20:55", "2026-01-09 21:04",
     ("2026-01-08 23:00", "2026-01-09 22:00")),
])
def test_the_real_fixtures_lie_inside_one_session(dbn_fixtures, name, symbol, bars, first, last, session):
    from engine.sources.dbn import DbnBarFile, SymbolFilter

    ts = DbnBarFile([dbn_fixtures / name]).read(SymbolFilter(symbol, f"{symbol}.v.0"))["ts"]
    stamps = [f"{ns_to_datetime(int(t)):%Y-%m-%d %H:%M}" for t in ts]
    assert (stamps[0], stamps[-1], len(stamps)) == (first, last, bars)
    assert sessions(f"{first[:10]}T{first[11:]}", f"{last[:10]}T{last[11:]}:01") == [session]
