"""Triangle provenance: which bars table and which logic version produced each event.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("triangle_events_v1") as batch:
        batch.add_column(sa.Column("source_table", sa.Text))
        batch.add_column(sa.Column("logic_version", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("triangle_events_v1") as batch:
        batch.drop_column("logic_version")
        batch.drop_column("source_table")
