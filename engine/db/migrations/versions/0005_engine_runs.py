"""Engine run log: one row per job, linked from the stage logs.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

from engine.db.types import UtcTimestamp

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "engine_runs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("started_at", UtcTimestamp, nullable=False),
        sa.Column("finished_at", UtcTimestamp),
        sa.Column("symbol", sa.Text),
        sa.Column("stages", sa.Text, nullable=False),
        sa.Column("run_dir", sa.Text, nullable=False),
        sa.Column("git_hash", sa.Text),
        sa.Column("git_dirty", sa.Boolean),
        sa.Column("logic_version", sa.Text, nullable=False),
        sa.Column("config_sha256", sa.Text, nullable=False),
        sa.Column("overrides", sa.Text, nullable=False),
        sa.Column("data_kind", sa.Text, nullable=False),
        sa.Column("error", sa.Text),
        sa.CheckConstraint(
            "status IN ('running', 'success', 'failed', 'interrupted')", name="ck_engine_runs_status"
        ),
    )
    with op.batch_alter_table("clean_ingest_runs") as batch:
        batch.add_column(sa.Column("engine_run_id", sa.Integer))
        batch.create_foreign_key("fk_clean_ingest_runs_engine_run", "engine_runs", ["engine_run_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("clean_ingest_runs") as batch:
        batch.drop_constraint("fk_clean_ingest_runs_engine_run", type_="foreignkey")
        batch.drop_column("engine_run_id")
    op.drop_table("engine_runs")
