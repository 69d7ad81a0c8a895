"""engine.db.bars: exact-count idempotent upserts, batch atomicity, reads, quarantine (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime

import numpy as np
import pytest
import sqlalchemy as sa

from engine.bars import NS_PER_MINUTE, PRICE_SCALE, RAW_BAR_DTYPE, REASONS
from engine.db.bars import BAR_READ_DTYPE, CleanBarWriter, WriteCounts, read_bars
from engine.db.bars_postgres import PostgresBars
from engine.db.bars_sqlite import SqliteBars
from engine.db.quarantine import write_quarantine
from engine.db.schema import CLEAN_BARS, LEGACY_BARS, clean_bars, clean_ingest_quarantine, clean_ingest_runs
from engine.db.types import ns_to_datetime, sqlite_ts_text

T0 = 1_710_028_800 * 1_000_000_000  # 2024-03-10 00:00:00 UTC
TICK = 250_000_000
SYMBOL = "ES"


def make_bars(n: int, first_minute: int = 0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.zeros(n, dtype=RAW_BAR_DTYPE)
    out["ts"] = T0 + (first_minute + np.arange(n, dtype=np.int64)) * NS_PER_MINUTE
    out["instrument_id"] = 4242
    o = (20_000 + np.cumsum(rng.integers(-3, 4, n))) * TICK
    c = o + rng.integers(-3, 4, n) * TICK
    out["open"], out["close"] = o, c
    out["high"] = np.maximum(o, c) + rng.integers(0, 3, n) * TICK
    out["low"] = np.minimum(o, c) - rng.integers(0, 3, n) * TICK
    # Prices that are not on a tick (full 1e-9 resolution) must round-trip too.
    out["close"][::7] += rng.integers(1, 1000, len(out[::7]))
    out["high"] = np.maximum(out["high"], out["close"])
    out["volume"] = rng.integers(0, 10_000, n)
    return out


def new_run(engine, symbol: str = SYMBOL) -> int:
    now = datetime.now(UTC)
    with engine.begin() as conn:
        result = conn.execute(
            sa.insert(clean_ingest_runs).values(
                symbol=symbol, start_ts=now, end_ts=now, bars_received=0, bars_inserted=0, bars_updated=0,
                bars_skipped=0, batch_commits=0, retries=0, run_at=now, status="running",
            )
        )
        return int(result.inserted_primary_key[0])


def write_all(engine, data, run_id, batch_size=50_000, symbol=SYMBOL, chunks=1) -> WriteCounts:
    writer = CleanBarWriter(engine, symbol, run_id, batch_size=batch_size)
    for part in np.array_split(data, chunks):
        writer.write(part)
    return writer.flush()


def table_rows(engine, symbol: str = SYMBOL) -> dict[int, tuple]:
    """{ts_ns: (open, high, low, close, volume, instrument_id, ingest_run_id)} read through SQLAlchemy."""
    c = clean_bars.c
    with engine.connect() as conn:
        result = conn.execute(
            sa.select(c.ts, c.open, c.high, c.low, c.close, c.volume, c.instrument_id, c.ingest_run_id)
            .where(c.symbol == symbol)
        ).all()
    return {
        int(row.ts.timestamp()) * 1_000_000_000: (row.open, row.high, row.low, row.close, row.volume,
                                                  row.instrument_id, row.ingest_run_id)
        for row in result
    }


def expected_row(bar, run_id):
    return (*(int(bar[p]) / PRICE_SCALE for p in ("open", "high", "low", "close")), int(bar["volume"]),
            int(bar["instrument_id"]), run_id)


def count_rows(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(clean_bars)).scalar_one()


# ------------------------------------------------------------------------------------------------
# Counts and idempotency


def test_empty_table_inserts_everything_in_batches(db):
    data = make_bars(1_000)
    run = new_run(db)
    counts = write_all(db, data, run, batch_size=300, chunks=7)
    assert counts == WriteCounts(inserted=1_000, updated=0, unchanged=0, batch_commits=4)
    stored = table_rows(db)
    assert len(stored) == 1_000
    for bar in data[[0, 1, 7, 500, 999]]:
        assert stored[int(bar["ts"])] == expected_row(bar, run)


def test_rerun_of_the_same_bars_changes_nothing(db):
    data = make_bars(800)
    first, second = new_run(db), new_run(db)
    write_all(db, data, first, batch_size=250)
    counts = write_all(db, data, second, batch_size=250)
    assert counts == WriteCounts(inserted=0, updated=0, unchanged=800, batch_commits=4)
    stored = table_rows(db)
    assert len(stored) == 800
    assert {row[-1] for row in stored.values()} == {first}  # unchanged rows are not rewritten


@pytest.mark.parametrize("field", ["close", "volume", "instrument_id"])
def test_one_changed_bar_is_updated_and_others_keep_their_run(db, field):
    data = make_bars(500)
    first, second = new_run(db), new_run(db)
    write_all(db, data, first, batch_size=200)
    changed = data.copy()
    target = 321
    if field == "close":
        changed["close"][target] = changed["low"][target]  # still a consistent bar
    else:
        changed[field][target] += 1
    assert changed[target].tobytes() != data[target].tobytes()
    counts = write_all(db, changed, second, batch_size=200)
    assert counts == WriteCounts(inserted=0, updated=1, unchanged=499, batch_commits=3)
    stored = table_rows(db)
    ts = int(data["ts"][target])
    assert stored[ts] == expected_row(changed[target], second)
    assert all(row[-1] == first for key, row in stored.items() if key != ts)


def test_mixed_new_changed_unchanged_across_batches(db):
    base = make_bars(600, seed=1)
    first, second = new_run(db), new_run(db)
    write_all(db, base[:400], first, batch_size=1_000)
    # Second ingest: minutes 200..599 of the same series plus 100 brand-new minutes beyond them.
    incoming = make_bars(500, first_minute=200, seed=1)
    incoming[:400] = base[200:600]
    incoming[400:] = make_bars(100, first_minute=600, seed=2)
    changed_idx = np.array([0, 5, 150, 199])  # minutes 200, 205, 350, 399 (already stored)
    incoming["volume"][changed_idx] += 7
    # minutes 400..599 were never stored: new; minutes 200..399 stored: changed or unchanged
    counts = write_all(db, incoming, second, batch_size=120, chunks=9)
    assert counts == WriteCounts(inserted=300, updated=4, unchanged=196, batch_commits=5)
    assert counts.inserted + counts.updated + counts.unchanged == len(incoming)
    stored = table_rows(db)
    assert len(stored) == 700
    runs = {ts: row[-1] for ts, row in stored.items()}
    minute = {int(b["ts"]): i for i, b in enumerate(incoming)}
    for ts, run_id in runs.items():
        if ts not in minute:
            assert run_id == first  # minutes 0..199 untouched
        elif minute[ts] in changed_idx or minute[ts] >= 200:
            assert run_id == second
            assert stored[ts] == expected_row(incoming[minute[ts]], second)
        else:
            assert run_id == first


def test_unsorted_input_and_writes_after_flush(db):
    data = make_bars(300)
    run = new_run(db)
    writer = CleanBarWriter(db, SYMBOL, run, batch_size=100)
    writer.write(data[::-1][:150])  # descending
    assert writer.counts.batch_commits == 1 and writer.pending_rows == 50
    first = writer.flush()
    assert first == WriteCounts(inserted=150, batch_commits=2)
    writer.write(data)
    assert writer.flush() == WriteCounts(inserted=300, unchanged=150, batch_commits=5)
    assert count_rows(db) == 300


def test_bad_input_is_refused_before_touching_the_database(db):
    run = new_run(db)
    writer = CleanBarWriter(db, SYMBOL, run, batch_size=10)
    data = make_bars(5)
    data["ts"][3] = data["ts"][1]
    writer.write(data)
    with pytest.raises(ValueError, match="duplicate ts"):
        writer.flush()
    with pytest.raises(TypeError):
        writer.write(np.zeros(3, dtype=BAR_READ_DTYPE))
    assert count_rows(db) == 0
    off_second = make_bars(2)
    off_second["ts"] += 1_000  # 1 µs: storable in TIMESTAMPTZ, not in SQLite's second-precision text
    writer = CleanBarWriter(db, SYMBOL, run)
    writer.write(off_second)
    if db.dialect.name == "sqlite":
        with pytest.raises(ValueError, match="not on whole"):
            writer.flush()
        assert count_rows(db) == 0
    else:
        assert writer.flush().inserted == 2
        assert read_bars(db, CLEAN_BARS, SYMBOL)["ts"].tolist() == off_second["ts"].tolist()


# ------------------------------------------------------------------------------------------------
# Batch atomicity


def install_failing_trigger(engine, ts_ns: int) -> None:
    """Make the database reject any INSERT or UPDATE of the bar at ts_ns (a failure in the middle of a batch)."""
    if engine.dialect.name == "postgresql":
        stamp = datetime.fromtimestamp(ts_ns / 1e9, UTC).isoformat()
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"IF NEW.ts = '{stamp}'::timestamptz THEN RAISE EXCEPTION 'boom at %%', NEW.ts; END IF; "
                "RETURN NEW; END $$"
            )
            conn.exec_driver_sql(
                f"CREATE TRIGGER boom BEFORE INSERT OR UPDATE ON {CLEAN_BARS} FOR EACH ROW EXECUTE FUNCTION boom()"
            )
    else:
        stamp = str(sqlite_ts_text(np.array([ts_ns]))[0])
        with engine.begin() as conn:
            for event in ("INSERT", "UPDATE"):
                conn.exec_driver_sql(
                    f"CREATE TRIGGER boom_{event.lower()} BEFORE {event} ON {CLEAN_BARS} "
                    f"WHEN NEW.ts = '{stamp}' BEGIN SELECT RAISE(ABORT, 'boom'); END"
                )


def drop_failing_trigger(engine) -> None:
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql(f"DROP TRIGGER boom ON {CLEAN_BARS}")
        else:
            conn.exec_driver_sql("DROP TRIGGER boom_insert")
            conn.exec_driver_sql("DROP TRIGGER boom_update")


@pytest.mark.parametrize("existing", [False, True], ids=["new-rows", "changed-rows"])
def test_a_failure_mid_batch_leaves_no_partial_batch(db, existing):
    data = make_bars(250)
    first, second = new_run(db), new_run(db)
    if existing:  # the batch then goes through the update path (PostgreSQL: staging table)
        old = data.copy()
        old["volume"] += 1
        write_all(db, old, first)
    install_failing_trigger(db, int(data["ts"][150]))  # in the middle of the second batch (rows 100..199)

    writer = CleanBarWriter(db, SYMBOL, second, batch_size=100)
    with pytest.raises(Exception, match="boom"):
        writer.write(data)
    # batch 1 committed, batch 2 rolled back entirely, batch 3 never started
    assert writer.counts.batch_commits == 1
    assert writer.counts.inserted + writer.counts.updated == 100
    assert writer.pending_rows == 150  # the failed batch is kept for a retry
    assert writer.committed == writer.counts and writer.committed is not writer.counts
    stored = table_rows(db)
    second_rows = sorted(ts for ts, row in stored.items() if row[-1] == second)
    assert second_rows == data["ts"][:100].tolist()
    assert len(stored) == (250 if existing else 100)

    drop_failing_trigger(db)
    counts = writer.flush()
    assert counts.batch_commits == 3
    assert (counts.updated if existing else counts.inserted) == 250
    assert {row[-1] for row in table_rows(db).values()} == {second}


def test_an_exception_after_the_rows_are_sent_rolls_the_batch_back(db, monkeypatch):
    data = make_bars(30)
    run = new_run(db)
    postgres = db.dialect.name == "postgresql"
    store, name = (PostgresBars, "_pg_copy_direct") if postgres else (SqliteBars, "_sqlite_insert")
    original = getattr(store, name)

    def send_then_fail(self, *args, **kwargs):
        original(self, *args, **kwargs)
        raise RuntimeError("injected after the rows were sent")

    monkeypatch.setattr(store, name, send_then_fail)
    writer = CleanBarWriter(db, SYMBOL, run, batch_size=10)
    with pytest.raises(RuntimeError, match="injected"):
        writer.write(data)
    assert count_rows(db) == 0
    assert writer.counts == WriteCounts()
    monkeypatch.setattr(store, name, original)
    assert writer.flush() == WriteCounts(inserted=30, batch_commits=3)


# ------------------------------------------------------------------------------------------------
# PostgreSQL: which path each batch takes


def copy_paths(monkeypatch) -> list[str]:
    """The PostgreSQL write path each batch takes from now on (_pg_copy_direct or _pg_copy_staged), in order."""
    calls: list[str] = []
    for name in ("_pg_copy_direct", "_pg_copy_staged"):
        original = getattr(PostgresBars, name)

        def spy(self, *args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(PostgresBars, name, spy)
    return calls


def test_postgres_direct_copy_and_staging_paths(pg_db, monkeypatch):
    calls = copy_paths(monkeypatch)

    data = make_bars(400)
    run = new_run(pg_db)
    assert write_all(pg_db, data[:200], run, batch_size=100) == WriteCounts(inserted=200, batch_commits=2)
    assert calls == ["_pg_copy_direct"] * 2
    calls.clear()
    # batch 1 = minutes 150..249 overlaps stored rows -> staged; batch 2 = 250..349 empty range -> direct
    counts = write_all(pg_db, data[150:350], new_run(pg_db), batch_size=100)
    assert counts == WriteCounts(inserted=150, unchanged=50, batch_commits=2)
    assert calls == ["_pg_copy_staged", "_pg_copy_direct"]
    calls.clear()
    changed = data.copy()
    changed["volume"] += 1
    counts = write_all(pg_db, changed, new_run(pg_db), batch_size=400)
    assert counts == WriteCounts(inserted=50, updated=350, batch_commits=1)
    assert calls == ["_pg_copy_staged"]
    assert len(table_rows(pg_db)) == 400


def test_postgres_direct_copy_falls_back_to_staging_on_a_conflict(pg_db, monkeypatch):
    """A writer that skips the symbol lock may insert between our check and our COPY: stage and count exactly."""
    data = make_bars(50)
    run = new_run(pg_db)
    write_all(pg_db, data[10:20], run)
    original = PostgresBars.upsert
    seen_allow_direct = []

    def blind_check(self, conn, batch, payload, allow_direct):
        seen_allow_direct.append(allow_direct)
        if allow_direct:  # pretend the range looked empty: go straight to COPY
            with conn.connection.driver_connection.cursor() as cur:
                self._pg_copy_direct(cur, payload)
        return original(self, conn, batch, payload, allow_direct)

    monkeypatch.setattr(PostgresBars, "upsert", blind_check)
    counts = write_all(pg_db, data, new_run(pg_db))
    assert seen_allow_direct == [True, False]
    assert counts == WriteCounts(inserted=40, unchanged=10, batch_commits=1)
    assert len(table_rows(pg_db)) == 50


# ------------------------------------------------------------------------------------------------
# Reads, stored timestamps, windows


def at(ns) -> datetime:
    """A read bound for `ns`: the datetime at or just after it."""
    return ns_to_datetime(ns, ceil=True)


def test_read_bars_returns_exactly_what_was_written(db):
    data = make_bars(2_000, seed=5)
    write_all(db, data[::-1], new_run(db), batch_size=700)
    write_all(db, make_bars(10, seed=9), new_run(db, "NQ"), symbol="NQ")  # another symbol, same minutes

    got = read_bars(db, CLEAN_BARS, SYMBOL, None, None)
    assert got.dtype == BAR_READ_DTYPE
    assert got["ts"].tolist() == data["ts"].tolist()
    for name in ("open", "high", "low", "close"):
        assert np.array_equal(np.rint(got[name] * 1e9).astype(np.int64), data[name])
        assert np.array_equal(got[name], data[name] / 1e9)
    assert np.array_equal(got["volume"], data["volume"].astype(np.int64))

    window = read_bars(db, CLEAN_BARS, SYMBOL, at(data["ts"][100]), at(data["ts"][250]))
    assert window["ts"].tolist() == data["ts"][100:250].tolist()  # [start, end)
    tail = read_bars(db, CLEAN_BARS, SYMBOL, at(data["ts"][1_990] + 1), None)
    assert tail["ts"].tolist() == data["ts"][1_991:].tolist()
    head = read_bars(db, CLEAN_BARS, SYMBOL, None, at(data["ts"][3] + 1))
    assert head["ts"].tolist() == data["ts"][:4].tolist()
    assert len(read_bars(db, CLEAN_BARS, "CL", None, None)) == 0
    assert len(read_bars(db, LEGACY_BARS, SYMBOL, None, None)) == 0
    with pytest.raises(ValueError):
        read_bars(db, "market_bars; DROP TABLE x", SYMBOL, None, None)


def test_timestamps_are_stored_in_the_database_native_form(db):
    data = make_bars(3, first_minute=7 * 60 + 5)  # 2024-03-10 07:05 UTC (a US DST switch day)
    write_all(db, data, new_run(db))
    with db.connect() as conn:
        if db.dialect.name == "sqlite":
            texts = conn.exec_driver_sql(f"SELECT ts FROM {CLEAN_BARS} ORDER BY ts").scalars().all()
            assert texts == ["2024-03-10 07:05:00+00:00", "2024-03-10 07:06:00+00:00", "2024-03-10 07:07:00+00:00"]
            n = conn.exec_driver_sql(
                f"SELECT count(*) FROM {CLEAN_BARS} WHERE ts >= '2024-03-10 07:06:00+00:00'"
            ).scalar_one()
        else:
            kind = conn.exec_driver_sql(
                f"SELECT data_type FROM information_schema.columns WHERE table_name = '{CLEAN_BARS}' "
                "AND column_name = 'ts'"
            ).scalar_one()
            assert kind == "timestamp with time zone"
            epochs = conn.exec_driver_sql(
                f"SELECT extract(epoch FROM ts)::bigint FROM {CLEAN_BARS} ORDER BY ts"
            ).scalars().all()
            assert [e * 1_000_000_000 for e in epochs] == data["ts"].tolist()
            n = conn.exec_driver_sql(
                f"SELECT count(*) FROM {CLEAN_BARS} WHERE ts >= '2024-03-10 02:06:00-05:00'::timestamptz"
            ).scalar_one()
        assert n == 2
        # Through the UtcTimestamp type: the same instants on both databases.
        stamps = conn.execute(sa.select(clean_bars.c.ts).order_by(clean_bars.c.ts)).scalars().all()
    assert stamps[0] == datetime(2024, 3, 10, 7, 5, tzinfo=UTC)


def test_sqlite_ts_text_matches_strftime():
    rng = np.random.default_rng(3)
    ts = np.concatenate([rng.integers(-(2**63) + 1, 2**63 - 1, 2_000), [0, -1, T0, T0 + 59_999_999_999]])
    expected = [datetime.fromtimestamp(int(t) // 10**9, UTC).strftime("%Y-%m-%d %H:%M:%S+00:00") for t in ts]
    assert sqlite_ts_text(ts).tolist() == expected


# ------------------------------------------------------------------------------------------------
# Quarantine


def test_write_quarantine_stores_raw_values_and_reasons(db):
    run = new_run(db)
    bad = make_bars(4)
    bad["volume"][1] = 2**64 - 5  # a -5 written unsigned
    bad["ts"][2] += 1_234  # not on the minute, not on the second
    bad["open"][3] = 2**63 - 1
    written = write_quarantine(db, run, SYMBOL, bad, ["ohlc_inconsistent", "negative_volume",
                                                       "ts_not_on_minute", "undef_price"])
    assert written == 4
    assert write_quarantine(db, run, SYMBOL, bad[:1], np.array([REASONS.index("duplicate_ts")], dtype=np.uint8)) == 1
    assert write_quarantine(db, run, SYMBOL, bad[:0], []) == 0
    with pytest.raises(ValueError):
        write_quarantine(db, run, SYMBOL, bad[:1], ["not_a_reason"])
    q = clean_ingest_quarantine.c
    with db.connect() as conn:
        stored = conn.execute(sa.select(clean_ingest_quarantine).order_by(q.id)).mappings().all()
    assert [r["reason"] for r in stored] == ["ohlc_inconsistent", "negative_volume", "ts_not_on_minute",
                                             "undef_price", "duplicate_ts"]
    assert [r["ts_ns"] for r in stored[:4]] == bad["ts"].tolist()
    assert stored[1]["volume_raw"] == -5
    assert stored[3]["open_raw"] == 2**63 - 1
    assert stored[0]["ts"] == datetime(2024, 3, 10, tzinfo=UTC)
    assert stored[2]["ts"].replace(microsecond=0) == datetime(2024, 3, 10, 0, 2, tzinfo=UTC)
    assert {r["ingest_run_id"] for r in stored} == {run}
    assert [r["close_raw"] for r in stored[:4]] == bad["close"].tolist()


# ------------------------------------------------------------------------------------------------
# Concurrency: two processes writing the same symbol and window


CHILD = textwrap.dedent(
    """
    import dataclasses, json, os, sys, time
    import numpy as np
    from engine.db.bars import CleanBarWriter
    from engine.db.connect import create_db_engine

    url, path, run_id, order, ready, go = sys.argv[1:]
    chunks = np.array_split(np.load(path), 24)
    if order == "desc":
        chunks = chunks[::-1]
    engine = create_db_engine(url)
    with engine.connect():  # connect before the start line
        pass
    writer = CleanBarWriter(engine, "ES", int(run_id), batch_size=250)
    open(ready, "w").close()
    deadline = time.time() + 30
    while not os.path.exists(go) and time.time() < deadline:
        time.sleep(0.001)
    for chunk in chunks:
        writer.write(chunk)
    print(json.dumps(dataclasses.asdict(writer.flush())))
    """
)


def test_concurrent_processes_writing_the_same_window(db, db_url, tmp_path):
    data = make_bars(6_000, seed=11)
    stale = data[1_000:2_000].copy()
    stale["volume"] += 3  # already stored with other values: exactly these 1000 rows get updated, once
    write_all(db, stale, new_run(db))
    path = tmp_path / "bars.npy"
    np.save(path, data)
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, db_url, str(path), str(new_run(db)), order, str(tmp_path / f"ready{i}"),
             str(go)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        # two in lockstep (maximal contention), one from the other end
        for i, order in enumerate(("asc", "asc", "desc"))
    ]
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready{i}").exists() for i in range(3)) and time.monotonic() < deadline:
        time.sleep(0.005)
    go.touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    for r in results:
        assert r["inserted"] + r["updated"] + r["unchanged"] == 6_000
        assert r["batch_commits"] == 24
    assert sum(r["inserted"] for r in results) == 5_000
    assert sum(r["updated"] for r in results) == 1_000
    assert sum(r["unchanged"] for r in results) == 2 * 6_000
    with db.connect() as conn:
        total, distinct = conn.execute(
            sa.select(sa.func.count(), sa.func.count(sa.distinct(clean_bars.c.ts)))
        ).one()
    assert total == distinct == 6_000
    got = read_bars(db, CLEAN_BARS, SYMBOL, None, None)
    assert np.array_equal(got["volume"], data["volume"].astype(np.int64))
