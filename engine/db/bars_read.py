"""Fast reads of a bars table into a numpy array (no Python object per bar)."""

from __future__ import annotations

import itertools
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
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def read_bars(
    engine: Engine, table_name: str, symbol: str, start: datetime | None = None, end: datetime | None = None
) -> np.ndarray:
    """Bars of ``symbol`` with start <= ts < end (tz-aware UTC datetimes, None = unbounded) as BAR_READ_DTYPE,
    ordered by ts (``ts`` in ns since the epoch).

    ``table_name`` is a bars table (symbol, ts, open, high, low, close, volume), e.g. the clean or legacy one.
    Neither path builds a Python object per bar: PostgreSQL sends a binary COPY that is drained straight from
    libpq and decoded by numpy in one go; SQLite sends the timestamps as one string parsed by numpy and the values
    as rows flattened straight into one float array.
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
            out = _sqlite_read(raw, f'FROM "{table_name}" WHERE {condition} ORDER BY ts', params)
        raw.rollback()  # end the driver's implicit read transaction (PostgreSQL; no-op on SQLite)
    return out


def _sqlite_read(raw, rest: str, params: list) -> np.ndarray:
    """`SELECT <the bar columns> <rest>` on a sqlite3 connection (in autocommit mode) as BAR_READ_DTYPE.

    Two statements in one read transaction (one snapshot, the same rows in the same order): the timestamp texts and
    volumes concatenated (exact), then open..close as rows flattened into a float array without a list of tuples.
    Timestamps not in the engine's fixed-width format are converted by SQLite instead, row by row.
    """
    cur = raw.cursor()
    try:
        cur.execute("BEGIN")
        ts_text, volume_text = cur.execute(
            f"SELECT group_concat(ts, ''), group_concat(volume) FROM (SELECT ts, volume {rest})", params).fetchone()
        ts = _parse_sqlite_ts(ts_text or "")
        if ts is None:
            cur.execute(f"SELECT CAST(strftime('%s', ts) AS INTEGER) * {NS_PER_SECOND} {rest}", params)
            ts = np.fromiter(itertools.chain.from_iterable(cur), dtype=np.int64)
        out = np.empty(len(ts), dtype=BAR_READ_DTYPE)
        out["ts"] = ts
        out["volume"] = np.fromstring(volume_text, dtype=np.int64, sep=",") if len(ts) else 0
        cur.execute(f"SELECT open, high, low, close {rest}", params)  # REAL columns: every value arrives as a float
        prices = np.fromiter(itertools.chain.from_iterable(cur), dtype=np.float64, count=4 * len(ts))
        # Both statements must have seen the same rows in the same order (fromiter raises on too few).
        if cur.fetchone() is not None or (len(ts) > 1 and not (np.diff(ts) > 0).all()):
            raise RuntimeError(f"the SQLite read of {rest!r} returned its rows out of step")
        for k, name in enumerate(("open", "high", "low", "close")):
            out[name] = prices[k::4]
    finally:
        cur.close()
        if raw.in_transaction:
            raw.rollback()
    return out


# 'YYYY-MM-DD HH:MM:SS+00:00' (SQLITE_TS_FORMAT): where each field's digits and each separator sit.
_TS_DIGITS = {"year": slice(0, 4), "month": slice(5, 7), "day": slice(8, 10), "hour": slice(11, 13),
              "minute": slice(14, 16), "second": slice(17, 19)}
_TS_SEPARATORS = {4: "-", 7: "-", 10: " ", 13: ":", 16: ":", 19: "+", 20: "0", 21: "0", 22: ":", 23: "0", 24: "0"}
_TS_WIDTH = 25
_DIGIT_COLUMNS = [i for part in _TS_DIGITS.values() for i in range(part.start, part.stop)]


def _parse_sqlite_ts(text: str) -> np.ndarray | None:
    """Concatenated fixed-width timestamp texts -> int64 ns since the epoch; None unless every one has the format."""
    data = text.encode("ascii", errors="replace")
    if len(data) % _TS_WIDTH:
        return None
    chars = np.frombuffer(data, dtype=np.uint8).reshape(-1, _TS_WIDTH)
    if not all((chars[:, i] == ord(c)).all() for i, c in _TS_SEPARATORS.items()):
        return None
    zero = np.uint8(ord("0"))
    if any(((chars[:, i] - zero) > 9).any() for i in _DIGIT_COLUMNS):  # a non-digit wraps around to above 9
        return None
    # One int64 column at a time: the temporaries stay a few bytes per bar.
    field = {name: sum((chars[:, i] - zero).astype(np.int64) * 10 ** (part.stop - 1 - i)
                       for i in range(part.start, part.stop)) for name, part in _TS_DIGITS.items()}
    # Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil), vectorised.
    year = field["year"] - (field["month"] <= 2)
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (field["month"] + np.where(field["month"] > 2, -3, 9)) + 2) // 5 + field["day"] - 1
    days = era * 146097 + year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year - 719468
    seconds = ((days * 24 + field["hour"]) * 60 + field["minute"]) * 60 + field["second"]
    return seconds * NS_PER_SECOND


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
