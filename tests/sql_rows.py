"""Rows of a test database as dicts, each read on a connection of its own (the engine under test may hold others)."""

from __future__ import annotations

import sqlalchemy as sa


def query(url: str, sql: str, **params) -> list[dict]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [dict(r) for r in conn.execute(sa.text(sql), params).mappings()]
    finally:
        engine.dispose()


def table_rows(url: str, table: str) -> list[dict]:
    """Every row of `table` in id order."""
    return query(url, f"SELECT * FROM {table} ORDER BY id")


def all_tables(url: str) -> dict[str, list[str]]:
    """Every table's rows, sorted as text: a snapshot to compare before and after a command."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            names = sorted(sa.inspect(conn).get_table_names())
            return {name: sorted(map(str, conn.execute(sa.text(f'SELECT * FROM "{name}"')).all())) for name in names}
    finally:
        engine.dispose()
