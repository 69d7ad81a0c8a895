"""The export stage's Parquet write path against pyarrow writing the same arrays directly (issue 13: ≥ 0.8×).

`export_ratio(folder)` makes `n` one-minute bars (BAR_READ_DTYPE, as read_bars returns them; one a minute, so 10M
bars are ~6,900 UTC dates) and, alternating, times
* the engine: `PartitionedDataset.write_range` + `finish` into an empty directory, as the export stage runs it on the
  bars it read (per date: content digest, provenance metadata, temp file, fsync, rename; the directories fsynced),
* the baseline: the same per-date `pa.Table`s written with `pq.write_table` straight to their final paths (no digest,
  no metadata, no fsync, no rename), same compression,
then checks both datasets hold the same rows (DuckDB) and times an export of the unchanged bars over the engine's
output (every partition compared, none rewritten). The database read is not in either time.
"""

from __future__ import annotations

import shutil
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from engine.db.bars_read import BAR_READ_DTYPE
from engine.parquet_export import NS_PER_DAY, PART, PartitionedDataset, date_of_day, export_lock, symbol_dir_name

SYMBOL = "GLBX.MDP3:NQ"
START = datetime(2006, 1, 2, tzinfo=UTC)
TARGET = 0.8
_PROVENANCE = {"logic_version": "bench", "run_id": "0", "git_hash": "", "git_dirty": "", "source_table": "bench"}


def bench_bars(n: int) -> np.ndarray:
    rng = np.random.default_rng(13)
    bars = np.empty(n, BAR_READ_DTYPE)
    bars["ts"] = int(START.timestamp()) * 10**9 + np.arange(n, dtype=np.int64) * 60 * 10**9
    close = 20000 + np.cumsum(rng.choice([-0.5, -0.25, 0.0, 0.25, 0.5], n))
    bars["open"], bars["close"] = np.roll(close, 1), close
    bars["high"], bars["low"] = close + 0.25, close - 0.25
    bars["volume"] = rng.integers(1, 500, n)
    return bars


def engine_write(root: Path, bars: np.ndarray, compression: str) -> PartitionedDataset:
    with export_lock(root):
        dataset = PartitionedDataset(root, "bars", SYMBOL, BAR_READ_DTYPE, compression=compression,
                                     provenance=_PROVENANCE, series={"source_table": "bench", "adjustment": "none"})
        start = int(bars["ts"][0]) // NS_PER_DAY * NS_PER_DAY
        dataset.write_range(bars, start, int(bars["ts"][-1]) + 1)
        dataset.finish()
    return dataset


def pyarrow_write(root: Path, bars: np.ndarray, compression: str) -> int:
    """pyarrow alone: one pq.write_table per UTC date into the same layout."""
    days = bars["ts"] // NS_PER_DAY
    first, last = int(days[0]), int(days[-1])
    edges = np.searchsorted(days, np.arange(first, last + 2))
    folder = root / "bars" / symbol_dir_name(SYMBOL)
    written = 0
    timestamp = pa.timestamp("ns", tz="UTC")
    for day in range(first, last + 1):
        part = bars[edges[day - first]:edges[day - first + 1]]
        if not len(part):
            continue
        table = pa.Table.from_arrays(
            [pa.array(part["ts"], timestamp), *(pa.array(part[name]) for name in BAR_READ_DTYPE.names[1:])],
            names=list(BAR_READ_DTYPE.names))
        path = folder / f"date={date_of_day(day)}" / PART
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path, compression=compression)
        written += 1
    return written


def export_ratio(folder: Path, n: int = 10_000_000, reps: int = 3, compression: str = "zstd") -> dict:
    """{"bars", "partitions", "engine_seconds", "pyarrow_seconds", "rerun_seconds", "ratio", "target"} (medians)."""
    import duckdb

    bars = bench_bars(n)
    engine_write(folder / "warm_engine", bars[:5000], compression)  # untimed: the first UTC timestamp array imports
    pyarrow_write(folder / "warm_pyarrow", bars[:5000], compression)  # pandas inside pyarrow (~1 s)
    engine_times, pyarrow_times = [], []
    partitions = 0
    for k in range(reps):
        for what in ("engine", "pyarrow"):
            root = folder / f"{what}_{k}"
            shutil.rmtree(root, ignore_errors=True)
            started = time.perf_counter()
            if what == "engine":
                counts = engine_write(root, bars, compression).counts
                engine_times.append(time.perf_counter() - started)
                partitions = counts.written
            else:
                written = pyarrow_write(root, bars, compression)
                pyarrow_times.append(time.perf_counter() - started)
                if written != partitions:
                    raise RuntimeError(f"pyarrow wrote {written} partitions, the engine {partitions}")
    engine_root, pyarrow_root = folder / f"engine_{reps - 1}", folder / f"pyarrow_{reps - 1}"
    query = ("SELECT count(*), sum(close), min(ts), max(ts), count(DISTINCT date) FROM "
             "read_parquet('{}/bars/**/*.parquet', hive_partitioning = true)")
    got, want = (duckdb.sql(query.format(root)).fetchall()[0] for root in (engine_root, pyarrow_root))
    if got != want or got[0] != n:
        raise RuntimeError(f"the engine's export reads back as {got}, pyarrow's as {want} ({n:,} bars written)")
    started = time.perf_counter()
    counts = engine_write(engine_root, bars, compression).counts
    rerun = time.perf_counter() - started
    if counts.written or counts.unchanged != partitions:
        raise RuntimeError(f"re-export of unchanged bars wrote {counts.written} partitions")
    runs = (f"{what}_{k}" for k in range(reps) for what in ("engine", "pyarrow"))
    for name in ("warm_engine", "warm_pyarrow", *runs):
        shutil.rmtree(folder / name, ignore_errors=True)
    engine_s, pyarrow_s = statistics.median(engine_times), statistics.median(pyarrow_times)
    return {"bars": n, "partitions": partitions, "compression": compression, "engine_seconds": engine_times,
            "pyarrow_seconds": pyarrow_times, "engine_median": round(engine_s, 3),
            "pyarrow_median": round(pyarrow_s, 3), "rerun_seconds": round(rerun, 3),
            "ratio": round(pyarrow_s / engine_s, 3), "target": TARGET}


if __name__ == "__main__":  # python -m bench.export [bars]
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        print(export_ratio(Path(scratch), int(sys.argv[1]) if len(sys.argv) > 1 else 10_000_000))
