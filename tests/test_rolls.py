"""Rolls on record (issue 12): contract_rolls rows written by ingest, their prices, idempotency, chunk boundaries;
and the pure roll logic of engine/rolls.py."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from sql_rows import query
from test_contract_selection import (
    ESM4,
    ESU4,
    SPIKE_DAY,
    WEEK,
    bars_at,
    continuous_and_outrights,
    minute,
    roll_week,
    run_engine,
    source,
    write_continuous,
    write_outrights,
)

from engine.bars import PRICE_SCALE
from engine.db.connect import create_db_engine
from engine.db.rolls import Roll, rolls_of
from engine.db.types import datetime_to_ns
from engine.rolls import ContractCodes, SeriesRuns, contract_expiry, roll_prices, schedule

UTC = dt.UTC


def rolls(url: str, symbol: str = "GLBX.MDP3:ES") -> list[Roll]:
    engine = create_db_engine(url)
    try:
        return rolls_of(engine, symbol)
    finally:
        engine.dispose()


def hand_prices(rows: np.ndarray, roll_ns: int, lo_ns: int, out: str, inc: str) -> tuple[int, float, float]:
    """Latest minute in [lo, roll] where both contracts have a bar, and their closes (plain Python)."""
    closes: dict[str, dict[int, float]] = {out: {}, inc: {}}
    for r in rows:
        name = r["raw_symbol"].decode()
        if name in closes and lo_ns <= int(r["ts"]) <= roll_ns:
            closes[name][int(r["ts"])] = int(r["close"]) / PRICE_SCALE
    at = max(set(closes[out]) & set(closes[inc]))
    return at, closes[out][at], closes[inc][at]


def test_computed_rolls_are_recorded_with_their_prices_and_rerun_is_idempotent(db_url, tmp_path):
    rows = roll_week()
    path = write_outrights(tmp_path / "es.dbn.zst", rows)
    first = run_engine(db_url, tmp_path, "symbol=ES", "roll_rule=v", *source(path), *WEEK)["ingest"]
    [roll] = rolls(db_url)
    roll_ts = dt.datetime(2024, 6, 13, 22, tzinfo=UTC)  # 17:00 Chicago: the open of June 14's session
    assert (roll.roll_ts, roll.outgoing_raw_symbol, roll.outgoing_instrument_id, roll.incoming_raw_symbol,
            roll.incoming_instrument_id, roll.rule, roll.origin) == (roll_ts, "ESM4", ESM4, "ESU4", ESU4, "v.0",
                                                                     "computed")
    lo = datetime_to_ns(dt.datetime(2024, 6, 10, 22, tzinfo=UTC))  # three sessions back: June 11's open
    at, out_close, in_close = hand_prices(rows, datetime_to_ns(roll_ts), lo, "ESM4", "ESU4")
    assert at == minute(SPIKE_DAY, 14, 38)  # ESU4 has no bar at 14:39 on the 13th
    assert (datetime_to_ns(roll.price_ts), roll.outgoing_close, roll.incoming_close) == (at, out_close, in_close)
    assert first["rolls"] == ["2024-06-13T22:00Z ESM4 → ESU4"] and first["rolls_unadjusted"] == []
    [row] = query(db_url, "SELECT ingest_run_id FROM contract_rolls")
    assert row["ingest_run_id"] == first["ingest_run_ids"][0]

    again = run_engine(db_url, tmp_path, "symbol=ES", "roll_rule=v", *source(path), *WEEK)["ingest"]
    assert rolls(db_url) == [roll]
    assert again["bars_unchanged"] == first["bars_inserted"] and again["bars_inserted"] == 0
    assert again["contracts_not_chosen"] == first["contracts_not_chosen"]
    assert query(db_url, "SELECT count(*) AS n FROM contract_rolls")[0]["n"] == 1


def test_rule_c_rolls_n_sessions_before_expiry(db_url, tmp_path):
    path = write_outrights(tmp_path / "es.dbn.zst", roll_week())
    run_engine(db_url, tmp_path, "symbol=ES", "roll_rule=c", "roll_days_before_expiry=2", *source(path), *WEEK)
    [roll] = rolls(db_url)
    # ESM4 expires Friday June 21; two sessions before it (the 20th, the 19th) already come from ESU4.
    assert roll.roll_ts == dt.datetime(2024, 6, 18, 22, tzinfo=UTC) and roll.rule == "c.0"
    assert roll.label == "ESM4 → ESU4" and roll.adjustable


def test_databento_rolls_of_a_continuous_file_priced_by_the_outright_file(db_url, tmp_path):
    cont, a, b = continuous_and_outrights(tmp_path)
    result = run_engine(db_url, tmp_path, "symbol=ES", *source(a, b), *WEEK)["ingest"]
    [roll] = rolls(db_url)
    first_esu4 = minute(dt.date(2024, 6, 14), 14, 30)  # the first bar of the new instrument, not UTC midnight
    assert datetime_to_ns(roll.roll_ts) == first_esu4 and roll.origin == "databento"
    assert (roll.outgoing_raw_symbol, roll.incoming_raw_symbol) == ("ESM4", "ESU4")
    lo = datetime_to_ns(dt.datetime(2024, 6, 10, 22, tzinfo=UTC))
    at, out_close, in_close = hand_prices(roll_week(), first_esu4, lo, "ESM4", "ESU4")
    assert (datetime_to_ns(roll.price_ts), roll.outgoing_close, roll.incoming_close) == (at, out_close, in_close)
    assert at == first_esu4 and result["rolls_unadjusted"] == []


def chunk_boundary_file(tmp_path):
    """A continuous file whose instrument changes exactly at a UTC midnight: ESM4 to June 13, ESU4 from June 14
    00:00 (five bars after each midnight and at 14:30 each day)."""
    days = [dt.date(2024, 6, d) for d in (11, 12, 13, 14, 17)]
    parts = []
    for day in days:
        raw = "ESM4" if day < dt.date(2024, 6, 14) else "ESU4"
        parts.append(bars_at([minute(day, 0, m) for m in range(5)] + [minute(day, 14, 30)], raw, 5300.0, 10))
    rows = np.concatenate(parts)
    rows["raw_symbol"] = b""
    return write_continuous(tmp_path / "cont.dbn.zst", rows, [(dt.date(2024, 6, 10), dt.date(2024, 6, 14), ESM4),
                                                              (dt.date(2024, 6, 14), dt.date(2024, 6, 20), ESU4)])


def test_a_roll_at_a_chunk_boundary_is_found(db_url, tmp_path):
    path = chunk_boundary_file(tmp_path)
    window = ["window.start=2024-06-11T00:00:00Z", "window.end=2024-06-15T00:00:00Z"]
    results = run_engine(db_url, tmp_path, "symbol=ES", *source(path), *window, "window.chunk=1d")["ingest"]
    [roll] = rolls(db_url)
    assert roll.roll_ts == dt.datetime(2024, 6, 14, tzinfo=UTC)  # the first bar of the chunk [14th, 15th)
    assert (roll.outgoing_instrument_id, roll.incoming_instrument_id, roll.origin) == (ESM4, ESU4, "databento")
    assert not roll.adjustable  # no outright bars: no common minute
    assert results["rolls_unadjusted"] == ["id 5602 → id 118"]
    [row] = query(db_url, "SELECT ingest_run_id FROM contract_rolls")
    assert row["ingest_run_id"] == results["ingest_run_ids"][3]  # the chunk of June 14 (11th, 12th, 13th before)
    # the unchunked ingest finds the same roll
    whole = tmp_path / "whole"
    whole.mkdir()
    run_engine(db_url, whole, "symbol=ES", *source(path), *window)
    assert rolls(db_url) == [roll]


def test_detection_over_the_fixed_series_has_no_false_events(db_url, tmp_path):
    """The issue's reproduction: ESU4's bars at ESM4's missing minutes made two false BEAR events; now the
    series is ESM4's own steady rise and the detector finds nothing there."""
    day = dt.date(2024, 5, 9)
    m_ts = [minute(day, 14, m) for m in range(30) if m not in (12, 15)]
    rows = np.concatenate([bars_at(m_ts, "ESM4", 5300.0, 500),
                           bars_at([minute(day, 14, m) for m in range(30)], "ESU4", 5360.75, 50)])
    path = write_outrights(tmp_path / "es.dbn.zst", rows[np.argsort(rows["ts"], kind="stable")])
    run_engine(db_url, tmp_path, "symbol=ES", *source(path), "stages=[ingest,detect]",
               "window.start=2024-05-09T14:00:00Z", "window.end=2024-05-09T15:00:00Z")
    assert query(db_url, "SELECT count(*) AS n FROM market_bars_ohlcv_1m_clean")[0]["n"] == 28
    assert query(db_url, "SELECT ts, direction FROM triangle_events_v1") == []


# ------------------------------------------------------------------------------------- engine/rolls.py


@pytest.mark.parametrize(("symbol", "on", "expiry"), [
    ("ESU4", dt.date(2024, 7, 1), dt.date(2024, 9, 20)),
    ("ESU24", dt.date(2024, 7, 1), dt.date(2024, 9, 20)),
    ("ESH0", dt.date(2029, 12, 20), dt.date(2030, 3, 15)),
    ("ESZ3", dt.date(2024, 1, 10), dt.date(2033, 12, 16)),  # ESZ3 of 2023 expired: the next one
    ("ESM4", dt.date(2024, 6, 21), dt.date(2024, 6, 21)),  # on its expiry day it is still itself
    ("NQU4", dt.date(2024, 7, 1), None),
    ("ESU4-ESZ4", dt.date(2024, 7, 1), None),
])
def test_contract_expiry(symbol, on, expiry):
    assert contract_expiry(symbol, "ES", on) == expiry


def test_contract_codes():
    codes = ContractCodes(["ESU4", "ESM4", "ESH25"])
    raw = np.array([b"ESM4", b"ESU4", b"", b"ESH25", b"ESZ4", b"ESM4X"], dtype="S16")
    assert [codes.labels[c] if c >= 0 else None for c in codes.codes(raw)] == \
        ["ESM4", "ESU4", None, "ESH25", None, None]


def test_schedule_rule_v_uses_only_the_previous_session_and_falls_back_to_expiry_order():
    # contracts 0 (front) and 1; contract 1 leads the first session's own volume: the first session has no
    # previous one, so it falls back to expiry order (contract 0); so does session 4 after a session without bars
    volume = np.array([[10.0, 90.0], [10.0, 90.0], [10.0, 90.0], [0.0, 0.0], [5.0, 9.0]])
    expiry = np.array([20, 40])
    chosen, fallback = schedule("v", 0, volume, np.array([True, True]), expiry, 0)
    assert chosen.tolist() == [0, 1, 1, 1, 0] and fallback.tolist() == [True, False, False, False, True]
    second, _ = schedule("v", 1, volume, np.array([True, True]), expiry, 0)
    assert second.tolist() == [1, 0, 0, 0, 1]
    expired, _ = schedule("v", 0, volume, np.array([True, True]), np.array([2, 40]), 0)
    assert expired.tolist() == [0, 1, 1, 1, 1]  # contract 0 expires at session 2: never chosen after
    by_c, _ = schedule("c", 0, volume, np.array([True, True]), np.array([3, 40]), 1)
    assert by_c.tolist() == [0, 0, 1, 1, 1]  # roll one session before contract 0's expiry session (3)
    none, _ = schedule("c", 0, volume, np.array([True, False]), np.array([3, 40]), 0)
    assert none.tolist() == [0, 0, 0, -1, -1]  # contract 1 has no bars: nothing to choose after 0 expires


def test_roll_prices_take_the_latest_common_minute():
    ts = np.array([1, 2, 3, 4, 2, 3, 5])
    iid = np.array([7, 7, 7, 7, 8, 8, 8])
    close = np.array([10, 20, 30, 40, 21, 31, 51])
    assert roll_prices(ts, iid, close, 0, 5, 7, 8) == (3, 30, 31)
    assert roll_prices(ts, iid, close, 4, 5, 7, 8) is None


def test_series_runs_find_changes_across_chunks():
    runs = SeriesRuns()
    runs.add(np.array([5, 6]), np.array([2, 2]), np.array([b"B", b"B"], dtype="S16"))
    runs.add(np.array([1, 2, 3]), np.array([1, 1, 2]), np.array([b"A", b"A", b"B"], dtype="S16"))
    assert runs.changes() == [(3, 1, b"A", 2, b"B")]
    assert runs.changes((0, 9, b"Z")) == [(1, 9, b"Z", 1, b"A"), (3, 1, b"A", 2, b"B")]
