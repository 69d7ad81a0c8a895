"""Runs know their window and detector: engine_runs records what each job worked on.

* engine_runs gains `window_start` and `window_end` (the job's resolved window, UTC, end exclusive), `detector`
  (the name it was selected under, e.g. williams_fractals), `detector_params` (its parameters, JSON with sorted
  keys, as triangle_events_v1 records them) and `adjustment` (none | difference | ratio: how detect, chart and
  parity read the series). `engine status` and `engine runs` read them instead of the run directories.
* Rows of earlier runs keep NULL in all five: their run directories (resolved_config.yaml) still say what they
  used, but a run directory may be gone or moved, so nothing is backfilled from them.

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

from engine.db.types import UtcTimestamp

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_COLUMNS = ("window_start", "window_end", "detector", "detector_params", "adjustment")


def upgrade() -> None:
    op.add_column("engine_runs", sa.Column("window_start", UtcTimestamp))
    op.add_column("engine_runs", sa.Column("window_end", UtcTimestamp))
    op.add_column("engine_runs", sa.Column("detector", sa.Text))
    op.add_column("engine_runs", sa.Column("detector_params", sa.Text))
    op.add_column("engine_runs", sa.Column("adjustment", sa.Text))


def downgrade() -> None:
    # One ALTER TABLE ... DROP COLUMN each (SQLite >= 3.35 drops a plain column in place): no table rebuild, so the
    # rows of clean_ingest_runs and stage_chunks that reference engine_runs stay valid.
    for column in reversed(_COLUMNS):
        op.drop_column("engine_runs", column)
