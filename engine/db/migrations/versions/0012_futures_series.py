"""Futures-correct series: the contract of every clean bar, rolls on record, adjusted events, session quality.

* market_bars_ohlcv_1m_clean gains `raw_symbol` (e.g. ESU4; NULL where the inputs do not say which contract,
  e.g. a continuous file without instrument definitions): `instrument_id` alone is unique only within a day.
* contract_rolls: one row per roll of a symbol's series (symbol, roll_ts unique): the outgoing and incoming
  contract and instrument id, the rule that chose them (e.g. v.0), whether Databento's mappings gave the roll
  or the engine computed it from outright bars, and the two contracts' closes at the minute the back-adjustment
  uses (price_ts; NULL when no common minute was found: that roll cannot be adjusted).
* session_quality: per symbol and CME trading session, expected minutes, bars present, missing ranges, bars
  outside any session and the longest gap; recomputed for the sessions an ingest touched.
* triangle_events_v1 gains `adjustment` (none | difference | ratio), part of the event key, so events detected on
  an adjusted series sit beside the unadjusted ones. Existing events were detected unadjusted: 'none'.
* clean_ingest_runs gains `contracts_not_chosen` (JSON {contract: bars}): bars of other contracts of the root that
  the roll rule did not choose (counted, not received, never quarantined).

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

from engine.db.types import UtcTimestamp

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_EVENTS = "triangle_events_v1"
_EVENT_INDEX = "uq_triangle_events_v1_event"
_OLD_KEY = ["symbol", "source_table", "logic_version", "detector", "detector_params", "ts", "direction"]
_NEW_KEY = ["symbol", "source_table", "logic_version", "detector", "detector_params", "adjustment", "ts",
            "direction"]


def upgrade() -> None:
    op.add_column("market_bars_ohlcv_1m_clean", sa.Column("raw_symbol", sa.Text))
    op.add_column("clean_ingest_runs", sa.Column("contracts_not_chosen", sa.Text))
    op.create_table(
        "contract_rolls",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("roll_ts", UtcTimestamp, nullable=False),
        sa.Column("outgoing_raw_symbol", sa.Text),
        sa.Column("outgoing_instrument_id", sa.BigInteger, nullable=False),
        sa.Column("incoming_raw_symbol", sa.Text),
        sa.Column("incoming_instrument_id", sa.BigInteger, nullable=False),
        sa.Column("rule", sa.Text, nullable=False),
        sa.Column("origin", sa.Text, nullable=False),
        sa.Column("price_ts", UtcTimestamp),
        sa.Column("outgoing_close", sa.Float),
        sa.Column("incoming_close", sa.Float),
        sa.Column("ingest_run_id", sa.Integer,
                  sa.ForeignKey("clean_ingest_runs.id", name="fk_contract_rolls_run")),
        sa.CheckConstraint("origin IN ('databento', 'computed')", name="ck_contract_rolls_origin"),
    )
    op.create_index("uq_contract_rolls_symbol_ts", "contract_rolls", ["symbol", "roll_ts"], unique=True)
    op.create_table(
        "session_quality",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("trade_date", sa.Date, nullable=False),
        sa.Column("session_open", UtcTimestamp, nullable=False),
        sa.Column("session_close", UtcTimestamp, nullable=False),
        sa.Column("expected_minutes", sa.Integer, nullable=False),
        sa.Column("bars_present", sa.Integer, nullable=False),
        sa.Column("missing_minutes", sa.Integer, nullable=False),
        sa.Column("missing_ranges", sa.Text, nullable=False),
        sa.Column("bars_outside_session", sa.Integer, nullable=False),
        sa.Column("longest_gap_minutes", sa.Integer, nullable=False),
        sa.Column("ingest_run_id", sa.Integer,
                  sa.ForeignKey("clean_ingest_runs.id", name="fk_session_quality_run")),
        sa.Column("computed_at", UtcTimestamp, nullable=False),
    )
    op.create_index("uq_session_quality_symbol_date", "session_quality", ["symbol", "trade_date"], unique=True)
    op.drop_index(_EVENT_INDEX, table_name=_EVENTS)
    with op.batch_alter_table(_EVENTS) as batch:
        batch.add_column(sa.Column("adjustment", sa.Text, nullable=False, server_default="none"))
    op.create_index(_EVENT_INDEX, _EVENTS, _NEW_KEY, unique=True)


def downgrade() -> None:
    op.drop_index(_EVENT_INDEX, table_name=_EVENTS)
    op.execute(f"DELETE FROM {_EVENTS} WHERE adjustment <> 'none'")
    with op.batch_alter_table(_EVENTS) as batch:
        batch.drop_column("adjustment")
    op.create_index(_EVENT_INDEX, _EVENTS, _OLD_KEY, unique=True)
    op.drop_index("uq_session_quality_symbol_date", table_name="session_quality")
    op.drop_table("session_quality")
    op.drop_index("uq_contract_rolls_symbol_ts", table_name="contract_rolls")
    op.drop_table("contract_rolls")
    with op.batch_alter_table("clean_ingest_runs") as batch:
        batch.drop_column("contracts_not_chosen")
    with op.batch_alter_table("market_bars_ohlcv_1m_clean") as batch:
        batch.drop_column("raw_symbol")
