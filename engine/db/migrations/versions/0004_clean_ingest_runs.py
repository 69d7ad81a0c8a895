"""Clean ingest run log: one row per ingest, success or failure.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

from engine.db.types import UtcTimestamp

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "clean_ingest_runs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("start_ts", UtcTimestamp, nullable=False),
        sa.Column("end_ts", UtcTimestamp, nullable=False),
        sa.Column("bars_received", sa.BigInteger, nullable=False),
        sa.Column("bars_inserted", sa.BigInteger, nullable=False),
        sa.Column("bars_updated", sa.BigInteger, nullable=False),
        sa.Column("bars_skipped", sa.BigInteger, nullable=False),
        sa.Column("batch_commits", sa.Integer, nullable=False),
        sa.Column("retries", sa.Integer, nullable=False),
        sa.Column("run_at", UtcTimestamp, nullable=False),
        sa.Column("duration_seconds", sa.Float),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("error", sa.Text),
    )
    op.create_index("ix_clean_ingest_runs_symbol_run_at", "clean_ingest_runs", ["symbol", "run_at"])


def downgrade() -> None:
    op.drop_index("ix_clean_ingest_runs_symbol_run_at", table_name="clean_ingest_runs")
    op.drop_table("clean_ingest_runs")
