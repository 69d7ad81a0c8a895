"""Bench inputs: synthetic NQ 1-minute DBN files holding exactly N bars, and a copy with 1% of the bars changed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import zstandard

from engine.bars import NS_PER_MINUTE, PRICE_SCALE, RAW_BAR_DTYPE
from engine.sources.dbn import DBN_OHLCV_DTYPE, DbnBarFile, SymbolFilter
from engine.sources.synthetic import iter_synthetic_records, tick_size, write_synthetic_dbn

# Sunday 17:00 Chicago (CDT): a Globex week opens on the first day of GLBX.MDP3's history (the pre-run checks
# refuse earlier windows and future ones). 1M NQ bars reach into 2013, 5M into 2024.
START = datetime(2010, 6, 6, 22, 0, tzinfo=UTC)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NS_PER_DAY = 86_400 * 1_000_000_000


def to_ns(value: datetime) -> int:
    return (value - _EPOCH) // timedelta(microseconds=1) * 1000


def from_ns(ns: int) -> datetime:
    return _EPOCH + timedelta(microseconds=int(ns) // 1000)


def iso(value: datetime) -> str:
    return f"{value:%Y-%m-%dT%H:%M:%SZ}"


@dataclass(frozen=True)
class BarFile:
    path: Path
    n: int
    root: str
    start: datetime
    end: datetime  # exclusive: one minute after the last bar

    @property
    def symbol_filter(self) -> SymbolFilter:
        return SymbolFilter(self.root, f"{self.root}.v.0")

    def read(self) -> np.ndarray:
        """All bars of the file, decoded by the engine (RAW_BAR_DTYPE)."""
        return DbnBarFile(self.path).read(self.symbol_filter)


def window_for(n: int, root: str = "NQ", start: datetime = START) -> tuple[datetime, datetime]:
    """[start, end) holding exactly n synthetic bars of `root` (the generator is chunk invariant)."""
    start_ns = to_ns(start)
    horizon = start_ns + (n // 900 + 14) * _NS_PER_DAY  # NQ trades ~985 bars per calendar day
    seen = 0
    for rec in iter_synthetic_records(root, start_ns, horizon):
        if seen + len(rec) >= n:
            return start, from_ns(int(rec["ts_event"][n - seen - 1]) + NS_PER_MINUTE)
        seen += len(rec)
    raise RuntimeError(f"only {seen} bars of {root} before the horizon; widen it")


def synthetic_file(folder: Path, n: int, root: str = "NQ") -> BarFile:
    """A zstd DBN file of exactly n bars of `root`.v.0 from START (reused when it already exists)."""
    start, end = window_for(n, root)
    path = folder / f"{root}_{n}.ohlcv-1m.dbn.zst"
    if not path.exists():
        written = write_synthetic_dbn(path, root=root, start_ns=to_ns(start), end_ns=to_ns(end))
        if written != n:
            raise AssertionError(f"write_synthetic_dbn wrote {written} bars, expected {n}")
    return BarFile(path, n, root, start, end)


def changed_copy(src: BarFile, path: Path, every: int = 100) -> tuple[BarFile, int]:
    """`src` with every `every`-th bar's close moved up one tick (high raised to match): (file, bars changed)."""
    header_len = DbnBarFile(src.path).files[0].metadata_length
    with open(src.path, "rb") as handle:
        data = zstandard.ZstdDecompressor().stream_reader(handle, read_across_frames=True).readall()
    recs = np.frombuffer(data, dtype=DBN_OHLCV_DTYPE, offset=header_len).copy()
    if len(recs) != src.n:
        raise AssertionError(f"{src.path} holds {len(recs)} records, expected {src.n}")
    idx = np.arange(0, len(recs), every)
    recs["close"][idx] += round(tick_size(src.root) * PRICE_SCALE)
    recs["high"][idx] = np.maximum(recs["high"][idx], recs["close"][idx])
    path.write_bytes(zstandard.ZstdCompressor().compress(data[:header_len] + recs.tobytes()))
    return BarFile(path, src.n, src.root, src.start, src.end), len(idx)


def check_bars(bars: np.ndarray, n: int) -> None:
    if bars.dtype != RAW_BAR_DTYPE or len(bars) != n:
        raise AssertionError(f"decoded {len(bars)} bars of dtype {bars.dtype}, expected {n} RAW_BAR_DTYPE rows")
