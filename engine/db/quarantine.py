"""The quarantine table clean_ingest_quarantine: the bars an ingest rejected, with their reason and raw values."""

from __future__ import annotations

import itertools
from contextlib import nullcontext

import numpy as np
from sqlalchemy import Connection, Engine

from engine.bars import RAW_BAR_DTYPE, REASONS
from engine.db.types import sqlite_ts_text

__all__ = ["write_quarantine"]


def write_quarantine(db: Engine | Connection, ingest_run_id: int, symbol: str, bad: np.ndarray, reasons) -> int:
    """Record rejected bars in clean_ingest_quarantine; returns the number of rows written.

    ``db``: an Engine (one transaction of its own) or a Connection (inside the caller's transaction).

    ``reasons``: one per bad row, reason strings or integer codes into ``engine.bars.REASONS``. Raw values
    are stored as they came (volume as its int64 reinterpretation, so a "negative volume" is negative again);
    ``ts`` is the instant floored to the stored precision (µs on PostgreSQL, s on SQLite), ``ts_ns`` exact.
    """
    bad = np.asarray(bad)
    if bad.dtype != RAW_BAR_DTYPE:
        raise TypeError(f"expected RAW_BAR_DTYPE rows, got dtype {bad.dtype}")
    reasons = np.asarray(reasons)
    if len(reasons) != len(bad):
        raise ValueError(f"{len(reasons)} reasons for {len(bad)} rows")
    if len(bad) == 0:
        return 0
    if reasons.dtype.kind in "iu":
        reasons = np.array(REASONS)[reasons]
    unknown = set(np.unique(reasons).tolist()) - set(REASONS)
    if unknown:
        raise ValueError(f"unknown quarantine reasons {sorted(unknown)}")
    ts_ns = bad["ts"].astype(np.int64)
    nat = ts_ns == np.iinfo(np.int64).min
    safe_ts = np.where(nat, 0, ts_ns)
    postgres = db.dialect.name == "postgresql"
    if postgres:
        text = np.datetime_as_string(safe_ts.view("datetime64[ns]").astype("datetime64[us]"), unit="us")
        ts_text = np.char.add(text.astype("<U26"), "+00:00").astype(object)
    else:
        ts_text = sqlite_ts_text(safe_ts).astype(object)
    ts_text[nat] = None
    columns = [
        itertools.repeat(int(ingest_run_id)),
        itertools.repeat(symbol),
        reasons.tolist(),
        ts_text.tolist(),
        ts_ns.tolist(),
        bad["instrument_id"].astype(np.int64).tolist(),
        *(bad[name].astype(np.int64).tolist() for name in ("open", "high", "low", "close")),
        bad["volume"].view(np.int64).tolist(),
    ]
    names = ("ingest_run_id, symbol, reason, ts, ts_ns, instrument_id, open_raw, high_raw, low_raw, close_raw, "
             "volume_raw")
    with db.begin() if isinstance(db, Engine) else nullcontext(db) as conn:
        raw = conn.connection.driver_connection
        if postgres:
            with raw.cursor() as cur, cur.copy(f"COPY clean_ingest_quarantine ({names}) FROM STDIN") as copy:
                for row in zip(*columns, strict=False):
                    copy.write_row(row)
        else:
            cur = raw.cursor()
            try:
                cur.executemany(
                    f"INSERT INTO clean_ingest_quarantine ({names}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    zip(*columns, strict=False),
                )
            finally:
                cur.close()
    return len(bad)
