"""Migrations on SQLite and PostgreSQL: head matches engine/db/schema.py, downgrade works, safe in parallel."""

import multiprocessing

import numpy as np
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from engine.db.connect import create_db_engine, current_revision, downgrade, head_revision, upgrade
from engine.db.schema import metadata

FIXED_TABLES = {
    "symbol_registry": {"internal_symbol", "dataset", "root", "roll_rule", "rank", "schema", "stype_in", "is_active"},
    "market_bars_ohlcv_1m_clean": {"symbol", "ts", "open", "high", "low", "close", "volume"},
    "market_bars_ohlcv_1m": {"symbol", "ts", "open", "high", "low", "close", "volume"},
    "triangle_events_v1": {"symbol", "ts", "direction", "source_table", "logic_version"},
    "clean_ingest_runs": {"id", "symbol", "start_ts", "end_ts", "bars_received", "bars_inserted", "bars_updated",
                          "bars_skipped", "batch_commits", "retries", "run_at", "duration_seconds", "status",
                          "error"},
    "engine_runs": {"id", "status", "started_at", "finished_at", "symbol", "stages", "run_dir", "git_hash",
                    "git_dirty", "config_sha256", "overrides", "error"},
}


def test_head_creates_the_locked_tables_and_columns(db):
    inspector = sa.inspect(db)
    for table, columns in FIXED_TABLES.items():
        have = {c["name"] for c in inspector.get_columns(table)}
        assert columns <= have, f"{table} lacks {columns - have}"
    assert inspector.get_pk_constraint("market_bars_ohlcv_1m_clean")["constrained_columns"] == ["symbol", "ts"]
    assert inspector.get_pk_constraint("symbol_registry")["constrained_columns"] == ["internal_symbol"]


def test_migrated_schema_matches_table_definitions(db):
    with db.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": False}), metadata)
    assert diffs == []


def test_revision_history_is_the_documented_sequence():
    from alembic.script import ScriptDirectory

    from engine.db.connect import alembic_config

    revisions = list(reversed(list(ScriptDirectory.from_config(alembic_config()).walk_revisions())))
    docs = [r.doc.lower() for r in revisions]
    assert docs[0].startswith("base: clean bars, legacy bars, triangle events")
    assert docs[1].startswith("symbol registry")
    assert docs[2].startswith("triangle provenance")
    assert docs[3].startswith("clean ingest run log")


def test_upgrade_is_idempotent_and_downgrade_base_drops_everything(db):
    upgrade(db)  # second time: no-op
    assert current_revision(db) == head_revision()
    downgrade(db, "base")
    assert current_revision(db) is None
    assert set(sa.inspect(db).get_table_names()) <= {"alembic_version"}
    upgrade(db)
    assert current_revision(db) == head_revision()
    with db.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM symbol_registry")).scalar() == 4


def test_every_revision_downgrades_and_upgrades_step_by_step(db_url):
    engine = create_db_engine(db_url)
    upgrade(engine)
    from alembic.script import ScriptDirectory

    from engine.db.connect import alembic_config

    revisions = [r.revision for r in ScriptDirectory.from_config(alembic_config()).walk_revisions()]
    for revision in revisions[1:]:  # newest first: step down one at a time
        downgrade(engine, revision)
        assert current_revision(engine) == revision
    downgrade(engine, "base")
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    engine.dispose()


def _upgrade_in_child(url: str) -> str:
    engine = create_db_engine(url)
    upgrade(engine)
    revision = current_revision(engine)
    engine.dispose()
    return revision


def test_two_processes_upgrading_at_once_both_succeed(db_url):
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        revisions = pool.map(_upgrade_in_child, [db_url] * 4)
    assert revisions == [head_revision()] * 4
    engine = create_db_engine(db_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM symbol_registry")).scalar() == 4
        assert conn.execute(sa.text("SELECT count(*) FROM alembic_version")).scalar() == 1
    engine.dispose()


def test_0011_gives_existing_events_their_detector_and_downgrades(db_url):
    """Rows of 0010 become Williams Fractals events a rerun replaces; down again, the old key holds them."""
    from datetime import UTC, datetime, timedelta

    from engine.db.events import EventKey, read_events, replace_events
    from engine.db.types import UtcTimestamp
    from engine.detectors import EVENT_DTYPE, params_json
    from engine.detectors.williams_fractals import WilliamsFractals

    t0 = datetime(2025, 12, 1, tzinfo=UTC)
    old_events = sa.table("triangle_events_v1", *(sa.column(c) for c in ("symbol", "direction", "price",
                                                                         "source_table", "logic_version", "n")),
                          sa.column("ts", UtcTimestamp), sa.column("confirm_ts", UtcTimestamp))
    rows = [{"symbol": "NQ", "ts": t0, "direction": "BEAR", "price": 1.0, "source_table": "clean",
             "logic_version": "v", "confirm_ts": t0 + timedelta(minutes=5), "n": 5},
            {"symbol": "NQ", "ts": t0, "direction": "BEAR", "price": 1.0, "source_table": "clean",
             "logic_version": "v", "confirm_ts": t0 + timedelta(minutes=3), "n": 3},
            {"symbol": "NQ", "ts": t0, "direction": "BULL", "price": 1.0, "source_table": "clean",
             "logic_version": "v", "confirm_ts": None, "n": None}]  # a row of an engine before 0007
    engine = create_db_engine(db_url)
    try:
        upgrade(engine, "0010")
        with engine.begin() as conn:
            conn.execute(sa.insert(old_events), rows)
        upgrade(engine)
        query = "SELECT detector, detector_params, n FROM triangle_events_v1 ORDER BY id"
        with engine.connect() as conn:
            assert [tuple(r) for r in conn.execute(sa.text(query))] == [
                ("williams_fractals", params_json(WilliamsFractals(n=5)), 5),
                ("williams_fractals", params_json(WilliamsFractals(n=3)), 3),
                ("williams_fractals", '{"n": null, "swing_high": "BEAR", "swing_low": "BULL"}', None)]
        # The key the engine now writes for n=5 finds that row, and a rerun of it replaces it.
        key = EventKey("NQ", "clean", "v", "williams_fractals", params_json(WilliamsFractals(n=5)))
        assert len(read_events(engine, key, t0, t0 + timedelta(hours=1))) == 1
        ns = int(t0.timestamp()) * 10**9
        assert replace_events(engine, key, t0, t0 + timedelta(hours=1), np.array(
            [(ns, ns + 300 * 10**9, 2.0, "BEAR")], EVENT_DTYPE), None, n=5) == (1, 1)
        other = EventKey("NQ", "clean", "v", "toy", "{}")  # same (ts, direction), another detector: both stay
        replace_events(engine, other, t0, t0 + timedelta(hours=1), np.array([(ns, ns, 2.0, "BEAR")], EVENT_DTYPE),
                       None, n=0)
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM triangle_events_v1")).scalar() == 4
        downgrade(engine, "0010")
        assert current_revision(engine) == "0010"
        with engine.connect() as conn:
            assert {tuple(r) for r in conn.execute(sa.text("SELECT n, price FROM triangle_events_v1"))} == {
                (3, 1.0), (5, 2.0), (None, 1.0)}
        assert {c["name"] for c in sa.inspect(engine).get_columns("triangle_events_v1")}.isdisjoint(
            {"detector", "detector_params"})
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:  # the old unique key is back
            conn.execute(sa.insert(old_events), rows[:1])
        upgrade(engine)
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()


def test_0013_adds_the_run_window_and_detector_and_downgrades_keeping_rows(db_url):
    """Rows of 0012 keep every field and get NULL window/detector/adjustment; new rows hold them; down again, the
    columns go and every row (and the ingest row referencing its run) stays."""
    from datetime import UTC, datetime

    from engine.db.types import UtcTimestamp

    t0 = datetime(2025, 12, 1, tzinfo=UTC)
    plain = ("id", "status", "stages", "run_dir", "logic_version", "config_sha256", "overrides", "data_kind", "symbol")
    runs = sa.table("engine_runs", *(sa.column(c) for c in plain), sa.column("started_at", UtcTimestamp))
    ingests = sa.table("clean_ingest_runs", *(sa.column(c) for c in (
        "id", "symbol", "bars_received", "bars_inserted", "bars_updated", "bars_skipped", "batch_commits", "retries",
        "status", "engine_run_id")), sa.column("start_ts", UtcTimestamp), sa.column("end_ts", UtcTimestamp),
        sa.column("run_at", UtcTimestamp))
    old = {"id": 1, "status": "success", "stages": '["ingest"]', "run_dir": "/runs/a", "logic_version": "v1",
           "config_sha256": "abc", "overrides": "[]", "data_kind": "demo", "symbol": "GLBX.MDP3:NQ", "started_at": t0}
    engine = create_db_engine(db_url)
    try:
        upgrade(engine, "0012")
        with engine.begin() as conn:
            conn.execute(sa.insert(runs), [old])
            conn.execute(sa.insert(ingests), [{"id": 7, "symbol": "GLBX.MDP3:NQ", "bars_received": 3,
                                               "bars_inserted": 3, "bars_updated": 0, "bars_skipped": 0,
                                               "batch_commits": 1, "retries": 0, "status": "success",
                                               "engine_run_id": 1, "start_ts": t0, "end_ts": t0, "run_at": t0}])
        upgrade(engine)
        new_columns = ("window_start", "window_end", "detector", "detector_params", "adjustment")
        read = sa.text("SELECT * FROM engine_runs ORDER BY id")
        with engine.connect() as conn:
            [row] = conn.execute(read).mappings().all()
        assert {k: row[k] for k in new_columns} == dict.fromkeys(new_columns)
        assert row["run_dir"] == "/runs/a" and row["symbol"] == "GLBX.MDP3:NQ" and row["status"] == "success"
        with engine.begin() as conn:
            full = sa.table("engine_runs", *(sa.column(c) for c in plain), sa.column("started_at", UtcTimestamp),
                            sa.column("window_start", UtcTimestamp),
                            sa.column("window_end", UtcTimestamp), sa.column("detector"),
                            sa.column("detector_params"), sa.column("adjustment"))
            conn.execute(sa.insert(full), [{**old, "id": 2, "window_start": t0, "window_end": t0,
                                            "detector": "williams_fractals", "detector_params": '{"n": 5}',
                                            "adjustment": "ratio"}])
        with engine.connect() as conn:
            got = conn.execute(sa.select(full.c.detector, full.c.adjustment, full.c.window_start)
                               .where(full.c.id == 2)).one()
        assert tuple(got) == ("williams_fractals", "ratio", t0)
        downgrade(engine, "0012")
        assert current_revision(engine) == "0012"
        assert {c["name"] for c in sa.inspect(engine).get_columns("engine_runs")}.isdisjoint(new_columns)
        with engine.connect() as conn:
            assert [r["id"] for r in conn.execute(read).mappings()] == [1, 2]
            assert conn.execute(sa.text("SELECT engine_run_id FROM clean_ingest_runs")).scalar() == 1
        upgrade(engine)
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()
