"""Stage `export`: Hive-partitioned Parquet of the window's clean bars and events, read back by DuckDB and polars.

Every database test runs on SQLite and PostgreSQL (the `db` fixture). Faults are real: a full tmpfs, and a child
process killed with SIGKILL while it writes partitions.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from test_detect_stage import CONTRACT, MINUTE, SYMBOL, T0, insert_bars, make_ctx, mark_clean, random_walk_bars
from test_disk_full import tmpfs  # noqa: F401 - the fixture

from engine.adjust import read_adjusted
from engine.db.bars import BAR_READ_DTYPE, read_bars
from engine.db.rolls import Roll, record_rolls
from engine.db.schema import CLEAN_BARS, clean_bars, triangle_events
from engine.errors import EngineError
from engine.job_plugins import packaged_node, packaged_options
from engine.parquet_export import COMMIT_BATCH, PART, TEMP_PREFIX, content_sha256, symbol_dir_name
from engine.stages import detect, export
from engine.stages.detect import event_key

BARS = 6000  # one a minute from T0 (2025-12-01) with random gaps: six UTC dates
SYMBOL_DIR = "symbol=GLBX.MDP3%3ANQ"


def seeded(db, tmp_path: Path, count: int = BARS, **ctx_options):
    """Bars in the clean table with clean coverage, their events detected; the job context and its window end."""
    rows = random_walk_bars(count)
    insert_bars(db, rows)
    end = rows[-1]["ts"] + MINUTE
    mark_clean(db, T0, end)
    ctx = make_ctx(db, tmp_path / "run", T0, end, n=3, **ctx_options)
    detect.run(ctx)
    return ctx, end


def files(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root: relative path -> (inode, mtime ns)."""
    return {str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def rows_of(table: pa.Table) -> np.ndarray:
    """A bars file's table as the rows the export digests (BAR_READ_DTYPE)."""
    out = np.empty(table.num_rows, BAR_READ_DTYPE)
    for name in BAR_READ_DTYPE.names:
        column = table.column(name)
        out[name] = (column.cast(pa.int64()) if name == "ts" else column).to_numpy()
    return out


def parquet_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.parquet"))


def db_daily_bars(db) -> list[tuple]:
    """(date, count, sum, min, max of close) per UTC date, computed by the database."""
    day = "substr(ts, 1, 10)" if db.dialect.name == "sqlite" else "to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
    with db.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(
            f"SELECT {day} AS d, count(*), sum(close), min(close), max(close), sum(volume) FROM {CLEAN_BARS} "
            "WHERE symbol = :s GROUP BY d ORDER BY d"), {"s": SYMBOL})]


def db_daily_events(db) -> list[tuple]:
    day = "substr(ts, 1, 10)" if db.dialect.name == "sqlite" else "to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
    with db.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(
            f"SELECT {day} AS d, direction, count(*), sum(price) FROM triangle_events_v1 WHERE symbol = :s "
            "GROUP BY d, direction ORDER BY d, direction"), {"s": SYMBOL})]


def duck_daily_bars(root: Path) -> list[tuple]:
    return duckdb.sql(
        f"SELECT strftime(date, '%Y-%m-%d') AS d, count(*), sum(close), min(close), max(close), sum(volume) "
        f"FROM read_parquet('{root}/bars/**/*.parquet', hive_partitioning = true) WHERE symbol = '{SYMBOL}' "
        "GROUP BY d ORDER BY d").fetchall()


def duck_daily_events(root: Path) -> list[tuple]:
    return duckdb.sql(
        f"SELECT strftime(date, '%Y-%m-%d') AS d, direction, count(*), sum(price) "
        f"FROM read_parquet('{root}/events/**/*.parquet', hive_partitioning = true) WHERE symbol = '{SYMBOL}' "
        "GROUP BY d, direction ORDER BY d, direction").fetchall()


# ---------------------------------------------------------------------------------------------
# Round trip


def test_export_round_trip_through_duckdb(db, tmp_path):
    assert "export" in packaged_options("stage")
    ctx, end = seeded(db, tmp_path)
    root = tmp_path / "exports"

    result = export.run(ctx, export.Export(dir=str(root)))

    daily = db_daily_bars(db)
    assert len(daily) == 6 and sum(r[1] for r in daily) == BARS
    assert duck_daily_bars(root) == daily  # count, sums, min, max per UTC date: exactly the database's
    events = db_daily_events(db)
    assert events and duck_daily_events(root) == events
    assert result.bars == BARS and result.events == sum(r[2] for r in events)
    assert result.partitions_written == len(daily) + len({r[0] for r in events})
    assert result.partitions_unchanged == result.partitions_removed == 0
    assert result.datasets["bars"] == {"written": 6, "unchanged": 0, "removed": 0, "rows": BARS}
    # ts and confirm_ts are instants: timestamp[ns, UTC] in the files, TIMESTAMPTZ in DuckDB, equal to the table's.
    first = pq.read_schema(root / "bars" / SYMBOL_DIR / "date=2025-12-01" / PART)
    assert first.field("ts").type == pa.timestamp("ns", tz="UTC") and first.names == [
        "ts", "open", "high", "low", "close", "volume"]
    got = duckdb.sql(f"SELECT epoch_ns(ts), open, high, low, close, volume FROM read_parquet("
                     f"'{root}/bars/**/*.parquet', hive_partitioning = true) ORDER BY ts").fetchall()
    stored = read_bars(db, CLEAN_BARS, SYMBOL)
    assert got == [tuple(r) for r in stored.tolist()]
    types = duckdb.sql(f"DESCRIBE SELECT * FROM read_parquet('{root}/events/**/*.parquet', hive_partitioning = true)"
                       ).fetchall()
    assert {name: kind for name, kind, *_ in types} == {
        "ts": "TIMESTAMPTZ_NS", "confirm_ts": "TIMESTAMPTZ_NS", "price": "DOUBLE",
        "direction": "VARCHAR", "symbol": "VARCHAR", "date": "DATE"}
    c = triangle_events.c
    with db.connect() as conn:
        confirmations = [(r[0].replace(tzinfo=None), r[1].replace(tzinfo=None)) for r in conn.execute(
            sa.select(c.ts, c.confirm_ts).order_by(c.ts, c.direction))]
    exported = duckdb.sql(f"SELECT ts AT TIME ZONE 'UTC', confirm_ts AT TIME ZONE 'UTC' FROM read_parquet("
                          f"'{root}/events/**/*.parquet') ORDER BY ts, direction").fetchall()
    assert exported == confirmations


def test_polars_reads_the_export_as_one_dataset(db, tmp_path):
    ctx, _ = seeded(db, tmp_path)
    root = tmp_path / "exports"
    export.run(ctx, export.Export(dir=str(root)))

    bars = pl.scan_parquet(f"{root}/bars/**/*.parquet", hive_partitioning=True).sort("ts").collect()
    assert bars.columns == ["ts", "open", "high", "low", "close", "volume", "symbol", "date"]
    assert bars.schema["ts"] == pl.Datetime("ns", "UTC") and bars.schema["date"] == pl.Date
    assert bars["symbol"].unique().to_list() == [SYMBOL]
    stored = read_bars(db, CLEAN_BARS, SYMBOL)
    assert bars["ts"].dt.epoch("ns").to_list() == stored["ts"].tolist()
    assert bars["close"].to_list() == stored["close"].tolist()
    assert (bars["date"] == bars["ts"].dt.date()).all()  # the partition is the UTC date of ts
    events = pl.scan_parquet(f"{root}/events/**/*.parquet", hive_partitioning=True).collect()
    assert len(events) == sum(r[2] for r in db_daily_events(db))


# ---------------------------------------------------------------------------------------------
# Idempotency, changes, removal


def test_a_second_export_rewrites_nothing(db, tmp_path):
    ctx, _ = seeded(db, tmp_path)
    root = tmp_path / "exports"
    first = export.run(ctx, export.Export(dir=str(root)))
    before = files(root)

    again = export.run(ctx, export.Export(dir=str(root)))

    assert again.partitions_written == again.partitions_removed == 0
    assert again.partitions_unchanged == first.partitions_written > 6
    assert files(root) == before  # same inodes, same mtimes: not one file rewritten


def test_a_changed_bar_rewrites_exactly_its_partition(db, tmp_path):
    ctx, _ = seeded(db, tmp_path)
    root = tmp_path / "exports"
    export.run(ctx, export.Export(dir=str(root), what=["bars"]))
    before = files(root)
    moved = T0 + timedelta(days=2, hours=5)
    with db.begin() as conn:
        target = conn.execute(sa.select(clean_bars.c.ts).where(clean_bars.c.ts >= moved).order_by(clean_bars.c.ts)
                              .limit(1)).scalar_one()
        conn.execute(sa.update(clean_bars).where(clean_bars.c.ts == target).values(close=clean_bars.c.close + 0.25))

    result = export.run(ctx, export.Export(dir=str(root), what=["bars"]))

    assert (result.partitions_written, result.partitions_unchanged, result.partitions_removed) == (1, 5, 0)
    after = files(root)
    changed = sorted(k for k in before if after[k] != before[k])
    assert changed == [f"bars/{SYMBOL_DIR}/date={target:%Y-%m-%d}/{PART}"]
    assert duck_daily_bars(root) == db_daily_bars(db)


def test_a_day_without_bars_any_more_is_removed_and_partial_days_keep_their_other_rows(db, tmp_path):
    ctx, end = seeded(db, tmp_path)
    root = tmp_path / "exports"
    export.run(ctx, export.Export(dir=str(root)))
    day2 = T0 + timedelta(days=2)
    with db.begin() as conn:
        conn.execute(sa.delete(clean_bars).where(clean_bars.c.ts >= day2, clean_bars.c.ts < day2 + timedelta(days=1)))
    # A window from noon of day 1 to noon of day 3: day 1 and day 3 are only partly in it.
    inner = make_ctx(db, tmp_path / "run2", T0 + timedelta(days=1, hours=12), T0 + timedelta(days=3, hours=12), n=3)

    result = export.run(inner, export.Export(dir=str(root)))

    assert result.datasets["bars"] == {"written": 0, "unchanged": 2, "removed": 1, "rows": result.bars}
    assert result.datasets["events"] == {"written": 0, "unchanged": 3, "removed": 0, "rows": result.events}
    assert not (root / "bars" / SYMBOL_DIR / f"date={day2:%Y-%m-%d}").exists()
    assert duck_daily_bars(root) == db_daily_bars(db)  # days 1 and 3 still whole, day 2 gone with the database's
    assert duck_daily_events(root) == db_daily_events(db)  # the table still holds day 2's events: so does the export


def test_provenance_in_the_file_metadata(db, tmp_path):
    ctx, _ = seeded(db, tmp_path)
    root = tmp_path / "exports"
    export.run(ctx, export.Export(dir=str(root), compression="snappy"))
    key, _ = event_key(ctx, CLEAN_BARS, "test-v1")

    bars_file = root / "bars" / SYMBOL_DIR / "date=2025-12-02" / PART
    meta = {k.decode(): v.decode() for k, v in pq.read_metadata(bars_file).metadata.items()
            if not k.startswith(b"ARROW:")}
    table = pq.read_table(bars_file)
    assert table.column("ts").cast(pa.int64()).to_pylist() == [
        int(t) for t in read_bars(db, CLEAN_BARS, SYMBOL, T0 + timedelta(days=1), T0 + timedelta(days=2))["ts"]]
    assert meta == {"logic_version": "test-v1", "run_id": str(ctx.run.id), "git_hash": "", "git_dirty": "",
                    "source_table": CLEAN_BARS, "adjustment": "none", "anchor": "", "symbol": SYMBOL,
                    "dataset": "bars", "compression": "snappy", "date": "2025-12-02", "rows": str(table.num_rows),
                    "content_sha256": content_sha256(rows_of(table))}
    assert pq.read_metadata(bars_file).row_group(0).column(1).compression == "SNAPPY"
    [events_file] = (root / "events" / SYMBOL_DIR / "date=2025-12-02").iterdir()
    meta = {k.decode(): v.decode() for k, v in pq.read_metadata(events_file).metadata.items()}
    assert (meta["dataset"], meta["detector"], meta["detector_params"], meta["logic_version"], meta["run_id"]) == (
        "events", "williams_fractals", key.params, "test-v1", str(ctx.run.id))
    assert json.loads(meta["detector_params"])["n"] == 3 and len(meta["content_sha256"]) == 64


def test_an_adjusted_export_holds_the_adjusted_prices_and_refuses_a_moved_anchor(db, tmp_path):
    ctx, end = seeded(db, tmp_path, adjust="difference")
    at = T0 + timedelta(days=3)

    def roll(k: int, when) -> Roll:
        return Roll(symbol=SYMBOL, roll_ts=when, outgoing_instrument_id=k, incoming_instrument_id=k + 1, rule="v.0",
                    origin="computed", outgoing_raw_symbol=f"NQ{k}", incoming_raw_symbol=f"NQ{k + 1}",
                    price_ts=when - MINUTE, outgoing_close=20000.0, incoming_close=20012.25)

    with db.begin() as conn:
        record_rolls(conn, SYMBOL, T0, end, [roll(1, at)], None)
    root = tmp_path / "exports"
    export.run(ctx, export.Export(dir=str(root), what=["bars"]))

    adjusted = read_adjusted(db, CLEAN_BARS, SYMBOL, T0, end, "difference").bars
    got = duckdb.sql(f"SELECT epoch_ns(ts), open, high, low, close, volume FROM read_parquet("
                     f"'{root}/bars/**/*.parquet') ORDER BY ts").fetchall()
    assert got == [tuple(r) for r in adjusted.tolist()]
    assert got[0][4] == read_bars(db, CLEAN_BARS, SYMBOL)["close"][0] + 12.25  # before the roll: moved onto NQ2
    first = pq.read_metadata(root / "bars" / SYMBOL_DIR / "date=2025-12-01" / PART).metadata
    assert (first[b"adjustment"], first[b"anchor"]) == (b"difference", b"NQ2")
    with db.begin() as conn:  # a newer roll: every older bar's adjusted price moves
        record_rolls(conn, SYMBOL, end, end + timedelta(days=1), [roll(2, end + timedelta(hours=1))], None)
    before = files(root)
    with pytest.raises(EngineError, match=r"holds anchor='NQ2', this export has anchor='NQ3' \(a roll ingested"):
        export.run(ctx, export.Export(dir=str(root), what=["bars"]))
    assert files(root) == before


# ---------------------------------------------------------------------------------------------
# Refusals


def test_an_uncovered_window_is_refused_like_detect(db, tmp_path):
    insert_bars(db, random_walk_bars(500))
    mark_clean(db, T0, T0 + timedelta(hours=2))
    ctx = make_ctx(db, tmp_path / "run", T0, T0 + timedelta(hours=6))
    with pytest.raises(EngineError) as refused:
        export.run(ctx, export.Export(dir=str(tmp_path / "exports")))
    assert str(refused.value).startswith(CONTRACT) and "Missing: 2025-12-01T02:00Z → 2025-12-01T06:00Z" in str(
        refused.value)
    assert not (tmp_path / "exports" / "bars").exists()


def test_another_series_in_the_same_directory_is_refused(db, tmp_path):
    ctx, end = seeded(db, tmp_path)
    root = tmp_path / "exports"
    export.run(ctx, export.Export(dir=str(root)))
    before = files(root)
    other = make_ctx(db, tmp_path / "run2", T0, end, adjust="difference")
    with pytest.raises(EngineError, match=r"holds adjustment='none', this export has adjustment='difference'"):
        export.run(other, export.Export(dir=str(root)))
    newer = make_ctx(db, tmp_path / "run3", T0, end, n=3, logic_version="test-v2")
    with pytest.raises(EngineError, match=r"events/symbol=GLBX.MDP3%3ANQ holds logic_version='test-v1'"):
        export.run(newer, export.Export(dir=str(root), what=["events"]))
    assert files(root) == before


def test_a_directory_that_cannot_be_made_is_refused_naming_the_key(db, tmp_path):
    ctx, _ = seeded(db, tmp_path, count=200)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(EngineError, match=r"stage.export.dir=.*a_file/exports: cannot create .*Not a directory"):
        export.run(ctx, export.Export(dir=str(tmp_path / "a_file" / "exports")))


def test_bad_parameters_are_refused_naming_the_key():
    node = packaged_node("stage", "export")
    assert node == {"_target_": "engine.stages.export.Export", "dir": None, "what": ["bars", "events"],
                    "compression": "zstd"}
    with pytest.raises(EngineError, match=r"stage.export.what=\['bars', 'trades'\]: unknown trades"):
        export.Export(what=["bars", "trades"])
    with pytest.raises(EngineError, match=r"stage.export.compression='zip' is not a Parquet codec"):
        export.Export(compression="zip")


# ---------------------------------------------------------------------------------------------
# Real faults


def test_a_full_disk_leaves_the_old_partition_and_no_temp_file(db, tmp_path, tmpfs):  # noqa: F811
    ctx, _ = seeded(db, tmp_path)
    root = tmpfs("exports", "2m")
    export.run(ctx, export.Export(dir=str(root), what=["bars"], compression="none"))
    before = files(root)
    contents = {p: p.read_bytes() for p in parquet_files(root)}
    with db.begin() as conn:
        conn.execute(sa.update(clean_bars).values(close=clean_bars.c.close + 0.25))  # every partition changes
    filler = root / "filler"
    free = os.statvfs(root)
    filler.write_bytes(b"\0" * (free.f_bavail * free.f_frsize - 8192))  # leave 8 KB: less than one partition file

    with pytest.raises(EngineError) as refused:
        export.run(ctx, export.Export(dir=str(root), what=["bars"], compression="none"))

    text = str(refused.value)
    assert "cannot write" in text and f"/bars/{SYMBOL_DIR}/date=2025-12-01/{PART}" in text
    assert f"free space on {root}" in text
    filler.unlink()
    assert files(root) == before and {p: p.read_bytes() for p in parquet_files(root)} == contents
    assert not [p for p in root.rglob("*") if p.name.startswith(TEMP_PREFIX)]
    export.run(ctx, export.Export(dir=str(root), what=["bars"], compression="none"))  # with space again: done
    assert duck_daily_bars(root) == db_daily_bars(db)


_CHILD = """
import logging, sys
sys.path.insert(0, {tests!r})
from datetime import datetime
import sqlalchemy as sa
from test_detect_stage import make_ctx
from engine.stages import export
db = sa.create_engine({url!r})
ctx = make_ctx(db, __import__("pathlib").Path({run_dir!r}), datetime.fromisoformat({start!r}),
               datetime.fromisoformat({end!r}))
print("exporting", flush=True)
export.run(ctx, export.Export(dir={root!r}, what=["bars"]))
"""


def test_an_export_killed_mid_write_leaves_only_whole_files(sqlite_url, tmp_path):
    """SIGKILL while a child rewrites 200 partitions: every file left is a whole Parquet file (old or new
    content, its metadata digest matching its rows), and the next export removes the temp files and finishes."""
    from engine.db.connect import create_db_engine, upgrade

    db = create_db_engine(sqlite_url)
    upgrade(db)
    rows = random_walk_bars(200 * 60)
    for i, row in enumerate(rows):  # 60 bars a day for 200 days
        row["ts"] = T0 + timedelta(days=i // 60, minutes=i % 60)
    insert_bars(db, rows)
    end = rows[-1]["ts"] + MINUTE
    mark_clean(db, T0, end)
    root = tmp_path / "exports"
    export.run(make_ctx(db, tmp_path / "run1", T0, end), export.Export(dir=str(root), what=["bars"]))
    old = {p: pq.read_metadata(p).metadata[b"content_sha256"] for p in parquet_files(root)}
    with db.begin() as conn:
        conn.execute(sa.update(clean_bars).values(close=clean_bars.c.close + 0.25))
    script = _CHILD.format(tests=str(Path(__file__).parent), url=sqlite_url, run_dir=str(tmp_path / "run2"),
                           start=T0.isoformat(), end=end.isoformat(), root=str(root))
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "exporting"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and child.poll() is None:
        written = sum(pq.read_metadata(p).metadata[b"content_sha256"] != old[p] for p in list(old)[::20])
        if written >= 2:  # some partitions rewritten, most not yet
            break
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL, "the child finished before it was killed"

    new = 0
    for path in parquet_files(root):
        table = pq.read_table(path)  # a whole file: a torn one would not parse
        meta = table.schema.metadata
        assert meta[b"content_sha256"].decode() == content_sha256(rows_of(table)) and table.num_rows == 60
        new += meta[b"content_sha256"] != old[path]
    assert len(parquet_files(root)) == 200 and 0 < new < 200
    temps = [p for p in root.rglob("*") if p.name.startswith(TEMP_PREFIX)]
    assert len(temps) <= 2 * COMMIT_BATCH  # at most the batches written but not yet renamed when the signal came

    result = export.run(make_ctx(db, tmp_path / "run3", T0, end), export.Export(dir=str(root), what=["bars"]))
    assert result.partitions_written == 200 - new and result.partitions_unchanged == new
    assert not [p for p in root.rglob("*") if p.name.startswith(TEMP_PREFIX)]
    assert duck_daily_bars(root) == db_daily_bars(db)


# ---------------------------------------------------------------------------------------------
# End to end


@pytest.mark.slow
def test_cli_ingest_detect_export(db_url, engine_cli, tmp_path):
    """`python -m engine stages=[registry,ingest,detect,export]` on the demo source, then the same again: the
    export equals the database, and the second run rewrites no partition."""
    from engine.db.connect import create_db_engine

    args = (f"db.url={db_url}", "stages=[registry,ingest,detect,export]", "window.start=2025-12-01",
            "window.end=2025-12-04", "stage.export.dir=exports")
    run = engine_cli(*args)
    assert run.returncode == 0, run.output
    summary = run.result["stages"]["export"]
    root = tmp_path / "exports"
    assert summary["dir"] == "exports" and summary["partitions_written"] > 0 and summary["bars"] > 0
    db = create_db_engine(db_url)
    try:
        assert duck_daily_bars(root) == db_daily_bars(db)
        assert duck_daily_events(root) == db_daily_events(db)
        days = len(db_daily_bars(db))
    finally:
        db.dispose()
    assert symbol_dir_name(SYMBOL) == SYMBOL_DIR
    readme_examples_run(tmp_path, days)
    again = engine_cli(*args)
    assert again.returncode == 0, again.output
    second = again.result["stages"]["export"]
    assert second["partitions_written"] == 0 and second["partitions_unchanged"] == summary["partitions_written"]


def readme_examples_run(folder: Path, days: int) -> None:
    """The README's DuckDB and polars examples, verbatim, over the export in `folder`."""
    text = (Path(__file__).parents[1] / "README.md").read_text()
    section = text.split("## Export to Parquet", 1)[1].split("\n## ", 1)[0]
    sql = section.split("```sql\n", 1)[1].split("```", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        rows = duckdb.sql(sql).fetchall()
        scope: dict = {}
        exec(code, scope)  # noqa: S102 - the README's own example
    finally:
        os.chdir(cwd)
    assert len(rows) == days == len(scope["daily"]) and rows[0][1] == scope["daily"]["bars"][0]
    assert len(scope["highs"]) > 0 and scope["highs"].columns == ["ts", "price", "confirm_ts"]
