"""Bulk, exact-count, idempotent writes of validated bars into market_bars_ohlcv_1m_clean, and fast reads.

Row values: open..close = raw / 1e9 as float64 (exact round trip, see ``engine.validate.to_prices``), volume and
instrument_id as int64, ingest_run_id of the run that last changed the row.

Counting (key (symbol, ts)):
* inserted  - no row with that key existed;
* updated   - a row existed and open/high/low/close/volume/instrument_id differ: overwritten, ingest_run_id set
  to the writing run;
* unchanged - a row existed with identical values: not rewritten, it keeps the ingest_run_id that wrote it.

Each batch of ``batch_size`` rows is one transaction; ``CleanBarWriter.commit`` lets the caller write more in it
(the ingest's quarantine rows and counters). Writers of the same symbol are serialised per batch: on
PostgreSQL by a transaction-scoped advisory lock on the symbol, on SQLite by BEGIN IMMEDIATE (see
``engine.db.connect``). The counts are read inside that critical section, so they are exact under concurrency.

PostgreSQL: rows are sent with binary COPY from a buffer encoded by numpy (no per-row Python, see
``engine.db.pgcopy``).
* the batch's ts range holds no row of the symbol -> COPY straight into the table (all inserted);
* otherwise -> COPY into a temporary staging table, classify it against the table with one join, then
  INSERT ... ON CONFLICT DO UPDATE only the new and changed rows.
SQLite: the batch's existing rows are read with one range query on the primary key and classified with numpy;
new rows are INSERTed and changed rows UPDATEd with executemany; unchanged rows are not touched.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import psycopg
from psycopg import sql
from sqlalchemy import Connection, Engine

from engine.bars import RAW_BAR_DTYPE
from engine.db import pgcopy
from engine.db.schema import CLEAN_BARS
from engine.db.types import NS_PER_SECOND, ns_to_datetime, sqlite_ts_text
from engine.validate import REASONS, to_prices

__all__ = [
    "BAR_READ_DTYPE",
    "CleanBarWriter",
    "WriteCounts",
    "read_bars",
    "sqlite_ts_text",
    "write_quarantine",
]

BAR_READ_DTYPE = np.dtype(
    [("ts", "i8"), ("open", "f8"), ("high", "f8"), ("low", "f8"), ("close", "f8"), ("volume", "i8")]
)

# pg_advisory_xact_lock(int4, int4): this namespace ('bars') + hashtext(symbol).
_PG_LOCK_NAMESPACE = 0x62617273
# What read_bars' COPY sends per row: ts timestamptz, open..close float8, volume int8 (BAR_READ_DTYPE's order).
_PG_READ_FIELDS = [("ts", ">i8"), ("open", ">f8"), ("high", ">f8"), ("low", ">f8"), ("close", ">f8"),
                   ("volume", ">i8")]
_STAGE = "_clean_bars_stage"
_VALUE_COLUMNS = ("open", "high", "low", "close", "volume", "instrument_id")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SQLITE_COLUMNS = ("symbol", "ts", "open", "high", "low", "close", "volume", "instrument_id", "ingest_run_id")
_SQLITE_EXISTING_DTYPE = np.dtype(
    [("secs", "i8"), ("open", "f8"), ("high", "f8"), ("low", "f8"), ("close", "f8"), ("volume", "i8"),
     ("instrument_id", "i8")]
)
# SQLite before 3.32 allows 999 bound variables per statement.
_SQLITE_MAX_VARIABLES = 999


@dataclass
class WriteCounts:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    batch_commits: int = 0

    def add(self, other: WriteCounts) -> None:
        self.inserted += other.inserted
        self.updated += other.updated
        self.unchanged += other.unchanged
        self.batch_commits += other.batch_commits


# --------------------------------------------------------------------------------------------
# Vectorised encodings


def _pg_encode(batch: np.ndarray, run_id: int | None, symbol: bytes | None) -> bytes:
    """A complete PGCOPY binary stream for ([symbol], ts, open..close, volume, instrument_id, [ingest_run_id])."""
    fields = []
    if symbol is not None:
        fields.append(("symbol", f"S{len(symbol)}"))
    fields += [("ts", ">i8"), ("open", ">f8"), ("high", ">f8"), ("low", ">f8"), ("close", ">f8"),
               ("volume", ">i8"), ("instrument_id", ">i8")]
    if run_id is not None:
        fields.append(("ingest_run_id", ">i4"))
    rec = pgcopy.new_rows(fields, len(batch))
    if symbol is not None:
        rec["symbol"] = symbol
    rec["ts"] = pgcopy.to_timestamptz(batch["ts"])
    for name in ("open", "high", "low", "close"):
        rec[name] = to_prices(batch[name])
    rec["volume"] = batch["volume"].view(np.int64)
    rec["instrument_id"] = batch["instrument_id"]
    if run_id is not None:
        rec["ingest_run_id"] = run_id
    return pgcopy.encode(rec)


def _pg_decode_bars(data: bytes | bytearray) -> np.ndarray:
    """Parse a binary COPY of (ts timestamptz, open..close float8, volume int8) into BAR_READ_DTYPE."""
    rec = pgcopy.decode(data, _PG_READ_FIELDS)
    out = np.empty(len(rec), dtype=BAR_READ_DTYPE)
    if len(rec):
        # All six values are 8 bytes wide, in BAR_READ_DTYPE's order: byte-swap them as int64 bit patterns
        # straight into the output in one pass (float bits survive unchanged).
        shape = (len(rec), len(_PG_READ_FIELDS))
        first = rec.dtype.fields["ts"][1]  # the next value is one length word (4 bytes) + 8 bytes further on
        values = np.ndarray(shape, dtype=">i8", buffer=rec, offset=first, strides=(rec.dtype.itemsize, 12))
        out.view(np.int64).reshape(shape)[:] = values
    out["ts"] = pgcopy.from_timestamptz(out["ts"])
    return out


def _ts_param(engine: Engine, ns: int):
    """A bound for `ts >= x` / `ts < x` equivalent to comparing in ns (ceil to the stored precision)."""
    if engine.dialect.name == "postgresql":
        return ns_to_datetime(ns, ceil=True)
    secs = -(-int(ns) // NS_PER_SECOND)
    return str(sqlite_ts_text(np.array([secs * NS_PER_SECOND]))[0])


# --------------------------------------------------------------------------------------------
# The writer

# More work for a batch's transaction: called with its connection and the batch's counts before COMMIT.
Also = Callable[[Connection, WriteCounts], None]


class CleanBarWriter:
    """Buffers validated bars and upserts them into market_bars_ohlcv_1m_clean, one transaction per batch.

    If a batch fails, the exception propagates, nothing of that batch is committed and its rows stay at the
    head of the buffer (a later ``flush()`` retries them); ``counts`` only ever include committed batches.
    """

    def __init__(self, engine: Engine, symbol: str, ingest_run_id: int, batch_size: int = 50_000):
        if not symbol:
            raise ValueError("symbol must be a non-empty string")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.engine = engine
        self.symbol = symbol
        self.ingest_run_id = int(ingest_run_id)
        self.batch_size = int(batch_size)
        self.counts = WriteCounts()
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0
        self._dialect = engine.dialect.name
        if self._dialect not in ("postgresql", "sqlite"):
            raise ValueError(f"unsupported database dialect {self._dialect!r}")
        self._symbol_bytes = symbol.encode("utf-8")
        # Stored precision: TIMESTAMPTZ keeps microseconds, the SQLite text keeps seconds.
        self._ts_unit_ns = 1_000 if self._dialect == "postgresql" else NS_PER_SECOND

    @property
    def pending_rows(self) -> int:
        """Rows buffered (or kept after a failed batch) and not yet committed."""
        return self._pending_rows

    @property
    def committed(self) -> WriteCounts:
        """Totals of the batches committed so far (what a failed ingest did write)."""
        return dataclasses.replace(self.counts)

    def write(self, good: np.ndarray) -> None:
        """Queue validated RAW_BAR_DTYPE rows; every full batch of ``batch_size`` rows is committed now."""
        good = np.asarray(good)
        if good.dtype != RAW_BAR_DTYPE:
            raise TypeError(f"expected RAW_BAR_DTYPE rows, got dtype {good.dtype}")
        if len(good) == 0:
            return
        self._pending.append(good)
        self._pending_rows += len(good)
        if self._pending_rows >= self.batch_size:
            self._drain(final=False)

    def commit(self, good: np.ndarray, also: Also | None = None) -> WriteCounts:
        """Upsert exactly these rows (nothing is buffered) in ONE transaction and return its counts.

        ``also(conn, counts)`` runs in the same transaction after the upsert, with this batch's counts: what it
        writes commits or rolls back together with the bars. A batch without rows still commits ``also``.
        """
        good = np.asarray(good)
        if good.dtype != RAW_BAR_DTYPE:
            raise TypeError(f"expected RAW_BAR_DTYPE rows, got dtype {good.dtype}")
        counts = self._commit_batch(good, also)
        self.counts.add(counts)
        return dataclasses.replace(counts)

    def flush(self) -> WriteCounts:
        """Commit whatever is buffered and return the totals so far."""
        self._drain(final=True)
        return dataclasses.replace(self.counts)

    def _drain(self, final: bool) -> None:
        if not self._pending:
            return
        data = np.concatenate(self._pending)  # always a copy: the caller may reuse its arrays
        start = 0
        try:
            while len(data) - start >= self.batch_size or (final and start < len(data)):
                batch = data[start : start + self.batch_size]
                self.counts.add(self._commit_batch(batch))
                start += len(batch)
        finally:
            rest = data[start:].copy()
            self._pending = [rest] if len(rest) else []
            self._pending_rows = len(rest)

    def _commit_batch(self, batch: np.ndarray, also: Also | None = None) -> WriteCounts:
        if len(batch) == 0:
            counts = WriteCounts(batch_commits=1)
            with self.engine.begin() as conn:
                if also is not None:
                    also(conn, counts)
            return counts
        ts = batch["ts"]
        if len(ts) > 1 and not bool(np.all(ts[1:] >= ts[:-1])):
            batch = batch[np.argsort(ts, kind="stable")]
            ts = batch["ts"]
        if len(ts) > 1 and not bool(np.all(ts[1:] > ts[:-1])):
            raise ValueError(f"duplicate ts in a batch for {self.symbol}: validate bars before writing them")
        if (ts % self._ts_unit_ns).any():
            raise ValueError(
                f"ts of {self.symbol} not on whole {self._ts_unit_ns} ns (the {self._dialect} storage precision)"
            )
        if self._dialect == "postgresql":
            return self._commit_pg(batch, also)
        return self._commit_sqlite(batch, also)

    # ---- PostgreSQL

    def _commit_pg(self, batch: np.ndarray, also: Also | None) -> WriteCounts:
        try:
            return self._commit_pg_once(batch, allow_direct=True, also=also)
        except psycopg.errors.UniqueViolation:
            # A writer that does not take the symbol lock inserted into the range after our check: stage instead
            # (the whole transaction, `also` included, was rolled back).
            return self._commit_pg_once(batch, allow_direct=False, also=also)

    def _commit_pg_once(self, batch: np.ndarray, allow_direct: bool, also: Also | None = None) -> WriteCounts:
        lo = ns_to_datetime(batch["ts"][0], ceil=True)
        hi = ns_to_datetime(batch["ts"][-1], ceil=True)
        n = len(batch)
        with self.engine.begin() as conn:
            raw = conn.connection.driver_connection
            with raw.cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_PG_LOCK_NAMESPACE, self.symbol))
                cur.execute(
                    f"SELECT EXISTS (SELECT 1 FROM {CLEAN_BARS} WHERE symbol = %s AND ts BETWEEN %s AND %s)",
                    (self.symbol, lo, hi),
                )
                has_rows = cur.fetchone()[0]
                if allow_direct and not has_rows:
                    self._pg_copy_direct(cur, batch)
                    counts = WriteCounts(inserted=n, batch_commits=1)
                else:
                    counts = self._pg_copy_staged(cur, batch, lo, hi)
            if also is not None:
                also(conn, counts)
        return counts

    def _pg_copy_direct(self, cur, batch: np.ndarray) -> None:
        payload = _pg_encode(batch, self.ingest_run_id, self._symbol_bytes)
        with cur.copy(
            f"COPY {CLEAN_BARS} (symbol, ts, open, high, low, close, volume, instrument_id, ingest_run_id) "
            "FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.write(payload)

    def _pg_copy_staged(self, cur, batch: np.ndarray, lo: datetime, hi: datetime) -> WriteCounts:
        cur.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} (ts timestamptz NOT NULL, open float8 NOT NULL, "
            "high float8 NOT NULL, low float8 NOT NULL, close float8 NOT NULL, volume int8 NOT NULL, "
            "instrument_id int8) ON COMMIT DELETE ROWS"
        )
        with cur.copy(
            f"COPY {_STAGE} (ts, open, high, low, close, volume, instrument_id) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.write(_pg_encode(batch, None, None))
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
                       AND t.volume = s.volume AND t.instrument_id IS NOT DISTINCT FROM s.instrument_id) IS NOT TRUE
            ), up AS (
                INSERT INTO {CLEAN_BARS} (symbol, ts, open, high, low, close, volume, instrument_id, ingest_run_id)
                SELECT %(symbol)s, ts, open, high, low, close, volume, instrument_id, %(run)s
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
        return WriteCounts(inserted=inserted, updated=updated, unchanged=unchanged, batch_commits=1)

    # ---- SQLite

    def _commit_sqlite(self, batch: np.ndarray, also: Also | None) -> WriteCounts:
        ts_text = sqlite_ts_text(batch["ts"])
        prices = {name: to_prices(batch[name]) for name in ("open", "high", "low", "close")}
        volume = batch["volume"].view(np.int64)
        instrument = batch["instrument_id"].astype(np.int64)
        with self.engine.begin() as conn:  # BEGIN IMMEDIATE: the write lock is held from here to COMMIT
            raw = conn.connection.driver_connection
            cur = raw.cursor()
            try:
                existed, same = self._sqlite_classify(cur, batch["ts"], ts_text, prices, volume, instrument)
                new = ~existed
                changed = existed & ~same
                if new.any():
                    self._sqlite_insert(cur, new, ts_text, prices, volume, instrument)
                if changed.any():
                    self._sqlite_update(cur, changed, ts_text, prices, volume, instrument)
            finally:
                cur.close()
            counts = WriteCounts(
                inserted=int(new.sum()), updated=int(changed.sum()), unchanged=int(same.sum()), batch_commits=1
            )
            if also is not None:
                also(conn, counts)
        return counts

    def _sqlite_classify(self, cur, batch_ts, ts_text, prices, volume, instrument):
        """(existed, same) masks over the batch, from one primary-key range query."""
        cur.execute(
            f"SELECT CAST(strftime('%s', ts) AS INTEGER), open, high, low, close, volume, "
            f"COALESCE(instrument_id, -1) FROM {CLEAN_BARS} WHERE symbol = ? AND ts BETWEEN ? AND ?",
            (self.symbol, str(ts_text[0]), str(ts_text[-1])),
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
            equal &= existing[name] == prices[name][pos]
        equal &= existing["volume"] == volume[pos]
        equal &= existing["instrument_id"] == instrument[pos]
        existed[pos] = True
        same[pos] = equal
        return existed, same

    def _sqlite_rows(self, mask, ts_text, prices, volume, instrument) -> np.ndarray:
        """The masked rows as an (n, 9) object array of Python values, in _SQLITE_COLUMNS order."""
        n = int(mask.sum())
        rows = np.empty((n, len(_SQLITE_COLUMNS)), dtype=object)
        rows[:, 0] = self.symbol
        rows[:, 1] = ts_text[mask].astype(object)
        for i, name in enumerate(("open", "high", "low", "close"), start=2):
            rows[:, i] = prices[name][mask].astype(object)
        rows[:, 6] = volume[mask].astype(object)
        rows[:, 7] = instrument[mask].astype(object)
        rows[:, 8] = self.ingest_run_id
        return rows

    def _sqlite_insert(self, cur, mask, ts_text, prices, volume, instrument) -> None:
        _sqlite_insert_many(cur, self._sqlite_rows(mask, ts_text, prices, volume, instrument), "")

    def _sqlite_update(self, cur, mask, ts_text, prices, volume, instrument) -> None:
        # Only rows known (inside this write transaction) to exist with other values get here, so the upsert
        # always takes its DO UPDATE branch; it lets many rows share one statement.
        assignments = ", ".join(f"{c} = excluded.{c}" for c in (*_VALUE_COLUMNS, "ingest_run_id"))
        _sqlite_insert_many(
            cur,
            self._sqlite_rows(mask, ts_text, prices, volume, instrument),
            f" ON CONFLICT (symbol, ts) DO UPDATE SET {assignments}",
        )


def _sqlite_insert_many(cur, rows: np.ndarray, tail: str) -> None:
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


# --------------------------------------------------------------------------------------------
# Quarantine, window checks, reads


def write_quarantine(db: Engine | Connection, ingest_run_id: int, symbol: str, bad: np.ndarray, reasons) -> int:
    """Record rejected bars in clean_ingest_quarantine; returns the number of rows written.

    ``db``: an Engine (one transaction of its own) or a Connection (inside the caller's transaction).

    ``reasons``: one per bad row, reason strings or integer codes into ``engine.validate.REASONS``. Raw values
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


def read_bars(
    engine: Engine, table_name: str, symbol: str, start_ns: int | None = None, end_ns: int | None = None
) -> np.ndarray:
    """Bars of ``symbol`` with start_ns <= ts < end_ns (None = unbounded) as BAR_READ_DTYPE, ordered by ts.

    ``table_name`` is a bars table (symbol, ts, open, high, low, close, volume), e.g. the clean or legacy one.
    Neither path builds a Python object per bar: PostgreSQL sends a binary COPY that is drained straight from
    libpq and decoded by numpy in one go; SQLite turns the timestamp text into integers itself.
    """
    if not _IDENTIFIER.match(table_name):
        raise ValueError(f"not a plain table name: {table_name!r}")
    if start_ns is not None and end_ns is not None and end_ns <= start_ns:
        return np.empty(0, dtype=BAR_READ_DTYPE)
    postgres = engine.dialect.name == "postgresql"
    mark = "{}" if postgres else "?"  # PostgreSQL: psycopg.sql placeholders (COPY takes no bound parameters)
    where = [f"symbol = {mark}"]
    params: list = [symbol]
    if start_ns is not None:
        where.append(f"ts >= {mark}")
        params.append(_ts_param(engine, start_ns))
    if end_ns is not None:
        where.append(f"ts < {mark}")
        params.append(_ts_param(engine, end_ns))
    condition = " AND ".join(where)
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        if postgres:
            query = sql.SQL(
                f'COPY (SELECT ts, open::float8, high::float8, low::float8, close::float8, volume::int8 '
                f'FROM "{table_name}" WHERE {condition} ORDER BY ts) TO STDOUT (FORMAT BINARY)'
            ).format(*map(sql.Literal, params))
            out = _pg_decode_bars(pgcopy.copy_out(raw, query.as_bytes(raw)))
        else:
            cur = raw.cursor()
            try:
                cur.execute(
                    f"SELECT CAST(strftime('%s', ts) AS INTEGER) * 1000000000, open, high, low, close, volume "
                    f'FROM "{table_name}" WHERE {condition} ORDER BY ts',
                    params,
                )
                out = np.array(cur.fetchall(), dtype=BAR_READ_DTYPE)
            finally:
                cur.close()
        raw.rollback()  # end the driver's implicit read transaction (PostgreSQL; no-op on SQLite)
    return out
