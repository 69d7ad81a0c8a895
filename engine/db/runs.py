"""The engine run log: one row per job, created first and closed last."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, insert, update

from engine.db.schema import engine_runs


def start_run(engine: Engine, **fields) -> int:
    with engine.begin() as conn:
        return insert_run(conn, **fields)


def insert_run(conn: Connection, **fields) -> int:
    """Insert a `running` row inside the caller's transaction (liveness takes its lock in the same one)."""
    row = conn.execute(insert(engine_runs).values(status="running", started_at=datetime.now(UTC), **fields))
    return int(row.inserted_primary_key[0])


def finish_run(engine: Engine, run_id: int, status: str, error: str | None = None) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(engine_runs)
            .where(engine_runs.c.id == run_id)
            .values(status=status, finished_at=datetime.now(UTC), error=error)
        )


def dumps(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)
