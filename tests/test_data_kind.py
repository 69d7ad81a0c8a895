"""What a database holds (engine_database.data_kind) is recorded before its first bar: an interrupted first ingest or
two first ingests at once never wedge it; real mixing of demo and market data is still refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from dbn_files import bars, write_dbn
from test_liveness import SLOW_INGEST, query, start_engine, wait_for

from engine.db.connect import create_db_engine, upgrade
from engine.db.schema import clean_bars, clean_ingest_runs, engine_runs

SMALL = ["stages=[ingest]", "window.start=2025-12-08", "window.end=2025-12-09"]
MARKET_WINDOW = ["window.start=2025-12-01T14:30:00Z", "window.end=2025-12-01T17:00:00Z"]  # the 150 bars of bars()


def recorded(url: str) -> list[dict]:
    return query(url, "SELECT data_kind, engine_run_id FROM engine_database")


def bar_count(url: str) -> int:
    return query(url, "SELECT count(*) AS n FROM market_bars_ohlcv_1m_clean")[0]["n"]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_an_interrupted_first_demo_ingest_never_wedges_the_database(db_url, tmp_path, engine_cli, sig):
    proc = start_engine(db_url, tmp_path, *SLOW_INGEST)
    try:
        wait_for(lambda: bar_count(db_url) > 0, "the first committed batch")
    finally:
        proc.send_signal(sig)
        proc.wait(timeout=120)
    assert proc.returncode == (130 if sig == signal.SIGTERM else -signal.SIGKILL)
    assert bar_count(db_url) > 0
    assert [r["status"] for r in query(db_url, "SELECT status FROM clean_ingest_runs")] != ["success"]
    [kind] = recorded(db_url)
    assert kind["data_kind"] == "demo"

    again = engine_cli(f"db.url={db_url}", *SMALL)
    assert again.returncode == 0, again.output
    assert again.result["stages"]["ingest"]["bars_received"] > 0
    forced = engine_cli(f"db.url={db_url}", *SMALL, "force=true")
    assert forced.returncode == 0, forced.output
    assert recorded(db_url) == [kind], "the first claim stays"


@pytest.mark.slow
def test_two_demo_jobs_started_together_both_succeed(db_url, tmp_path):
    window = ["stages=[ingest]", "window.start=2025-10-01", "window.end=2025-12-01"]  # 2 months: several batches
    procs = [start_engine(db_url, tmp_path / name, *window) for name in ("a", "b")]
    codes = [proc.wait(timeout=300) for proc in procs]
    assert codes == [0, 0]
    statuses = [r["status"] for r in query(db_url, "SELECT status FROM clean_ingest_runs")]
    assert statuses == ["success", "success"]
    [kind] = recorded(db_url)
    run_ids = {r["id"] for r in query(db_url, "SELECT id FROM engine_runs")}
    assert kind["data_kind"] == "demo" and kind["engine_run_id"] in run_ids


@pytest.mark.slow
def test_demo_into_a_market_database_is_refused(db_url, tmp_path, engine_cli):
    market_file = write_dbn(tmp_path / "nq.dbn.zst", bars(30))
    market = engine_cli(f"db.url={db_url}", "stages=[ingest]", "source=dbn_file", f"source.paths=[{market_file}]",
                        *MARKET_WINDOW)
    assert market.returncode == 0, market.output
    demo = engine_cli(f"db.url={db_url}", *SMALL)
    assert demo.returncode == 2
    text = " ".join(demo.output.split())
    assert "refusing to ingest demo data from source=synthetic" in text
    assert f"holds market data (since run {market.result['run_id']}" in text
    assert "db.url=sqlite:///data/demo.sqlite" in text and "Traceback" not in demo.output
    assert bar_count(db_url) == 30
    assert recorded(db_url)[0]["data_kind"] == "market"


@pytest.mark.slow
def test_market_into_a_demo_database_is_refused(db_url, tmp_path, engine_cli):
    demo = engine_cli(f"db.url={db_url}", *SMALL)
    assert demo.returncode == 0, demo.output
    held = bar_count(db_url)
    market_file = write_dbn(tmp_path / "nq.dbn.zst", bars(30))
    market = engine_cli(f"db.url={db_url}", "stages=[ingest]", "source=dbn_file", f"source.paths=[{market_file}]",
                        *MARKET_WINDOW, "force=true")
    assert market.returncode == 2
    text = " ".join(market.output.split())
    assert "refusing to ingest market data from source=dbn_file" in text and "holds demo data" in text
    assert "db.url=sqlite:///data/market.sqlite" in text
    assert bar_count(db_url) == held


@pytest.mark.slow
def test_a_claim_of_a_database_without_bars_says_how_to_release_it(db_url, tmp_path, engine_cli):
    """A first market ingest that wrote nothing still claims the database; the refusal says so and how to undo it."""
    empty_file = write_dbn(tmp_path / "es.dbn.zst", bars(30), symbol="ES.v.0")  # the wrong file: no NQ bars
    market = engine_cli(f"db.url={db_url}", "stages=[ingest]", "source=dbn_file", f"source.paths=[{empty_file}]",
                        *MARKET_WINDOW)
    assert bar_count(db_url) == 0 and recorded(db_url)[0]["data_kind"] == "market", market.output
    demo = engine_cli(f"db.url={db_url}", *SMALL)
    assert demo.returncode == 2
    assert "it holds no bars yet: if that was a mistake, DELETE FROM engine_database" in " ".join(demo.output.split())
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM engine_database"))
    engine.dispose()
    assert engine_cli(f"db.url={db_url}", *SMALL).returncode == 0


# --------------------------------------------------------------------------------------------------
# Databases of older versions: migrations up to 0008, rows as the old code wrote them, then the upgrade

T0 = datetime(2025, 12, 8, tzinfo=UTC)


def _old_database(url: str, ingests: list[tuple[str, str, int]], loose_bars: int = 0) -> None:
    """At revision 0008: one engine run + ingest per (data_kind, ingest status, bars it wrote), and bars no ingest
    recorded."""
    engine = create_db_engine(url)
    upgrade(engine, "0008")
    ts = iter(T0 + timedelta(minutes=i) for i in range(10_000))
    with engine.begin() as conn:
        for kind, status, count in ingests:
            run_id = conn.execute(sa.insert(engine_runs).values(
                status="interrupted" if status == "running" else status, started_at=T0, stages='["ingest"]',
                run_dir="/old", logic_version="old", config_sha256="0" * 64, overrides="[]", data_kind=kind,
            )).inserted_primary_key[0]
            ingest_id = conn.execute(sa.insert(clean_ingest_runs).values(
                symbol="GLBX.MDP3:NQ", start_ts=T0, end_ts=T0 + timedelta(days=1), bars_received=0,
                bars_inserted=0, bars_updated=0, bars_skipped=0, batch_commits=0, retries=0, run_at=T0,
                status=status, engine_run_id=run_id,
            )).inserted_primary_key[0]
            for _ in range(count):
                conn.execute(sa.insert(clean_bars).values(symbol="GLBX.MDP3:NQ", ts=next(ts), open=1, high=1, low=1,
                                                          close=1, volume=1, ingest_run_id=ingest_id))
        for _ in range(loose_bars):
            conn.execute(sa.insert(clean_bars).values(symbol="GLBX.MDP3:NQ", ts=next(ts), open=1, high=1, low=1,
                                                      close=1, volume=1))
    upgrade(engine)
    engine.dispose()


@pytest.mark.parametrize(("ingests", "loose_bars", "expected"), [
    ([("demo", "running", 3)], 0, "demo"),  # the wedged case: an interrupted first demo ingest, no success
    ([("demo", "failed", 2), ("demo", "success", 0)], 0, "demo"),
    ([("market", "success", 3)], 0, "market"),
    ([], 5, "market"),  # bars no ingest of this engine recorded: market, the rule of earlier versions
    ([("market", "success", 2), ("demo", "success", 2)], 0, "market"),  # already mixed: market goes on
    ([("demo", "failed", 0)], 0, None),  # nothing landed: the first ingest decides
], ids=["wedged-demo", "demo", "market", "unrecorded-bars", "mixed", "empty"])
def test_old_databases_are_backfilled(db_url, ingests, loose_bars, expected):
    _old_database(db_url, ingests, loose_bars)
    assert [r["data_kind"] for r in recorded(db_url)] == ([expected] if expected else [])


@pytest.mark.slow
def test_a_wedged_old_database_ingests_again_after_the_upgrade(db_url, tmp_path):
    _old_database(db_url, [("demo", "running", 3)])
    for extra in ([], ["force=true"]):
        proc = subprocess.run([sys.executable, "-m", "engine", f"db.url={db_url}", *SMALL, *extra], cwd=tmp_path,
                              env={**os.environ, "COLUMNS": "160"}, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert recorded(db_url)[0]["data_kind"] == "demo"


def test_0009_keeps_every_row_and_foreign_key_of_an_old_database_both_ways(db_url):
    """SQLite rebuilds engine_runs for 0009; the rows that reference it (ingests) must survive, up and down."""
    from engine.db.connect import downgrade

    _old_database(db_url, [("demo", "success", 2), ("market", "failed", 1)])
    before = query(db_url, "SELECT id, status, data_kind, started_at FROM engine_runs ORDER BY id")
    assert len(before) == 2
    engine = create_db_engine(db_url)
    try:
        downgrade(engine, "0008")
        upgrade(engine)
    finally:
        engine.dispose()
    assert query(db_url, "SELECT id, status, data_kind, started_at FROM engine_runs ORDER BY id") == before
    assert [r["engine_run_id"] for r in query(db_url, "SELECT engine_run_id FROM clean_ingest_runs ORDER BY id")
            ] == [r["id"] for r in before]
    if db_url.startswith("sqlite"):
        assert query(db_url, "PRAGMA foreign_key_check") == []
