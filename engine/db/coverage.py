"""SQL of clean_coverage: the intervals each clean ingest really covers (see engine/coverage.py)."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import Engine, insert, select

from engine.db.schema import clean_coverage, clean_coverage_conditions, clean_ingest_runs


def record_coverage(engine: Engine, ingest_run_id: int, symbol: str,
                    intervals: list[tuple[datetime, datetime]]) -> None:
    """Store the covered [start, end) intervals of one ingest (they count once the ingest is successful)."""
    if not intervals:
        return
    with engine.begin() as conn:
        conn.execute(insert(clean_coverage), [
            {"ingest_run_id": ingest_run_id, "symbol": symbol, "start_ts": a, "end_ts": b} for a, b in intervals])


def record_day_conditions(engine: Engine, ingest_run_id: int, symbol: str, conditions: dict) -> None:
    """Store the flagged Databento days of one ingest ({day: {condition, last_modified_date, provisional,
    bought}}, see engine/sources/databento_conditions.py)."""
    if not conditions:
        return
    rows = [{"ingest_run_id": ingest_run_id, "symbol": symbol, "day": day, "condition": flag["condition"],
             "last_modified_date": date.fromisoformat(flag["last_modified_date"]) if flag.get("last_modified_date")
             else None, "provisional": bool(flag.get("provisional")), "bought": flag.get("bought", True)}
            for day, flag in sorted(conditions.items())]
    with engine.begin() as conn:
        conn.execute(insert(clean_coverage_conditions), rows)


def covered_intervals(engine: Engine, symbol: str, start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    """[start_ts, end_ts) of the coverage of successful clean ingests of `symbol` overlapping [start, end), sorted.

    A small table (about one row per ingest, a few more per hole) read through its (symbol, start_ts) index.
    """
    cc, runs = clean_coverage.c, clean_ingest_runs.c
    query = (
        select(cc.start_ts, cc.end_ts)
        .join(clean_ingest_runs, runs.id == cc.ingest_run_id)
        .where(cc.symbol == symbol, runs.status == "success", cc.start_ts < end, cc.end_ts > start)
        .order_by(cc.start_ts, cc.end_ts)
    )
    with engine.connect() as conn:
        return [(row.start_ts, row.end_ts) for row in conn.execute(query)]



def symbol_intervals(engine: Engine, symbol: str) -> list[tuple[datetime, datetime]]:
    """Every [start_ts, end_ts) of the coverage of successful clean ingests of `symbol`, sorted (the incremental
    window starts where they end: engine/incremental.py)."""
    cc, runs = clean_coverage.c, clean_ingest_runs.c
    query = (
        select(cc.start_ts, cc.end_ts)
        .join(clean_ingest_runs, runs.id == cc.ingest_run_id)
        .where(cc.symbol == symbol, runs.status == "success")
        .order_by(cc.start_ts, cc.end_ts)
    )
    with engine.connect() as conn:
        return [(row.start_ts, row.end_ts) for row in conn.execute(query)]
