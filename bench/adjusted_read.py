"""The read of an adjusted series against the plain read (issue 12: adjusted ≤ 1.2× unadjusted).

`adjusted_read_ratio(path)` writes ~1M one-minute bars of one symbol and 8 rolls (about one a quarter) into a scratch
SQLite file, then times `read_bars` and `read_adjusted` (which also reads the symbol's rolls and adjusts every bar) over
the whole series, alternating, and returns the median times and their ratio.
"""

from __future__ import annotations

import sqlite3
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from engine.adjust import read_adjusted
from engine.config import Adjustment
from engine.db.bars import read_bars
from engine.db.connect import create_db_engine, upgrade
from engine.db.rolls import Roll, record_rolls
from engine.db.schema import CLEAN_BARS
from engine.db.types import sqlite_ts_text

SYMBOL = "GLBX.MDP3:ES"
START = datetime(2022, 1, 2, 23, tzinfo=UTC)
TARGET = 1.2


def adjusted_read_ratio(path: Path, n: int = 1_000_000, reps: int = 3,
                        adjustment: Adjustment | str = Adjustment.difference, rolls: int = 8) -> dict:
    """{"bars", "rolls", "plain_seconds", "adjusted_seconds", "ratio", "target"}: medians of `reps` reads each."""
    for stale in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        stale.unlink(missing_ok=True)
    db = create_db_engine(f"sqlite:///{path}")
    try:
        upgrade(db)
        rolls = _fill(db, path, n, rolls)
        plain, adjusted = [], []
        for _ in range(reps):
            started = time.perf_counter()
            bars = read_bars(db, CLEAN_BARS, SYMBOL)
            plain.append(time.perf_counter() - started)
            started = time.perf_counter()
            view = read_adjusted(db, CLEAN_BARS, SYMBOL, adjustment=adjustment)
            adjusted.append(time.perf_counter() - started)
            if len(bars) != n or len(view.bars) != n or len(view.applied) != len(rolls):
                raise RuntimeError(f"read {len(bars)} / {len(view.bars)} bars and {len(view.applied)} rolls, "
                                   f"expected {n} and {len(rolls)}")
    finally:
        db.dispose()
    plain_s, adjusted_s = statistics.median(plain), statistics.median(adjusted)
    return {"bars": n, "rolls": len(rolls), "plain_seconds": round(plain_s, 6),
            "adjusted_seconds": round(adjusted_s, 6), "ratio": round(adjusted_s / plain_s, 3), "target": TARGET}


def _fill(db, path: Path, n: int, count: int) -> list[Roll]:
    """`n` bars, one a minute from START (a random walk on the quarter tick), and `count` rolls evenly spread."""
    rng = np.random.default_rng(12)
    ts = np.int64(START.timestamp()) * 10**9 + np.arange(n, dtype=np.int64) * 60 * 10**9
    close = 4000 + np.cumsum(rng.choice([-0.5, -0.25, 0.0, 0.25, 0.5], n))
    high, low = close + 0.25, close - 0.25
    rows = zip([SYMBOL] * n, sqlite_ts_text(ts).tolist(), close.tolist(), high.tolist(), low.tolist(),
               close.tolist(), rng.integers(1, 500, n).tolist(), strict=True)
    with sqlite3.connect(path) as conn:
        conn.executemany(f"INSERT INTO {CLEAN_BARS} (symbol, ts, open, high, low, close, volume) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    end = START + timedelta(minutes=n)
    rolls = []
    for k in range(count):
        at = START + timedelta(minutes=(k + 1) * n // (count + 1))
        rolls.append(Roll(symbol=SYMBOL, roll_ts=at, outgoing_instrument_id=k, incoming_instrument_id=k + 1,
                          rule="v.0", origin="computed", outgoing_raw_symbol=f"C{k}", incoming_raw_symbol=f"C{k + 1}",
                          price_ts=at - timedelta(minutes=1), outgoing_close=4000.0, incoming_close=4012.25 + k))
    with db.begin() as conn:
        record_rolls(conn, SYMBOL, START, end, rolls, None)
    return rolls


if __name__ == "__main__":  # python -m bench.adjusted_read [bars]
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        print(adjusted_read_ratio(Path(folder) / "adjusted_read.sqlite",
                                  int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000))
