"""The ingest stage end to end (`python -m engine … stages=[ingest]`), on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest
from dbn_files import T0, bars, write_dbn
from fake_databento import GET_COST, GET_RANGE, Reply
from sql_rows import query
from test_contract_selection import bars_at, minute, write_outrights

from engine.bars import NS_PER_MINUTE, PRICE_SCALE
from engine.validate import REASONS, UNDEF_PRICE

WINDOW = ["window.start=2025-12-01T14:30:00Z", "window.end=2025-12-01T17:00:00Z"]  # 150 minutes from T0


def ingest(engine_cli, db_url, *extra, symbol="NQ", env=None):
    return engine_cli(f"db.url={db_url}", f"symbol={symbol}", "stages=[ingest]", *extra, env=env)


def from_file(path) -> list[str]:
    return ["source=dbn_file", f"source.paths=[{path}]"]


def ingest_runs(url) -> list[dict]:
    return query(url, "SELECT * FROM clean_ingest_runs ORDER BY id")


def planted(count: int = 120) -> tuple[np.ndarray, dict[str, int]]:
    """`count` good bars plus one bad bar for every reject reason, mixed into the file."""
    good = bars(count)
    bad = bars(9, start_ns=T0 + (count + 1) * NS_PER_MINUTE)  # free minutes inside the window
    bad[0]["high"] = UNDEF_PRICE
    bad[1]["low"] = -5 * PRICE_SCALE
    bad[2]["open"] = 2**53 + 1  # 9007199.254740993: no float64 holds it exactly
    bad[2]["high"] = bad[2]["open"] + PRICE_SCALE
    bad[3]["high"] = bad[3]["low"] - PRICE_SCALE
    bad[4]["volume"] = np.uint64(2**64 - 5)  # a negative volume written unsigned
    bad[5]["ts"] += 30_000_000_000
    bad[6]["ts"] = T0 - NS_PER_MINUTE  # in the file, outside the window: counted, not received (a local file)
    bad[7] = good[30]
    bad[7]["close"] += PRICE_SCALE // 4  # same ts as an earlier good bar: the later one is the duplicate
    bad[8]["close"] += 1  # 1e-9 off the 0.25 tick (a flipped low bit)
    return np.concatenate([good[:60], bad, good[60:]]), {r: 1 for r in REASONS if r != "ts_outside_window"}


def test_counts_are_exact_with_every_reject_reason_quarantined(engine_cli, db_url, tmp_path):
    rows, expected = planted()
    run = ingest(engine_cli, db_url, *from_file(write_dbn(tmp_path / "nq.dbn.zst", rows)), *WINDOW)
    assert run.returncode == 0, run.output
    summary = run.result["stages"]["ingest"]
    assert summary["bars_received"] == 128 and summary["outside_window"] == 1
    assert summary["bars_skipped"] == 8 and summary["skipped_by_reason"] == expected
    assert summary["bars_inserted"] == 120 and summary["bars_updated"] == 0 and summary["bars_unchanged"] == 0
    [log] = ingest_runs(db_url)
    assert log["status"] == "success" and log["error"] is None
    assert (log["bars_received"], log["bars_inserted"], log["bars_updated"], log["bars_skipped"]) == (128, 120, 0, 8)
    assert log["engine_run_id"] == run.result["run_id"] and json.loads(log["skipped_by_reason"]) == expected
    assert log["duration_seconds"] > 0 and log["batch_commits"] >= 1 and log["retries"] == 0
    quarantined = query(db_url, "SELECT reason, ingest_run_id, close_raw FROM clean_ingest_quarantine")
    assert sorted(q["reason"] for q in quarantined) == sorted(expected)
    assert json.loads(log["ignored_instruments"]) == {"(outside window)": 1}
    assert {q["ingest_run_id"] for q in quarantined} == {log["id"]}
    stored = query(db_url, "SELECT count(*) AS n, min(close) AS lo FROM market_bars_ohlcv_1m_clean")
    assert stored[0]["n"] == 120
    kept = query(db_url, "SELECT close FROM market_bars_ohlcv_1m_clean WHERE ts = (SELECT min(ts) FROM "
                 "market_bars_ohlcv_1m_clean) ")
    assert kept[0]["close"] == rows[0]["close"] / PRICE_SCALE


def test_rerun_is_idempotent_and_a_changed_bar_is_counted_updated(engine_cli, db_url, tmp_path):
    rows = bars(150)
    path = write_dbn(tmp_path / "nq.dbn.zst", rows)
    first = ingest(engine_cli, db_url, *from_file(path), *WINDOW, "source.batch_size=40")
    assert first.returncode == 0, first.output
    assert first.result["stages"]["ingest"]["bars_inserted"] == 150
    assert first.result["stages"]["ingest"]["batch_commits"] == 4

    again = ingest(engine_cli, db_url, *from_file(path), *WINDOW)
    counts = again.result["stages"]["ingest"]
    assert (counts["bars_inserted"], counts["bars_updated"], counts["bars_unchanged"]) == (0, 0, 150)

    rows[77]["close"] += PRICE_SCALE // 4
    rows[77]["high"] = max(rows[77]["high"], rows[77]["close"])
    changed = ingest(engine_cli, db_url, *from_file(write_dbn(tmp_path / "v2.dbn.zst", rows)), *WINDOW)
    counts = changed.result["stages"]["ingest"]
    assert (counts["bars_inserted"], counts["bars_updated"], counts["bars_unchanged"]) == (0, 1, 149)
    updated = query(db_url, "SELECT close, ingest_run_id FROM market_bars_ohlcv_1m_clean ORDER BY ts")
    assert updated[77]["close"] == rows[77]["close"] / PRICE_SCALE
    logs = ingest_runs(db_url)
    assert updated[77]["ingest_run_id"] == logs[2]["id"] and updated[0]["ingest_run_id"] == logs[0]["id"]
    assert query(db_url, "SELECT count(*) AS n FROM market_bars_ohlcv_1m_clean")[0]["n"] == 150


def test_synthetic_roll_keeps_both_contracts_under_one_symbol(engine_cli, db_url):
    run = ingest(engine_cli, db_url, "window.start=2025-12-07T23:00:00Z", "window.end=2025-12-13T00:00:00Z",
                 "db.url=" + db_url)
    assert run.returncode == 0, run.output
    summary = run.result["stages"]["ingest"]
    assert summary["bars_received"] > 5 * 1300 and summary["bars_skipped"] == 0
    contracts = query(db_url, "SELECT instrument_id, min(ts) AS first, count(*) AS n "
                              "FROM market_bars_ohlcv_1m_clean GROUP BY instrument_id ORDER BY min(ts)")
    assert len(contracts) == 2, "the December 2025 roll must show as an instrument_id change"
    assert sum(c["n"] for c in contracts) == summary["bars_inserted"]
    symbols = query(db_url, "SELECT DISTINCT symbol FROM market_bars_ohlcv_1m_clean")
    assert symbols == [{"symbol": "GLBX.MDP3:NQ"}]


@pytest.mark.parametrize(("symbol", "instrument", "count", "ignored", "close_range"),
                         [("ES", 118, 30, {"NQU4": 30}, (5527.0, 5531.0)),
                          ("NQ", 4358, 30, {"ESU4": 30}, (20013.0, 20026.0))])
def test_real_fixture_with_two_instruments(engine_cli, db_url, dbn_fixtures, symbol, instrument, count, ignored,
                                          close_range):
    path = dbn_fixtures / "nt_ESU4_NQU4_20240701T2340-0010.ohlcv-1m.dbn.zst"
    run = ingest(engine_cli, db_url, *from_file(path), "window.start=2024-07-01T23:40:00Z",
                 "window.end=2024-07-02T00:10:00Z", symbol=symbol)
    assert run.returncode == 0, run.output
    summary = run.result["stages"]["ingest"]
    assert summary["bars_received"] == count and summary["bars_inserted"] == count
    assert summary["ignored_instruments"] == ignored
    stored = query(db_url, "SELECT instrument_id, close FROM market_bars_ohlcv_1m_clean")
    assert {r["instrument_id"] for r in stored} == {instrument}
    closes = [r["close"] for r in stored]
    assert close_range[0] <= min(closes) and max(closes) <= close_range[1]
    assert json.loads(ingest_runs(db_url)[0]["ignored_instruments"]) == ignored


@pytest.mark.parametrize("name", ["dbpy_GLBX_ESH1_20201228.ohlcv-1h.dbn.zst", "dbpy_GLBX_ESH1.definition.dbn.zst"])
def test_wrong_schema_is_refused_and_logged_as_failed(engine_cli, db_url, dbn_fixtures, name):
    run = ingest(engine_cli, db_url, *from_file(dbn_fixtures / name), "window.start=2020-12-28",
                 "window.end=2020-12-29", symbol="ES")
    assert run.returncode == 2
    assert "ohlcv-1m" in run.output and name in run.output
    [log] = ingest_runs(db_url)
    assert log["status"] == "failed" and "schema" in log["error"]
    assert query(db_url, "SELECT count(*) AS n FROM market_bars_ohlcv_1m_clean")[0]["n"] == 0


def test_demo_data_never_lands_next_to_market_data(engine_cli, db_url, tmp_path):
    market = ingest(engine_cli, db_url, *from_file(write_dbn(tmp_path / "nq.dbn.zst", bars(30))), *WINDOW)
    assert market.returncode == 0, market.output
    demo = ingest(engine_cli, db_url, *WINDOW)  # default source: synthetic demo data
    assert demo.returncode == 2
    assert "refusing to ingest demo data" in demo.output
    assert query(db_url, "SELECT count(*) AS n FROM market_bars_ohlcv_1m_clean")[0]["n"] == 30


# --------------------------------------------------------------------------------------------------
# The databento source against a local fake of Databento's API serving real DBN bytes

KEY = "db-INGESTTESTKEY0123456789"


@pytest.fixture
def fake(fake_databento):
    return fake_databento(KEY, records=90, subprocess=True)


def from_databento(fake) -> list[str]:
    return ["source=databento", f"source.gateway={fake.gateway}", "source.backoff_seconds=0.01"]


def test_databento_source_downloads_once_then_reuses_the_raw_file(engine_cli, db_url, fake):
    fake.script(GET_RANGE, Reply.error(503, "busy"), Reply.broken())
    first = ingest(engine_cli, db_url, *from_databento(fake), *WINDOW)
    assert first.returncode == 0, first.output
    summary = first.result["stages"]["ingest"]
    assert summary["bars_inserted"] == 90 and summary["retries"] == 2
    raw, definitions = summary["raw_files"]  # the bars, then the window's instrument definitions
    assert raw["reused"] is False and len(raw["sha256"]) == 64 and definitions["kind"] == "definitions"
    assert [(s.params["symbols"], s.params["schema"]) for s in fake.seen(GET_RANGE)] == \
        [("NQ.v.0", "ohlcv-1m")] * 3 + [("NQ.v.0", "definition")]
    requests_before = len(fake.seen())

    second = ingest(engine_cli, db_url, *from_databento(fake), *WINDOW)
    assert second.returncode == 0, second.output
    assert len(fake.seen()) == requests_before, "a landed file must never be paid for again"
    again = second.result["stages"]["ingest"]
    assert again["raw_files"][0]["reused"] is True and again["raw_files"][0]["sha256"] == raw["sha256"]
    assert (again["bars_inserted"], again["bars_unchanged"]) == (0, 90)
    logs = ingest_runs(db_url)
    assert [log["retries"] for log in logs] == [2, 0]
    assert raw["sha256"] in logs[0]["raw_files"]


def test_databento_cost_guard_and_auth_failure_are_logged_as_failed(engine_cli, db_url, fake):
    pricey = ingest(engine_cli, db_url, *from_databento(fake), *WINDOW, "source.max_cost_usd=0.01")
    assert pricey.returncode == 2 and "source.max_cost_usd" in pricey.output
    assert fake.seen(GET_RANGE) == []
    fake.script(GET_COST, Reply.error(401, "bad key"))
    denied = ingest(engine_cli, db_url, *from_databento(fake), *WINDOW)
    assert denied.returncode == 2 and "DATABENTO_API_KEY" in denied.output
    assert len(fake.seen(GET_COST)) == 2, "401 is not retried"
    logs = ingest_runs(db_url)
    assert [log["status"] for log in logs] == ["failed", "failed"]
    assert "max_cost_usd" in logs[0]["error"] and "DATABENTO_API_KEY" in logs[1]["error"]
    assert KEY not in json.dumps(logs, default=str)


def test_two_outrights_report_the_contract_not_chosen(engine_cli, db_url, tmp_path):
    """End to end: an ESM4 + ESU4 file gives one series (ESM4, the front: the only session has no previous one);
    the run's table and result show ESU4's bars as not chosen, and the counts add up without them."""
    day = dt.date(2024, 5, 9)
    rows = np.concatenate([bars_at([minute(day, 14, m) for m in range(10) if m not in (2, 5)], "ESM4", 5300.0, 9),
                           bars_at([minute(day, 14, m) for m in range(10)], "ESU4", 5360.75, 9)])
    path = write_outrights(tmp_path / "es.dbn.zst", rows)
    run = ingest(engine_cli, db_url, *from_file(path), "window.start=2024-05-09T14:00:00Z",
                 "window.end=2024-05-09T15:00:00Z", symbol="ES")
    assert run.returncode == 0, run.output
    assert "not chosen" in run.output and "10 ESU4" in run.output
    summary = run.result["stages"]["ingest"]
    assert summary["contracts_not_chosen"] == {"ESU4": 10} and summary["bars_received"] == 8
    [log] = ingest_runs(db_url)
    assert json.loads(log["contracts_not_chosen"]) == {"ESU4": 10} and log["bars_skipped"] == 0
    assert log["bars_received"] == log["bars_inserted"] == 8
