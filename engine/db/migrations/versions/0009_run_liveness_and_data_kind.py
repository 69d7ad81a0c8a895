"""Run liveness and the database's data kind: `abandoned` runs, who ran a run, what a database holds.

* engine_runs gains `host`, `pid` and `process_start` (the process's start time as the kernel reports it), so a
  later run can prove a `running` row dead on SQLite; on PostgreSQL a live run holds a session advisory lock.
  Status `abandoned` marks a run that was proven dead while its row still said `running`.
* engine_database holds one row: the kind of data (demo or market) this database holds, recorded atomically
  before the first bar is written. Existing databases are backfilled from what their ingests recorded.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

from engine.db.types import UtcTimestamp

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_OLD_STATUS = "status IN ('running', 'success', 'failed', 'interrupted')"
_NEW_STATUS = "status IN ('running', 'success', 'failed', 'interrupted', 'abandoned')"


def _alter_engine_runs(alter) -> None:
    """Run `alter(batch)` on engine_runs. SQLite rebuilds the table, and dropping the old one would break the foreign
    keys of clean_ingest_runs and stage_chunks rows (foreign_keys=ON, which cannot change inside the migration's
    transaction): so empty it first with the checks deferred, rebuild the empty table, and put the rows back, which
    satisfies the deferred checks again before the commit."""
    conn = op.get_bind()
    sqlite = conn.dialect.name == "sqlite"
    if sqlite:
        conn.exec_driver_sql("PRAGMA defer_foreign_keys = ON")  # until this transaction ends
        conn.exec_driver_sql("CREATE TEMP TABLE engine_runs_0009 AS SELECT * FROM engine_runs")
        conn.exec_driver_sql("DELETE FROM engine_runs")
    with op.batch_alter_table("engine_runs") as batch:
        alter(batch)
    if sqlite:
        kept = {row[1] for row in conn.exec_driver_sql("PRAGMA temp.table_info(engine_runs_0009)")}
        columns = ", ".join(row[1] for row in conn.exec_driver_sql("PRAGMA main.table_info(engine_runs)")
                            if row[1] in kept)
        conn.exec_driver_sql(f"INSERT INTO main.engine_runs ({columns}) SELECT {columns} FROM temp.engine_runs_0009")
        conn.exec_driver_sql("DROP TABLE temp.engine_runs_0009")


def _upgrade_engine_runs(batch) -> None:
    batch.add_column(sa.Column("host", sa.Text))
    batch.add_column(sa.Column("pid", sa.Integer))
    batch.add_column(sa.Column("process_start", sa.Text))
    batch.drop_constraint("ck_engine_runs_status", type_="check")
    batch.create_check_constraint("ck_engine_runs_status", _NEW_STATUS)


def _downgrade_engine_runs(batch) -> None:
    batch.drop_constraint("ck_engine_runs_status", type_="check")
    batch.create_check_constraint("ck_engine_runs_status", _OLD_STATUS)
    batch.drop_column("process_start")
    batch.drop_column("pid")
    batch.drop_column("host")


def upgrade() -> None:
    _alter_engine_runs(_upgrade_engine_runs)
    op.create_table(
        "engine_database",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("data_kind", sa.Text, nullable=False),
        sa.Column("recorded_at", UtcTimestamp, nullable=False),
        sa.Column("engine_run_id", sa.Integer),
        sa.CheckConstraint("id = 1", name="ck_engine_database_one_row"),
        sa.CheckConstraint("data_kind IN ('demo', 'market')", name="ck_engine_database_data_kind"),
    )
    # Backfill: the kinds that successful ingests recorded; else those of the bars some ingest of this engine wrote
    # (an interrupted first ingest: its bars, no success); else bars nobody recorded are market data (the rule of
    # earlier versions). A database that already holds both kinds is recorded as market: market ingests go on and
    # demo ones stay refused, as before.
    conn = op.get_bind()
    kinds = {row[0] for row in conn.execute(sa.text(
        "SELECT DISTINCT r.data_kind FROM clean_ingest_runs i JOIN engine_runs r ON r.id = i.engine_run_id "
        "WHERE i.status = 'success'"))}
    if not kinds:
        kinds = {row[0] for row in conn.execute(sa.text(
            "SELECT DISTINCT r.data_kind FROM market_bars_ohlcv_1m_clean b "
            "JOIN clean_ingest_runs i ON i.id = b.ingest_run_id JOIN engine_runs r ON r.id = i.engine_run_id"))}
    if not kinds and conn.execute(sa.text("SELECT 1 FROM market_bars_ohlcv_1m_clean LIMIT 1")).first():
        kinds = {"market"}
    if kinds:
        conn.execute(sa.text("INSERT INTO engine_database (id, data_kind, recorded_at) VALUES (1, :kind, :now)"),
                     {"kind": "market" if "market" in kinds else "demo", "now": _now(conn)})


def _now(conn):
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    return now if conn.dialect.name == "postgresql" else now.strftime("%Y-%m-%d %H:%M:%S+00:00")


def downgrade() -> None:
    op.drop_table("engine_database")
    op.execute("UPDATE engine_runs SET status = 'failed' WHERE status = 'abandoned'")
    _alter_engine_runs(_downgrade_engine_runs)
