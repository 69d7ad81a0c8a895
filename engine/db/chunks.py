"""stage_chunks: which (stage, symbol, window piece, settings) a run has completed, for resuming."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from sqlalchemy import Engine, func, insert, select

from engine.db.schema import CLEAN_BARS, LEGACY_BARS, clean_bars, legacy_bars, stage_chunks


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


def count_bars(engine: Engine, table_name: str, symbol: str, start: datetime, end: datetime, limit: int) -> int:
    """How many bars of `symbol` lie in [start, end), counting at most `limit` (a chunk's look-ahead)."""
    table = {CLEAN_BARS: clean_bars, LEGACY_BARS: legacy_bars}[table_name]
    first = (select(table.c.ts).where(table.c.symbol == symbol, table.c.ts >= start, table.c.ts < end)
             .order_by(table.c.ts).limit(limit).subquery())
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(first)).scalar_one())
