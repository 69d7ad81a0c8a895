"""Coverage means bars: clean_coverage per CME Globex session, the 0-bar ingest, and what detect refuses.

Dates are in June 2024 (CDT): a session of trade date D runs D-1 22:00 UTC → D 21:00 UTC, Monday's opens on
Sunday. The end-to-end cases write real DBN files and run `python -m engine` on SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from dbn_files import bars, write_dbn

from engine.bars import NS_PER_MINUTE
from engine.coverage import IngestCoverage, covered_intervals, open_market_ranges
from engine.db import coverage as coverage_db
from engine.db.ingest_runs import finish_ingest_run, start_ingest_run
from engine.db.types import datetime_to_ns
from engine.errors import EngineError
from engine.stages.detect import CONTRACT_ERROR
from engine.validate import SeenTimestamps

SYMBOL = "GLBX.MDP3:NQ"
H = timedelta(hours=1)
MIN = timedelta(minutes=1)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def accepted(*minutes: datetime) -> SeenTimestamps:
    seen = SeenTimestamps()
    seen.add(np.array([datetime_to_ns(m) for m in minutes], dtype=np.int64))
    return seen


def minutes(start: datetime, count: int, step: timedelta = MIN) -> list[datetime]:
    return [start + i * step for i in range(count)]


# ---------------------------------------------------------------------------------------------
# covered_intervals (pure)


def test_a_session_without_bars_is_the_only_uncovered_part():
    start, end = utc("2024-06-03T12:00"), utc("2024-06-05T13:00")
    seen = accepted(*minutes(start, 60), *minutes(utc("2024-06-05T12:00"), 60))
    # Tuesday's session (06-03 22:00 → 06-04 21:00) has no bar: everything else is covered, the daily halts
    # (closed time) included.
    assert covered_intervals(start, end, seen) == [(start, utc("2024-06-03T22:00")), (utc("2024-06-04T21:00"), end)]


def test_minutes_without_a_bar_inside_a_session_are_normal():
    start, end = utc("2024-06-03T00:00"), utc("2024-06-04T00:00")
    seen = accepted(*minutes(utc("2024-06-03T01:00"), 40, step=17 * MIN), utc("2024-06-03T23:59"))
    assert covered_intervals(start, end, seen) == [(start, end)]


def test_closed_time_is_always_covered():
    weekend = (utc("2024-06-07T21:00"), utc("2024-06-09T22:00"))
    assert covered_intervals(*weekend, SeenTimestamps()) == [weekend]
    christmas = (utc("2024-12-24T18:15"), utc("2024-12-25T23:00"))  # Christmas Eve early close → Christmas
    assert covered_intervals(*christmas, SeenTimestamps()) == [christmas]
    assert open_market_ranges([weekend, christmas, (utc("2024-06-07T20:00"), utc("2024-06-07T21:30"))]) == [
        (utc("2024-06-07T20:00"), utc("2024-06-07T21:30"))]


def test_only_the_part_of_a_session_inside_the_window_counts():
    # Window ends an hour into Tuesday's session: that hour has no bar, Monday's part has one.
    start, end = utc("2024-06-03T20:00"), utc("2024-06-03T23:00")
    assert covered_intervals(start, end, accepted(utc("2024-06-03T20:30"))) == [(start, utc("2024-06-03T22:00"))]
    assert covered_intervals(start, end, accepted(utc("2024-06-03T22:59"))) == [
        (utc("2024-06-03T21:00"), end)]


def test_any_between_is_half_open_on_minutes():
    seen = accepted(utc("2024-06-03T12:00"))
    ns = datetime_to_ns(utc("2024-06-03T12:00"))
    assert seen.any_between(ns, ns + 1) and seen.any_between(ns - NS_PER_MINUTE + 1, ns + 1)
    assert not seen.any_between(ns + 1, ns + NS_PER_MINUTE) and not seen.any_between(ns - NS_PER_MINUTE, ns)
    assert not SeenTimestamps().any_between(ns, ns + NS_PER_MINUTE)


# ---------------------------------------------------------------------------------------------
# Recording, on both databases


def new_ingest(db, start: datetime, end: datetime) -> int:
    return start_ingest_run(db, symbol=SYMBOL, start_ts=start, end_ts=end, engine_run_id=None, source="dbn_file",
                            databento_symbol="NQ.v.0")


def test_recorded_coverage_and_the_union_of_successful_ingests(db):
    start, end = utc("2024-06-03T12:00"), utc("2024-06-05T13:00")
    good = new_ingest(db, start, end)
    seen = accepted(utc("2024-06-03T12:00"), utc("2024-06-05T12:00"))
    IngestCoverage(start, end).record(db, good, SYMBOL, "NQ", seen, [Path("a.dbn.zst")])
    finish_ingest_run(db, good, status="success")
    assert coverage_db.covered_intervals(db, SYMBOL, start, end) == [
        (start, utc("2024-06-03T22:00")), (utc("2024-06-04T21:00"), end)]
    # Coverage of an ingest that did not end successfully never counts.
    other = new_ingest(db, start, end)
    IngestCoverage(start, end).record(db, other, SYMBOL, "NQ", accepted(utc("2024-06-04T02:00")), [])
    finish_ingest_run(db, other, status="failed", error="interrupted after its coverage was written")
    assert len(coverage_db.covered_intervals(db, SYMBOL, start, end)) == 2
    assert coverage_db.covered_intervals(db, "GLBX.MDP3:ES", start, end) == []


def test_no_bars_over_open_market_is_refused_and_a_closed_window_is_fine(db):
    start, end = utc("2024-06-03T12:00"), utc("2024-06-04T00:00")
    ingest_id = new_ingest(db, start, end)
    paths = [Path(f"/data/es_{i}.dbn.zst") for i in range(5)]
    with pytest.raises(EngineError) as raised:
        IngestCoverage(start, end).record(db, ingest_id, SYMBOL, "NQ", SeenTimestamps(), paths)
    assert raised.value.problem == (
        "no NQ bars in /data/es_0.dbn.zst, /data/es_1.dbn.zst, /data/es_2.dbn.zst and 2 more for "
        "[2024-06-03T12:00Z, 2024-06-04T00:00Z): wrong file, symbol or roll rule?")
    assert "symbol, roll_rule and rank" in raised.value.fix and raised.value.exit_code == 2
    weekend = (utc("2024-06-08T00:00"), utc("2024-06-09T00:00"))
    weekend_id = new_ingest(db, *weekend)
    IngestCoverage(*weekend).record(db, weekend_id, SYMBOL, "NQ", SeenTimestamps(), paths)
    finish_ingest_run(db, weekend_id, status="success")
    assert coverage_db.covered_intervals(db, SYMBOL, start, utc("2024-06-10")) == [weekend]


# ---------------------------------------------------------------------------------------------
# End to end: `python -m engine`

NQ_ROWS_AT = "2024-06-03T12:00"  # a Monday, inside Monday's session


def file_of(tmp_path: Path, name: str, *starts: tuple[str, int], symbol: str = "NQ.v.0") -> Path:
    """A real DBN file with `count` consecutive bars from each (start, count)."""
    parts = [bars(count, start_ns=datetime_to_ns(utc(start)), price=18000.0 + 50 * i)
             for i, (start, count) in enumerate(starts)]
    return write_dbn(tmp_path / name, np.concatenate(parts), symbol=symbol)


def run_engine(engine_cli, db_url, stages: str, start: str, end: str, *extra: str):
    return engine_cli(f"db.url={db_url}", "symbol=NQ", f"stages=[{stages}]", f"window.start={start}:00Z",
                      f"window.end={end}:00Z", *extra)


def ingest(engine_cli, db_url, path: Path, start: str, end: str):
    return run_engine(engine_cli, db_url, "ingest", start, end, "source=dbn_file", f"source.paths=[{path}]")


def rows(url: str, sql: str) -> list[dict]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        out = [dict(r) for r in conn.execute(sa.text(sql)).mappings()]
    engine.dispose()
    return out


def stored_coverage(url: str) -> list[tuple[datetime, datetime]]:
    engine = sa.create_engine(url)
    try:
        return coverage_db.covered_intervals(engine, SYMBOL, utc("2000-01-01"), utc("2100-01-01"))
    finally:
        engine.dispose()


def event_count(url: str) -> int:
    return rows(url, "SELECT count(*) AS n FROM triangle_events_v1")[0]["n"]


@pytest.mark.slow
def test_an_ingest_that_lands_no_bars_fails_and_detect_refuses(engine_cli, db_url, tmp_path):
    es_file = file_of(tmp_path, "es.dbn.zst", (NQ_ROWS_AT, 120), symbol="ES.v.0")
    run = ingest(engine_cli, db_url, es_file, "2024-06-03T12:00", "2024-06-04T00:00")
    assert run.returncode == 2, run.output
    assert run.result["error"].startswith(
        f"no NQ bars in {es_file} for [2024-06-03T12:00Z, 2024-06-04T00:00Z): wrong file, symbol or roll rule?")
    assert "Fix:" in run.output and "Traceback" not in run.output
    [log] = rows(db_url, "SELECT status, error, bars_received, bars_inserted FROM clean_ingest_runs")
    assert log["status"] == "failed" and log["error"].startswith("no NQ bars in")
    assert rows(db_url, "SELECT count(*) AS n FROM clean_coverage")[0]["n"] == 0

    detect = run_engine(engine_cli, db_url, "detect", "2024-06-03T12:00", "2024-06-04T00:00")
    assert detect.returncode == 2, detect.output
    assert detect.result["error"] == f"{CONTRACT_ERROR}\n  Missing: 2024-06-03T12:00Z → 2024-06-04T00:00Z"
    assert event_count(db_url) == 0

    # A weekend window with no bars at all is a fine ingest: closed time is covered.
    weekend = ingest(engine_cli, db_url, es_file, "2024-06-08T00:00", "2024-06-09T12:00")
    assert weekend.returncode == 0, weekend.output
    assert rows(db_url, "SELECT status FROM clean_ingest_runs ORDER BY id")[-1]["status"] == "success"
    assert stored_coverage(db_url) == [(utc("2024-06-08T00:00"), utc("2024-06-09T12:00"))]


@pytest.mark.slow
def test_a_session_without_bars_inside_an_ingest_is_refused_until_it_is_ingested(engine_cli, db_url, tmp_path):
    both_sides = file_of(tmp_path, "mon_wed.dbn.zst", (NQ_ROWS_AT, 60), ("2024-06-05T12:00", 60))
    run = ingest(engine_cli, db_url, both_sides, "2024-06-03T12:00", "2024-06-05T13:00")
    assert run.returncode == 0, run.output
    assert run.result["stages"]["ingest"]["bars_inserted"] == 120

    window = ("2024-06-03T12:00", "2024-06-05T13:00")
    refused = run_engine(engine_cli, db_url, "detect", *window)
    assert refused.returncode == 2, refused.output
    assert refused.result["error"] == f"{CONTRACT_ERROR}\n  Missing: 2024-06-03T22:00Z → 2024-06-04T21:00Z"
    assert event_count(db_url) == 0

    tuesday = file_of(tmp_path, "tue.dbn.zst", ("2024-06-04T02:00", 90))
    assert ingest(engine_cli, db_url, tuesday, "2024-06-03T22:00", "2024-06-04T21:00").returncode == 0
    done = run_engine(engine_cli, db_url, "detect", *window)
    assert done.returncode == 0, done.output
    assert done.result["stages"]["detect"]["bars_in_window"] == 210 and event_count(db_url) > 0


@pytest.mark.slow
def test_warm_up_across_an_uncovered_gap_is_refused_and_heals_once_ingested(engine_cli, db_url, tmp_path):
    friday = file_of(tmp_path, "fri.dbn.zst", ("2024-05-31T19:00", 60))
    assert ingest(engine_cli, db_url, friday, "2024-05-31T19:00", "2024-05-31T20:00").returncode == 0
    # Alone, Friday's hour is the whole stored history: no older or newer bars, detection proceeds and says so.
    edge = run_engine(engine_cli, db_url, "detect", "2024-05-31T19:00", "2024-05-31T20:00")
    assert edge.returncode == 0, edge.output
    log = (edge.run_dir / "engine.log").read_text()
    assert "no bars before 2024-05-31T19:00Z: the warm-up stops at the edge of the stored history" in log
    assert "no bars from 2024-05-31T20:00Z: the look-ahead stops at the edge of the stored history" in log
    friday_events = rows(db_url, "SELECT ts, direction, price FROM triangle_events_v1 ORDER BY ts, direction")

    monday = file_of(tmp_path, "mon.dbn.zst", (NQ_ROWS_AT, 60))
    assert ingest(engine_cli, db_url, monday, "2024-06-03T12:00", "2024-06-03T13:00").returncode == 0
    # Monday's warm-up would read Friday's bars across Friday 20:00-21:00 and Monday's session up to 12:00,
    # which no ingest covered (the weekend between is closed, but the gap holds open market time).
    refused = run_engine(engine_cli, db_url, "detect", "2024-06-03T12:00", "2024-06-03T13:00")
    assert refused.returncode == 2, refused.output
    assert refused.result["error"] == (
        f"{CONTRACT_ERROR}\n  Missing: 2024-05-31T20:00Z → 2024-06-03T12:00Z\n"
        "  (the warm-up bars before 2024-06-03T12:00Z reach across it to 2024-05-31T19:51Z)\n"
        "  Fix: ingest the missing range (stages=[ingest] window.start=2024-05-31T20:00Z "
        "window.end=2024-06-03T12:00Z), then run detect again")
    assert rows(db_url, "SELECT ts, direction, price FROM triangle_events_v1 ORDER BY ts, direction") == \
        friday_events
    # Friday's window now has newer bars: its look-ahead reaches across the same gap.
    again = run_engine(engine_cli, db_url, "detect", "2024-05-31T19:00", "2024-05-31T20:00")
    assert again.returncode == 2 and "the look-ahead bars from 2024-05-31T20:00Z" in again.result["error"]

    gap = file_of(tmp_path, "gap.dbn.zst", ("2024-05-31T20:00", 60), ("2024-06-02T22:00", 840))
    assert ingest(engine_cli, db_url, gap, "2024-05-31T20:00", "2024-06-03T12:00").returncode == 0
    healed = run_engine(engine_cli, db_url, "detect", "2024-06-03T12:00", "2024-06-03T13:00")
    assert healed.returncode == 0, healed.output
    assert healed.result["stages"]["detect"]["warmup_bars"] > 0


# ---------------------------------------------------------------------------------------------
# detect's warm-up under window.warmup_start (in process, both databases)


def test_warmup_start_before_an_uncovered_gap_is_refused_after_it_proceeds(db, tmp_path):
    from test_detect_stage import SYMBOL as DETECT_SYMBOL
    from test_detect_stage import insert_bars, make_ctx, mark_clean, random_walk_bars

    from engine.stages import detect

    assert DETECT_SYMBOL == SYMBOL
    old = random_walk_bars(60, seed=1, start=utc(NQ_ROWS_AT) - 3 * H)  # 09:00-10:00
    new = random_walk_bars(60, seed=2, start=utc(NQ_ROWS_AT))  # 12:00-13:00
    insert_bars(db, old + new)
    mark_clean(db, utc("2024-06-03T09:00"), utc("2024-06-03T10:30"))
    mark_clean(db, utc("2024-06-03T11:00"), utc("2024-06-03T16:00"))
    window = (utc(NQ_ROWS_AT), utc("2024-06-03T16:00"))
    with pytest.raises(EngineError) as raised:
        detect.run(make_ctx(db, tmp_path / "a", *window, warmup_start=utc("2024-06-03T09:30")))
    assert str(raised.value).startswith(f"{CONTRACT_ERROR}\n  Missing: 2024-06-03T10:30Z → 2024-06-03T11:00Z\n"
                                        "  (the warm-up bars before 2024-06-03T12:00Z reach across it to "
                                        "2024-06-03T09:30Z)")
    assert event_count_of(db) == 0
    summary = detect.run(make_ctx(db, tmp_path / "b", *window, warmup_start=utc("2024-06-03T10:40")))
    assert summary.warmup_bars == 0 and summary.bars_in_window == 60


def event_count_of(db) -> int:
    with db.connect() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM triangle_events_v1")).scalar_one()
