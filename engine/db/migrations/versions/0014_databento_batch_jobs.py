"""Databento batch jobs and data-quality dates: the jobs runs submitted, and the day conditions of each ingest.

* databento_batch_jobs: every batch job a run submitted, recorded before it is waited for.

One row per job (issue 14 item 2): the request it buys (dataset, symbol, schema, stype_in, [start_ts, end_ts)),
Databento's job id (NULL only between "about to submit" and Databento's answer), its last known state
(submitting | received | queued | processing | done | expired | landed) and when it was submitted. A run killed
while its job is pending or downloading finds the row on its next run and resumes that job instead of buying
another.
* clean_coverage_conditions (issue 14 item 3): the UTC days of a clean ingest that Databento flags, one row each:
  bought degraded or not yet final (provisional), or not bought at all (pending, missing; those days are left out
  of clean_coverage). An ingest without such days has no rows.

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

from engine.db.types import UtcTimestamp

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "databento_batch_jobs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.Text, unique=True),
        sa.Column("dataset", sa.Text, nullable=False),
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("schema", sa.Text, nullable=False),
        sa.Column("stype_in", sa.Text, nullable=False),
        sa.Column("start_ts", UtcTimestamp, nullable=False),
        sa.Column("end_ts", UtcTimestamp, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("cost_usd", sa.Float),
        sa.Column("submitted_at", UtcTimestamp, nullable=False),
        sa.Column("updated_at", UtcTimestamp, nullable=False),
        sa.Column("engine_run_id", sa.Integer),
    )
    op.create_index("ix_databento_batch_jobs_request", "databento_batch_jobs",
                    ["dataset", "symbol", "schema", "stype_in", "start_ts", "end_ts"])


    op.create_table(
        "clean_coverage_conditions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("ingest_run_id", sa.Integer,
                  sa.ForeignKey("clean_ingest_runs.id", name="fk_clean_coverage_conditions_run"), nullable=False),
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("day", sa.Date, nullable=False),
        sa.Column("condition", sa.Text, nullable=False),
        sa.Column("last_modified_date", sa.Date),
        sa.Column("provisional", sa.Boolean, nullable=False),
        sa.Column("bought", sa.Boolean, nullable=False),
    )
    op.create_index("ix_clean_coverage_conditions_symbol_day", "clean_coverage_conditions", ["symbol", "day"])


def downgrade() -> None:
    op.drop_index("ix_clean_coverage_conditions_symbol_day", table_name="clean_coverage_conditions")
    op.drop_table("clean_coverage_conditions")
    op.drop_index("ix_databento_batch_jobs_request", table_name="databento_batch_jobs")
    op.drop_table("databento_batch_jobs")
