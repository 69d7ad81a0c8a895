"""Base: clean bars, legacy bars, triangle events.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from engine.db.types import UtcTimestamp

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _bars(name: str) -> None:
    op.create_table(
        name,
        sa.Column("symbol", sa.Text, primary_key=True),
        sa.Column("ts", UtcTimestamp, primary_key=True),
        sa.Column("open", sa.Float, nullable=False),
        sa.Column("high", sa.Float, nullable=False),
        sa.Column("low", sa.Float, nullable=False),
        sa.Column("close", sa.Float, nullable=False),
        sa.Column("volume", sa.BigInteger, nullable=False),
        sqlite_with_rowid=False,
    )


def upgrade() -> None:
    _bars("market_bars_ohlcv_1m_clean")
    _bars("market_bars_ohlcv_1m")
    op.create_table(
        "triangle_events_v1",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("ts", UtcTimestamp, nullable=False),
        sa.Column("direction", sa.Text, nullable=False),
        sa.Column("price", sa.Float),
        sa.CheckConstraint("direction IN ('BULL', 'BEAR')", name="ck_triangle_events_v1_direction"),
    )


def downgrade() -> None:
    op.drop_table("triangle_events_v1")
    op.drop_table("market_bars_ohlcv_1m")
    op.drop_table("market_bars_ohlcv_1m_clean")
