"""The detector interface: WilliamsFractals as a Detector, output checks, and events keyed by detector and params.

The database tests run on SQLite and PostgreSQL (the `db` fixture).
"""

from __future__ import annotations

import dataclasses
import json
from datetime import timedelta

import numpy as np
import pytest
import sqlalchemy as sa
from test_detect_stage import (
    KNOWN_HIGHS,
    KNOWN_LOWS,
    MINUTE,
    T0,
    all_event_count,
    bars_from,
    insert_bars,
    make_ctx,
    mark_clean,
    random_walk_bars,
)

from engine.config import Direction, ParityConfig, ParitySideConfig
from engine.db.events import EventKey, read_events, replace_events
from engine.db.schema import CLEAN_BARS, triangle_events
from engine.detectors import EVENT_DTYPE, check_detector, checked_events, detector_params, params_json
from engine.detectors.williams_fractals import MAX_LEFT_TIES, WilliamsFractals
from engine.errors import EngineError
from engine.stages import chart, detect, parity

WILLIAMS_5 = '{"n": 5, "swing_high": "BEAR", "swing_low": "BULL"}'


@dataclasses.dataclass(frozen=True)
class RisingBars:
    """A toy detector: a bar whose high tops the previous bar's by more than min_move is BULL at its high,
    confirmed by the next bar."""

    min_move: float = 0.0
    warmup_bars: int = dataclasses.field(default=1, init=False)
    lookahead_bars: int = dataclasses.field(default=1, init=False)

    def detect(self, bars: np.ndarray) -> np.ndarray:
        idx = np.flatnonzero(np.diff(bars["high"][:-1]) > self.min_move) + 1
        out = np.empty(len(idx), EVENT_DTYPE)
        out["ts"], out["confirm_ts"], out["price"], out["direction"] = bars["ts"][idx], bars["ts"][idx + 1], \
            bars["high"][idx], "BULL"
        return out


def rising_bars(count: int) -> list[dict]:
    """Highs 10, 11, 12, 10, 11, 12, ...: RisingBars finds the bars i % 3 != 0 that have a bar after them."""
    return bars_from([10 + (i % 3) for i in range(count)], [9] * count)


def use_detector(monkeypatch, name: str, detector) -> None:
    """Select `detector` under `name` for detect, chart and parity, as a plugin's config option would."""
    monkeypatch.setattr(detect, "detector_of", lambda ctx: (name, check_detector(name, detector)))


def keyed_rows(db) -> list[tuple]:
    c = triangle_events.c
    with db.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(c.detector, c.detector_params, c.n, c.ts, c.direction)
                                               .order_by(c.detector, c.detector_params, c.ts, c.direction))]


# ---------------------------------------------------------------------------------------------
# WilliamsFractals as a Detector


def test_williams_fractals_is_a_detector_with_its_bar_counts():
    wf = WilliamsFractals(n=7)
    assert (wf.warmup_bars, wf.lookahead_bars) == (7 + MAX_LEFT_TIES, 7)
    assert check_detector("williams_fractals", wf) is wf
    assert WilliamsFractals(swing_high="BULL", swing_low="BEAR").swing_high is Direction.BULL  # YAML passes names
    assert detector_params(wf) == {"n": 7, "swing_high": "BEAR", "swing_low": "BULL"}
    assert params_json(WilliamsFractals()) == WILLIAMS_5  # the text migration 0011 gives existing rows


@pytest.mark.parametrize(("kwargs", "problem", "fix"), [
    ({"n": 1}, "detector.n=1 is outside 2…1440: a fractal needs at least 2 bars on each side of its pivot, and "
         "more than 1440 (a day of minutes) would confirm events a day late",
         "set detector.n between 2 and 1440; TradingView's Williams Fractals use 2, the engine's default is 5"),
    ({"n": True}, "detector.n=True is not a usable period", "set detector.n to an integer >= 2, e.g. 5"),
    ({"n": "5"}, "detector.n='5' is not a usable period", "set detector.n to an integer >= 2, e.g. 5"),
    ({"swing_high": "BULL"}, "detector.swing_high and detector.swing_low are both BULL",
     "use different directions, e.g. detector.swing_high=BEAR detector.swing_low=BULL"),
    ({"swing_low": "UP"}, "detector.swing_low='UP' is not a direction", "set detector.swing_low to BULL or BEAR"),
])
def test_williams_fractals_refuses_bad_parameters_naming_the_key(kwargs, problem, fix):
    with pytest.raises(EngineError) as raised:
        WilliamsFractals(**kwargs)
    assert (raised.value.problem, raised.value.fix, raised.value.exit_code) == (problem, fix, 2)


def test_williams_detect_returns_every_pivot_in_order():
    bars = np.array([(int((T0 + i * MINUTE).timestamp()) * 10**9, 0.0, h, lo, 0.0, 1)
                     for i, (h, lo) in enumerate(zip(KNOWN_HIGHS, KNOWN_LOWS, strict=True))],
                    dtype=[("ts", "i8"), ("open", "f8"), ("high", "f8"), ("low", "f8"), ("close", "f8"),
                           ("volume", "i8")])
    events = WilliamsFractals(n=2).detect(bars)
    assert events.dtype == EVENT_DTYPE
    index = {int(t): i for i, t in enumerate(bars["ts"])}
    assert [(index[int(e["ts"])], str(e["direction"]), float(e["price"]), index[int(e["confirm_ts"])])
            for e in events] == [(2, "BEAR", 15.0, 4), (2, "BULL", 5.0, 4), (6, "BEAR", 12.0, 8),
                                 (9, "BULL", 7.0, 11)]
    assert np.array_equal(checked_events("williams_fractals", events, bars), events)


# ---------------------------------------------------------------------------------------------
# Checks of a plugged-in detector


BARS = np.array([(60 * 10**9 * i,) for i in range(5)], dtype=[("ts", "i8")])


def events_of(*rows, dtype=EVENT_DTYPE) -> np.ndarray:
    return np.array(list(rows), dtype=dtype)


@pytest.mark.parametrize(("output", "message"), [
    ([1, 2], "detector 'toy' returned a list, not events"),
    (np.zeros((2, 2)), "detector 'toy' returned a ndarray of shape (2, 2), not events"),
    (np.zeros(1, [("ts", "i8"), ("price", "f8")]), "detector 'toy' returned events without the fields confirm_ts, "
                                                   "direction"),
    (events_of((0, 0, 1.0, "UP")), "detector 'toy' returned direction 'UP'"),
    (events_of((30 * 10**9, 60 * 10**9, 1.0, "BULL")), "detector 'toy' returned an event whose ts is not the ts of "
                                                       "one of its bars"),
    (events_of((60 * 10**9, 0, 1.0, "BULL")), "detector 'toy' returned an event confirmed before its pivot"),
    (events_of((0, 0, 1.0, "BULL"), (0, 60 * 10**9, 2.0, "BULL")), "detector 'toy' returned the same (ts, "
                                                                   "direction) twice"),
    (events_of((0.0, 0.0, 1.0, "BULL"), dtype=[("ts", "f8"), ("confirm_ts", "f8"), ("price", "f8"),
                                               ("direction", "U4")]), "detector 'toy' returned ts of dtype float64"),
])
def test_bad_detector_output_is_refused_naming_the_detector(output, message):
    with pytest.raises(EngineError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        checked_events("toy", output, BARS)


def test_detector_output_is_normalised_to_the_event_dtype_in_order():
    raw = np.array([(240 * 10**9, "BEAR", 2, 240 * 10**9), (0, b"BULL", 1, 60 * 10**9), (0, "BEAR", 3, 0)],
                   dtype=[("ts", "i8"), ("direction", "O"), ("price", "i8"), ("confirm_ts", "i8")])
    out = checked_events("toy", raw, BARS)
    assert out.dtype == EVENT_DTYPE
    assert out.tolist() == [(0, 0, 3.0, "BEAR"), (0, 60 * 10**9, 1.0, "BULL"), (240 * 10**9, 240 * 10**9, 2.0, "BEAR")]
    assert len(checked_events("toy", np.empty(0, EVENT_DTYPE), BARS[:0])) == 0


def test_check_detector_wants_detect_and_bar_counts():
    toy = RisingBars()
    assert check_detector("toy", toy) is toy
    with pytest.raises(EngineError, match=r"detector 'toy' \(object\) has no detect\(bars\) method"):
        check_detector("toy", object())


def test_check_detector_refuses_bad_bar_counts():
    class Broken:
        warmup_bars, lookahead_bars = 3, -1

        def detect(self, bars):
            return bars

    with pytest.raises(EngineError) as raised:
        check_detector("broken", Broken())
    assert raised.value.problem == "detector 'broken': lookahead_bars=-1 is not a number of bars"
    assert detector_params(Broken()) == {}


# ---------------------------------------------------------------------------------------------
# Events keyed by detector and params, on both databases


def test_two_detectors_coexist_and_a_rerun_replaces_only_its_own(db, tmp_path, monkeypatch):
    bars = random_walk_bars(600, seed=7)
    insert_bars(db, bars)
    start, end = bars[0]["ts"], bars[-1]["ts"] + MINUTE
    mark_clean(db, start, end)
    five = detect.run(make_ctx(db, tmp_path / "n5", start, end))
    three = detect.run(make_ctx(db, tmp_path / "n3", start, end, n=3))
    assert (five.detector, five.detector_params) == ("williams_fractals", WILLIAMS_5)
    assert json.loads(three.detector_params)["n"] == 3 and three.n == 3
    assert all_event_count(db) == five.events_written + three.events_written
    before = keyed_rows(db)
    assert {(d, p, n) for d, p, n, *_ in before} == {("williams_fractals", WILLIAMS_5, 5),
                                                    ("williams_fractals", params_json(WilliamsFractals(n=3)), 3)}

    use_detector(monkeypatch, "rising", RisingBars())
    toy = detect.run(make_ctx(db, tmp_path / "toy", start, end))
    assert toy.detector == "rising" and toy.detector_params == '{"min_move": 0.0}' and toy.n == 1
    assert toy.events["BULL"] == toy.events_written > 0 and toy.events["BEAR"] == 0
    # No bar after the data: the last bar's event (if any) waits for its look-ahead of one bar.
    assert toy.warmup_bars == 0 and toy.confirm_bars == 0 and toy.lookahead_complete is False
    rows = keyed_rows(db)
    assert [r for r in rows if r[0] != "rising"] == before
    assert {r[2] for r in rows if r[0] == "rising"} == {1}

    again = detect.run(make_ctx(db, tmp_path / "toy2", start, end))  # replaces the toy's rows, and only those
    assert again.events_replaced == toy.events_written and keyed_rows(db) == rows
    use_detector(monkeypatch, "rising", RisingBars(min_move=0.3))  # other parameters: other events
    other = detect.run(make_ctx(db, tmp_path / "toy3", start, end))
    assert other.events_replaced == 0 and 0 < other.events_written < toy.events_written
    assert all_event_count(db) == len(rows) + other.events_written


def test_chart_and_parity_read_the_selected_detectors_events(db, tmp_path, monkeypatch):
    bars = rising_bars(40)
    insert_bars(db, bars)
    end = T0 + 40 * MINUTE
    mark_clean(db, T0, end + timedelta(hours=1))
    detect.run(make_ctx(db, tmp_path / "wf", T0, end, n=2))
    use_detector(monkeypatch, "rising", RisingBars())
    toy = detect.run(make_ctx(db, tmp_path / "toy", T0, end))
    drawn = chart.run(make_ctx(db, tmp_path / "chart", T0, end)).events
    assert drawn == {"BEAR": 0, "BULL": toy.events_written}
    key = EventKey(bars[0]["symbol"], CLEAN_BARS, "test-v1", "rising", '{"min_move": 0.0}')
    assert len(read_events(db, key, T0, end)) == toy.events_written == 26


def test_a_detector_with_bad_output_fails_the_stage_and_writes_nothing(db, tmp_path, monkeypatch):
    insert_bars(db, rising_bars(30))
    mark_clean(db, T0, T0 + timedelta(hours=1))

    @dataclasses.dataclass(frozen=True)
    class Sloppy(RisingBars):
        def detect(self, bars):
            out = super().detect(bars)
            out["ts"] += 1  # not a bar's ts
            return out

    use_detector(monkeypatch, "sloppy", Sloppy())
    with pytest.raises(EngineError, match="detector 'sloppy' returned an event whose ts is not the ts of one of"):
        detect.run(make_ctx(db, tmp_path, T0, T0 + 30 * MINUTE))
    assert all_event_count(db) == 0


def test_read_events_returns_the_stored_rows_as_the_event_dtype(db):
    key = EventKey("GLBX.MDP3:NQ", CLEAN_BARS, "v", "williams_fractals", WILLIAMS_5)
    ns = [int((T0 + i * MINUTE).timestamp()) * 10**9 for i in range(4)]
    events = np.array([(ns[0], ns[2], 101.25, "BEAR"), (ns[0], ns[3], 99.5, "BULL"), (ns[1], ns[3], 100.0, "BULL")],
                      EVENT_DTYPE)
    assert replace_events(db, key, T0, T0 + timedelta(hours=1), events, None, n=5) == (0, 3)
    got = read_events(db, key, T0, T0 + timedelta(hours=1))
    assert got.dtype == EVENT_DTYPE and got.tolist() == events.tolist()
    assert read_events(db, key, T0 + MINUTE, T0 + 2 * MINUTE).tolist() == events[2:].tolist()
    with db.begin() as conn:  # rows of engines before 0007 have no confirmation time and no price
        conn.execute(sa.update(triangle_events).values(confirm_ts=None, price=None))
    old = read_events(db, key, T0, T0 + timedelta(hours=1))
    assert old["confirm_ts"].tolist() == [-1] * 3 and np.isnan(old["price"]).all()
    assert len(read_events(db, dataclasses.replace(key, detector="other"), T0, T0 + timedelta(hours=1))) == 0


def test_williams_chunk_settings_keep_their_digest(db, tmp_path):
    """Chunks recorded before detectors were plugins still match: the detector dict is the same as the config's."""
    ctx = make_ctx(db, tmp_path, T0, T0 + timedelta(hours=1), n=3)
    settings = detect.chunk_settings(ctx)
    assert json.dumps(settings, sort_keys=True, default=str) == json.dumps({
        "symbol": ctx.symbol.internal_symbol, "source_table": CLEAN_BARS, "logic_version": "test-v1",
        "detector": {"name": "williams_fractals", "n": 3, "swing_high": "BEAR", "swing_low": "BULL"},
        "done_when": "lookahead_complete"},
        sort_keys=True, default=str)


def test_parity_compares_the_events_of_the_selected_detector(db, tmp_path, monkeypatch):
    insert_bars(db, rising_bars(20))
    mark_clean(db, T0, T0 + timedelta(hours=1))
    use_detector(monkeypatch, "rising", RisingBars())
    detect.run(make_ctx(db, tmp_path / "a", T0, T0 + 20 * MINUTE, logic_version="v-a"))
    detect.run(make_ctx(db, tmp_path / "b", T0, T0 + 20 * MINUTE, logic_version="v-b"))
    cfg = ParityConfig(left=ParitySideConfig(logic_version="v-a"), right=ParitySideConfig(logic_version="v-b"))
    summary = parity.run(make_ctx(db, tmp_path / "p", T0, T0 + 20 * MINUTE, parity=cfg))
    assert summary.matched == summary.left_events == 12 and summary.mismatches == 0
