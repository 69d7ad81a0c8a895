"""Read one symbol's bars into a numpy structured array (stand-in until engine/db/bars.py lands).

``read_bars(engine, table_name, symbol, start_ns, end_ns)`` returns the bars with start_ns <= ts < end_ns,
ordered by ts, as ``BARS_DTYPE`` (ts in ns since the Unix epoch, UTC).

Both paths avoid building a Python datetime per bar, which would dominate the cost:

* PostgreSQL: ``COPY (SELECT ...) TO STDOUT (FORMAT binary)``; the columns are NOT NULL and 8 bytes wide,
  so every row is a fixed-width record and one ``np.frombuffer`` decodes them all.
* SQLite: timestamps are fixed-width text; ``strftime('%s', ts)`` turns them into integers inside SQLite.
"""

from __future__ import annotations

import selectors
import struct
from datetime import UTC, datetime, timedelta

import numpy as np
from sqlalchemy import Engine

from engine.db.schema import CLEAN_BARS, LEGACY_BARS
from engine.db.types import SQLITE_TS_FORMAT

BARS_DTYPE = np.dtype(
    [("ts", "i8"), ("open", "f8"), ("high", "f8"), ("low", "f8"), ("close", "f8"), ("volume", "i8")]
)
PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01T00:00:00Z in microseconds since the Unix epoch
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TABLES = (CLEAN_BARS, LEGACY_BARS)  # the only names ever put into SQL text below


def ns_to_datetime(ns: int) -> datetime:
    return _EPOCH + timedelta(microseconds=int(ns) // 1000)


def datetime_to_ns(value: datetime) -> int:
    return (value - _EPOCH) // timedelta(microseconds=1) * 1000


def read_bars(engine: Engine, table_name: str, symbol: str, start_ns: int, end_ns: int) -> np.ndarray:
    """Bars of `symbol` in `table_name` with start_ns <= ts < end_ns, ordered by ts (BARS_DTYPE)."""
    if table_name not in _TABLES:
        raise ValueError(f"not a bars table: {table_name!r}")
    if end_ns <= start_ns:
        return np.empty(0, BARS_DTYPE)
    # Round both bounds up to the microsecond: the same bars qualify as with exact nanoseconds.
    start, end = ns_to_datetime(-(-int(start_ns) // 1000) * 1000), ns_to_datetime(-(-int(end_ns) // 1000) * 1000)
    if engine.dialect.name == "postgresql":
        return _read_postgres(engine, table_name, symbol, start, end)
    return _read_sqlite(engine, table_name, symbol, start, end)


def _read_postgres(engine: Engine, table: str, symbol: str, start: datetime, end: datetime) -> np.ndarray:
    from psycopg import sql

    query = sql.SQL(
        "COPY (SELECT ts, open, high, low, close, volume FROM {table} WHERE symbol = {symbol} "
        "AND ts >= {start} AND ts < {end} ORDER BY ts) TO STDOUT (FORMAT binary)"
    ).format(table=sql.Identifier(table), symbol=symbol, start=start, end=end)
    with engine.connect() as conn:
        dbapi = conn.connection.driver_connection
        payload = _copy_out(dbapi, query.as_bytes(dbapi))
    return _decode_pg_binary(payload)


def _copy_out(dbapi, query: bytes) -> bytes:
    """Run `COPY ... TO STDOUT` on the libpq connection under psycopg and return all of its data.

    psycopg's Copy object hands out one row per call through its generic wait loop (~2 us a row); this loop
    takes the rows straight from libpq's buffer and waits on the socket (without holding the GIL) only when the
    buffer is empty. The statement joins the connection's transaction if one is open.
    """
    from psycopg import OperationalError, pq

    pgconn = dbapi.pgconn
    with selectors.DefaultSelector() as selector:
        selector.register(pgconn.socket, selectors.EVENT_READ)

        def next_result():
            pgconn.consume_input()
            while pgconn.is_busy():
                selector.select()
                pgconn.consume_input()
            return pgconn.get_result()

        pgconn.send_query(query)
        while pgconn.flush():  # 1: part of the query is still unsent (non-blocking connection)
            with selectors.DefaultSelector() as writable:
                writable.register(pgconn.socket, selectors.EVENT_WRITE)
                writable.select()
        result = next_result()
        if result is None or result.status != pq.ExecStatus.COPY_OUT:
            while next_result() is not None:
                pass
            raise OperationalError(_pg_error(pgconn, result))
        data = bytearray()
        while True:
            nbytes, chunk = pgconn.get_copy_data(1)  # a row; 0: none buffered; -1: end; -2: error
            if nbytes > 0:
                data += chunk
            elif nbytes == 0:
                selector.select()
                pgconn.consume_input()
            else:
                break
        final = next_result() if nbytes == -1 else None
        while next_result() is not None:
            pass
    if final is None or final.status != pq.ExecStatus.COMMAND_OK:
        raise OperationalError(_pg_error(pgconn, final))
    return bytes(data)


def _pg_error(pgconn, result) -> str:
    message = (result.error_message if result is not None else b"") or pgconn.error_message
    return message.decode(errors="replace").strip() or "COPY failed"


def _decode_pg_binary(payload: bytes) -> np.ndarray:
    """PostgreSQL's binary COPY format with six NOT NULL 8-byte columns -> BARS_DTYPE.

    A row is int16 field count + 6 x (int32 length, 8-byte big-endian value) = 74 bytes. The values are
    byte-swapped as 8-byte bit patterns straight into the output (float bits survive unchanged).
    """
    if payload[:11] != b"PGCOPY\n\xff\r\n\x00":
        raise ValueError("not a PostgreSQL binary COPY stream")
    (extension,) = struct.unpack(">i", payload[15:19])
    body = memoryview(payload)[19 + extension : len(payload) - 2]  # header, trailer (-1 as int16)
    width, ncols = 2 + 12 * len(BARS_DTYPE.names), len(BARS_DTYPE.names)
    if len(body) % width:
        raise ValueError("unexpected row layout in binary COPY (NULL or non-8-byte column)")
    rows = len(body) // width
    if rows == 0:
        return np.empty(0, BARS_DTYPE)
    counts = np.ndarray((rows,), dtype=">i2", buffer=body, offset=0, strides=(width,))
    lengths = np.ndarray((rows, ncols), dtype=">i4", buffer=body, offset=2, strides=(width, 12))
    if not (np.all(counts == ncols) and np.all(lengths == 8)):
        raise ValueError("unexpected row layout in binary COPY (NULL or non-8-byte column)")
    values = np.ndarray((rows, ncols), dtype=">i8", buffer=body, offset=6, strides=(width, 12))
    out = np.empty(rows, BARS_DTYPE)
    out.view(np.int64).reshape(rows, ncols)[:] = values
    out["ts"] = (out["ts"] + PG_EPOCH_US) * 1000
    return out


def _read_sqlite(engine: Engine, table: str, symbol: str, start: datetime, end: datetime) -> np.ndarray:
    query = (
        "SELECT CAST(strftime('%s', ts) AS INTEGER), open, high, low, close, volume "
        f"FROM {table} WHERE symbol = ? AND ts >= ? AND ts < ? ORDER BY ts"
    )
    with engine.connect() as conn:
        cur = conn.connection.driver_connection.cursor()
        try:
            cur.execute(query, (symbol, _sqlite_bound(start), _sqlite_bound(end)))
            rows = cur.fetchall()
        finally:
            cur.close()
    out = np.array(rows, dtype=BARS_DTYPE) if rows else np.empty(0, BARS_DTYPE)
    out["ts"] *= 1_000_000_000
    return out


def _sqlite_bound(value: datetime) -> str:
    """SQLite stores whole seconds; a bound inside a second rounds up (the text compares like time)."""
    if value.microsecond:
        value = value.replace(microsecond=0) + timedelta(seconds=1)
    return value.strftime(SQLITE_TS_FORMAT)
