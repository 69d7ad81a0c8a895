"""SQL of the detect, parity and chart stages: bar boundaries, triangle_events_v1 (coverage: engine/db/coverage.py)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sqlalchemy import Engine, delete, select, text

from engine.db import pgcopy
from engine.db.schema import CLEAN_BARS, LEGACY_BARS, clean_bars, legacy_bars, triangle_events
from engine.db.types import datetime_to_ns, sqlite_ts_text

# One detected event: pivot bar time, confirming bar time (ns since the epoch, UTC), price, BULL/BEAR.
EVENT_DTYPE = np.dtype([("ts", "i8"), ("confirm_ts", "i8"), ("price", "f8"), ("direction", "U4")])

_BARS_TABLES = {CLEAN_BARS: clean_bars, LEGACY_BARS: legacy_bars}
_EVENT_COLUMNS = ("symbol", "ts", "direction", "price", "source_table", "logic_version", "confirm_ts", "n", "run_id")


@dataclass(frozen=True)
class EventKey:
    """What one set of events belongs to; the unique index is this plus (ts, direction)."""

    symbol: str
    source_table: str
    logic_version: str
    n: int


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
    """Events of `key` with start <= ts < end, ordered by (ts, direction), as EVENT_DTYPE."""
    c = triangle_events.c
    query = (
        select(c.ts, c.confirm_ts, c.price, c.direction)
        .where(*_key_filter(key), c.ts >= start, c.ts < end)
        .order_by(c.ts, c.direction)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    out = np.empty(len(rows), EVENT_DTYPE)
    for i, (ts, confirm_ts, price, direction) in enumerate(rows):
        out[i] = (datetime_to_ns(ts), -1 if confirm_ts is None else datetime_to_ns(confirm_ts),
                  np.nan if price is None else price, direction)
    return out


# ---------------------------------------------------------------------------------------------
# Writes


def replace_events(engine: Engine, key: EventKey, start: datetime, end: datetime,
                   events: np.ndarray | Iterable[np.ndarray], run_id: int | None) -> tuple[int, int]:
    """In one transaction: delete the events of `key` with start <= ts < end, insert `events`.

    `events` is one EVENT_DTYPE array or an iterable of them (consumed inside the transaction, so a producer
    that raises leaves the table as it was). They must lie in [start, end) and be unique on (ts, direction).
    Returns (deleted, inserted).
    """
    chunks = [events] if isinstance(events, np.ndarray) else events
    inserted = 0
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # Serialise writers of the same key, so overlapping jobs queue instead of hitting the unique index.
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
                         {"k": f"triangle_events_v1|{key.symbol}|{key.source_table}|{key.logic_version}|{key.n}"})
        c = triangle_events.c
        deleted = conn.execute(delete(triangle_events).where(*_key_filter(key), c.ts >= start, c.ts < end)).rowcount
        dbapi = conn.connection.driver_connection
        for chunk in chunks:
            if not len(chunk):
                continue
            if engine.dialect.name == "postgresql":
                _copy_events_postgres(dbapi, key, chunk, run_id)
            else:
                _insert_events_sqlite(dbapi, key, chunk, run_id)
            inserted += len(chunk)
    return int(deleted), inserted


def _key_filter(key: EventKey):
    c = triangle_events.c
    return (c.symbol == key.symbol, c.source_table == key.source_table, c.logic_version == key.logic_version,
            c.n == key.n)


def _insert_events_sqlite(dbapi, key: EventKey, events: np.ndarray, run_id: int | None) -> None:
    ts = sqlite_ts_text(events["ts"]).tolist()
    confirm = sqlite_ts_text(events["confirm_ts"]).tolist()
    rows = zip(
        [key.symbol] * len(events), ts, events["direction"].tolist(), events["price"].tolist(),
        [key.source_table] * len(events), [key.logic_version] * len(events), confirm,
        [key.n] * len(events), [run_id] * len(events), strict=True,
    )
    cur = dbapi.cursor()
    try:
        cur.executemany(
            f"INSERT INTO {triangle_events.name} ({', '.join(_EVENT_COLUMNS)}) VALUES ({', '.join('?' * 9)})", rows
        )
    finally:
        cur.close()


def _copy_events_postgres(dbapi, key: EventKey, events: np.ndarray, run_id: int | None) -> None:
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
    field("n", ">i4", key.n)
    field("run_id", None if run_id is None else ">i4", run_id)

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
