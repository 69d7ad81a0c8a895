"""Bulk, exact-count, idempotent writes of validated bars into market_bars_ohlcv_1m_clean (and, re-exported, the
reads of ``engine.db.bars_read``).

Row values: open..close = raw / 1e9 as float64 (exact round trip, see ``engine.bars.to_prices``), volume and
instrument_id as int64, raw_symbol as text (NULL for b"", the contract unknown), ingest_run_id of the run that
last changed the row.

Counting (key (symbol, ts)):
* inserted  - no row with that key existed;
* updated   - a row existed and open/high/low/close/volume/instrument_id/raw_symbol differ (NULL differs from
  any contract, either way): overwritten, ingest_run_id set to the writing run;
* unchanged - a row existed with identical values: not rewritten, it keeps the ingest_run_id that wrote it.

Each batch of ``batch_size`` rows is one transaction; ``CleanBarWriter.commit`` lets the caller write more in it
(the ingest's quarantine rows and counters). Writers of the same symbol are serialised per batch: on
PostgreSQL by a transaction-scoped advisory lock on the symbol, on SQLite by BEGIN IMMEDIATE (see
``engine.db.connect``). The counts are read inside that critical section, so they are exact under concurrency.

How each dialect writes a batch: ``engine.db.bars_postgres`` (binary COPY), ``engine.db.bars_sqlite``.
``CleanBarWriter.prepare`` does all the work that needs no database (checks, sorting, the dialect's encoding),
so a caller can prepare the next batch in another thread while this one is written.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine

from engine.bars import RAW_BAR_DTYPE
from engine.db.bars_postgres import PostgresBars
from engine.db.bars_read import BAR_READ_DTYPE, read_bars
from engine.db.bars_sqlite import SqliteBars

__all__ = ["BAR_READ_DTYPE", "Also", "CleanBarWriter", "PreparedBatch", "WriteCounts", "read_bars"]

_DIALECTS = {"postgresql": PostgresBars, "sqlite": SqliteBars}


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


@dataclass(frozen=True)
class PreparedBatch:
    """One batch ready to commit: its rows sorted by ts and checked, and the dialect's encoding of them."""

    rows: np.ndarray
    encoded: Any


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
        dialect = _DIALECTS.get(engine.dialect.name)
        if dialect is None:
            raise ValueError(f"unsupported database dialect {engine.dialect.name!r}")
        self.engine = engine
        self.symbol = symbol
        self.ingest_run_id = int(ingest_run_id)
        self.batch_size = int(batch_size)
        self.counts = WriteCounts()
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0
        self._store = dialect(symbol, self.ingest_run_id)

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
        good = _raw_bars(good)
        if len(good) == 0:
            return
        self._pending.append(good)
        self._pending_rows += len(good)
        if self._pending_rows >= self.batch_size:
            self._drain(final=False)

    def prepare(self, good: np.ndarray) -> PreparedBatch:
        """Check, sort and encode exactly these rows for ``commit``. Touches no database and no state of the
        writer, so it may run in another thread while a batch commits."""
        batch = _raw_bars(good)
        ts = batch["ts"]
        if len(ts) > 1 and not bool(np.all(ts[1:] >= ts[:-1])):
            batch = batch[np.argsort(ts, kind="stable")]
            ts = batch["ts"]
        if len(ts) > 1 and not bool(np.all(ts[1:] > ts[:-1])):
            raise ValueError(f"duplicate ts in a batch for {self.symbol}: validate bars before writing them")
        unit = self._store.ts_unit_ns
        if (ts % unit).any():
            raise ValueError(
                f"ts of {self.symbol} not on whole {unit} ns (the {self.engine.dialect.name} storage precision)"
            )
        return PreparedBatch(batch, self._store.encode(batch) if len(batch) else None)

    def commit(self, good: np.ndarray | PreparedBatch, also: Also | None = None) -> WriteCounts:
        """Upsert exactly these rows (nothing is buffered) in ONE transaction and return its counts.

        ``good``: RAW_BAR_DTYPE rows, or a batch from ``prepare``. ``also(conn, counts)`` runs in the same
        transaction after the upsert, with this batch's counts: what it writes commits or rolls back together
        with the bars. A batch without rows still commits ``also``.
        """
        batch = good if isinstance(good, PreparedBatch) else self.prepare(good)
        counts = self._commit_batch(batch, also)
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
                rows = data[start : start + self.batch_size]
                self.counts.add(self._commit_batch(self.prepare(rows)))
                start += len(rows)
        finally:
            rest = data[start:].copy()
            self._pending = [rest] if len(rest) else []
            self._pending_rows = len(rest)

    def _commit_batch(self, batch: PreparedBatch, also: Also | None = None) -> WriteCounts:
        try:
            return self._transaction(batch, also, direct=True)
        except self._store.conflicts:
            return self._transaction(batch, also, direct=False)

    def _transaction(self, batch: PreparedBatch, also: Also | None, direct: bool) -> WriteCounts:
        with self.engine.begin() as conn:
            if len(batch.rows):
                counts = WriteCounts(*self._store.upsert(conn, batch.rows, batch.encoded, direct), batch_commits=1)
            else:
                counts = WriteCounts(batch_commits=1)
            if also is not None:
                also(conn, counts)
        return counts


def _raw_bars(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows)
    if rows.dtype != RAW_BAR_DTYPE:
        raise TypeError(f"expected RAW_BAR_DTYPE rows, got dtype {rows.dtype}")
    return rows
