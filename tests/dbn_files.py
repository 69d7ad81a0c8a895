"""Write small real DBN files from bar arrays (continuous symbology), for ingest tests."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from types import SimpleNamespace

import databento_dbn
import numpy as np
import zstandard

from engine.bars import NS_PER_MINUTE, PRICE_SCALE, RAW_BAR_DTYPE
from engine.sources.dbn import DBN_OHLCV_DTYPE

T0 = int(dt.datetime(2025, 12, 1, 14, 30, tzinfo=dt.UTC).timestamp()) * 1_000_000_000


def bars(count: int, *, start_ns: int = T0, instrument_id: int = 4242, price: float = 21000.0) -> np.ndarray:
    """`count` consecutive good 1-minute bars on the 0.25 tick."""
    out = np.zeros(count, dtype=RAW_BAR_DTYPE)
    out["ts"] = start_ns + np.arange(count) * NS_PER_MINUTE
    out["instrument_id"] = instrument_id
    close = price + 0.25 * np.cumsum(np.resize([1, -2, 3, -1, 2, -3], count))
    out["open"] = np.rint((close - 0.25) * PRICE_SCALE)
    out["close"] = np.rint(close * PRICE_SCALE)
    out["high"] = np.maximum(out["open"], out["close"]) + PRICE_SCALE // 2
    out["low"] = np.minimum(out["open"], out["close"]) - PRICE_SCALE // 2
    out["volume"] = 100 + np.arange(count) % 50
    return out


def write_dbn(path: Path, rows: np.ndarray, *, symbol: str = "NQ.v.0",
              schema=databento_dbn.Schema.OHLCV_1M, open_end: bool = False) -> Path:
    """A zstd-compressed DBN file; every instrument_id in `rows` maps to `symbol` on every day covered. Its metadata
    ends a minute after the last bar (`open_end`: it gives no end)."""
    ts = rows["ts"].astype(np.int64)
    first = dt.datetime.fromtimestamp(int(ts.min()) // 1_000_000_000, dt.UTC).date() - dt.timedelta(days=1)
    last = dt.datetime.fromtimestamp(int(ts.max()) // 1_000_000_000, dt.UTC).date() + dt.timedelta(days=2)
    ids = sorted({int(i) for i in rows["instrument_id"]})
    meta = databento_dbn.Metadata(
        dataset="GLBX.MDP3",
        start=int(ts.min()),
        end=None if open_end else int(ts.max()) + NS_PER_MINUTE,
        stype_in=databento_dbn.SType.CONTINUOUS,
        stype_out=databento_dbn.SType.INSTRUMENT_ID,
        schema=schema,
        symbols=[symbol],
        mappings=[SimpleNamespace(raw_symbol=symbol, intervals=[
            SimpleNamespace(start_date=first, end_date=last, symbol=str(i)) for i in ids])],
    )
    rec = np.zeros(len(rows), dtype=DBN_OHLCV_DTYPE)
    rec["length"], rec["rtype"], rec["publisher_id"] = 14, int(databento_dbn.RType.OHLCV_1M.value), 1
    rec["instrument_id"] = rows["instrument_id"]
    rec["ts_event"] = rows["ts"]
    for field in ("open", "high", "low", "close", "volume"):
        rec[field] = rows[field]
    path.write_bytes(zstandard.ZstdCompressor().compress(meta.encode() + rec.tobytes()))
    return path
