"""Clean coverage: the parts of each ingest's window that its bars really cover.

One row per covered interval [start_ts, end_ts) of a clean ingest: closed market time is always covered, a
trading session (CME Globex calendar) only where the ingest landed bars in it. The clean-only contract reads
this table instead of trusting an ingest's window. Existing successful ingests that landed bars are backfilled
as covering their whole window (what earlier versions assumed); those that landed none cover nothing.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

from engine.db.types import UtcTimestamp

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "clean_coverage",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("ingest_run_id", sa.Integer, sa.ForeignKey("clean_ingest_runs.id", name="fk_clean_coverage_run"),
                  nullable=False),
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("start_ts", UtcTimestamp, nullable=False),
        sa.Column("end_ts", UtcTimestamp, nullable=False),
    )
    op.create_index("ix_clean_coverage_symbol_start", "clean_coverage", ["symbol", "start_ts"])
    op.execute(
        "INSERT INTO clean_coverage (ingest_run_id, symbol, start_ts, end_ts) "
        "SELECT id, symbol, start_ts, end_ts FROM clean_ingest_runs "
        "WHERE status = 'success' AND bars_inserted + bars_updated + bars_unchanged > 0"
    )


def downgrade() -> None:
    op.drop_index("ix_clean_coverage_symbol_start", table_name="clean_coverage")
    op.drop_table("clean_coverage")
