"""One symbol's rows of a small table in a time range, as typed records (contract_rolls, session_quality)."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, Table, select

T = TypeVar("T")


def symbol_rows(engine: Engine | Connection, table: Table, record: type[T], symbol: str, order: str,
                start: Any = None, end: Any = None) -> list[T]:
    """`record(**row)` for each row of `symbol` with start <= `order` < end (None = unbounded), in `order`; the
    record's dataclass fields name the columns read."""
    c = table.c
    query = select(*(getattr(c, name) for name in record.__dataclass_fields__)).where(c.symbol == symbol)
    if start is not None:
        query = query.where(c[order] >= start)
    if end is not None:
        query = query.where(c[order] < end)
    query = query.order_by(c[order])
    if isinstance(engine, Connection):
        return [record(**row) for row in engine.execute(query).mappings()]
    with engine.connect() as conn:
        return [record(**row) for row in conn.execute(query).mappings()]
