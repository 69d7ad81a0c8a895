"""Symbol registry, seeded with the four CME equity-index E-minis.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SEED = ["NQ", "ES", "YM", "RTY"]


def upgrade() -> None:
    registry = op.create_table(
        "symbol_registry",
        sa.Column("internal_symbol", sa.Text, primary_key=True),
        sa.Column("dataset", sa.Text, nullable=False),
        sa.Column("root", sa.Text, nullable=False),
        sa.Column("roll_rule", sa.Text),
        sa.Column("rank", sa.Integer),
        sa.Column("schema", sa.Text),
        sa.Column("stype_in", sa.Text),
        sa.Column("is_active", sa.Boolean, nullable=False),
    )
    op.bulk_insert(
        registry,
        [
            {
                "internal_symbol": f"GLBX.MDP3:{root}",
                "dataset": "GLBX.MDP3",
                "root": root,
                "roll_rule": "v",
                "rank": 0,
                "schema": "ohlcv-1m",
                "stype_in": "continuous",
                "is_active": True,
            }
            for root in SEED
        ],
    )


def downgrade() -> None:
    op.drop_table("symbol_registry")
