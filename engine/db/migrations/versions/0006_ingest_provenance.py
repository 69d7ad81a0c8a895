"""Ingest provenance: instrument and ingest run on every clean bar, quarantine, fuller run log.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

from engine.db.types import UtcTimestamp

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("market_bars_ohlcv_1m_clean") as batch:
        batch.add_column(sa.Column("instrument_id", sa.BigInteger))
        batch.add_column(sa.Column("ingest_run_id", sa.Integer))
    with op.batch_alter_table("clean_ingest_runs") as batch:
        batch.add_column(sa.Column("bars_unchanged", sa.BigInteger, nullable=False, server_default="0"))
        batch.add_column(sa.Column("skipped_by_reason", sa.Text))
        batch.add_column(sa.Column("ignored_instruments", sa.Text))
        batch.add_column(sa.Column("source", sa.Text))
        batch.add_column(sa.Column("databento_symbol", sa.Text))
        batch.add_column(sa.Column("raw_files", sa.Text))
    op.create_table(
        "clean_ingest_quarantine",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("ingest_run_id", sa.Integer, sa.ForeignKey("clean_ingest_runs.id", name="fk_quarantine_run"),
                  nullable=False),
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("ts", UtcTimestamp),
        sa.Column("ts_ns", sa.BigInteger, nullable=False),
        sa.Column("instrument_id", sa.BigInteger),
        sa.Column("open_raw", sa.BigInteger),
        sa.Column("high_raw", sa.BigInteger),
        sa.Column("low_raw", sa.BigInteger),
        sa.Column("close_raw", sa.BigInteger),
        sa.Column("volume_raw", sa.BigInteger),
    )
    op.create_index("ix_clean_ingest_quarantine_run", "clean_ingest_quarantine", ["ingest_run_id"])


def downgrade() -> None:
    op.drop_index("ix_clean_ingest_quarantine_run", table_name="clean_ingest_quarantine")
    op.drop_table("clean_ingest_quarantine")
    with op.batch_alter_table("clean_ingest_runs") as batch:
        for column in ("raw_files", "databento_symbol", "source", "ignored_instruments", "skipped_by_reason",
                       "bars_unchanged"):
            batch.drop_column(column)
    with op.batch_alter_table("market_bars_ohlcv_1m_clean") as batch:
        batch.drop_column("ingest_run_id")
        batch.drop_column("instrument_id")
