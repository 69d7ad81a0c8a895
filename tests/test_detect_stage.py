"""Stage `detect`: known pivots, window invariance, idempotent reruns, the clean-table contract, allow_legacy.

Every database test runs on SQLite and PostgreSQL (the `db` fixture). The helpers at the top are shared with
tests/test_parity.py and tests/test_chart.py.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from engine.config import Adjustment, DbConfig, EngineConfig, ParityConfig, PolicyConfig, WindowConfig
from engine.context import RunRecord, StageContext
from engine.db import registry, runs
from engine.db.bars import read_bars
from engine.db.schema import (
    CLEAN_BARS,
    LEGACY_BARS,
    clean_bars,
    clean_coverage,
    clean_ingest_runs,
    legacy_bars,
    triangle_events,
)
from engine.detectors.williams_fractals import reference_swing_highs, reference_swing_lows
from engine.errors import EngineError
from engine.job_plugins import packaged_node, packaged_options
from engine.provenance import CodeVersion
from engine.stages import detect
from engine.symbols import seed_rows
from engine.windows import Window

SYMBOL = "GLBX.MDP3:NQ"
T0 = datetime(2025, 12, 1, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
CONTRACT = (
    "ERROR: Clean table not available for this range\n"
    "  Clean table is required for Phase D.0+\n"
    "  To use legacy table, pass policy=allow_legacy (not recommended)"
)
EVENT_FIELDS = ("symbol", "ts", "direction", "price", "source_table", "logic_version", "confirm_ts", "n")


# ---------------------------------------------------------------------------------------------
# Helpers (also imported by test_parity.py and test_chart.py)


def iso(value: datetime) -> str:
    return f"{value:%Y-%m-%dT%H:%M:%SZ}"


def make_ctx(db, run_dir: Path, start: datetime, end: datetime, *, warmup_start: datetime | None = None,
             allow_legacy: bool = False, n: int = 5, logic_version: str = "test-v1",
             parity: ParityConfig | None = None, adjust: str = "none") -> StageContext:
    """A stage context as engine/app.py builds it, with a real engine_runs row and a seeded registry."""
    cfg = EngineConfig(
        db=DbConfig(url=db.url.render_as_string(hide_password=False)),
        source=packaged_node("source", "synthetic"),
        window=WindowConfig(start=iso(start), end=iso(end), warmup_start=warmup_start and iso(warmup_start)),
        policy=PolicyConfig(name="allow_legacy" if allow_legacy else "clean_only", allow_legacy=allow_legacy),
        detector={**packaged_node("detector", "williams_fractals"), "n": n},
        parity=parity or ParityConfig(),
        adjust=Adjustment(adjust),
        stages=["detect"],
    )
    registry.insert_missing(db, seed_rows(cfg.registry.defaults, ["NQ"]))
    run_id = runs.start_run(db, symbol="NQ", stages='["detect"]', run_dir=str(run_dir), git_hash=None,
                            git_dirty=None, logic_version=logic_version, config_sha256="0" * 64, overrides="[]",
                            data_kind="demo")
    run_dir.mkdir(parents=True, exist_ok=True)
    return StageContext(cfg=cfg, window=Window(start, end, warmup_start), db=db,
                        run=RunRecord(run_id, run_dir, CodeVersion(None, None, logic_version)),
                        log=logging.getLogger("engine.test"))


def bars_from(highs, lows, start: datetime = T0, gaps: dict[int, int] | None = None) -> list[dict]:
    """One bar a minute from `start`; gaps {index: extra minutes skipped before that bar}."""
    rows, ts = [], start
    for i, (high, low) in enumerate(zip(highs, lows, strict=True)):
        ts += MINUTE * (gaps or {}).get(i, 0)
        mid = (high + low) / 2
        rows.append({"symbol": SYMBOL, "ts": ts, "open": mid, "high": float(high), "low": float(low),
                     "close": mid, "volume": 10 + i})
        ts += MINUTE
    return rows


def random_walk_bars(count: int, seed: int = 3, start: datetime = T0) -> list[dict]:
    rng = np.random.default_rng(seed)
    close = 20000 + np.cumsum(rng.choice([-0.5, -0.25, 0.0, 0.25, 0.5], count))  # ticks: plenty of ties
    high = close + rng.choice([0.0, 0.25, 0.5], count)
    low = close - rng.choice([0.0, 0.25, 0.5], count)
    gaps = {int(i): int(rng.integers(1, 90)) for i in rng.choice(count, count // 200, replace=False)}
    return bars_from(high, low, start, gaps)


def insert_bars(db, rows: list[dict], table=clean_bars) -> None:
    with db.begin() as conn:
        conn.execute(sa.insert(table), rows)


def mark_clean(db, start: datetime, end: datetime, status: str = "success",
               covered: list[tuple[datetime, datetime]] | None = None) -> int:
    """A clean_ingest_runs row saying a clean ingest of [start, end) finished with `status`, and its
    clean_coverage rows: `covered`, by default the whole window (an ingest that landed bars in every session)."""
    with db.begin() as conn:
        ingest_id = conn.execute(sa.insert(clean_ingest_runs).values(
            symbol=SYMBOL, start_ts=start, end_ts=end, bars_received=0, bars_inserted=0, bars_updated=0,
            bars_skipped=0, batch_commits=1, retries=0, run_at=datetime.now(UTC), status=status,
        )).inserted_primary_key[0]
        for a, b in [(start, end)] if covered is None else covered:
            conn.execute(sa.insert(clean_coverage).values(ingest_run_id=ingest_id, symbol=SYMBOL, start_ts=a, end_ts=b))
    return int(ingest_id)


def event_rows(db, logic_version: str | None = None, source_table: str | None = None) -> list[tuple]:
    c = triangle_events.c
    query = sa.select(*(c[f] for f in EVENT_FIELDS)).order_by(c.ts, c.direction)
    if logic_version is not None:
        query = query.where(c.logic_version == logic_version)
    if source_table is not None:
        query = query.where(c.source_table == source_table)
    with db.connect() as conn:
        return [tuple(r) for r in conn.execute(query)]


def all_event_count(db) -> int:
    with db.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(triangle_events)).scalar_one()


# ---------------------------------------------------------------------------------------------
# Known pivots

# n = 2. Bar 2 is an outside bar: a swing high (15 over 11, 10 | 11, 10) and a swing low (5 under 9.5, 9 |
# 9.5, 8). Bar 6 is a swing high after a tie (12 = 12 at bar 5, then 11, 10 before): the tie rule. Bar 9 is
# a swing low (7 under 9.5, 9.7 | 8.5, 9). Nothing else qualifies; the last two bars cannot be confirmed.
KNOWN_HIGHS = [10, 11, 15, 11, 10, 12, 12, 11, 10.5, 10, 10.2, 10.4, 10.6, 10.8, 11]
KNOWN_LOWS = [9, 9.5, 5, 9.5, 8, 9.8, 10.5, 9.7, 9.5, 7, 8.5, 9, 9.2, 9.4, 9.6]
KNOWN_EVENTS = [(2, "BEAR", 15.0), (2, "BULL", 5.0), (6, "BEAR", 12.0), (9, "BULL", 7.0)]


def test_known_pivots_bull_bear_and_both_on_one_bar(db, tmp_path):
    assert "detect" in packaged_options("stage")
    insert_bars(db, bars_from(KNOWN_HIGHS, KNOWN_LOWS))
    end = T0 + len(KNOWN_HIGHS) * MINUTE
    mark_clean(db, T0, end)
    ctx = make_ctx(db, tmp_path, T0, end, n=2, logic_version="known")

    summary = detect.run(ctx)

    # The hand-made expectation agrees with the rule's literal transcription.
    ref_high = np.flatnonzero(reference_swing_highs(KNOWN_HIGHS, 2)).tolist()
    ref_low = np.flatnonzero(reference_swing_lows(KNOWN_LOWS, 2)).tolist()
    assert (ref_high, ref_low) == ([2, 6], [2, 9])
    expected = [
        (SYMBOL, T0 + i * MINUTE, direction, price, CLEAN_BARS, "known", T0 + (i + 2) * MINUTE, 2)
        for i, direction, price in KNOWN_EVENTS
    ]
    assert event_rows(db) == expected
    with db.connect() as conn:
        assert set(conn.execute(sa.select(triangle_events.c.run_id)).scalars()) == {ctx.run.id}
    assert summary.events == {"BEAR": 2, "BULL": 2}
    assert summary.source_table == CLEAN_BARS and summary.logic_version == "known"
    assert summary.bars_in_window == summary.bars_read == len(KNOWN_HIGHS)
    assert summary.events_written == 4 and summary.events_replaced == 0
    assert summary.seconds >= 0


def test_confirming_bars_after_the_window_and_warmup_before_it(db, tmp_path):
    """A window that is just bars 2..6 still finds all three of their events: it reads the warm-up bars
    before it and the n bars after it, but records nothing outside it."""
    insert_bars(db, bars_from(KNOWN_HIGHS, KNOWN_LOWS))
    mark_clean(db, T0, T0 + len(KNOWN_HIGHS) * MINUTE)  # the warm-up and look-ahead bars are covered too
    summary = detect.run(make_ctx(db, tmp_path, T0 + 2 * MINUTE, T0 + 7 * MINUTE, n=2))
    assert [(r[1], r[2]) for r in event_rows(db)] == [(T0 + 2 * MINUTE, "BEAR"), (T0 + 2 * MINUTE, "BULL"),
                                                      (T0 + 6 * MINUTE, "BEAR")]
    assert summary.bars_in_window == 5
    assert summary.warmup_bars == 2  # all that exist before the window (the detector wants up to 6)
    assert summary.confirm_bars == 2  # n bars from window.end on


# ---------------------------------------------------------------------------------------------
# Window invariance and reruns


def test_detecting_in_pieces_gives_the_same_rows_as_one_window(db, tmp_path, monkeypatch):
    bars = random_walk_bars(2500)
    insert_bars(db, bars)
    start, end = bars[0]["ts"], bars[-1]["ts"] + MINUTE
    mark_clean(db, start, end)
    assert detect.run(make_ctx(db, tmp_path / "whole", start, end, logic_version="whole")).pieces == 1
    # The windows below are also cut into 3-hour pieces inside the stage (read in the background on PG).
    monkeypatch.setattr(detect, "PIECE_SPAN", timedelta(hours=3))
    # Cut points: an arbitrary minute, the exact ts of a pivot bar, and one inside a gap between bars.
    whole = event_rows(db, "whole")
    gap_at = next(i for i in range(1, len(bars)) if bars[i]["ts"] - bars[i - 1]["ts"] > 10 * MINUTE)
    cuts = sorted({start + 611 * MINUTE, whole[len(whole) // 2][1], bars[gap_at - 1]["ts"] + 3 * MINUTE})
    edges = [start, *cuts, end]
    for i, (a, b) in enumerate(zip(edges, edges[1:], strict=False)):
        detect.run(make_ctx(db, tmp_path / f"part{i}", a, b, logic_version="split"))

    split = event_rows(db, "split")
    strip = [(r[1], r[2], r[3], r[6]) for r in whole]
    assert strip == [(r[1], r[2], r[3], r[6]) for r in split]
    assert len(whole) > 200 and {r[2] for r in whole} == {"BULL", "BEAR"}
    # ...and both equal the literal rule run over every bar at once.
    highs = np.array([b["high"] for b in bars])
    lows = np.array([b["low"] for b in bars])
    expected = sorted([(bars[i]["ts"], "BEAR") for i in np.flatnonzero(reference_swing_highs(highs, 5))]
                      + [(bars[i]["ts"], "BULL") for i in np.flatnonzero(reference_swing_lows(lows, 5))])
    assert [(r[1], r[2]) for r in whole] == expected


def test_a_failing_read_rolls_the_whole_replacement_back(db, tmp_path, monkeypatch):
    bars = random_walk_bars(1500, seed=5)
    insert_bars(db, bars)
    start, end = bars[0]["ts"], bars[-1]["ts"] + MINUTE
    mark_clean(db, start, end)
    detect.run(make_ctx(db, tmp_path / "a", start, end))
    before = event_rows(db)
    monkeypatch.setattr(detect, "PIECE_SPAN", timedelta(hours=4))
    real_read, calls = detect.read_bars, []

    def flaky_read(*args):
        calls.append(args)
        if len(calls) == 3:
            raise RuntimeError("connection lost")
        return real_read(*args)

    monkeypatch.setattr(detect, "read_bars", flaky_read)
    with pytest.raises(RuntimeError, match="connection lost"):
        detect.run(make_ctx(db, tmp_path / "b", start, end))
    assert event_rows(db) == before


def test_rerun_replaces_rows_without_duplicates(db, tmp_path):
    bars = random_walk_bars(800, seed=11)
    insert_bars(db, bars)
    start, end = bars[0]["ts"], bars[-1]["ts"] + MINUTE
    mark_clean(db, start, end)
    first = detect.run(make_ctx(db, tmp_path / "a", start, end))
    rows = event_rows(db)
    again = make_ctx(db, tmp_path / "b", start, end)
    second = detect.run(again)
    assert event_rows(db) == rows and all_event_count(db) == len(rows) == first.events_written
    assert second.events_replaced == len(rows) == second.events_written
    with db.connect() as conn:
        assert set(conn.execute(sa.select(triangle_events.c.run_id)).scalars()) == {again.run.id}
        distinct = conn.execute(sa.select(sa.func.count()).select_from(
            sa.select(triangle_events.c.ts, triangle_events.c.direction).distinct().subquery())).scalar_one()
    assert distinct == len(rows)

    # Bars change (a pivot's high is lowered): a rerun of part of the range replaces exactly that part.
    victim = next(r for r in rows if r[2] == "BEAR" and r[1] > start + 100 * MINUTE)
    with db.begin() as conn:
        conn.execute(sa.update(clean_bars).where(clean_bars.c.ts == victim[1]).values(high=victim[3] - 50))
    detect.run(make_ctx(db, tmp_path / "c", victim[1] - 30 * MINUTE, victim[1] + 30 * MINUTE))
    after = event_rows(db)
    assert (victim[1], "BEAR") not in {(r[1], r[2]) for r in after}
    assert [r for r in after if not victim[1] - 30 * MINUTE <= r[1] < victim[1] + 30 * MINUTE] == [
        r for r in rows if not victim[1] - 30 * MINUTE <= r[1] < victim[1] + 30 * MINUTE]


# ---------------------------------------------------------------------------------------------
# Clean-only contract and allow_legacy


def test_missing_clean_coverage_fails_with_the_contract_text_and_writes_nothing(db, tmp_path):
    insert_bars(db, random_walk_bars(300))
    mark_clean(db, T0, T0 + timedelta(hours=1))
    mark_clean(db, T0 + timedelta(hours=1), T0 + timedelta(hours=2), status="failed")
    mark_clean(db, T0 + timedelta(hours=2), T0 + timedelta(hours=3))
    ctx = make_ctx(db, tmp_path, T0, T0 + timedelta(hours=4))
    with pytest.raises(EngineError) as raised:
        detect.run(ctx)
    assert str(raised.value) == (
        CONTRACT + "\n  Missing: 2025-12-01T01:00Z → 2025-12-01T02:00Z, 2025-12-01T03:00Z → 2025-12-01T04:00Z"
    )
    assert raised.value.exit_code == 2
    assert all_event_count(db) == 0
    # Overlapping and touching successful ingests cover the window together.
    mark_clean(db, T0 + timedelta(minutes=50), T0 + timedelta(hours=2, minutes=10))
    mark_clean(db, T0 + timedelta(hours=3), T0 + timedelta(days=1))  # the look-ahead bars after 04:00 too
    assert detect.run(make_ctx(db, tmp_path, T0, T0 + timedelta(hours=4))).events_written > 0


def test_missing_ranges():
    from engine.coverage import missing_ranges

    h = timedelta(hours=1)
    assert missing_ranges([], T0, T0 + h) == [(T0, T0 + h)]
    assert missing_ranges([(T0 - h, T0 + 2 * h)], T0, T0 + h) == []
    assert missing_ranges([(T0 + h, T0 + 2 * h), (T0 - h, T0 + h / 2)], T0, T0 + 3 * h) == [
        (T0 + h / 2, T0 + h), (T0 + 2 * h, T0 + 3 * h)]


def test_allow_legacy_reads_the_legacy_table(db, tmp_path, caplog):
    insert_bars(db, bars_from(KNOWN_HIGHS, KNOWN_LOWS), table=legacy_bars)
    end = T0 + len(KNOWN_HIGHS) * MINUTE
    with caplog.at_level(logging.INFO, logger="engine.test"):
        summary = detect.run(make_ctx(db, tmp_path, T0, end, n=2, allow_legacy=True))  # no clean coverage
    assert summary.source_table == LEGACY_BARS == "market_bars_ohlcv_1m"
    assert [(r[1], r[2], r[4]) for r in event_rows(db)] == [
        (T0 + i * MINUTE, direction, LEGACY_BARS) for i, direction, _ in KNOWN_EVENTS]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("allow_legacy" in m and LEGACY_BARS in m for m in warnings)
    # The clean policy ignores those legacy bars entirely.
    mark_clean(db, T0, end)
    assert detect.run(make_ctx(db, tmp_path, T0, end, n=2)).bars_read == 0
    assert event_rows(db, source_table=CLEAN_BARS) == []


def test_read_bars_returns_the_half_open_range_in_order(db):
    rows = bars_from(KNOWN_HIGHS, KNOWN_LOWS, gaps={5: 30})
    insert_bars(db, rows[::-1])
    ns = [int(r["ts"].timestamp()) * 10**9 for r in rows]
    got = read_bars(db, CLEAN_BARS, SYMBOL, rows[3]["ts"], rows[9]["ts"])
    assert got["ts"].tolist() == ns[3:9]
    assert got["high"].tolist() == KNOWN_HIGHS[3:9] and got["volume"].tolist() == [13, 14, 15, 16, 17, 18]
    assert len(read_bars(db, CLEAN_BARS, "GLBX.MDP3:ES", rows[0]["ts"], rows[-1]["ts"] + MINUTE)) == 0


# ---------------------------------------------------------------------------------------------
# End to end: `python -m engine stages=[registry,detect]`


def test_cli_contract_error_exits_2_with_the_message(db, engine_cli):
    url = db.url.render_as_string(hide_password=False)
    mark_clean(db, T0, T0 + timedelta(hours=1))
    run = engine_cli(f"db.url={url}", "stages=[registry,detect]", "symbol=NQ", f"window.start={iso(T0)}",
                     f"window.end={iso(T0 + timedelta(days=1))}")
    assert run.returncode == 2, run.output
    assert run.result["error"] == CONTRACT + "\n  Missing: 2025-12-01T01:00Z → 2025-12-02T00:00Z"
    for line in CONTRACT.splitlines():
        assert line.strip() in run.output
    assert all_event_count(db) == 0


def test_cli_detect_then_chart(db, engine_cli):
    """One job: detect over two sessions, then chart the last one from the events it just wrote."""
    url = db.url.render_as_string(hide_password=False)
    rows = bars_from(KNOWN_HIGHS * 120, KNOWN_LOWS * 120, gaps={900: 61})  # 1800 bars, two sessions
    insert_bars(db, rows)
    end = rows[-1]["ts"] + MINUTE
    mark_clean(db, T0, end)
    run = engine_cli(f"db.url={url}", "stages=[registry,detect,chart]", "detector.n=2", f"window.start={iso(T0)}",
                     f"window.end={iso(end)}")
    assert run.returncode == 0, run.output
    summary = run.result["stages"]["detect"]
    highs = np.flatnonzero(reference_swing_highs(KNOWN_HIGHS * 120, 2))
    lows = np.flatnonzero(reference_swing_lows(KNOWN_LOWS * 120, 2))
    assert summary["events"] == {"BEAR": len(highs), "BULL": len(lows)} and len(highs) > 200
    assert summary["source_table"] == CLEAN_BARS and summary["bars_in_window"] == 1800
    stored = event_rows(db)
    assert [(r[1], r[2]) for r in stored] == sorted([(rows[i]["ts"], "BEAR") for i in highs]
                                                    + [(rows[i]["ts"], "BULL") for i in lows])
    assert {r[5] for r in stored} == {summary["logic_version"]}
    with db.connect() as conn:
        assert set(conn.execute(sa.select(triangle_events.c.run_id)).scalars()) == {run.result["run_id"]}

    chart = run.result["stages"]["chart"]
    assert chart["scope"] == "last session" and chart["bars"] == 900
    assert chart["range_start"] == iso(rows[900]["ts"])
    assert sum(chart["events"].values()) == sum(1 for r in stored if r[1] >= rows[900]["ts"])
    assert (run.run_dir / "chart_GLBX.MDP3_NQ.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
