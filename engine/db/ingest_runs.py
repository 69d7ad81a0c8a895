"""clean_ingest_runs: one row per ingest, opened before the first bar and closed on success or failure."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from sqlalchemy import Engine, insert, select, update

from engine.db.schema import clean_bars, clean_ingest_runs, engine_runs


def start_ingest_run(engine: Engine, **fields) -> int:
    with engine.begin() as conn:
        row = conn.execute(
            insert(clean_ingest_runs).values(
                run_at=datetime.now(UTC), status="running", bars_received=0, bars_inserted=0, bars_updated=0,
                bars_unchanged=0, bars_skipped=0, batch_commits=0, retries=0, **fields,
            )
        )
        return int(row.inserted_primary_key[0])


def finish_ingest_run(engine: Engine, ingest_run_id: int, **fields) -> None:
    for key in ("skipped_by_reason", "ignored_instruments", "raw_files"):
        if key in fields and not isinstance(fields[key], str):
            fields[key] = json.dumps(fields[key], sort_keys=True)
    with engine.begin() as conn:
        conn.execute(update(clean_ingest_runs).where(clean_ingest_runs.c.id == ingest_run_id).values(**fields))


def ingested_data_kinds(engine: Engine) -> set[str]:
    """Kinds of data (demo/market) that successful ingests put into this database."""
    query = (
        select(engine_runs.c.data_kind)
        .join(clean_ingest_runs, clean_ingest_runs.c.engine_run_id == engine_runs.c.id)
        .where(clean_ingest_runs.c.status == "success")
        .distinct()
    )
    with engine.connect() as conn:
        return set(conn.execute(query).scalars())


def has_clean_bars(engine: Engine) -> bool:
    with engine.connect() as conn:
        return conn.execute(select(clean_bars.c.symbol).limit(1)).first() is not None
