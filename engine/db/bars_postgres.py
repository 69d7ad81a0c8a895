"""PostgreSQL upsert of a batch of validated bars with binary COPY (numpy-encoded, no per-row Python).

Inside the batch's transaction, after a transaction-scoped advisory lock on the symbol:
* the batch's ts range holds no row of the symbol -> COPY straight into the table (all inserted);
* otherwise -> COPY into a temporary staging table, classify it against the table with one join, then
  INSERT ... ON CONFLICT DO UPDATE only the new and changed rows (ON CONFLICT DO UPDATE locks and rewrites
  conflicting rows even when its WHERE blocks the update: drop unchanged rows first).
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import psycopg
from sqlalchemy import Connection

from engine.bars import to_prices
from engine.db import pgcopy
from engine.db.schema import CLEAN_BARS
from engine.db.types import ns_to_datetime

__all__ = ["PG_LOCK_NAMESPACE", "PostgresBars"]

# pg_advisory_xact_lock(int4, int4): this namespace ('bars') + hashtext(symbol).
PG_LOCK_NAMESPACE = 0x62617273
_STAGE = "_clean_bars_stage"
_VALUE_COLUMNS = ("open", "high", "low", "close", "volume", "instrument_id", "raw_symbol")


def raw_symbol_groups(raw_symbol: np.ndarray) -> list[tuple[int, np.ndarray | None]]:
    """The batch's rows by byte length of their ``raw_symbol`` (S16): [(length, row indices)], indices None when
    every row has the one length. Length 0 (b"", the contract unknown) is stored as NULL."""
    lengths = np.strings.str_len(raw_symbol)
    if len(lengths) == 0 or lengths.min() == lengths.max():
        return [(int(lengths[0]) if len(lengths) else 0, None)]
    return [(int(length), np.flatnonzero(lengths == length)) for length in np.unique(lengths)]


def pg_encode(batch: np.ndarray, run_id: int | None, symbol: bytes | None) -> bytes:
    """A complete PGCOPY binary stream for ([symbol], ts, open..close, volume, instrument_id, [ingest_run_id],
    raw_symbol). A text field's length word is part of the numpy record, so rows are encoded in one record array
    per raw_symbol length (``raw_symbol_groups``, usually one or two) and the stream holds them group after group:
    not in ts order when a batch has several groups."""
    head = []
    if symbol is not None:
        head.append(("symbol", f"S{len(symbol)}"))
    head += [("ts", ">i8"), ("open", ">f8"), ("high", ">f8"), ("low", ">f8"), ("close", ">f8"),
             ("volume", ">i8"), ("instrument_id", ">i8")]
    if run_id is not None:
        head.append(("ingest_run_id", ">i4"))
    parts = []
    for length, rows in raw_symbol_groups(batch["raw_symbol"]):
        group = batch if rows is None else batch[rows]
        rec = pgcopy.new_rows([*head, ("raw_symbol", f"S{length}" if length else None)], len(group))
        if symbol is not None:
            rec["symbol"] = symbol
        rec["ts"] = pgcopy.to_timestamptz(group["ts"])
        for name in ("open", "high", "low", "close"):
            rec[name] = to_prices(group[name])
        rec["volume"] = group["volume"].view(np.int64)
        rec["instrument_id"] = group["instrument_id"]
        if run_id is not None:
            rec["ingest_run_id"] = run_id
        if length:
            rec["raw_symbol"] = group["raw_symbol"]  # S16 -> S<length>: exactly the group's bytes
        parts.append(rec)
    return pgcopy.encode(*parts)


class PostgresBars:
    """The PostgreSQL side of CleanBarWriter for one symbol and ingest run."""

    ts_unit_ns = 1_000  # TIMESTAMPTZ keeps microseconds
    # A writer that does not take the symbol lock inserted into the range after the check: write the batch again
    # without the direct path (its whole transaction was rolled back).
    conflicts = (psycopg.errors.UniqueViolation,)

    def __init__(self, symbol: str, ingest_run_id: int):
        self.symbol = symbol
        self.ingest_run_id = ingest_run_id
        self._symbol_bytes = symbol.encode("utf-8")

    def encode(self, batch: np.ndarray) -> bytes:
        """The direct COPY's stream (no database access: may run in another thread)."""
        return pg_encode(batch, self.ingest_run_id, self._symbol_bytes)

    def upsert(self, conn: Connection, batch: np.ndarray, payload: bytes, direct: bool) -> tuple[int, int, int]:
        """Write the ts-sorted ``batch`` (``payload`` = its ``encode``) in ``conn``'s transaction: (inserted,
        updated, unchanged). ``direct``: COPY straight into the table when its range holds no row."""
        lo = ns_to_datetime(batch["ts"][0], ceil=True)
        hi = ns_to_datetime(batch["ts"][-1], ceil=True)
        with conn.connection.driver_connection.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (PG_LOCK_NAMESPACE, self.symbol))
            cur.execute(
                f"SELECT EXISTS (SELECT 1 FROM {CLEAN_BARS} WHERE symbol = %s AND ts BETWEEN %s AND %s)",
                (self.symbol, lo, hi),
            )
            if direct and not cur.fetchone()[0]:
                self._pg_copy_direct(cur, payload)
                return len(batch), 0, 0
            return self._pg_copy_staged(cur, batch, lo, hi)

    def _pg_copy_direct(self, cur, payload: bytes) -> None:
        with cur.copy(
            f"COPY {CLEAN_BARS} (symbol, ts, open, high, low, close, volume, instrument_id, ingest_run_id, "
            "raw_symbol) "
            "FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.write(payload)

    def _pg_copy_staged(self, cur, batch: np.ndarray, lo: datetime, hi: datetime) -> tuple[int, int, int]:
        cur.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} (ts timestamptz NOT NULL, open float8 NOT NULL, "
            "high float8 NOT NULL, low float8 NOT NULL, close float8 NOT NULL, volume int8 NOT NULL, "
            "instrument_id int8, raw_symbol text) ON COMMIT DELETE ROWS"
        )
        with cur.copy(
            f"COPY {_STAGE} (ts, open, high, low, close, volume, instrument_id, raw_symbol) "
            "FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.write(pg_encode(batch, None, None))
        if cur.rowcount != len(batch):
            raise RuntimeError(f"staging COPY of {self.symbol} loaded {cur.rowcount} of {len(batch)} rows")
        set_values = ", ".join(f"{c} = EXCLUDED.{c}" for c in (*_VALUE_COLUMNS, "ingest_run_id"))
        # Only the new and changed rows leave the join (a row the table holds with identical values is dropped by
        # the join filter), so the CTE that feeds both the upsert and the counts stays small: nothing is spilled
        # to a temp file on a rerun of unchanged bars. The staging table holds exactly the batch's rows (emptied at
        # every commit or rollback, row count checked above), each ts once, so every row the join drops is
        # unchanged.
        cur.execute(
            f"""
            WITH diff AS (
                SELECT s.*, t.ts IS NOT NULL AS existed
                FROM {_STAGE} s
                LEFT JOIN {CLEAN_BARS} t
                       ON t.symbol = %(symbol)s AND t.ts = s.ts AND t.ts BETWEEN %(lo)s AND %(hi)s
                WHERE (t.open = s.open AND t.high = s.high AND t.low = s.low AND t.close = s.close
                       AND t.volume = s.volume AND t.instrument_id IS NOT DISTINCT FROM s.instrument_id
                       AND t.raw_symbol IS NOT DISTINCT FROM s.raw_symbol) IS NOT TRUE
            ), up AS (
                INSERT INTO {CLEAN_BARS} (symbol, ts, open, high, low, close, volume, instrument_id, raw_symbol,
                                          ingest_run_id)
                SELECT %(symbol)s, ts, open, high, low, close, volume, instrument_id, raw_symbol, %(run)s
                FROM diff
                ON CONFLICT (symbol, ts) DO UPDATE SET {set_values}
                RETURNING 1
            )
            SELECT count(*) FILTER (WHERE NOT existed),
                   count(*) FILTER (WHERE existed),
                   (SELECT count(*) FROM up)
            FROM diff
            """,
            {"symbol": self.symbol, "lo": lo, "hi": hi, "run": self.ingest_run_id},
        )
        inserted, updated, written = cur.fetchone()
        unchanged = len(batch) - inserted - updated
        if written != inserted + updated or unchanged < 0:
            raise RuntimeError(
                f"staged upsert of {self.symbol} wrote {written} rows, classified {inserted} new "
                f"+ {updated} changed of {len(batch)}"
            )
        return inserted, updated, unchanged
