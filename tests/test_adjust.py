"""Back-adjusted views (engine/adjust.py) and their readers: detect, chart, parity.

Planted rolls with hand-computed adjustments; the database parts run on SQLite and PostgreSQL (`db`).
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
import sqlalchemy as sa
from test_detect_stage import (
    KNOWN_HIGHS,
    KNOWN_LOWS,
    MINUTE,
    SYMBOL,
    T0,
    bars_from,
    insert_bars,
    iso,
    make_ctx,
    mark_clean,
)

from engine.adjust import Adjusted, adjust_bars, read_adjusted
from engine.config import Adjustment, ParityConfig, ParitySideConfig
from engine.db.bars import BAR_READ_DTYPE
from engine.db.rolls import Roll, record_rolls
from engine.db.schema import CLEAN_BARS, triangle_events
from engine.db.types import datetime_to_ns
from engine.detectors import EVENT_DTYPE
from engine.detectors.williams_fractals import reference_swing_highs, reference_swing_lows
from engine.errors import EngineError
from engine.stages import chart, detect, parity

# Contract A (NQZ5) minutes 0-4, B (NQH6) 5-9, C (NQM6) 10-14. The rolls' closes are the outright contracts'
# closes at the minute before each roll (B's and C's closes there are not in the series).
A = [100.0, 101.0, 102.0, 103.0, 104.0]
B = [110.5, 111.0, 112.25, 113.0, 114.0]
C = [120.5, 121.0, 119.75, 122.0, 123.0]


def roll(minute: int, out: str, inc: str, out_close: float | None, inc_close: float | None, *,
         price_ts: bool = True) -> Roll:
    return Roll(symbol=SYMBOL, roll_ts=T0 + minute * MINUTE, outgoing_instrument_id=minute,
                incoming_instrument_id=minute + 1, rule="v.0", origin="computed", outgoing_raw_symbol=out,
                incoming_raw_symbol=inc, price_ts=T0 + (minute - 1) * MINUTE if price_ts else None,
                outgoing_close=out_close, incoming_close=inc_close)


AB = roll(5, "NQZ5", "NQH6", 104.0, 110.0)  # B trades 6 over A at minute 4
BC = roll(10, "NQH6", "NQM6", 114.0, 120.25)  # C trades 6.25 over B at minute 9


def series(closes: list[float]) -> np.ndarray:
    """One bar a minute from T0: open = close, high = close + 0.5, low = close - 0.25."""
    out = np.zeros(len(closes), BAR_READ_DTYPE)
    out["ts"] = datetime_to_ns(T0) + np.arange(len(closes)) * 60_000_000_000
    out["close"] = out["open"] = closes
    out["high"] = out["close"] + 0.5
    out["low"] = out["close"] - 0.25
    out["volume"] = np.arange(len(closes)) + 7
    return out


def shifted(bars: np.ndarray, by: list[float]) -> np.ndarray:
    out = bars.copy()
    for name in ("open", "high", "low", "close"):
        out[name] = out[name] + np.asarray(by)
    return out


# ---------------------------------------------------------------------------------------------
# The core function


def test_difference_one_roll_has_no_jump_at_the_roll():
    bars = series(A + B)
    view = adjust_bars(bars, [AB], "difference")
    assert isinstance(view, Adjusted) and view.adjustment is Adjustment.difference
    # By hand: A's bars + (110 - 104) = 6; B (the anchor) keeps its own prices.
    assert view.bars["close"].tolist() == [106.0, 107.0, 108.0, 109.0, 110.0, *B]
    assert view.bars["high"].tolist() == [c + 0.5 for c in [106.0, 107.0, 108.0, 109.0, 110.0, *B]]
    assert view.bars["low"].tolist() == [c - 0.25 for c in [106.0, 107.0, 108.0, 109.0, 110.0, *B]]
    # No jump: the adjusted close at the roll's price minute (the last A bar) is B's close at that minute.
    assert view.bars["close"][4] == AB.incoming_close
    assert view.bars["ts"].tolist() == bars["ts"].tolist() and view.bars["volume"].tolist() == bars["volume"].tolist()
    assert view.applied == (AB,) and view.unadjusted_rolls == () and view.anchor == "NQH6"
    assert bars["close"].tolist() == A + B, "the input is not changed"
    # Quarter ticks stay on the tick grid.
    assert np.all(np.mod(view.bars["close"] * 4, 1) == 0)


def test_difference_two_rolls_cumulate():
    view = adjust_bars(series(A + B + C), [BC, AB], Adjustment.difference)  # any order in
    # A: + 6 + 6.25 = 12.25; B: + 6.25; C: its own.
    assert view.bars["close"].tolist() == [c + 12.25 for c in A] + [c + 6.25 for c in B] + C
    # No jump at either roll: at each price minute the adjusted close is the incoming contract's close there
    # (B's close at minute 4 on C's scale).
    assert view.bars["close"][4] == AB.incoming_close + 6.25
    assert view.bars["close"][9] == BC.incoming_close
    assert view.applied == (AB, BC) and view.anchor == "NQM6"


def test_ratio_keeps_returns_within_each_contract_and_across_the_roll():
    raw = series(A + B + C)
    view = adjust_bars(raw, [AB, BC], "ratio")
    adj = view.bars["close"]
    f_bc, f_ab = 120.25 / 114.0, 110.0 / 104.0
    np.testing.assert_allclose(adj, [c * f_ab * f_bc for c in A] + [c * f_bc for c in B] + C, rtol=1e-15)
    np.testing.assert_allclose(view.bars["high"][:5], [(c + 0.5) * f_ab * f_bc for c in A], rtol=1e-15)
    returns, raw_returns = adj[1:] / adj[:-1], raw["close"][1:] / raw["close"][:-1]
    within = [i for i in range(14) if i not in (4, 9)]  # the two returns across a roll
    np.testing.assert_allclose(returns[within], raw_returns[within], rtol=1e-13)
    # Across a roll: the incoming contract's return from its close at the price minute to its first bar.
    assert returns[4] == pytest.approx(B[0] / 110.0, rel=1e-13)
    assert returns[9] == pytest.approx(C[0] / 120.25, rel=1e-13)
    assert view.bars["volume"].tolist() == raw["volume"].tolist()


def test_a_roll_after_the_window_end_still_adjusts_it():
    window = series(A)  # read of minutes 0-4 only; the rolls are at 5 and 10
    assert adjust_bars(window, [AB, BC], "difference").bars["close"].tolist() == [c + 12.25 for c in A]
    np.testing.assert_allclose(adjust_bars(window, [AB, BC], "ratio").bars["close"],
                               [c * 110.0 / 104.0 * 120.25 / 114.0 for c in A], rtol=1e-15)
    # A window inside B: only the roll after it counts (the one before its first bar changes nothing).
    inside = series(A + B)[5:]
    view = adjust_bars(inside, [AB, BC], "difference")
    assert view.bars["close"].tolist() == [c + 6.25 for c in B] and view.applied == (BC,)


def test_a_roll_that_cannot_be_adjusted_is_reported_and_skipped():
    lost = roll(5, "NQZ5", "NQH6", None, None, price_ts=False)
    assert not lost.adjustable
    view = adjust_bars(series(A + B + C), [lost, BC], "difference")
    assert view.unadjusted_rolls == (lost,) and view.applied == (BC,)
    # Skipped, not a stop: A still carries the later roll (6.25); the raw jump at minute 5 stays.
    assert view.bars["close"].tolist() == [c + 6.25 for c in A] + [c + 6.25 for c in B] + C
    # Ratio cannot use a close <= 0 (difference can).
    negative = roll(5, "CLK0", "CLM0", -37.5, 10.0)
    assert adjust_bars(series(A + B), [negative], "ratio").unadjusted_rolls == (negative,)
    assert adjust_bars(series(A + B), [negative], "difference").bars["close"][0] == 100.0 + 47.5


def test_none_is_the_identity():
    bars = series(A + B)
    view = adjust_bars(bars, [AB, BC], "none")
    assert view.bars is bars and view.applied == view.unadjusted_rolls == () and view.anchor is None
    empty = adjust_bars(np.empty(0, BAR_READ_DTYPE), [AB], "ratio")
    assert len(empty.bars) == 0 and empty.anchor == "NQH6"


# ---------------------------------------------------------------------------------------------
# The read from the database


def stored_rows(closes: list[float]) -> list[dict]:
    bars = series(closes)
    return [{"symbol": SYMBOL, "ts": T0 + i * MINUTE, "open": float(b["open"]), "high": float(b["high"]),
             "low": float(b["low"]), "close": float(b["close"]), "volume": int(b["volume"])}
            for i, b in enumerate(bars)]


def test_read_adjusted_uses_every_roll_of_the_symbol(db):
    insert_bars(db, stored_rows(A + B + C))
    with db.begin() as conn:
        record_rolls(conn, SYMBOL, T0, T0 + timedelta(days=1), [AB, BC], None)
    window = read_adjusted(db, CLEAN_BARS, SYMBOL, T0 + 2 * MINUTE, T0 + 7 * MINUTE, "difference")
    assert window.bars["close"].tolist() == [c + 12.25 for c in A[2:]] + [c + 6.25 for c in B[:2]]
    assert window.applied == (AB, BC) and window.anchor == "NQM6"
    whole = read_adjusted(db, CLEAN_BARS, SYMBOL, adjustment=Adjustment.ratio)
    np.testing.assert_allclose(whole.bars["close"], adjust_bars(series(A + B + C), [AB, BC], "ratio").bars["close"],
                               rtol=1e-15)
    assert read_adjusted(db, CLEAN_BARS, SYMBOL).bars["close"].tolist() == A + B + C


# ---------------------------------------------------------------------------------------------
# Detection on an adjusted series

ROLL_AT = 15  # bars 0-14 are contract A (KNOWN), 15-29 contract B (KNOWN again), which trades 4.5 lower
GAP = -4.5
DETECT_ROLL = roll(ROLL_AT, "NQZ5", "NQH6", 10.25, 10.25 + GAP)


def planted_roll(db) -> tuple[list[dict], object]:
    highs = KNOWN_HIGHS + [h + GAP for h in KNOWN_HIGHS]
    lows = KNOWN_LOWS + [low + GAP for low in KNOWN_LOWS]
    rows = bars_from(highs, lows)
    insert_bars(db, rows)
    end = T0 + len(rows) * MINUTE
    mark_clean(db, T0, end)
    with db.begin() as conn:
        record_rolls(conn, SYMBOL, T0, end, [DETECT_ROLL], None)
    return rows, end


def expected_events(highs: list[float], lows: list[float], n: int = 2) -> list[tuple]:
    high_idx = np.flatnonzero(reference_swing_highs(highs, n))
    low_idx = np.flatnonzero(reference_swing_lows(lows, n))
    return sorted([(T0 + int(i) * MINUTE, "BEAR", highs[i]) for i in high_idx]
                  + [(T0 + int(i) * MINUTE, "BULL", lows[i]) for i in low_idx])


def stored_events(db, adjustment: str) -> list[tuple]:
    c = triangle_events.c
    query = sa.select(c.ts, c.direction, c.price).where(c.adjustment == adjustment).order_by(c.ts, c.direction)
    with db.connect() as conn:
        return [tuple(r) for r in conn.execute(query)]


def test_adjusted_detection_is_stored_beside_the_unadjusted(db, tmp_path):
    rows, end = planted_roll(db)
    raw_highs, raw_lows = [r["high"] for r in rows], [r["low"] for r in rows]
    adj_highs = [h + GAP if i < ROLL_AT else h for i, h in enumerate(raw_highs)]  # by hand: A - 4.5
    adj_lows = [v + GAP if i < ROLL_AT else v for i, v in enumerate(raw_lows)]
    unadjusted, adjusted = expected_events(raw_highs, raw_lows), expected_events(adj_highs, adj_lows)
    # The roll's raw jump down makes A's last bar a false swing high; the adjusted series has none there.
    false_high = (T0 + (ROLL_AT - 1) * MINUTE, "BEAR")
    assert false_high in {e[:2] for e in unadjusted} and false_high not in {e[:2] for e in adjusted}

    plain = detect.run(make_ctx(db, tmp_path / "none", T0, end, n=2))
    diff = detect.run(make_ctx(db, tmp_path / "diff", T0, end, n=2, adjust="difference"))

    assert stored_events(db, "none") == unadjusted
    assert stored_events(db, "difference") == adjusted  # adjusted prices, ts/direction of the adjusted series
    assert plain.adjustment == "none" and plain.events_replaced == 0
    assert diff.adjustment == "difference" and diff.events_replaced == 0 and diff.anchor == "NQH6"
    assert diff.events_written == len(adjusted) and diff.unadjusted_rolls == []
    assert ("adjustment", "difference, anchored on NQH6") in diff.rows("detect")
    assert all(label != "adjustment" for label, _ in plain.rows("detect"))
    assert diff.brief("detect").startswith("events (difference) BEAR ")
    assert plain.brief("detect").startswith("events BEAR")

    # A rerun of one replaces only its own events.
    again = detect.run(make_ctx(db, tmp_path / "none2", T0, end, n=2))
    assert again.events_replaced == len(unadjusted) and stored_events(db, "difference") == adjusted
    again = detect.run(make_ctx(db, tmp_path / "diff2", T0, end, n=2, adjust="difference"))
    assert again.events_replaced == len(adjusted) and stored_events(db, "none") == unadjusted

    # Ratio: a third set; the pivots of a ratio-adjusted series here are those of the difference one.
    detect.run(make_ctx(db, tmp_path / "ratio", T0, end, n=2, adjust="ratio"))
    factor = (10.25 + GAP) / 10.25
    ratio = expected_events([h * factor if i < ROLL_AT else h for i, h in enumerate(raw_highs)],
                            [v * factor if i < ROLL_AT else v for i, v in enumerate(raw_lows)])
    got = stored_events(db, "ratio")
    assert [e[:2] for e in got] == [e[:2] for e in ratio]
    np.testing.assert_allclose([e[2] for e in got], [e[2] for e in ratio], rtol=1e-12)
    assert stored_events(db, "none") == unadjusted and stored_events(db, "difference") == adjusted


def test_detection_names_the_rolls_it_could_not_adjust(db, tmp_path, caplog):
    rows, end = planted_roll(db)
    lost = roll(ROLL_AT, "NQZ5", "NQH6", None, None, price_ts=False)
    with db.begin() as conn:
        record_rolls(conn, SYMBOL, T0, end, [lost], None)
    with caplog.at_level("WARNING", logger="engine.test"):
        result = detect.run(make_ctx(db, tmp_path, T0, end, n=2, adjust="difference"))
    note = f"NQZ5 → NQH6 at {iso(T0 + ROLL_AT * MINUTE)[:-4]}Z"
    assert result.unadjusted_rolls == [note]
    assert any(note in r.getMessage() and "cannot be adjusted" in r.getMessage() for r in caplog.records)
    assert "not adjusted (raw jump kept): " + note in dict(result.rows("detect"))["adjustment"]
    # Skipped: the stored series is read as it is, so the events are the unadjusted ones (marked difference).
    assert stored_events(db, "difference") == expected_events([r["high"] for r in rows], [r["low"] for r in rows])


def test_chunk_settings_name_the_adjustment_only_when_adjusted(db, tmp_path):
    plain = detect.chunk_settings(make_ctx(db, tmp_path / "a", T0, T0 + MINUTE))
    adjusted = detect.chunk_settings(make_ctx(db, tmp_path / "b", T0, T0 + MINUTE, adjust="ratio"))
    assert "adjustment" not in plain  # chunks recorded before adjustments existed still match
    assert adjusted == {**plain, "adjustment": "ratio"}


def test_cli_adjusted_detect_and_chart(db, engine_cli):
    rows, end = planted_roll(db)
    url = db.url.render_as_string(hide_password=False)
    common = (f"db.url={url}", "detector.n=2", f"window.start={iso(T0)}", f"window.end={iso(end)}")
    assert engine_cli(*common, "stages=[registry,detect]").returncode == 0
    run = engine_cli(*common, "stages=[detect,chart]", "adjust=difference")
    assert run.returncode == 0, run.output
    summary = run.result["stages"]["detect"]
    assert summary["adjustment"] == "difference" and summary["anchor"] == "NQH6"
    adj = [(r["high"] + GAP if i < ROLL_AT else r["high"], r["low"] + GAP if i < ROLL_AT else r["low"])
           for i, r in enumerate(rows)]
    assert stored_events(db, "difference") == expected_events([h for h, _ in adj], [v for _, v in adj])
    assert stored_events(db, "none") == expected_events([r["high"] for r in rows], [r["low"] for r in rows])
    drawn = run.result["stages"]["chart"]
    assert drawn["rolls"] == ["NQZ5 → NQH6"] and "back-adjusted (difference) to NQH6" in drawn["title"]
    assert sum(drawn["events"].values()) == len(stored_events(db, "difference"))


# ---------------------------------------------------------------------------------------------
# Chart


def test_chart_draws_the_adjusted_series_and_a_labelled_line_at_each_roll(db, tmp_path):
    rows, end = planted_roll(db)
    ctx = make_ctx(db, tmp_path, T0, end, n=2, adjust="difference")
    detect.run(ctx)
    result = chart.run(ctx)
    assert result.rolls == ["NQZ5 → NQH6"] and result.adjustment == "difference"
    assert result.title.endswith("back-adjusted (difference) to NQH6")
    assert sum(result.events.values()) == len(stored_events(db, "difference"))
    # The line on the figure sits between the last A candle and the first B one.
    view = read_adjusted(db, CLEAN_BARS, SYMBOL, T0, end, "difference")
    lines = chart.roll_lines(view.bars, [DETECT_ROLL], view)
    assert lines == [(ROLL_AT, "NQZ5 → NQH6", True)]
    drawn, labelled = chart.plot_chart(view.bars, np.empty(0, EVENT_DTYPE), tmp_path / "x.png", "t", lines)
    assert labelled == [(ROLL_AT - 0.5, "NQZ5 → NQH6")] and drawn == {"BEAR": 0, "BULL": 0}
    plain = chart.run(make_ctx(db, tmp_path / "plain", T0, end, n=2))
    assert plain.rolls == ["NQZ5 → NQH6"] and "back-adjusted" not in plain.title  # unadjusted: the line too


def test_the_chart_marks_a_roll_it_could_not_adjust(db, tmp_path, caplog):
    _, end = planted_roll(db)
    with db.begin() as conn:
        record_rolls(conn, SYMBOL, T0, end, [roll(ROLL_AT, "NQZ5", "NQH6", None, None, price_ts=False)], None)
    with caplog.at_level("WARNING", logger="engine.test"):
        result = chart.run(make_ctx(db, tmp_path, T0, end, n=2, adjust="ratio"))
    assert result.rolls == ["NQZ5 → NQH6 (not adjusted)"]
    assert any("roll NQZ5 → NQH6 at 2025-12-01T00:15Z could not be adjusted (no common minute" in r.getMessage()
               for r in caplog.records)


# ---------------------------------------------------------------------------------------------
# Parity


def test_parity_compares_the_events_of_the_named_adjustment(db, tmp_path):
    _, end = planted_roll(db)
    detect.run(make_ctx(db, tmp_path / "none", T0, end, n=2))
    detect.run(make_ctx(db, tmp_path / "diff", T0, end, n=2, adjust="difference"))
    plain, adjusted = stored_events(db, "none"), stored_events(db, "difference")
    differing = len({e[:2] for e in plain} ^ {e[:2] for e in adjusted})
    assert differing

    # The run's adjust is the default of both sides: difference against difference agrees.
    same = parity.run(make_ctx(db, tmp_path / "same", T0, end, n=2, adjust="difference",
                               parity=ParityConfig(right=ParitySideConfig(adjust=Adjustment.difference))))
    assert same.mismatches == 0 and same.matched == len(adjusted) and "adjust=difference" in same.right
    # left: the run's (none), right: difference.
    cross = make_ctx(db, tmp_path / "cross", T0, end, n=2, parity=ParityConfig(
        right=ParitySideConfig(adjust=Adjustment.difference), tolerance=differing))
    result = parity.run(cross)
    assert result.mismatches == differing and result.left_events == len(plain)
    assert result.right_events == len(adjusted) and "adjust" not in result.left
    with pytest.raises(EngineError, match="parity.right.adjust='sideways' is not an adjustment"):
        parity.run(make_ctx(db, tmp_path / "bad", T0, end, n=2,
                            parity=ParityConfig(right=ParitySideConfig(adjust="sideways"))))
    with pytest.raises(EngineError, match="csv and source_table/logic_version/adjust"):
        parity.run(make_ctx(db, tmp_path / "both", T0, end, n=2, parity=ParityConfig(
            right=ParitySideConfig(adjust=Adjustment.ratio, csv=str(tmp_path / "x.csv")))))


def test_the_adjusted_read_bench_reads_both_ways(tmp_path):
    from bench.adjusted_read import adjusted_read_ratio

    figure = adjusted_read_ratio(tmp_path / "read.sqlite", n=3000, reps=1, rolls=3)
    assert figure["bars"] == 3000 and figure["rolls"] == 3 and figure["target"] == 1.2
    assert figure["ratio"] == pytest.approx(figure["adjusted_seconds"] / figure["plain_seconds"], rel=0.01)
