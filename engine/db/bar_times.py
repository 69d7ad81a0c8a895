"""Fast read of the timestamps only of a bars table (what session quality needs), as one int64 numpy array."""

from __future__ import annotations

import re
from datetime import datetime

import numpy as np
from psycopg import sql
from sqlalchemy import Engine, Table, select

from engine.db import pgcopy
from engine.db.types import NS_PER_SECOND, datetime_to_ns, sqlite_ts_text

__all__ = ["any_bar_between", "read_bar_times"]

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def any_bar_between(engine: Engine, table: Table, symbol: str, start: datetime, end: datetime) -> bool:
    """Whether ``symbol`` has a bar with start <= ts < end (one index probe)."""
    c = table.c
    with engine.connect() as conn:
        query = select(c.ts).where(c.symbol == symbol, c.ts >= start, c.ts < end).limit(1)
        return conn.execute(query).first() is not None


def read_bar_times(engine: Engine, table_name: str, symbol: str, start: datetime, end: datetime) -> np.ndarray:
    """ts (ns since the epoch, int64, ascending) of the bars of ``symbol`` with start <= ts < end (tz-aware UTC).

    PostgreSQL: a binary COPY of the one column decoded by numpy; SQLite: the timestamp text turned into
    integers by SQLite itself. No Python object per bar on either.
    """
    if not _IDENTIFIER.match(table_name):
        raise ValueError(f"not a plain table name: {table_name!r}")
    for bound in (start, end):
        if bound.tzinfo is None:
            raise ValueError(f"naive datetime {bound!r}: engine timestamps are timezone-aware UTC")
    if end <= start:
        return np.empty(0, dtype=np.int64)
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        if engine.dialect.name == "postgresql":
            query = sql.SQL(
                f'COPY (SELECT ts FROM "{table_name}" WHERE symbol = {{}} AND ts >= {{}} AND ts < {{}}) '
                "TO STDOUT (FORMAT BINARY)"
            ).format(sql.Literal(symbol), sql.Literal(start), sql.Literal(end))
            rec = pgcopy.decode(pgcopy.copy_out(raw, query.as_bytes(raw)), [("ts", ">i8")])
            out = np.sort(pgcopy.from_timestamptz(rec["ts"].astype(np.int64)))  # numpy sorts faster than a plan
        else:
            # One text value for the whole range (no Python object per bar): the fixed-width stored texts
            # concatenated, parsed by numpy, sorted after (group_concat's order is not guaranteed).
            text = raw.execute(
                f"SELECT group_concat(ts, '') FROM \"{table_name}\" WHERE symbol = ? AND ts >= ? AND ts < ?",
                [symbol, _sqlite_bound(start), _sqlite_bound(end)],
            ).fetchone()[0]
            out = np.sort(_parse_sqlite_ts(text or "")) * NS_PER_SECOND
        raw.rollback()  # end the driver's implicit read transaction (PostgreSQL; no-op on SQLite)
    return out


def _parse_sqlite_ts(text: str) -> np.ndarray:
    """Seconds since the epoch of concatenated 'YYYY-MM-DD HH:MM:SS+00:00' texts (``SQLITE_TS_FORMAT``)."""
    width = len("YYYY-MM-DD HH:MM:SS+00:00")
    raw = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    rows = raw.reshape(-1, width) if len(raw) % width == 0 else None
    if rows is None or (rows[:, 19:] != np.frombuffer(b"+00:00", dtype=np.uint8)).any():
        raise ValueError("bar timestamps in SQLite are not all 'YYYY-MM-DD HH:MM:SS+00:00' texts")
    return np.ascontiguousarray(rows[:, :19]).view("S19").ravel().astype("datetime64[s]").astype(np.int64)


def _sqlite_bound(value: datetime) -> str:
    """The timestamp text for `ts >= x` / `ts < x`: the instant rounded up to the stored second."""
    secs = -(-datetime_to_ns(value) // NS_PER_SECOND)
    return str(sqlite_ts_text(np.array([secs * NS_PER_SECOND]))[0])
