"""The read API (`from engine import read_bars, read_events`, engine/read.py) on SQLite and PostgreSQL (`db`).

Expectations are plain SQL selects of the same tables; bars are written as the other stage tests write them, events
by the real detect stage.
"""

from __future__ import annotations

import warnings
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
import sqlalchemy as sa
from test_adjust import AB, BC
from test_detect_stage import MINUTE, SYMBOL, T0, insert_bars, make_ctx, mark_clean, random_walk_bars

from engine import read_bars, read_events
from engine.adjust import read_adjusted
from engine.db.rolls import Roll, record_rolls
from engine.db.schema import CLEAN_BARS, LEGACY_BARS, clean_bars, legacy_bars, triangle_events
from engine.db.types import datetime_to_ns
from engine.errors import EngineError
from engine.stages import detect

DAY = timedelta(days=1)
# Monday 2025-12-01 00:00Z on: three days of bars with holes, covered by one clean ingest of [T0 - 1h, T0 + 4d).
BARS = random_walk_bars(3000)
COVERED = (T0 - timedelta(hours=1), T0 + 4 * DAY)
FIELDS = ("open", "high", "low", "close", "volume")


def sql_bars(db, start: datetime, end: datetime, table=clean_bars) -> list[tuple]:
    """The table's rows as (ts ns, open, high, low, close, volume), by a plain select."""
    c = table.c
    query = (sa.select(c.ts, c.open, c.high, c.low, c.close, c.volume)
             .where(c.symbol == SYMBOL, c.ts >= start, c.ts < end).order_by(c.ts))
    with db.connect() as conn:
        return [(datetime_to_ns(r.ts), *r[1:]) for r in conn.execute(query)]


def as_rows(out) -> list[tuple]:
    """Any output kind of read_bars as (ts ns, open, high, low, close, volume) tuples."""
    if isinstance(out, pd.DataFrame):
        return [(int(ts.value), *row) for ts, *row in out.itertuples()]
    if isinstance(out, pl.DataFrame):
        out = out.to_arrow()
    if isinstance(out, pa.Table):
        columns = [out.column("ts").cast(pa.int64()).to_pylist(), *(out.column(f).to_pylist() for f in FIELDS)]
        return list(zip(*columns, strict=True))
    return [(int(row[0].astype("M8[ns]").astype(np.int64)), *row.tolist()[1:]) for row in out]


@pytest.fixture
def stored(db):
    insert_bars(db, BARS)
    mark_clean(db, *COVERED)
    return db


@pytest.mark.parametrize("kind", ["pandas", "polars", "pyarrow", "numpy"])
def test_read_bars_equals_the_table_rows_for_every_output_kind(stored, kind):
    start, end = T0 + timedelta(hours=3), T0 + 2 * DAY + timedelta(minutes=17)
    expected = sql_bars(stored, start, end)
    assert len(expected) > 1000

    out = read_bars("NQ", start, end, db=stored, as_=kind)

    assert as_rows(out) == expected
    if kind == "pandas":
        assert isinstance(out.index, pd.DatetimeIndex) and out.index.name == "ts" and str(out.index.tz) == "UTC"
        assert out.index.dtype == "datetime64[ns, UTC]" and out.index.is_monotonic_increasing
        assert list(out.columns) == list(FIELDS) and out["volume"].dtype == np.int64
        assert out.attrs["symbol"] == SYMBOL and out.attrs["source_table"] == CLEAN_BARS
    elif kind == "polars":
        assert out.columns == ["ts", *FIELDS] and out.schema["ts"] == pl.Datetime("ns", "UTC")
    elif kind == "pyarrow":
        assert out.column_names == ["ts", *FIELDS] and out.schema.field("ts").type == pa.timestamp("ns", tz="UTC")
    else:
        assert out.dtype.names == ("ts", *FIELDS) and out.dtype["ts"] == np.dtype("M8[ns]")


def test_bounds_are_utc_end_exclusive_in_every_spelling(stored):
    first = BARS[0]["ts"]
    at = [b["ts"] for b in BARS[:3]]
    one_day = sql_bars(stored, T0, T0 + DAY)
    assert as_rows(read_bars("NQ", date(2025, 12, 1), date(2025, 12, 2), db=stored)) == one_day
    assert as_rows(read_bars("NQ", "2025-12-01", "2025-12-02T00:00:00Z", db=stored)) == one_day
    assert as_rows(read_bars("NQ", datetime(2025, 12, 1), pd.Timestamp("2025-12-01 19:00", tz="America/New_York"),
                             db=stored)) == one_day  # naive = UTC; 19:00 New York = midnight UTC
    assert as_rows(read_bars("NQ", np.datetime64("2025-12-01"), np.datetime64("2025-12-02"), db=stored)) == one_day
    # end is exclusive: [first, second bar) is the first bar alone; a ns after a bar's minute excludes it as start.
    assert [r[0] for r in as_rows(read_bars("NQ", first, at[1], db=stored))] == [datetime_to_ns(first)]
    after_first = pd.Timestamp(first) + pd.Timedelta(1, "ns")
    assert as_rows(read_bars("NQ", after_first, at[2] + timedelta(seconds=1), db=stored))[0][0] == datetime_to_ns(
        at[1])


@pytest.mark.parametrize("spelling", ["NQ", "nq", " GLBX.MDP3:NQ ", "glbx.mdp3:nq"])
def test_symbol_spellings_read_the_same_series(stored, spelling):
    expected = sql_bars(stored, T0, T0 + DAY)
    assert as_rows(read_bars(spelling, T0, T0 + DAY, db=stored, as_="numpy")) == expected


def test_a_url_string_reads_the_same_as_the_engine(stored):
    url = stored.url.render_as_string(hide_password=False)
    assert as_rows(read_bars("NQ", T0, T0 + 2 * DAY, db=url)) == sql_bars(stored, T0, T0 + 2 * DAY)


def test_adjusted_reads_equal_read_adjusted(db):
    insert_bars(db, BARS)
    mark_clean(db, *COVERED)
    shift = timedelta(days=1)
    rolls = [Roll(**{**vars(r), "roll_ts": r.roll_ts + shift, "price_ts": r.price_ts + shift}) for r in (AB, BC)]
    with db.begin() as conn:
        record_rolls(conn, SYMBOL, T0, T0 + 4 * DAY, rolls, None)
    start, end = T0, T0 + 3 * DAY
    for how in ("difference", "ratio"):
        expected = read_adjusted(db, CLEAN_BARS, SYMBOL, start, end, how).bars
        raw = sql_bars(db, start, end)
        frame = read_bars("NQ", start, end, db=db, adjust=how)
        assert frame.attrs["adjustment"] == how and frame.attrs["anchor"] == "NQM6"
        assert frame.index.asi8.tolist() == expected["ts"].tolist() == [r[0] for r in raw]
        for name in FIELDS:
            assert frame[name].tolist() == expected[name].tolist()
        assert as_rows(read_bars("NQ", start, end, db=db, adjust=how, as_="pyarrow")) == as_rows(frame)
        # The adjustment moved the prices before the rolls (so the comparison above is not of raw bars).
        assert frame["close"].iloc[0] != raw[0][4] and frame["close"].iloc[-1] == raw[-1][4]


def test_a_roll_that_cannot_be_adjusted_is_named_in_a_warning(stored):
    unpriced = Roll(**{**vars(AB), "roll_ts": T0 + DAY, "price_ts": None})
    with stored.begin() as conn:
        record_rolls(conn, SYMBOL, T0, T0 + 4 * DAY, [unpriced], None)
    with pytest.warns(UserWarning, match=r"1 roll\(s\) could not be adjusted.*NQZ5 → NQH6 at 2025-12-02T00:00Z"):
        frame = read_bars("NQ", T0, T0 + 2 * DAY, db=stored, adjust="difference")
    assert as_rows(frame) == sql_bars(stored, T0, T0 + 2 * DAY)  # nothing adjusted, the raw jump kept
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_bars("NQ", T0, T0 + 2 * DAY, db=stored)  # adjust=none: nothing to warn about


# ---------------------------------------------------------------------------------------------
# The clean-only contract


def test_an_uncovered_range_is_refused_with_the_ranges_and_the_fix(db):
    insert_bars(db, BARS)
    # Tuesday 00:00-06:00Z (open market) is not covered; neither is Tuesday's daily break 22:00-23:00Z (closed).
    tuesday = T0 + DAY
    mark_clean(db, *COVERED, covered=[(COVERED[0], tuesday), (tuesday + timedelta(hours=6), tuesday + timedelta(
        hours=22)), (tuesday + timedelta(hours=23), COVERED[1])])
    with pytest.raises(EngineError) as refused:
        read_bars("NQ", T0, T0 + 3 * DAY, db=db)
    assert refused.value.problem == (
        "read_bars GLBX.MDP3:NQ [2025-12-01T00:00Z, 2025-12-04T00:00Z): open-market time that no successful clean "
        "ingest covers (policy='clean_only'). Uncovered: 2025-12-02T00:00Z → 2025-12-02T06:00Z")
    assert "stages=[registry,ingest] symbol=NQ window.start=2025-12-02T00:00Z window.end=2025-12-02T06:00Z" in (
        refused.value.fix)
    assert "policy='allow_gaps'" in refused.value.fix and "policy='allow_legacy'" in refused.value.fix
    # The closed daily break alone is no gap; the opt-out reads what is there, hole included.
    break_only = (tuesday + timedelta(hours=21), tuesday + timedelta(hours=23, minutes=30))
    assert as_rows(read_bars("NQ", *break_only, db=db)) == sql_bars(db, *break_only)
    assert as_rows(read_bars("NQ", T0, T0 + 3 * DAY, db=db, policy="allow_gaps")) == sql_bars(db, T0, T0 + 3 * DAY)


def test_a_failed_ingest_covers_nothing_and_a_symbol_never_ingested_is_refused(db):
    insert_bars(db, BARS)
    mark_clean(db, *COVERED, status="failed")
    with pytest.raises(EngineError, match="Uncovered: 2025-12-01T00:00Z → 2025-12-03T00:00Z\n"):
        read_bars("NQ", T0, T0 + 2 * DAY, db=db)
    with pytest.raises(EngineError, match="read_bars GLBX.MDP3:ES .*Uncovered: 2025-12-01T00:00Z"):
        read_bars("ES", T0, T0 + DAY, db=db)


def test_allow_legacy_reads_the_legacy_table(db):
    legacy = [{**bar, "close": bar["close"] + 1000} for bar in BARS[:500]]
    insert_bars(db, legacy, table=legacy_bars)
    frame = read_bars("NQ", T0, T0 + 2 * DAY, db=db, policy="allow_legacy")
    assert as_rows(frame) == sql_bars(db, T0, T0 + 2 * DAY, table=legacy_bars) and len(frame) == 500
    assert frame.attrs["source_table"] == LEGACY_BARS


# ---------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(("kwargs", "named"), [
    ({"as_": "xls"}, "as_='xls' is not an output kind"),
    ({"end": T0}, "end=2025-12-01T00:00Z is not after start=2025-12-01T00:00Z"),
    ({"end": T0 - MINUTE}, "end=2025-11-30T23:59Z is not after start"),
    ({"start": "yesterday"}, "start='yesterday' is not a date or time"),
    ({"start": 20251201}, "start=20251201 is not a date or time"),
    ({"end": pd.NaT}, "end=NaT is not a time"),
    ({"adjust": "panama"}, "adjust='panama' is not an adjustment"),
    ({"policy": "yolo"}, "policy='yolo' is not a read policy"),
    ({"symbol": "N Q"}, "symbol='N Q' is not a symbol"),
    ({"db": 42}, "db=42 is not a database"),
    ({"db": "mysql://x/y"}, "db.url backend 'mysql' is not supported"),
])
def test_bad_arguments_are_engine_errors_naming_the_argument(stored, kwargs, named):
    args = {"symbol": "NQ", "start": T0, "end": T0 + DAY, "db": stored, **kwargs}
    with pytest.raises(EngineError) as refused:
        read_bars(args.pop("symbol"), args.pop("start"), args.pop("end"), **args)
    assert named in refused.value.problem and refused.value.fix


def test_a_missing_file_or_a_database_without_engine_tables_is_named(tmp_path):
    missing = tmp_path / "nowhere.sqlite"
    with pytest.raises(EngineError, match="no SQLite database at") as refused:
        read_bars("NQ", T0, T0 + DAY, db=f"sqlite:///{missing}")
    assert not missing.exists() and "ingest" in refused.value.fix
    empty = tmp_path / "empty.sqlite"
    sa.create_engine(f"sqlite:///{empty}").connect().close()
    with pytest.raises(EngineError, match=f"beside it: {empty}") as refused:
        read_bars("NQ", T0, T0 + DAY, db=f"sqlite:///{missing}")
    assert f"db='sqlite:///{empty}'" in refused.value.fix
    with pytest.raises(EngineError, match="holds no engine tables"):
        read_bars("NQ", T0, T0 + DAY, db=f"sqlite:///{empty}")


def test_a_demo_database_is_named_in_a_warning(stored):
    from engine.db.ingest_runs import claim_data_kind

    claim_data_kind(stored, "demo", None)
    with pytest.warns(UserWarning, match="holds demo data") as caught:
        read_bars("NQ", T0, T0 + DAY, db=stored)
    assert caught[0].filename == __file__  # the warning points at the caller's line


def test_db_none_reads_the_database_of_conf_local(tmp_path, monkeypatch):
    from engine.db.connect import create_db_engine, upgrade

    path = tmp_path / "desk" / "market.sqlite"
    db = create_db_engine(f"sqlite:///{path}")
    upgrade(db)
    insert_bars(db, BARS)
    mark_clean(db, *COVERED)
    work = tmp_path / "work"
    (work / "conf" / "local").mkdir(parents=True)
    (work / "conf" / "local" / "default.yaml").write_text(f"db:\n  url: sqlite:///{path}\n")
    monkeypatch.chdir(work)
    monkeypatch.delenv("ENGINE_PG_URL", raising=False)
    try:
        assert as_rows(read_bars("NQ", T0, T0 + DAY)) == sql_bars(db, T0, T0 + DAY)
        assert len(read_events("NQ", T0, T0 + DAY)) == 0
    finally:
        db.dispose()


# ---------------------------------------------------------------------------------------------
# Events


EVENT_COLUMNS = ("ts", "direction", "price", "confirm_ts", "detector", "detector_params", "logic_version",
                 "adjustment", "source_table", "run_id", "n")


def sql_events(db, start: datetime, end: datetime, **equal) -> list[tuple]:
    c = triangle_events.c
    query = (sa.select(*(c[name] for name in EVENT_COLUMNS))
             .where(c.symbol == SYMBOL, c.ts >= start, c.ts < end, *(c[k] == v for k, v in equal.items()))
             .order_by(c.ts, c.direction, c.logic_version))
    with db.connect() as conn:
        return [tuple(r) for r in conn.execute(query)]


def event_tuples(out) -> list[tuple]:
    """Any output kind of read_events as tuples with datetimes, like sql_events."""
    if isinstance(out, pd.DataFrame):
        out = pa.Table.from_pandas(out, preserve_index=False)
    if isinstance(out, pl.DataFrame):
        out = out.to_arrow()
    if isinstance(out, pa.Table):
        columns = {name: out.column(name).to_pylist() for name in EVENT_COLUMNS}
        for name in ("ts", "confirm_ts"):
            columns[name] = [None if v is None else datetime.fromtimestamp(int(v) / 1e9, UTC) for v in
                             out.column(name).cast(pa.int64()).to_pylist()]
        return list(zip(*columns.values(), strict=True))
    rows = []
    for row in out.tolist():
        ts, confirm = (None if np.isnat(np.datetime64(v, "ns")) else datetime.fromtimestamp(int(v) / 1e9, UTC)
                       for v in (row[0], row[3]))
        rows.append((ts, row[1], row[2], confirm, *row[4:]))
    return rows


@pytest.fixture
def detected(stored, tmp_path):
    """Events of two logic versions over the first two days (the second only over day 2) and one adjusted set."""
    end = T0 + 2 * DAY
    detect.run(make_ctx(stored, tmp_path / "a", T0, end, logic_version="v1"))
    detect.run(make_ctx(stored, tmp_path / "b", T0 + DAY, end, logic_version="v2"))
    detect.run(make_ctx(stored, tmp_path / "c", T0, end, logic_version="v1", adjust="difference"))
    return stored


@pytest.mark.parametrize("kind", ["pandas", "polars", "pyarrow", "numpy"])
def test_read_events_equals_the_table_rows_for_every_output_kind(detected, kind):
    start, end = T0 + timedelta(hours=5), T0 + 2 * DAY
    expected = sql_events(detected, start, end, adjustment="none")
    versions = {row[6] for row in expected}
    assert versions == {"v1", "v2"} and all(row[3] >= row[0] + 5 * MINUTE for row in expected)  # n bars later

    out = read_events("GLBX.MDP3:NQ", start, end, db=detected, as_=kind)

    assert event_tuples(out) == expected
    if kind == "pandas":
        assert out["ts"].dtype == "datetime64[ns, UTC]" and out["confirm_ts"].dtype == "datetime64[ns, UTC]"
        assert list(out.columns) == list(EVENT_COLUMNS)


def test_read_events_filters(detected):
    start, end = T0, T0 + 2 * DAY
    v2 = read_events("NQ", start, end, db=detected, logic_version="v2")
    assert event_tuples(v2) == sql_events(detected, start, end, logic_version="v2", adjustment="none")
    assert v2["ts"].min() >= pd.Timestamp(T0 + DAY)
    adjusted = read_events("NQ", start, end, db=detected, adjust="difference")
    assert event_tuples(adjusted) == sql_events(detected, start, end, adjustment="difference") != []
    every = read_events("NQ", start, end, db=detected, adjust=None)
    assert len(every) == len(sql_events(detected, start, end)) == len(adjusted) + len(
        read_events("NQ", start, end, db=detected))
    assert set(read_events("NQ", start, end, db=detected, detector="williams_fractals")["detector"]) == {
        "williams_fractals"}
    with pytest.raises(EngineError, match="detector='william_fractals': no event of GLBX.MDP3:NQ has it") as typo:
        read_events("NQ", start, end, db=detected, detector="william_fractals")
    assert typo.value.fix == "use one of 'williams_fractals', or detector=None for all"
    with pytest.raises(EngineError, match="logic_version='v3'") as typo:
        read_events("NQ", start, end, db=detected, logic_version="v3")
    assert typo.value.fix == "use one of 'v1', 'v2', or logic_version=None for all"
    assert len(read_events("NQ", T0 + 3 * DAY, T0 + 4 * DAY, db=detected, logic_version="v1")) == 0  # known, none
    assert len(read_events("NQ", start, end, db=detected, policy="allow_legacy")) == len(read_events(
        "NQ", start, end, db=detected))  # no legacy events stored here
    with pytest.raises(EngineError, match="policy='allow_gaps' is not an events policy"):
        read_events("NQ", start, end, db=detected, policy="allow_gaps")
    with pytest.raises(EngineError, match="as_='csv' is not an output kind"):
        read_events("NQ", start, end, db=detected, as_="csv")


def test_an_in_memory_sqlite_database_is_read_on_its_own_connection():
    """No second connection sees an in-memory database, so bars_read reads it through the engine's own."""
    from engine.db.connect import create_db_engine, upgrade

    db = create_db_engine("sqlite://")
    try:
        upgrade(db)
        insert_bars(db, BARS[:400])
        mark_clean(db, *COVERED)
        assert as_rows(read_bars("NQ", T0, T0 + DAY, db=db, as_="numpy")) == sql_bars(db, T0, T0 + DAY) != []
    finally:
        db.dispose()


def test_sqlite_timestamps_in_another_spelling_are_converted_by_sqlite(sqlite_url):
    """Rows another tool wrote with ISO 'T…Z' timestamps (not the engine's fixed-width text) still read exactly."""
    from engine.db.connect import create_db_engine, upgrade

    db = create_db_engine(sqlite_url)
    try:
        upgrade(db)
        insert_bars(db, BARS[:50], table=legacy_bars)
        with db.begin() as conn:
            conn.exec_driver_sql("INSERT INTO market_bars_ohlcv_1m (symbol, ts, open, high, low, close, volume) "
                                 "VALUES ('GLBX.MDP3:NQ', '2025-11-30T23:59:00Z', 1.5, 2.5, 0.5, 1.25, 3)")
        out = read_bars("NQ", T0 - MINUTE, T0 + DAY, db=db, policy="allow_legacy", as_="numpy")
        assert as_rows(out)[0] == (datetime_to_ns(T0 - MINUTE), 1.5, 2.5, 0.5, 1.25, 3)
        assert as_rows(out)[1:] == sql_bars(db, T0, T0 + DAY, table=legacy_bars) and len(out) == 51
    finally:
        db.dispose()
