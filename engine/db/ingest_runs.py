"""clean_ingest_runs: one row per ingest, opened before the first bar and closed on success or failure."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from engine.db.schema import clean_bars, clean_ingest_runs, engine_database


def start_ingest_run(engine: Engine, **fields) -> int:
    with engine.begin() as conn:
        row = conn.execute(
            insert(clean_ingest_runs).values(
                run_at=datetime.now(UTC), status="running", bars_received=0, bars_inserted=0, bars_updated=0,
                bars_unchanged=0, bars_skipped=0, batch_commits=0, retries=0, **fields,
            )
        )
        return int(row.inserted_primary_key[0])


def add_batch_counts(
    conn: Connection, ingest_run_id: int, *, received: int, counts, skipped: int, **fields
) -> None:
    """Add one batch to the row's counters, inside the batch's own transaction (it commits or rolls back with
    the bars). ``counts``: the batch's WriteCounts; ``fields``: absolute values (e.g. the JSON columns)."""
    c = clean_ingest_runs.c
    conn.execute(
        update(clean_ingest_runs)
        .where(c.id == ingest_run_id)
        .values(
            bars_received=c.bars_received + received,
            bars_inserted=c.bars_inserted + counts.inserted,
            bars_updated=c.bars_updated + counts.updated,
            bars_unchanged=c.bars_unchanged + counts.unchanged,
            bars_skipped=c.bars_skipped + skipped,
            batch_commits=c.batch_commits + counts.batch_commits,
            **_as_json(fields),
        )
    )


def finish_ingest_run(engine: Engine, ingest_run_id: int, **fields) -> None:
    fields = _as_json(fields)
    with engine.begin() as conn:
        conn.execute(update(clean_ingest_runs).where(clean_ingest_runs.c.id == ingest_run_id).values(**fields))


def claim_data_kind(engine: Engine, kind: str, run_id: int) -> dict:
    """Record `kind` as what this database holds unless a kind is recorded already (in its own committed
    transaction, before any bar is written); return the recorded row: data_kind, recorded_at, engine_run_id."""
    dialect_insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
    claim = dialect_insert(engine_database).values(id=1, data_kind=kind, recorded_at=datetime.now(UTC),
                                                   engine_run_id=run_id).on_conflict_do_nothing(index_elements=["id"])
    with engine.begin() as conn:
        conn.execute(claim)
        return dict(conn.execute(select(engine_database).where(engine_database.c.id == 1)).mappings().one())


def recorded_data_kind(engine: Engine) -> str | None:
    """What the database holds (demo | market), None before its first ingest."""
    with engine.connect() as conn:
        return conn.execute(select(engine_database.c.data_kind).where(engine_database.c.id == 1)).scalar()


def _as_json(fields: dict) -> dict:
    for key in ("skipped_by_reason", "ignored_instruments", "raw_files", "contracts_not_chosen"):
        if key in fields and not isinstance(fields[key], str):
            fields = {**fields, key: json.dumps(fields[key], sort_keys=True)}
    return fields




def has_clean_bars(engine: Engine) -> bool:
    with engine.connect() as conn:
        return conn.execute(select(clean_bars.c.symbol).limit(1)).first() is not None


def overlapping_ingests(engine: Engine, ingest_run_id: int, symbol: str, start: datetime, end: datetime, *,
                        started_later: bool) -> bool:
    """Whether another ingest of `symbol` over a window overlapping [start, end) is running (started_later=False:
    any still `running`, or started after this one) or started after this one (True), whatever its status."""
    c = clean_ingest_runs.c
    later = c.id > ingest_run_id
    query = select(c.id).where(c.symbol == symbol, c.id != ingest_run_id, c.start_ts < end, c.end_ts > start,
                               later if started_later else or_(later, c.status == "running")).limit(1)
    with engine.connect() as conn:
        return conn.execute(query).first() is not None
