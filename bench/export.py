"""The export stage's Parquet write path against pyarrow writing the same arrays directly (issue 13: ≥ 0.8×).

`export_ratio(folder)` makes `n` one-minute bars (BAR_READ_DTYPE, as read_bars returns them; one a minute, so 10M
bars are ~6,900 UTC dates) in the stage's pieces (PIECE_SPAN days from UTC midnights) and times, alternating piece by
piece,
* the engine: `PartitionedDataset.write_range` per piece + `finish` into an empty directory, as the export stage runs
  them on the bars it read (per date: content digest, provenance metadata, temp file, rename; synced per 64 dates),
* the baseline: the same per-date `pa.Table`s written with `pq.write_table` straight to their final paths (no digest,
  no metadata, no sync, no rename), same compression,
then checks both datasets hold the same rows (DuckDB) and times an export of the unchanged bars over the engine's
output (every partition compared, none rewritten). The database read is not in either time.
"""

from __future__ import annotations

import shutil
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from engine.db.bars_read import BAR_READ_DTYPE
from engine.parquet_export import NS_PER_DAY, PART, PartitionedDataset, date_of_day, export_lock, symbol_dir_name
from engine.stages.detect import PIECE_SPAN

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


def engine_dataset(root: Path, compression: str) -> PartitionedDataset:
    return PartitionedDataset(root, "bars", SYMBOL, BAR_READ_DTYPE, compression=compression, provenance=_PROVENANCE,
                              series={"source_table": "bench", "adjustment": "none"})


def pieces(bars: np.ndarray) -> list[tuple[np.ndarray, int, int]]:
    """The bars in pieces of PIECE_SPAN days from UTC midnights, as the stage reads and writes them: (bars, start
    ns, end ns)."""
    span = PIECE_SPAN // timedelta(days=1) * NS_PER_DAY
    first = int(bars["ts"][0]) // NS_PER_DAY * NS_PER_DAY
    edges = list(range(first, int(bars["ts"][-1]) + 1, span)) + [int(bars["ts"][-1]) + 1]
    cuts = np.searchsorted(bars["ts"], edges)
    return [(bars[cuts[k]:cuts[k + 1]], edges[k], edges[k + 1]) for k in range(len(edges) - 1)]


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


class _Clock:
    """Wall and CPU (process: the engine's commit worker included) seconds of what runs inside `timed`."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def timed(self, fn, *args):
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn(*args)
        self.wall += time.perf_counter() - wall
        self.cpu += time.process_time() - cpu
        return out


def one_rep(folder: Path, bars: np.ndarray, compression: str, k: int) -> tuple[_Clock, _Clock, int]:
    """Both writers over the same pieces, alternating piece by piece (ABBA), so that load from other work on the
    machine lands on both alike. Returns their clocks and the partitions written."""
    engine_root, pyarrow_root = folder / f"engine_{k}", folder / f"pyarrow_{k}"
    for root in (engine_root, pyarrow_root):
        shutil.rmtree(root, ignore_errors=True)
    engine, baseline = _Clock(), _Clock()
    written = 0
    with export_lock(engine_root):
        dataset = engine.timed(engine_dataset, engine_root, compression)
        for j, (piece, start, end) in enumerate(pieces(bars)):
            steps = [(engine, dataset.write_range, (piece, start, end)),
                     (baseline, pyarrow_write, (pyarrow_root, piece, compression))]
            for clock, fn, args in steps if j % 2 == 0 else steps[::-1]:
                written += clock.timed(fn, *args) or 0
        engine.timed(dataset.finish)
    if written != dataset.counts.written:
        raise RuntimeError(f"pyarrow wrote {written} partitions, the engine {dataset.counts.written}")
    return engine, baseline, written


def export_ratio(folder: Path, n: int = 10_000_000, reps: int = 3, compression: str = "zstd") -> dict:
    """{"bars", "partitions", "engine_seconds", "pyarrow_seconds", ..., "ratio", "target"}: per rep, the totals over
    the pieces; the ratio is of the medians (pyarrow time / engine time: the engine's speed as a share of pyarrow's)."""
    import duckdb

    bars = bench_bars(n)
    one_rep(folder / "warm", bars[:5000], compression, 0)  # untimed: the first UTC timestamp array imports pandas
    engine_wall, engine_cpu, pyarrow_wall, pyarrow_cpu = [], [], [], []
    partitions = 0
    for k in range(reps):
        engine, baseline, partitions = one_rep(folder, bars, compression, k)
        engine_wall.append(round(engine.wall, 3))
        engine_cpu.append(round(engine.cpu, 3))
        pyarrow_wall.append(round(baseline.wall, 3))
        pyarrow_cpu.append(round(baseline.cpu, 3))
    engine_root, pyarrow_root = folder / f"engine_{reps - 1}", folder / f"pyarrow_{reps - 1}"
    query = ("SELECT count(*), sum(close), min(ts), max(ts), count(DISTINCT date) FROM "
             "read_parquet('{}/bars/**/*.parquet', hive_partitioning = true)")
    got, want = (duckdb.sql(query.format(root)).fetchall()[0] for root in (engine_root, pyarrow_root))
    if got != want or got[0] != n:
        raise RuntimeError(f"the engine's export reads back as {got}, pyarrow's as {want} ({n:,} bars written)")
    started = time.perf_counter()
    with export_lock(engine_root):
        dataset = engine_dataset(engine_root, compression)
        for piece, start, end in pieces(bars):
            dataset.write_range(piece, start, end)
        dataset.finish()
    rerun = time.perf_counter() - started
    if dataset.counts.written or dataset.counts.unchanged != partitions:
        raise RuntimeError(f"re-export of unchanged bars wrote {dataset.counts.written} partitions")
    for name in ("warm", *(f"{what}_{k}" for k in range(reps) for what in ("engine", "pyarrow"))):
        shutil.rmtree(folder / name, ignore_errors=True)
    engine_s, pyarrow_s = statistics.median(engine_wall), statistics.median(pyarrow_wall)
    return {"bars": n, "partitions": partitions, "compression": compression, "engine_seconds": engine_wall,
            "pyarrow_seconds": pyarrow_wall, "engine_cpu_seconds": engine_cpu, "pyarrow_cpu_seconds": pyarrow_cpu,
            "engine_median": engine_s, "pyarrow_median": pyarrow_s, "rerun_seconds": round(rerun, 3),
            "ratio": round(pyarrow_s / engine_s, 3),
            "cpu_ratio": round(statistics.median(pyarrow_cpu) / statistics.median(engine_cpu), 3), "target": TARGET}


if __name__ == "__main__":  # python -m bench.export [bars]
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        print(export_ratio(Path(scratch), int(sys.argv[1]) if len(sys.argv) > 1 else 10_000_000))
