"""Reruns and resumable backfills: which run a run reran, and every stage chunk done.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

from engine.db.types import UtcTimestamp

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("engine_runs") as batch:
        batch.add_column(sa.Column("rerun_of", sa.Integer))
        batch.add_column(sa.Column("rerun_of_git_hash", sa.Text))
    op.create_table(
        "stage_chunks",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("engine_run_id", sa.Integer, sa.ForeignKey("engine_runs.id", name="fk_stage_chunks_run"),
                  nullable=False),
        sa.Column("stage", sa.Text, nullable=False),
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("start_ts", UtcTimestamp, nullable=False),
        sa.Column("end_ts", UtcTimestamp, nullable=False),
        sa.Column("settings_sha256", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("finished_at", UtcTimestamp),
        sa.Column("summary", sa.Text),
    )
    op.create_index("ix_stage_chunks_lookup", "stage_chunks",
                    ["stage", "symbol", "settings_sha256", "start_ts", "end_ts"])


def downgrade() -> None:
    op.drop_index("ix_stage_chunks_lookup", table_name="stage_chunks")
    op.drop_table("stage_chunks")
    with op.batch_alter_table("engine_runs") as batch:
        batch.drop_column("rerun_of_git_hash")
        batch.drop_column("rerun_of")
