"""PostgreSQL binary COPY (``FORMAT binary``) with numpy: the stream's framing, fixed-width rows, fast COPY OUT.

A stream is ``HEADER``, then one record per row -- an int16 field count, then for each field an int32 byte
length (-1 for NULL, with no data) followed by the value, all big-endian -- then ``TRAILER``. When every field
of a row has a fixed width, each row is one numpy record (``row_dtype``), so a whole batch is encoded
(``new_rows`` + ``encode``; rows whose variable-width fields differ in width go in one array per
layout) or decoded (``decode``) without per-row Python. ``timestamptz`` travels as int64
microseconds since ``PG_EPOCH_US``.
"""

from __future__ import annotations

import selectors
from collections.abc import Sequence

import numpy as np
from psycopg import OperationalError, errors, pq

__all__ = [
    "HEADER",
    "PG_EPOCH_US",
    "SIGNATURE",
    "TRAILER",
    "Field",
    "copy_out",
    "decode",
    "encode",
    "from_timestamptz",
    "new_rows",
    "row_dtype",
    "to_timestamptz",
]

# PostgreSQL timestamps count microseconds from 2000-01-01 UTC: that instant in µs since the Unix epoch.
PG_EPOCH_US = 946_684_800_000_000
SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
HEADER = SIGNATURE + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"  # flags 0, header extension of 0 bytes
TRAILER = b"\xff\xff"  # a field count of -1

# One field of a row: (name, numpy kind such as ">i8", ">f8", "S4"). Kind None is a NULL; a zero-width kind
# (e.g. "V0", an empty string) has a length word of 0. Neither has a value field in the record.
Field = tuple[str, str | None]


def to_timestamptz(ts_ns: np.ndarray) -> np.ndarray:
    """ns since the Unix epoch -> the int64 a binary timestamptz carries (floored to the microsecond)."""
    return ts_ns // 1000 - PG_EPOCH_US


def from_timestamptz(us: np.ndarray) -> np.ndarray:
    """The int64 of a binary timestamptz -> ns since the Unix epoch."""
    return (us + PG_EPOCH_US) * 1000


def row_dtype(fields: Sequence[Field]) -> np.dtype:
    """The record of one row: ("nfields", >i2), then per field ("<name>_len", >i4) and (name, kind)."""
    layout = [("nfields", ">i2")]
    for name, kind in fields:
        layout.append((f"{name}_len", ">i4"))
        if kind is not None and np.dtype(kind).itemsize:
            layout.append((name, kind))
    return np.dtype(layout)


def new_rows(fields: Sequence[Field], count: int) -> np.ndarray:
    """``count`` records of ``row_dtype(fields)`` with the field count and the length words set; the caller
    fills in the values."""
    rows = np.empty(count, dtype=row_dtype(fields))
    rows["nfields"] = len(fields)
    for name, kind in fields:
        rows[f"{name}_len"] = -1 if kind is None else np.dtype(kind).itemsize
    return rows


def encode(*rows: np.ndarray) -> bytes:
    """A complete binary COPY stream of the records of each ``rows`` array (made by ``new_rows``), in turn: arrays
    of different row layouts (e.g. one per text length) make one stream."""
    return b"".join((HEADER, *(part.tobytes() for part in rows), TRAILER))


def decode(data: bytes | bytearray, fields: Sequence[Field]) -> np.ndarray:
    """The rows of a binary COPY stream whose rows all have ``fields`` with no NULLs, as a view of
    ``data`` with ``row_dtype(fields)``. ValueError when the stream is anything else."""
    dtype = row_dtype(fields)
    if not data.startswith(SIGNATURE):
        raise ValueError("not a PGCOPY binary stream")
    start = len(HEADER) + int.from_bytes(data[15:19], "big")  # past the header extension
    body = len(data) - start - len(TRAILER)
    if body < 0 or body % dtype.itemsize or data[-len(TRAILER):] != TRAILER:
        raise ValueError("unexpected binary COPY layout (NULL values?)")
    rows = np.frombuffer(data, dtype=dtype, count=body // dtype.itemsize, offset=start)
    if len(rows) and ((rows["nfields"] != len(fields)).any() or not _lengths_are(rows, fields)):
        raise ValueError("unexpected binary COPY layout (NULL values?)")
    return rows


def _lengths_are(rows: np.ndarray, fields: Sequence[Field]) -> bool:
    """Whether every length word of ``rows`` is its field's width (no NULLs, no other widths)."""
    dtype = rows.dtype
    widths = [dtype[name].itemsize for name, _kind in fields]
    if len(set(widths)) == 1:
        # Equal widths put the length words at one stride: check them all in a single pass over the rows.
        words = np.ndarray((len(rows), len(fields)), dtype=">i4", buffer=rows,
                           offset=dtype.fields[f"{fields[0][0]}_len"][1], strides=(dtype.itemsize, 4 + widths[0]))
        return bool((words == widths[0]).all())
    return all((rows[f"{name}_len"] == width).all() for (name, _kind), width in zip(fields, widths, strict=True))


def copy_out(dbapi, query: bytes) -> bytearray:
    """Run ``COPY ... TO STDOUT`` on the libpq connection under a psycopg connection; return all of its data.

    psycopg's Copy object hands out one row per call through its generic wait loop (~2 µs a row, about half
    of a whole read); this loop takes the rows straight from libpq's buffer and waits on the socket (without
    holding the GIL) only when the buffer is empty. ``query`` is complete SQL (no parameters: bind values as
    literals). The statement joins the connection's transaction if one is open.
    """
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
            raise _error(dbapi, result)
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
        raise _error(dbapi, final)
    return data


def _error(dbapi, result) -> Exception:
    """The psycopg exception for a failed statement (the same class psycopg raises itself, e.g. UndefinedTable)."""
    if result is not None and result.status == pq.ExecStatus.FATAL_ERROR:
        return errors.error_from_result(result, encoding=dbapi.info.encoding)
    message = (result.error_message if result is not None else b"") or dbapi.pgconn.error_message
    return OperationalError(message.decode(errors="replace").strip() or "COPY failed")
