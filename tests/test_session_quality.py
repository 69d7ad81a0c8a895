"""Session-aware quality (engine.quality): per CME session expected minutes, bars present, missing ranges, bars
outside any session and the longest gap, stored in session_quality on SQLite and PostgreSQL.

June 2024 is CDT: the session of trade date D runs D-1 22:00 UTC -> D 21:00 UTC (17:00-16:00 CT), 1380 minutes;
2024-06-07 is a Friday.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import numpy as np
import sqlalchemy as sa

from engine import calendar
from engine.bars import NS_PER_MINUTE, RAW_BAR_DTYPE
from engine.db.bar_times import read_bar_times
from engine.db.bars import CleanBarWriter, read_bars
from engine.db.quality import SessionQuality, quality_of
from engine.db.schema import CLEAN_BARS, clean_ingest_runs, session_quality
from engine.db.types import datetime_to_ns
from engine.quality import QualitySummary, record_session_quality
from engine.quality import session_quality as compute

SYMBOL = "GLBX.MDP3:ES"
MIN = timedelta(minutes=1)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def every_minute(start: str, end: str) -> np.ndarray:
    return np.arange(datetime_to_ns(utc(start)), datetime_to_ns(utc(end)), NS_PER_MINUTE, dtype=np.int64)


def without(ts: np.ndarray, *minutes: str) -> np.ndarray:
    return ts[~np.isin(ts, [datetime_to_ns(utc(m)) for m in minutes])]


def at(*minutes: str) -> np.ndarray:
    return np.array([datetime_to_ns(utc(m)) for m in minutes], dtype=np.int64)


def new_run(db, symbol: str = SYMBOL) -> int:
    now = datetime.now(UTC)
    with db.begin() as conn:
        return int(conn.execute(sa.insert(clean_ingest_runs).values(
            symbol=symbol, start_ts=now, end_ts=now, bars_received=0, bars_inserted=0, bars_updated=0,
            bars_skipped=0, batch_commits=0, retries=0, run_at=now, status="running")).inserted_primary_key[0])


def write(db, ts: np.ndarray, run: int, symbol: str = SYMBOL) -> None:
    rows = np.zeros(len(ts), dtype=RAW_BAR_DTYPE)
    rows["ts"] = np.sort(ts)
    rows["open"] = rows["high"] = rows["low"] = rows["close"] = 5_000 * 10**9
    rows["volume"], rows["instrument_id"] = 1, 118
    writer = CleanBarWriter(db, symbol, run)
    writer.write(rows)
    writer.flush()


def stored(db, symbol: str = SYMBOL) -> list[SessionQuality]:
    return quality_of(db, symbol)


def facts(rows: list[SessionQuality]) -> list[SessionQuality]:
    """The rows without their provenance (which run computed them, when)."""
    return [replace(r, ingest_run_id=None, computed_at=None) for r in rows]


# ---------------------------------------------------------------------------------------------
# On the database


def test_planted_missing_minutes_and_a_bar_in_the_daily_break(db):
    run = new_run(db)
    ts = without(every_minute("2024-06-03T22:00", "2024-06-04T21:00"),
                 "2024-06-04T03:00", "2024-06-04T14:02", "2024-06-04T14:03", "2024-06-04T14:04")
    write(db, np.concatenate([ts, at("2024-06-04T21:30")]), run)  # 16:30 CT: inside the daily halt
    summary = record_session_quality(db, SYMBOL, utc("2024-06-03T22:00"), utc("2024-06-04T22:00"), run)

    [row] = stored(db)
    assert facts([row]) == [SessionQuality(
        symbol=SYMBOL, trade_date=date(2024, 6, 4), session_open=utc("2024-06-03T22:00"),
        session_close=utc("2024-06-04T21:00"), expected_minutes=1380, bars_present=1376, missing_minutes=4,
        missing_ranges='[["2024-06-04T03:00Z","2024-06-04T03:01Z"],["2024-06-04T14:02Z","2024-06-04T14:05Z"]]',
        bars_outside_session=1, longest_gap_minutes=3)]
    assert row.ranges == [(utc("2024-06-04T03:00"), utc("2024-06-04T03:01")),
                          (utc("2024-06-04T14:02"), utc("2024-06-04T14:05"))]
    assert row.ingest_run_id == run and row.computed_at is not None
    whole = (utc("2024-06-01"), utc("2024-06-08"))
    times = read_bar_times(db, CLEAN_BARS, SYMBOL, *whole)
    assert times.dtype == np.int64 and np.array_equal(times, read_bars(db, CLEAN_BARS, SYMBOL, *whole)["ts"])
    assert len(read_bar_times(db, CLEAN_BARS, SYMBOL, utc("2024-06-04T14:02"), utc("2024-06-04T14:05"))) == 0
    assert summary == QualitySummary(sessions=1, sessions_with_missing=1, missing_minutes=4, bars_outside_session=1,
                                     longest_gap_minutes=3, longest_gap_date=date(2024, 6, 4),
                                     first_date=date(2024, 6, 4), last_date=date(2024, 6, 4))


def test_early_close_and_holiday_halt_set_the_expected_minutes(db):
    run = new_run(db)
    # July 3 closes at 12:15 CT (17:15 UTC): 19 h 15 min; July 4 halts at 12:00 CT (17:00 UTC): 19 h.
    ts = np.concatenate([every_minute("2024-07-02T22:00", "2024-07-03T17:15"), at("2024-07-03T17:15"),
                         every_minute("2024-07-03T22:00", "2024-07-04T16:00")])
    write(db, ts, run)
    record_session_quality(db, SYMBOL, utc("2024-07-03T00:00"), utc("2024-07-04T12:00"), run)
    july3, july4 = stored(db)
    assert (july3.trade_date, july3.session_close, july3.expected_minutes) == (date(2024, 7, 3),
                                                                             utc("2024-07-03T17:15"), 1155)
    assert (july3.bars_present, july3.missing_minutes, july3.missing_ranges, july3.bars_outside_session) == (
        1155, 0, "[]", 1)  # the 12:15 CT bar is after the close
    assert (july4.trade_date, july4.expected_minutes, july4.bars_present, july4.missing_minutes) == (
        date(2024, 7, 4), 1140, 1080, 60)
    assert (json.loads(july4.missing_ranges), july4.longest_gap_minutes) == (
        [["2024-07-04T16:00Z", "2024-07-04T17:00Z"]], 60)


def test_weekend_bars_belong_to_fridays_session_and_a_weekend_window_recomputes_it(db):
    run = new_run(db)
    friday = every_minute("2024-06-06T22:00", "2024-06-07T21:00")
    write(db, np.concatenate([friday, at("2024-06-08T12:00", "2024-06-09T21:59"),
                              every_minute("2024-06-09T22:00", "2024-06-10T21:00")]), run)
    # A window inside the weekend with no bar in it touches nothing.
    assert record_session_quality(db, SYMBOL, utc("2024-06-08T13:00"), utc("2024-06-09T21:00"), run).sessions == 0
    assert stored(db) == []
    # One holding the Saturday bar recomputes Friday's session, whole.
    summary = record_session_quality(db, SYMBOL, utc("2024-06-08T00:00"), utc("2024-06-09T00:00"), run)
    [fri] = stored(db)
    assert (summary.sessions, fri.trade_date, fri.bars_present, fri.bars_outside_session) == (
        1, date(2024, 6, 7), 1380, 2)
    # The Sunday-evening open starts Monday's session.
    record_session_quality(db, SYMBOL, utc("2024-06-07T00:00"), utc("2024-06-10T00:00"), run)
    assert [(r.trade_date, r.session_open, r.bars_present, r.bars_outside_session) for r in stored(db)] == [
        (date(2024, 6, 7), utc("2024-06-06T22:00"), 1380, 2), (date(2024, 6, 10), utc("2024-06-09T22:00"), 1380, 0)]


def test_recomputing_is_idempotent_one_row_per_session(db):
    first, second = new_run(db), new_run(db)
    write(db, without(every_minute("2024-06-02T22:00", "2024-06-07T21:00"), "2024-06-05T10:00"), first)
    window = (utc("2024-06-03T00:00"), utc("2024-06-08T00:00"))
    record_session_quality(db, SYMBOL, *window, first)
    before = stored(db)
    record_session_quality(db, SYMBOL, *window, second)
    after = stored(db)
    assert facts(after) == facts(before)
    assert [r.trade_date for r in after] == [date(2024, 6, d) for d in (3, 4, 5, 6, 7)]
    assert {r.ingest_run_id for r in after} == {second}
    with db.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(session_quality)).scalar_one() == 5


def test_more_bars_update_only_the_touched_sessions(db):
    first, second = new_run(db), new_run(db)
    write(db, every_minute("2024-06-03T10:00", "2024-06-03T11:00"), first)  # sparse: an hour per session
    write(db, every_minute("2024-06-05T10:00", "2024-06-05T11:00"), first)
    record_session_quality(db, SYMBOL, utc("2024-06-03T00:00"), utc("2024-06-06T00:00"), first)
    before = {r.trade_date: r for r in stored(db)}
    assert [(d.day, r.bars_present) for d, r in before.items()] == [(3, 60), (4, 0), (5, 60), (6, 0)]
    assert before[date(2024, 6, 4)].missing_ranges == '[["2024-06-03T22:00Z","2024-06-04T21:00Z"]]'

    write(db, every_minute("2024-06-05T12:00", "2024-06-05T12:30"), second)
    summary = record_session_quality(db, SYMBOL, utc("2024-06-05T12:00"), utc("2024-06-05T12:30"), second)
    after = {r.trade_date: r for r in stored(db)}
    assert summary.sessions == 1
    assert after[date(2024, 6, 5)].bars_present == 90  # the whole session counted, not only the new bars
    assert after[date(2024, 6, 5)].ingest_run_id == second
    assert json.loads(after[date(2024, 6, 5)].missing_ranges) == [
        ["2024-06-04T22:00Z", "2024-06-05T10:00Z"], ["2024-06-05T11:00Z", "2024-06-05T12:00Z"],
        ["2024-06-05T12:30Z", "2024-06-05T21:00Z"]]
    assert {d: r for d, r in after.items() if d != date(2024, 6, 5)} == {
        d: r for d, r in before.items() if d != date(2024, 6, 5)}  # untouched rows: same run, same time


def test_a_chunked_ingest_leaves_the_rows_of_one_pass(db):
    rng = np.random.default_rng(7)
    minutes = every_minute("2024-06-02T00:00", "2024-06-16T00:00")  # two weeks, weekends and halts included
    ts = np.sort(rng.choice(minutes, size=len(minutes) * 2 // 3, replace=False))
    start, end = utc("2024-06-02T00:00"), utc("2024-06-16T00:00")
    one = "GLBX.MDP3:NQ"
    run = new_run(db)
    write(db, ts, run, symbol=one)
    record_session_quality(db, one, start, end, run)
    # The chunked ingest: odd 17-hour chunks, each written then recorded, as the ingest does.
    edges = list(range(datetime_to_ns(start), datetime_to_ns(end), 17 * 60 * NS_PER_MINUTE)) + [datetime_to_ns(end)]
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        part = new_run(db)
        write(db, ts[(ts >= lo) & (ts < hi)], part)
        record_session_quality(db, SYMBOL, calendar.ns_to_datetime(lo), calendar.ns_to_datetime(hi), part)
    chunked, single = stored(db), stored(db, one)
    # Sunday 06-02 before the 17:00 CT open is closed time after Friday 05-31's session: its bars are that
    # session's (and it has no others); then ten sessions, the last one owning the bars up to the window's end.
    assert [r.trade_date for r in chunked][:2] == [date(2024, 5, 31), date(2024, 6, 3)] and len(chunked) == 11
    assert (chunked[0].bars_present, chunked[0].bars_outside_session > 0) == (0, True)
    assert sum(r.bars_present + r.bars_outside_session for r in chunked) == len(ts)
    assert facts(chunked) == [replace(r, symbol=SYMBOL) for r in facts(single)]


# ---------------------------------------------------------------------------------------------
# The computation alone


def test_a_session_without_bars_is_one_missing_range_and_a_year_takes_well_under_a_second():
    opens, closes = calendar.session_bounds_ns(datetime_to_ns(utc("2024-01-02")), datetime_to_ns(utc("2025-01-01")))
    [empty] = compute(SYMBOL, np.zeros(0, np.int64), opens[:1], closes[:1])
    assert (empty.bars_present, empty.missing_minutes, empty.longest_gap_minutes) == (0, 1380, 1380)
    assert empty.missing_ranges == '[["2024-01-01T23:00Z","2024-01-02T22:00Z"]]'

    every = np.concatenate([np.arange(a, b, NS_PER_MINUTE) for a, b in zip(opens, closes, strict=True)])
    ts = np.sort(np.random.default_rng(1).choice(every, size=350_000, replace=False))
    began = time.perf_counter()
    rows = compute(SYMBOL, ts, opens, closes)
    elapsed = time.perf_counter() - began
    assert sum(r.bars_present for r in rows) == 350_000
    assert sum(r.missing_minutes for r in rows) == len(every) - 350_000
    assert sum(len(r.ranges) for r in rows) > 0
    assert elapsed < 0.5, f"{elapsed:.3f} s for a year of bars"


def test_holiday_bars_belong_to_the_session_before_and_dst_moves_the_open_not_the_length():
    opens, closes = calendar.session_bounds_ns(datetime_to_ns(utc("2024-12-24")), datetime_to_ns(utc("2024-12-26")))
    # Christmas Eve closes 12:15 CT; Christmas is closed: a bar on Christmas Day is Christmas Eve's, outside.
    eve, after = compute(SYMBOL, at("2024-12-24T18:14", "2024-12-25T15:00", "2024-12-25T23:00"), opens, closes)
    assert (eve.trade_date, eve.expected_minutes, eve.bars_present, eve.bars_outside_session) == (
        date(2024, 12, 24), 1155, 1, 1)
    assert (after.trade_date, after.bars_present, after.bars_outside_session) == (date(2024, 12, 26), 1, 0)
    assert eve.ranges == [(utc("2024-12-23T23:00"), utc("2024-12-24T18:14"))]
    # The first sessions after the 2024 DST changes open at 22:00 / 23:00 UTC and still last 23 hours.
    for first_day, open_at in (("2024-03-11", "2024-03-10T22:00"), ("2024-11-04", "2024-11-03T23:00")):
        opens, closes = calendar.session_bounds_ns(datetime_to_ns(utc(f"{first_day}T12:00")),
                                                   datetime_to_ns(utc(f"{first_day}T13:00")))
        [row] = compute(SYMBOL, np.zeros(0, np.int64), opens, closes)
        assert (str(row.trade_date), row.session_open, row.expected_minutes) == (first_day, utc(open_at), 1380)


# --------------------------------------------------------------------------------------------- through the ingest


def test_the_ingest_records_the_quality_of_its_sessions_exactly(db_url, tmp_path):
    """The ingest recomputes the sessions it touched. Into an empty window it takes the bars from memory (they are
    exactly the table's): the rows equal a recompute from the table. A bar already stored in the window at a minute
    the next file lacks makes it read the table, and that bar is counted."""
    from test_contract_selection import bars_at, run_engine, source, write_outrights

    day = date(2024, 6, 4)  # the session 06-03 22:00 UTC -> 06-04 21:00 UTC
    ts = without(every_minute("2024-06-04T13:00", "2024-06-04T15:00"), "2024-06-04T14:02", "2024-06-04T14:03")
    ts = np.append(ts, at("2024-06-04T21:30"))  # a bar in the daily break
    window = ["window.start=2024-06-04T12:00:00Z", "window.end=2024-06-04T22:30:00Z", "symbol=GLBX.MDP3:ESU4"]
    engine = sa.create_engine(db_url)
    from engine.db.connect import upgrade
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO symbol_registry (internal_symbol, dataset, root, schema, stype_in, "
                             "is_active) VALUES ('GLBX.MDP3:ESU4', 'GLBX.MDP3', 'ES', 'ohlcv-1m', 'raw_symbol', TRUE)"))
    first = write_outrights(tmp_path / "a.dbn.zst", bars_at(ts, "ESU4", 5300.0, 10))
    result = run_engine(db_url, tmp_path / "one", *source(first), *window)["ingest"]
    from engine.db.connect import create_db_engine
    db = create_db_engine(db_url)
    try:
        row, next_session = stored(db, "GLBX.MDP3:ESU4")  # the window reaches into the 06-05 session (no bars)
        assert (next_session.trade_date, next_session.bars_present) == (date(2024, 6, 5), 0)
        assert (row.trade_date, row.bars_present, row.bars_outside_session, row.missing_minutes) == (
            day, 118, 1, 1380 - 118)
        assert json.loads(row.missing_ranges)[1] == ["2024-06-04T14:02Z", "2024-06-04T14:04Z"]
        assert result["session_quality"]["sessions"] == 2 and result["session_quality"]["bars_outside_session"] == 1
        record_session_quality(db, "GLBX.MDP3:ESU4", utc("2024-06-04T12:00"), utc("2024-06-04T22:30"), None)
        assert facts(stored(db, "GLBX.MDP3:ESU4")) == facts([row, next_session]), "from memory == from the table"

        # A second file without the 13:00 bar and with 14:02: the stored 13:00 bar stays and is counted.
        second = write_outrights(tmp_path / "b.dbn.zst", bars_at(np.append(ts[1:], at("2024-06-04T14:02")), "ESU4",
                                                                 5300.0, 10))
        run_engine(db_url, tmp_path / "two", *source(second), *window)
        again, _ = stored(db, "GLBX.MDP3:ESU4")
        assert (again.bars_present, again.missing_minutes) == (119, 1380 - 119)
    finally:
        db.dispose()
        engine.dispose()
