"""stage_chunks: which (stage, symbol, window piece, settings) a run has completed, for resuming."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from sqlalchemy import Engine, insert, select

from engine.db.schema import stage_chunks


def is_done(engine: Engine, stage: str, symbol: str, start: datetime, end: datetime, settings_sha256: str) -> bool:
    query = select(stage_chunks.c.id).where(
        stage_chunks.c.stage == stage,
        stage_chunks.c.symbol == symbol,
        stage_chunks.c.settings_sha256 == settings_sha256,
        stage_chunks.c.start_ts == start,
        stage_chunks.c.end_ts == end,
        stage_chunks.c.status == "success",
    )
    with engine.connect() as conn:
        return conn.execute(query.limit(1)).first() is not None


def record_done(engine: Engine, run_id: int, stage: str, symbol: str, start: datetime, end: datetime,
                settings_sha256: str, summary: dict) -> None:
    with engine.begin() as conn:
        conn.execute(insert(stage_chunks).values(
            engine_run_id=run_id, stage=stage, symbol=symbol, start_ts=start, end_ts=end,
            settings_sha256=settings_sha256, status="success", finished_at=datetime.now(UTC),
            summary=json.dumps(summary, sort_keys=True, default=str),
        ))
