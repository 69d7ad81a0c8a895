"""SQLite upsert of a batch of validated bars.

Inside the batch's transaction (BEGIN IMMEDIATE holds the write lock, see ``engine.db.connect``), the batch's
existing rows are read with one range query on the primary key and classified with numpy; new rows are INSERTed
and changed rows UPDATEd with multi-row statements; unchanged rows are not touched.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy import Connection

from engine.bars import to_prices
from engine.db.schema import CLEAN_BARS
from engine.db.types import NS_PER_SECOND, sqlite_ts_text

__all__ = ["SqliteBars"]

_VALUE_COLUMNS = ("open", "high", "low", "close", "volume", "instrument_id", "raw_symbol")
_SQLITE_COLUMNS = ("symbol", "ts", *_VALUE_COLUMNS, "ingest_run_id")
# A stored raw_symbol is read as bytes comparable with the batch's S16 values: NULL as b"" (what the batch has
# for an unknown contract), an empty string as b"\xff" and a longer text kept to 17 bytes, both unequal to any
# value the writer stores.
_SQLITE_EXISTING_DTYPE = np.dtype(
    [("secs", "i8"), ("open", "f8"), ("high", "f8"), ("low", "f8"), ("close", "f8"), ("volume", "i8"),
     ("instrument_id", "i8"), ("raw_symbol", "S17")]
)
_SQLITE_EXISTING_RAW_SYMBOL = (
    "CASE WHEN raw_symbol IS NULL THEN x'' WHEN raw_symbol = '' THEN x'ff' ELSE CAST(raw_symbol AS BLOB) END"
)
# SQLite before 3.32 allows 999 bound variables per statement.
_SQLITE_MAX_VARIABLES = 999


@dataclass(frozen=True)
class _Columns:
    """A batch's values as they are stored."""

    ts_text: np.ndarray
    prices: dict[str, np.ndarray]
    volume: np.ndarray
    instrument: np.ndarray
    raw_symbol: np.ndarray  # S16, b"" for NULL


class SqliteBars:
    """The SQLite side of CleanBarWriter for one symbol and ingest run."""

    ts_unit_ns = NS_PER_SECOND  # the timestamp text keeps seconds
    conflicts: tuple[type[Exception], ...] = ()  # the write lock is held from BEGIN: no other writer gets in

    def __init__(self, symbol: str, ingest_run_id: int):
        self.symbol = symbol
        self.ingest_run_id = ingest_run_id

    def encode(self, batch: np.ndarray) -> _Columns:
        """The stored values (no database access: may run in another thread)."""
        return _Columns(
            ts_text=sqlite_ts_text(batch["ts"]),
            prices={name: to_prices(batch[name]) for name in ("open", "high", "low", "close")},
            volume=batch["volume"].view(np.int64),
            instrument=batch["instrument_id"].astype(np.int64),
            raw_symbol=batch["raw_symbol"],
        )

    def upsert(self, conn: Connection, batch: np.ndarray, columns: _Columns, direct: bool) -> tuple[int, int, int]:
        """Write the ts-sorted ``batch`` (``columns`` = its ``encode``) in ``conn``'s transaction: (inserted,
        updated, unchanged). ``direct`` makes no difference here."""
        cur = conn.connection.driver_connection.cursor()
        try:
            existed, same = self._sqlite_classify(cur, batch["ts"], columns)
            new = ~existed
            changed = existed & ~same
            if new.any():
                self._sqlite_insert(cur, new, columns)
            if changed.any():
                self._sqlite_update(cur, changed, columns)
        finally:
            cur.close()
        return int(new.sum()), int(changed.sum()), int(same.sum())

    def _sqlite_classify(self, cur, batch_ts: np.ndarray, columns: _Columns) -> tuple[np.ndarray, np.ndarray]:
        """(existed, same) masks over the batch, from one primary-key range query."""
        cur.execute(
            f"SELECT CAST(strftime('%s', ts) AS INTEGER), open, high, low, close, volume, "
            f"COALESCE(instrument_id, -1), {_SQLITE_EXISTING_RAW_SYMBOL} "
            f"FROM {CLEAN_BARS} WHERE symbol = ? AND ts BETWEEN ? AND ?",
            (self.symbol, str(columns.ts_text[0]), str(columns.ts_text[-1])),
        )
        rows = cur.fetchall()
        existed = np.zeros(len(batch_ts), dtype=bool)
        same = np.zeros(len(batch_ts), dtype=bool)
        if not rows:
            return existed, same
        existing = np.array(rows, dtype=_SQLITE_EXISTING_DTYPE)
        batch_secs = batch_ts // NS_PER_SECOND
        pos = np.minimum(np.searchsorted(batch_secs, existing["secs"]), len(batch_secs) - 1)
        hit = batch_secs[pos] == existing["secs"]
        pos = pos[hit]
        existing = existing[hit]
        equal = np.ones(len(pos), dtype=bool)
        for name in ("open", "high", "low", "close"):
            equal &= existing[name] == columns.prices[name][pos]
        equal &= existing["volume"] == columns.volume[pos]
        equal &= existing["instrument_id"] == columns.instrument[pos]
        equal &= existing["raw_symbol"] == columns.raw_symbol[pos]
        existed[pos] = True
        same[pos] = equal
        return existed, same

    def _sqlite_rows(self, mask: np.ndarray, columns: _Columns) -> np.ndarray:
        """The masked rows as an (n, 10) object array of Python values, in _SQLITE_COLUMNS order (raw_symbol
        None for b"")."""
        n = int(mask.sum())
        rows = np.empty((n, len(_SQLITE_COLUMNS)), dtype=object)
        rows[:, 0] = self.symbol
        rows[:, 1] = columns.ts_text[mask].astype(object)
        for i, name in enumerate(("open", "high", "low", "close"), start=2):
            rows[:, i] = columns.prices[name][mask].astype(object)
        rows[:, 6] = columns.volume[mask].astype(object)
        rows[:, 7] = columns.instrument[mask].astype(object)
        rows[:, 8] = _texts(columns.raw_symbol[mask])
        rows[:, 9] = self.ingest_run_id
        return rows

    def _sqlite_insert(self, cur, mask: np.ndarray, columns: _Columns) -> None:
        _insert_many(cur, self._sqlite_rows(mask, columns), "")

    def _sqlite_update(self, cur, mask: np.ndarray, columns: _Columns) -> None:
        # Only rows known (inside this write transaction) to exist with other values get here, so the upsert
        # always takes its DO UPDATE branch; it lets many rows share one statement.
        assignments = ", ".join(f"{c} = excluded.{c}" for c in (*_VALUE_COLUMNS, "ingest_run_id"))
        _insert_many(cur, self._sqlite_rows(mask, columns), f" ON CONFLICT (symbol, ts) DO UPDATE SET {assignments}")


def _texts(raw_symbol: np.ndarray) -> np.ndarray:
    """S16 raw symbols as an object array of str, None for b"" (a batch holds a few distinct contracts: each is
    decoded once). Raw symbols are ASCII: anything else raises."""
    if len(raw_symbol) and (raw_symbol == raw_symbol[0]).all():
        return np.full(len(raw_symbol), raw_symbol[0].decode("ascii") or None, dtype=object)
    distinct, which = np.unique(raw_symbol, return_inverse=True)
    return np.array([value.decode("ascii") or None for value in distinct], dtype=object)[which]


def _insert_many(cur, rows: np.ndarray, tail: str) -> None:
    """INSERT rows with multi-row VALUES statements (about 2x faster than one statement per row)."""
    n, width = rows.shape
    per_statement = max(1, _SQLITE_MAX_VARIABLES // width)
    one = "(" + ", ".join("?" * width) + ")"
    head = f"INSERT INTO {CLEAN_BARS} ({', '.join(_SQLITE_COLUMNS)}) VALUES "
    full = n - n % per_statement
    if full:
        cur.executemany(
            head + ", ".join([one] * per_statement) + tail, rows[:full].reshape(-1, per_statement * width).tolist()
        )
    if n > full:
        cur.execute(head + ", ".join([one] * (n - full)) + tail, rows[full:].reshape(-1).tolist())
