"""Events know their detector: the name it was selected under and its parameters are part of the event's key.

triangle_events_v1 gains `detector` (e.g. williams_fractals) and `detector_params` (JSON with sorted keys, as
json.dumps(..., sort_keys=True) writes it), both NOT NULL; the unique index becomes (symbol, source_table,
logic_version, detector, detector_params, ts, direction), so two detectors' events (or one detector's with other
parameters) coexist. `n` stays and holds the detector's look-ahead bars. Existing rows were written by Williams
Fractals with the default directions: they get williams_fractals and {"n": <their n>, "swing_high": "BEAR",
"swing_low": "BULL"}, the text the engine writes for that detector, so a rerun replaces them. Downgrading drops
the events the old key cannot hold apart (other detectors, Williams with swapped directions).

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_TABLE = "triangle_events_v1"
_INDEX = "uq_triangle_events_v1_event"
_OLD_KEY = ["symbol", "source_table", "logic_version", "n", "ts", "direction"]
_NEW_KEY = ["symbol", "source_table", "logic_version", "detector", "detector_params", "ts", "direction"]
# What the engine writes for WilliamsFractals(n) with swing_high=BEAR, swing_low=BULL.
_WILLIAMS_PARAMS = ("CASE WHEN n IS NULL THEN '{\"n\": null, \"swing_high\": \"BEAR\", \"swing_low\": \"BULL\"}' "
                    "ELSE '{\"n\": ' || CAST(n AS TEXT) || ', \"swing_high\": \"BEAR\", \"swing_low\": \"BULL\"}' END")


def upgrade() -> None:
    op.drop_index(_INDEX, table_name=_TABLE)
    with op.batch_alter_table(_TABLE) as batch:
        batch.add_column(sa.Column("detector", sa.Text))
        batch.add_column(sa.Column("detector_params", sa.Text))
    op.execute(f"UPDATE {_TABLE} SET detector = 'williams_fractals', detector_params = {_WILLIAMS_PARAMS}")
    with op.batch_alter_table(_TABLE) as batch:
        batch.alter_column("detector", existing_type=sa.Text, nullable=False)
        batch.alter_column("detector_params", existing_type=sa.Text, nullable=False)
    op.create_index(_INDEX, _TABLE, _NEW_KEY, unique=True)


def downgrade() -> None:
    op.drop_index(_INDEX, table_name=_TABLE)
    op.execute(f"DELETE FROM {_TABLE} WHERE detector <> 'williams_fractals' OR detector_params <> {_WILLIAMS_PARAMS}")
    with op.batch_alter_table(_TABLE) as batch:
        batch.drop_column("detector_params")
        batch.drop_column("detector")
    op.create_index(_INDEX, _TABLE, _OLD_KEY, unique=True)
