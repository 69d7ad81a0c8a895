"""Fast reads of a bars table into a numpy array (no Python object per bar)."""

from __future__ import annotations

import re
from datetime import datetime

import numpy as np
from psycopg import sql
from sqlalchemy import Engine

from engine.db import pgcopy
from engine.db.types import NS_PER_SECOND, datetime_to_ns, sqlite_ts_text

__all__ = ["BAR_READ_DTYPE", "read_bars"]

BAR_READ_DTYPE = np.dtype(
    [("ts", "i8"), ("open", "f8"), ("high", "f8"), ("low", "f8"), ("close", "f8"), ("volume", "i8")]
)

# What read_bars' COPY sends per row: ts timestamptz, open..close float8, volume int8 (BAR_READ_DTYPE's order).
_PG_READ_FIELDS = [("ts", ">i8"), ("open", ">f8"), ("high", ">f8"), ("low", ">f8"), ("close", ">f8"),
                   ("volume", ">i8")]
# How long a read waits for a SQLite lock (the engine's own connections wait as long: engine.db.connect).
_SQLITE_BUSY_MS = 60_000
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def read_bars(
    engine: Engine, table_name: str, symbol: str, start: datetime | None = None, end: datetime | None = None
) -> np.ndarray:
    """Bars of ``symbol`` with start <= ts < end (tz-aware UTC datetimes, None = unbounded) as BAR_READ_DTYPE,
    ordered by ts (``ts`` in ns since the epoch).

    ``table_name`` is a bars table (symbol, ts, open, high, low, close, volume), e.g. the clean or legacy one.
    Neither path builds a Python object per bar: PostgreSQL sends a binary COPY that is drained straight from
    libpq and decoded by numpy in one go; a SQLite file is read by the ADBC SQLite driver into Arrow columns (its
    timestamp text parsed by Arrow), in one statement, so in one snapshot.
    """
    if not _IDENTIFIER.match(table_name):
        raise ValueError(f"not a plain table name: {table_name!r}")
    for bound in (start, end):
        if bound is not None and bound.tzinfo is None:
            raise ValueError(f"naive datetime {bound!r}: engine timestamps are timezone-aware UTC")
    if start is not None and end is not None and end <= start:
        return np.empty(0, dtype=BAR_READ_DTYPE)
    postgres = engine.dialect.name == "postgresql"
    mark = "{}" if postgres else "?"  # PostgreSQL: psycopg.sql placeholders (COPY takes no bound parameters)
    where = [f"symbol = {mark}"]
    params: list = [symbol]
    if start is not None:
        where.append(f"ts >= {mark}")
        params.append(start if postgres else _sqlite_bound(start))
    if end is not None:
        where.append(f"ts < {mark}")
        params.append(end if postgres else _sqlite_bound(end))
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
            out = _sqlite_read(engine, raw, f'FROM "{table_name}" WHERE {condition} ORDER BY ts', params)
        raw.rollback()  # end the driver's implicit read transaction (PostgreSQL; no-op on SQLite)
    return out


def _sqlite_read(engine: Engine, raw, rest: str, params: list) -> np.ndarray:
    """`SELECT <the bar columns> <rest>` as BAR_READ_DTYPE: through ADBC for a database file; through the sqlite3
    connection (one tuple per row) for an in-memory database, which no second connection can see, or a URL with
    connection options."""
    values = "CAST(open AS REAL), CAST(high AS REAL), CAST(low AS REAL), CAST(close AS REAL), CAST(volume AS INTEGER)"
    database = engine.url.database
    if not database or database == ":memory:" or engine.url.query:
        cur = raw.cursor()
        try:
            rows = cur.execute(f"SELECT CAST(strftime('%s', ts) AS INTEGER) * 1000000000, {values} {rest}",
                               params).fetchall()
        finally:
            cur.close()
        return np.array(rows, dtype=BAR_READ_DTYPE)
    import adbc_driver_sqlite.dbapi
    import pyarrow as pa

    with adbc_driver_sqlite.dbapi.connect(database) as conn, conn.cursor() as cur:
        cur.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_MS}")
        cur.execute(f"SELECT ts, {values} {rest}", params)
        table = cur.fetch_arrow_table()
    out = np.empty(table.num_rows, dtype=BAR_READ_DTYPE)
    if table.num_rows:
        ts = table.column(0)
        if ts.type != pa.string():
            raise ValueError(f"{database}: ts is {ts.type}, not the text the engine stores on SQLite")
        out["ts"] = ts.cast(pa.timestamp("ns", tz="UTC")).cast(pa.int64()).to_numpy()
        for k, name in enumerate(BAR_READ_DTYPE.names[1:], start=1):
            out[name] = table.column(k).to_numpy()
    return out


def _sqlite_bound(value: datetime) -> str:
    """The timestamp text for `ts >= x` / `ts < x`: the instant rounded up to the stored second."""
    secs = -(-datetime_to_ns(value) // NS_PER_SECOND)
    return str(sqlite_ts_text(np.array([secs * NS_PER_SECOND]))[0])


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
