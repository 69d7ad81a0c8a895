"""Triangle detection details: confirmation time, detector periods, producing run; no duplicates.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

from engine.db.types import UtcTimestamp

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("triangle_events_v1") as batch:
        batch.add_column(sa.Column("confirm_ts", UtcTimestamp))
        batch.add_column(sa.Column("n", sa.Integer))
        batch.add_column(sa.Column("run_id", sa.Integer))
    op.create_index(
        "uq_triangle_events_v1_event",
        "triangle_events_v1",
        ["symbol", "source_table", "logic_version", "n", "ts", "direction"],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index("uq_triangle_events_v1_event", table_name="triangle_events_v1")
    with op.batch_alter_table("triangle_events_v1") as batch:
        batch.drop_column("run_id")
        batch.drop_column("n")
        batch.drop_column("confirm_ts")
