"""databento_batch_jobs: the Databento batch jobs runs have submitted, so a killed run resumes its job."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, insert, select, update

from engine.db.schema import databento_batch_jobs as jobs

#: States after which a row's job is no longer waited for (landed: its files are landed; expired: gone).
FINISHED = ("landed", "expired")


@dataclass(frozen=True)
class BatchJobRow:
    id: int
    job_id: str | None
    state: str
    submitted_at: datetime
    request: Any  # the RawRequest the job buys


def open_job(engine: Engine, req) -> BatchJobRow | None:
    """The newest unfinished job recorded for the symbol, dataset and schema of `req` (a RawRequest) whose window
    covers it (a killed run may have landed some of its days since), or None."""
    from engine.sources.databento_request import RawRequest

    query = (select(jobs)
             .where(jobs.c.dataset == req.dataset, jobs.c.symbol == req.symbol, jobs.c.schema == req.schema,
                    jobs.c.stype_in == req.stype_in, jobs.c.start_ts <= req.start, jobs.c.end_ts >= req.end,
                    jobs.c.state.not_in(FINISHED))
             .order_by(jobs.c.id.desc()).limit(1))
    with engine.connect() as conn:
        row = conn.execute(query).first()
    if row is None:
        return None
    request = RawRequest(row.dataset, row.symbol, row.schema, row.stype_in, row.start_ts, row.end_ts)
    return BatchJobRow(row.id, row.job_id, row.state, row.submitted_at, request)


def record_submitting(engine: Engine, req, run_id: int | None) -> BatchJobRow:
    """A row for a job about to be submitted (no job id yet): a run killed before the answer arrives leaves it,
    and the next run looks for that job at Databento instead of submitting another."""
    now = datetime.now(UTC)
    with engine.begin() as conn:
        row_id = conn.execute(insert(jobs).values(
            job_id=None, dataset=req.dataset, symbol=req.symbol, schema=req.schema, stype_in=req.stype_in,
            start_ts=req.start, end_ts=req.end, state="submitting", submitted_at=now, updated_at=now,
            engine_run_id=run_id,
        ).returning(jobs.c.id)).scalar_one()
    return BatchJobRow(row_id, None, "submitting", now, req)


def record_job(engine: Engine, row_id: int, job_id: str, state: str, cost_usd: float | None = None) -> None:
    """Databento's id (and state) for the row: committed before the job is waited for."""
    with engine.begin() as conn:
        conn.execute(update(jobs).where(jobs.c.id == row_id).values(
            job_id=job_id, state=state, cost_usd=cost_usd, updated_at=datetime.now(UTC)))


def record_state(engine: Engine, row_id: int, state: str) -> None:
    with engine.begin() as conn:
        conn.execute(update(jobs).where(jobs.c.id == row_id).values(state=state, updated_at=datetime.now(UTC)))


def job_rows(engine: Engine) -> list[dict]:
    """Every recorded job, oldest first (for `engine status`-style reports and tests)."""
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(jobs).order_by(jobs.c.id))]
