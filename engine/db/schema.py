"""The tables at migration head, as SQLAlchemy Core objects (tests check they match `migrations/`)."""

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
)

from engine.db.types import UtcTimestamp

metadata = MetaData()

CLEAN_BARS = "market_bars_ohlcv_1m_clean"
LEGACY_BARS = "market_bars_ohlcv_1m"


def _bars_columns():
    return [
        Column("symbol", Text, primary_key=True),
        Column("ts", UtcTimestamp, primary_key=True),
        Column("open", Float, nullable=False),
        Column("high", Float, nullable=False),
        Column("low", Float, nullable=False),
        Column("close", Float, nullable=False),
        Column("volume", BigInteger, nullable=False),
    ]


engine_runs = Table(
    "engine_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("status", Text, nullable=False),
    Column("started_at", UtcTimestamp, nullable=False),
    Column("finished_at", UtcTimestamp),
    Column("symbol", Text),
    Column("stages", Text, nullable=False),
    Column("run_dir", Text, nullable=False),
    Column("git_hash", Text),
    Column("git_dirty", Boolean),
    Column("logic_version", Text, nullable=False),
    Column("config_sha256", Text, nullable=False),
    Column("overrides", Text, nullable=False),
    Column("data_kind", Text, nullable=False),
    Column("error", Text),
    Column("rerun_of", Integer),
    Column("rerun_of_git_hash", Text),
    Column("host", Text),  # where the run's process ran, its pid and start time: liveness on SQLite
    Column("pid", Integer),
    Column("process_start", Text),
    Column("window_start", UtcTimestamp),  # the job's resolved window [start, end), UTC; NULL before 0013
    Column("window_end", UtcTimestamp),
    Column("detector", Text),  # the name it was selected under, e.g. williams_fractals
    Column("detector_params", Text),  # its parameters, JSON with sorted keys (as triangle_events_v1 records them)
    Column("adjustment", Text),  # none | difference | ratio: how the run read the series
    CheckConstraint("status IN ('running', 'success', 'failed', 'interrupted', 'abandoned')",
                    name="ck_engine_runs_status"),
)

clean_bars = Table(
    CLEAN_BARS,
    metadata,
    *_bars_columns(),
    Column("instrument_id", BigInteger),
    Column("ingest_run_id", Integer),
    Column("raw_symbol", Text),  # the contract (e.g. ESU4); NULL where the inputs do not say
    sqlite_with_rowid=False,
)

legacy_bars = Table(LEGACY_BARS, metadata, *_bars_columns(), sqlite_with_rowid=False)

symbol_registry = Table(
    "symbol_registry",
    metadata,
    Column("internal_symbol", Text, primary_key=True),
    Column("dataset", Text, nullable=False),
    Column("root", Text, nullable=False),
    Column("roll_rule", Text),
    Column("rank", Integer),
    Column("schema", Text),
    Column("stype_in", Text),
    Column("is_active", Boolean, nullable=False),
)

triangle_events = Table(
    "triangle_events_v1",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("symbol", Text, nullable=False),
    Column("ts", UtcTimestamp, nullable=False),
    Column("direction", Text, nullable=False),
    Column("price", Float),
    Column("source_table", Text),
    Column("logic_version", Text),
    Column("confirm_ts", UtcTimestamp),
    Column("n", Integer),  # the detector's look-ahead bars (Williams Fractals: its period n)
    Column("run_id", Integer),
    Column("detector", Text, nullable=False),  # the name it was selected under, e.g. williams_fractals
    Column("detector_params", Text, nullable=False),  # its parameters, JSON with sorted keys
    Column("adjustment", Text, nullable=False, server_default="none"),  # none | difference | ratio
    CheckConstraint("direction IN ('BULL', 'BEAR')", name="ck_triangle_events_v1_direction"),
    Index("uq_triangle_events_v1_event", "symbol", "source_table", "logic_version", "detector", "detector_params",
          "adjustment", "ts", "direction", unique=True),
)

clean_ingest_runs = Table(
    "clean_ingest_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("symbol", Text, nullable=False),
    Column("start_ts", UtcTimestamp, nullable=False),
    Column("end_ts", UtcTimestamp, nullable=False),
    Column("bars_received", BigInteger, nullable=False),
    Column("bars_inserted", BigInteger, nullable=False),
    Column("bars_updated", BigInteger, nullable=False),
    Column("bars_skipped", BigInteger, nullable=False),
    Column("batch_commits", Integer, nullable=False),
    Column("retries", Integer, nullable=False),
    Column("run_at", UtcTimestamp, nullable=False),
    Column("duration_seconds", Float),
    Column("status", Text, nullable=False),
    Column("error", Text),
    Column("engine_run_id", Integer, ForeignKey("engine_runs.id", name="fk_clean_ingest_runs_engine_run")),
    Column("bars_unchanged", BigInteger, nullable=False, server_default="0"),
    Column("skipped_by_reason", Text),  # JSON {reason: count}
    Column("ignored_instruments", Text),  # JSON {symbol: count}: other instruments in the files
    Column("source", Text),
    Column("databento_symbol", Text),
    Column("raw_files", Text),  # JSON [{path, sha256, reused}]
    Column("contracts_not_chosen", Text),  # JSON {contract: bars} the roll rule did not choose
    Index("ix_clean_ingest_runs_symbol_run_at", "symbol", "run_at"),
)

clean_ingest_quarantine = Table(
    "clean_ingest_quarantine",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ingest_run_id", Integer, ForeignKey("clean_ingest_runs.id", name="fk_quarantine_run"), nullable=False),
    Column("symbol", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("ts", UtcTimestamp),
    Column("ts_ns", BigInteger, nullable=False),
    Column("instrument_id", BigInteger),
    Column("open_raw", BigInteger),
    Column("high_raw", BigInteger),
    Column("low_raw", BigInteger),
    Column("close_raw", BigInteger),
    Column("volume_raw", BigInteger),
    Index("ix_clean_ingest_quarantine_run", "ingest_run_id"),
)

stage_chunks = Table(
    "stage_chunks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("engine_run_id", Integer, ForeignKey("engine_runs.id", name="fk_stage_chunks_run"), nullable=False),
    Column("stage", Text, nullable=False),
    Column("symbol", Text, nullable=False),
    Column("start_ts", UtcTimestamp, nullable=False),
    Column("end_ts", UtcTimestamp, nullable=False),
    Column("settings_sha256", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("finished_at", UtcTimestamp),
    Column("summary", Text),
    Index("ix_stage_chunks_lookup", "stage", "symbol", "settings_sha256", "start_ts", "end_ts"),
)

engine_database = Table(
    "engine_database",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("data_kind", Text, nullable=False),  # demo | market, recorded before the first bar is written
    Column("recorded_at", UtcTimestamp, nullable=False),
    Column("engine_run_id", Integer),
    CheckConstraint("id = 1", name="ck_engine_database_one_row"),
    CheckConstraint("data_kind IN ('demo', 'market')", name="ck_engine_database_data_kind"),
)

clean_coverage = Table(
    "clean_coverage",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ingest_run_id", Integer, ForeignKey("clean_ingest_runs.id", name="fk_clean_coverage_run"),
           nullable=False),
    Column("symbol", Text, nullable=False),
    Column("start_ts", UtcTimestamp, nullable=False),
    Column("end_ts", UtcTimestamp, nullable=False),
    Index("ix_clean_coverage_symbol_start", "symbol", "start_ts"),
)

contract_rolls = Table(
    "contract_rolls",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("symbol", Text, nullable=False),
    Column("roll_ts", UtcTimestamp, nullable=False),  # first minute of the incoming contract in the series
    Column("outgoing_raw_symbol", Text),
    Column("outgoing_instrument_id", BigInteger, nullable=False),
    Column("incoming_raw_symbol", Text),
    Column("incoming_instrument_id", BigInteger, nullable=False),
    Column("rule", Text, nullable=False),  # e.g. v.0, c.0
    Column("origin", Text, nullable=False),  # databento (the file's mappings) | computed (from outright bars)
    Column("price_ts", UtcTimestamp),  # the common minute whose closes adjust this roll; NULL: not adjustable
    Column("outgoing_close", Float),
    Column("incoming_close", Float),
    Column("ingest_run_id", Integer, ForeignKey("clean_ingest_runs.id", name="fk_contract_rolls_run")),
    CheckConstraint("origin IN ('databento', 'computed')", name="ck_contract_rolls_origin"),
    Index("uq_contract_rolls_symbol_ts", "symbol", "roll_ts", unique=True),
)

session_quality = Table(
    "session_quality",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("symbol", Text, nullable=False),
    Column("trade_date", Date, nullable=False),
    Column("session_open", UtcTimestamp, nullable=False),
    Column("session_close", UtcTimestamp, nullable=False),
    Column("expected_minutes", Integer, nullable=False),
    Column("bars_present", Integer, nullable=False),
    Column("missing_minutes", Integer, nullable=False),
    Column("missing_ranges", Text, nullable=False),  # JSON [[start, end), ...] ISO UTC minutes
    Column("bars_outside_session", Integer, nullable=False),
    Column("longest_gap_minutes", Integer, nullable=False),
    Column("ingest_run_id", Integer, ForeignKey("clean_ingest_runs.id", name="fk_session_quality_run")),
    Column("computed_at", UtcTimestamp, nullable=False),
    Index("uq_session_quality_symbol_date", "symbol", "trade_date", unique=True),
)

__all__ = [
    "metadata",
    "engine_runs",
    "clean_bars",
    "legacy_bars",
    "symbol_registry",
    "triangle_events",
    "clean_ingest_runs",
    "clean_ingest_quarantine",
    "stage_chunks",
    "engine_database",
    "clean_coverage",
    "contract_rolls",
    "session_quality",
]

databento_batch_jobs = Table(
    "databento_batch_jobs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", Text, unique=True),  # NULL only while the job is being submitted
    Column("dataset", Text, nullable=False),
    Column("symbol", Text, nullable=False),
    Column("schema", Text, nullable=False),
    Column("stype_in", Text, nullable=False),
    Column("start_ts", UtcTimestamp, nullable=False),
    Column("end_ts", UtcTimestamp, nullable=False),
    Column("state", Text, nullable=False),  # submitting | received | queued | processing | done | expired | landed
    Column("cost_usd", Float),
    Column("submitted_at", UtcTimestamp, nullable=False),
    Column("updated_at", UtcTimestamp, nullable=False),
    Column("engine_run_id", Integer),
    Index("ix_databento_batch_jobs_request", "dataset", "symbol", "schema", "stype_in", "start_ts", "end_ts"),
)

clean_coverage_conditions = Table(
    "clean_coverage_conditions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ingest_run_id", Integer, ForeignKey("clean_ingest_runs.id", name="fk_clean_coverage_conditions_run"),
           nullable=False),
    Column("symbol", Text, nullable=False),
    Column("day", Date, nullable=False),
    Column("condition", Text, nullable=False),  # Databento's: available | degraded | pending | missing
    Column("last_modified_date", Date),
    Column("provisional", Boolean, nullable=False),  # the day was not final yet (the last ~24 hours) when bought
    Column("bought", Boolean, nullable=False),  # false: pending or missing, left out of clean_coverage
    Index("ix_clean_coverage_conditions_symbol_day", "symbol", "day"),
)
