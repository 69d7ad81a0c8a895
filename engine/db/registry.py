"""Queries on symbol_registry."""

from __future__ import annotations

from sqlalchemy import Engine, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from engine.db.schema import symbol_registry


def registry_row(engine: Engine, internal_symbol: str) -> dict | None:
    with engine.connect() as conn:
        row = conn.execute(
            select(symbol_registry).where(symbol_registry.c.internal_symbol == internal_symbol)
        ).mappings().first()
    return dict(row) if row else None


def all_rows(engine: Engine) -> list[dict]:
    with engine.connect() as conn:
        rows = conn.execute(select(symbol_registry).order_by(symbol_registry.c.internal_symbol))
        return [dict(r) for r in rows.mappings()]


def insert_missing(engine: Engine, rows: list[dict]) -> int:
    """Insert rows whose internal_symbol is not there yet; never touches an existing (maybe edited) row."""
    if not rows:
        return 0
    dialect_insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
    stmt = (
        dialect_insert(symbol_registry)
        .values(rows)
        .on_conflict_do_nothing(index_elements=[symbol_registry.c.internal_symbol])
        .returning(symbol_registry.c.internal_symbol)
    )
    with engine.begin() as conn:
        return len(conn.execute(stmt).all())
