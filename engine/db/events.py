"""SQL of the detect, parity and chart stages: bar boundaries, triangle_events_v1 (coverage: engine/db/coverage.py)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sqlalchemy import BigInteger, Engine, cast, delete, func, select, text

from engine.db import pgcopy
from engine.db.producers import feeding_a_write
from engine.db.schema import CLEAN_BARS, LEGACY_BARS, clean_bars, legacy_bars, triangle_events
from engine.db.types import sqlite_ts_text
from engine.detectors import EVENT_DTYPE

_BARS_TABLES = {CLEAN_BARS: clean_bars, LEGACY_BARS: legacy_bars}
_EVENT_COLUMNS = ("symbol", "ts", "direction", "price", "source_table", "logic_version", "confirm_ts", "n", "run_id",
                  "detector", "detector_params", "adjustment")


@dataclass(frozen=True)
class EventKey:
    """What one set of events belongs to; the unique index is this plus (ts, direction)."""

    symbol: str
    source_table: str
    logic_version: str
    detector: str  # the name the detector was selected under, e.g. williams_fractals
    params: str  # its parameters as JSON with sorted keys (engine.detectors.params_json)
    adjustment: str = "none"  # the back-adjustment of the series they were detected on (engine/adjust.py)


# ---------------------------------------------------------------------------------------------
# Reads


def nth_bar_before(engine: Engine, table_name: str, symbol: str, before: datetime, count: int) -> datetime | None:
    """The oldest of the last `count` bars with ts < before (fewer if fewer exist), None when there is none."""
    table = _BARS_TABLES[table_name]
    query = (
        select(table.c.ts)
        .where(table.c.symbol == symbol, table.c.ts < before)
        .order_by(table.c.ts.desc())
        .limit(count)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).scalars().all()
    return rows[-1] if rows else None


def nth_bar_from(engine: Engine, table_name: str, symbol: str, start: datetime, count: int) -> datetime | None:
    """The newest of the first `count` bars with ts >= start (fewer if fewer exist), None when there is none."""
    table = _BARS_TABLES[table_name]
    query = (
        select(table.c.ts)
        .where(table.c.symbol == symbol, table.c.ts >= start)
        .order_by(table.c.ts)
        .limit(count)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).scalars().all()
    return rows[-1] if rows else None


def bar_span(engine: Engine, table_name: str, symbol: str, start: datetime, end: datetime
             ) -> tuple[datetime, datetime] | None:
    """(first, last) ts of the bars with start <= ts < end, None when there is none (two index probes)."""
    table = _BARS_TABLES[table_name]
    where = (table.c.symbol == symbol, table.c.ts >= start, table.c.ts < end)
    with engine.connect() as conn:
        first = conn.execute(select(table.c.ts).where(*where).order_by(table.c.ts).limit(1)).scalar()
        last = conn.execute(select(table.c.ts).where(*where).order_by(table.c.ts.desc()).limit(1)).scalar()
    return None if first is None else (first, last)


def read_events(engine: Engine, key: EventKey, start: datetime, end: datetime) -> np.ndarray:
    """Events of `key` with start <= ts < end, ordered by (ts, direction), as EVENT_DTYPE (confirm_ts -1 and price
    NaN where the row has none)."""
    c = triangle_events.c
    query = (
        select(_ns(engine, c.ts), func.coalesce(_ns(engine, c.confirm_ts), -1), c.price, c.direction)
        .where(*_key_filter(key), c.ts >= start, c.ts < end)
        .order_by(c.ts, c.direction)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    out = np.empty(len(rows), EVENT_DTYPE)
    if rows:
        for name, values in zip(EVENT_DTYPE.names, zip(*rows, strict=True), strict=True):
            out[name] = values  # a NULL price becomes NaN
    return out


# What `stored_events` returns per event, in this order (ts and confirm_ts as ns since the epoch).
STORED_EVENT_COLUMNS = ("ts", "direction", "price", "confirm_ts", "detector", "detector_params", "logic_version",
                        "adjustment", "source_table", "run_id", "n")


def stored_events(engine: Engine, symbol: str, start: datetime, end: datetime, *, source_tables: Iterable[str],
                  detector: str | None = None, logic_version: str | None = None, adjustment: str | None = None
                  ) -> list[tuple]:
    """The triangle_events_v1 rows of `symbol` with start <= ts < end as STORED_EVENT_COLUMNS tuples, filtered by
    source table and (where not None) detector, logic version and adjustment; ordered by ts, direction and key.
    A NULL confirm_ts or price stays None."""
    c = triangle_events.c
    where = [c.symbol == symbol, c.ts >= start, c.ts < end, c.source_table.in_(list(source_tables))]
    for column, value in ((c.detector, detector), (c.logic_version, logic_version), (c.adjustment, adjustment)):
        if value is not None:
            where.append(column == value)
    columns = [_ns(engine, c.ts) if name == "ts" else _ns(engine, c.confirm_ts) if name == "confirm_ts" else c[name]
               for name in STORED_EVENT_COLUMNS]
    query = select(*columns).where(*where).order_by(c.ts, c.direction, c.detector, c.detector_params,
                                                    c.logic_version, c.adjustment, c.source_table)
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(query)]


def stored_event_values(engine: Engine, symbol: str, column: str) -> list[str]:
    """The distinct values of `column` (detector, logic_version, ...) among the symbol's events, sorted."""
    c = triangle_events.c
    with engine.connect() as conn:
        return sorted(conn.execute(select(c[column]).where(c.symbol == symbol).distinct()).scalars())


def _ns(engine: Engine, column):
    """SQL for a timestamp column as int64 ns since the epoch (the stored values are whole seconds on SQLite)."""
    if engine.dialect.name == "postgresql":
        return cast(func.extract("epoch", column) * 1_000_000, BigInteger) * 1000
    return cast(func.strftime("%s", column), BigInteger) * 1_000_000_000


# ---------------------------------------------------------------------------------------------
# Writes


def replace_events(engine: Engine, key: EventKey, start: datetime, end: datetime,
                   events: np.ndarray | Iterable[np.ndarray], run_id: int | None, *, n: int) -> tuple[int, int]:
    """In one transaction: delete the events of `key` with start <= ts < end, insert `events`.

    `events` is one EVENT_DTYPE array or an iterable of them, which a producer that raises leaves the table as it
    was with: on SQLite it is run to the end before the write transaction starts (a read inside it would wait for
    the write lock), on PostgreSQL in a worker thread ahead of the writes (the next arrays are produced while one
    streams in). They must lie in [start, end) and be unique on (ts, direction). `n` goes to the rows' n column
    (the detector's look-ahead bars). Returns (deleted, inserted).
    """
    inserted = 0
    produced = [events] if isinstance(events, np.ndarray) else events
    with feeding_a_write(engine, produced) as chunks, engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # Serialise writers of the same key, so overlapping jobs queue instead of hitting the unique index.
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
                         {"k": "|".join((triangle_events.name, key.symbol, key.source_table, key.logic_version,
                                         key.detector, key.params, key.adjustment))})
        c = triangle_events.c
        deleted = conn.execute(delete(triangle_events).where(*_key_filter(key), c.ts >= start, c.ts < end)).rowcount
        dbapi = conn.connection.driver_connection
        for chunk in chunks:
            if not len(chunk):
                continue
            if engine.dialect.name == "postgresql":
                _copy_events_postgres(dbapi, key, chunk, run_id, n)
            else:
                _insert_events_sqlite(dbapi, key, chunk, run_id, n)
            inserted += len(chunk)
    return int(deleted), inserted


def _key_filter(key: EventKey):
    c = triangle_events.c
    return (c.symbol == key.symbol, c.source_table == key.source_table, c.logic_version == key.logic_version,
            c.detector == key.detector, c.detector_params == key.params, c.adjustment == key.adjustment)


def _insert_events_sqlite(dbapi, key: EventKey, events: np.ndarray, run_id: int | None, n: int) -> None:
    ts = sqlite_ts_text(events["ts"]).tolist()
    confirm = sqlite_ts_text(events["confirm_ts"]).tolist()
    size = len(events)
    rows = zip(
        [key.symbol] * size, ts, events["direction"].tolist(), events["price"].tolist(), [key.source_table] * size,
        [key.logic_version] * size, confirm, [n] * size, [run_id] * size, [key.detector] * size, [key.params] * size,
        [key.adjustment] * size, strict=True,
    )
    cur = dbapi.cursor()
    try:
        cur.executemany(f"INSERT INTO {triangle_events.name} ({', '.join(_EVENT_COLUMNS)}) "
                        f"VALUES ({', '.join('?' * len(_EVENT_COLUMNS))})", rows)
    finally:
        cur.close()


def _copy_events_postgres(dbapi, key: EventKey, events: np.ndarray, run_id: int | None, n: int) -> None:
    """COPY ... FROM STDIN in binary: every column but direction is constant, and BULL/BEAR are both 4 bytes,
    so each row is a fixed-width record that numpy lays out in one go."""
    directions = events["direction"].astype("S")
    if directions.dtype.itemsize != 4 or not np.all(np.char.str_len(directions) == 4):
        raise ValueError("event directions must be 4-byte codes (BULL/BEAR)")
    fields: list[pgcopy.Field] = []
    values: dict[str, object] = {}

    def field(name: str, kind: str | None, value=None) -> None:
        """`kind` None means NULL (length -1, no data)."""
        fields.append((name, kind))
        if kind is not None and np.dtype(kind).itemsize:
            values[name] = value

    def text_field(name: str, value: str | None) -> None:
        if value is None:
            field(name, None)
        else:
            raw = value.encode()
            field(name, f"S{len(raw)}" if raw else "V0", raw)

    text_field("symbol", key.symbol)
    field("ts", ">i8", pgcopy.to_timestamptz(events["ts"]))
    field("direction", "S4", directions)
    field("price", ">f8", events["price"])
    text_field("source_table", key.source_table)
    text_field("logic_version", key.logic_version)
    field("confirm_ts", ">i8", pgcopy.to_timestamptz(events["confirm_ts"]))
    field("n", ">i4", n)
    field("run_id", None if run_id is None else ">i4", run_id)
    text_field("detector", key.detector)
    text_field("detector_params", key.params)
    text_field("adjustment", key.adjustment)

    records = pgcopy.new_rows(fields, len(events))
    for name, value in values.items():
        records[name] = value
    with dbapi.cursor() as cur, cur.copy(
        f"COPY {triangle_events.name} ({', '.join(_EVENT_COLUMNS)}) FROM STDIN (FORMAT binary)"
    ) as copy:
        copy.write(pgcopy.HEADER)
        copy.write(records.data)
        copy.write(pgcopy.TRAILER)


__all__ = [
    "EVENT_DTYPE",
    "EventKey",
    "bar_span",
    "nth_bar_before",
    "nth_bar_from",
    "read_events",
    "replace_events",
]
