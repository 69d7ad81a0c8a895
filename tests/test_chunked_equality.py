"""Chunked backfills equal unchunked runs, exactly (issue 9 item 1).

`stages=[ingest,detect] window.chunk=...` must leave the same bars and the same events (ts, direction, price,
confirm_ts) with the same counts as one unchunked run over the window, for every chunk length and cut point,
on SQLite and PostgreSQL; a detect chunk whose look-ahead bars are not stored yet is left pending (not
recorded in stage_chunks) and redone by the next run; chunks recorded done by the old engine (detect ran
before the next chunk's bars existed) are redone by the next ordinary run; a backfill killed with SIGKILL
resumes to the same end state.

Runs are in-process (Hydra's compose API + engine.pipeline.run_stages with a real engine_runs row), except
the kill -9 test, which kills a real `python -m engine`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from dbn_files import write_dbn
from hydra import compose, initialize_config_dir
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from engine.bars import NS_PER_MINUTE, PRICE_SCALE, RAW_BAR_DTYPE
from engine.config import WindowConfig, register_configs, to_typed
from engine.context import RunRecord, StageContext
from engine.db import runs
from engine.db.connect import create_db_engine, upgrade
from engine.db.schema import clean_bars, metadata, stage_chunks, triangle_events
from engine.db.types import datetime_to_ns
from engine.job_plugins import load_plugins
from engine.pipeline import run_stages
from engine.provenance import CodeVersion, sha256_text
from engine.windows import parse_window

REPO = Path(__file__).resolve().parents[1]
SYMBOL = "GLBX.MDP3:NQ"
LOGIC = "test-chunks"
N = 5
register_configs()


# ---------------------------------------------------------------------------------------------- harness


def run_engine(url: str, workdir: Path, *overrides: str) -> dict:
    """One job in this process, as engine/app.py runs it: composed config, a real run row, run_stages."""
    with initialize_config_dir(config_dir=str(REPO / "engine" / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"db.url={url}", f"data_dir={workdir / 'data'}", *overrides])
    typed = to_typed(cfg)
    db = create_db_engine(url)
    try:
        upgrade(db)
        plugins = load_plugins(typed)
        run_id = runs.start_run(db, symbol=typed.symbol, stages=runs.dumps(list(typed.stages)), run_dir=str(workdir),
                                git_hash=None, git_dirty=None, logic_version=LOGIC, config_sha256="0" * 64,
                                overrides=runs.dumps(list(overrides)), data_kind=plugins.source.obj.data_kind.value)
        ctx = StageContext(cfg=typed, window=parse_window(typed.window), db=db,
                           run=RunRecord(run_id, workdir, CodeVersion(None, None, LOGIC)),
                           log=logging.getLogger("engine"), plugins=plugins)
        run_stages(ctx)
        runs.finish_run(db, run_id, "success")
        return {name: result.as_json() for name, result in ctx.run.results.items()}
    finally:
        db.dispose()


def query(url: str, sql: str | sa.Select) -> list[tuple]:
    """Rows of `sql` (text, or a select of the schema's tables for typed values: UTC datetimes on SQLite too)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(sa.text(sql) if isinstance(sql, str) else sql)]
    finally:
        engine.dispose()


def events(url: str) -> list[tuple]:
    c = triangle_events.c
    return query(url, sa.select(c.ts, c.direction, c.price, c.confirm_ts).order_by(c.ts, c.direction))


def bars(url: str) -> list[tuple]:
    c = clean_bars.c
    return query(url, sa.select(c.ts, c.open, c.high, c.low, c.close, c.volume, c.instrument_id).order_by(c.ts))


def detect_chunks(url: str) -> list[tuple]:
    c = stage_chunks.c
    return query(url, sa.select(c.start_ts, c.end_ts).where(c.stage == "detect").order_by(c.start_ts))


def wipe(url: str) -> None:
    """Empty every data table (keep the registry and the database's data kind): a fresh start, minus migrating."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            if table.name not in ("symbol_registry", "engine_database"):
                conn.execute(table.delete())
    engine.dispose()


def iso(value: datetime) -> str:
    return f"{value:%Y-%m-%dT%H:%M:%SZ}"


def window_of(start: datetime, end: datetime) -> list[str]:
    return [f"window.start={iso(start)}", f"window.end={iso(end)}"]


def chunk_count(start: datetime, end: datetime, chunk: str) -> int:
    return len(parse_window(WindowConfig(start=iso(start), end=iso(end), chunk=chunk)).chunks())


def ingest_counts(summary: dict) -> tuple[int, int, int]:
    ingest = summary["ingest"]
    return ingest["bars_inserted"], ingest["bars_updated"], ingest["bars_unchanged"]


@pytest.fixture
def ref_url(request, db_url, tmp_path):
    """A second empty database of the same kind as `db_url`, for the unchunked reference run."""
    if db_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'reference.sqlite'}"
        return
    admin = request.getfixturevalue("pg_admin")
    name = f"engine_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield admin.url.set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# ---------------------------------------------------------------------------------------------- planted pivots

T0 = datetime(2025, 12, 1, 14, 30, tzinfo=UTC)  # a Monday; the planted file holds 120 bars, 14:30 to 16:29
WINDOW = [f"window.start={T0:%Y-%m-%dT%H:%M:%SZ}", "window.end=2025-12-01T16:30:00Z"]
# Minute offsets from T0 of the planted pivots. With 1h chunks ([14:30,15:00), [15:00,16:00), [16:00,16:30)):
# the BULL at 14:56 lies in the last n bars of chunk 1, the BEAR at 14:59 is its last bar, the BEAR at 15:55 is
# confirmed by 16:00 (the first bar of chunk 3), the BULL at 15:57 is in chunk 2's last n bars, 15:48 and 16:20
# need nothing from another chunk, and 16:27 has only 2 bars after it in the file (never a pivot here). With 1min
# chunks every pivot is the last bar of its chunk.
HIGHS = [29, 78, 85, 117]
LOWS = [26, 87, 110]
PLANTED = sorted([(T0 + timedelta(minutes=i), "BEAR") for i in HIGHS if i != 117]
                 + [(T0 + timedelta(minutes=i), "BULL") for i in LOWS])


def planted_bars(count: int) -> np.ndarray:
    """Bars a minute apart from T0 on a rising line (no pivot anywhere) with spikes at HIGHS and dips at LOWS."""
    out = np.zeros(count, dtype=RAW_BAR_DTYPE)
    out["ts"] = datetime_to_ns(T0) + np.arange(count) * NS_PER_MINUTE
    out["instrument_id"] = 4242
    mid = 21000.0 + 0.25 * np.arange(count)
    high, low = mid + 0.5, mid - 0.5
    high[HIGHS] += 50
    low[LOWS] -= 50
    for column, values in (("open", mid), ("close", mid), ("high", high), ("low", low)):
        out[column] = np.rint(values * PRICE_SCALE)
    out["volume"] = 100
    return out


@pytest.fixture
def planted_file(tmp_path) -> Path:
    return write_dbn(tmp_path / "planted.ohlcv-1m.dbn.zst", planted_bars(120))


def from_file(path: Path) -> list[str]:
    return ["source=dbn_file", f"source.paths=[{path}]", "stages=[ingest,detect]"]


@pytest.mark.parametrize(("chunk", "first", "last"), [("1h", 0, 120), ("7min", 0, 120), ("1min", 15, 40)])
def test_chunk_edges_on_pivots_give_the_unchunked_events(db_url, ref_url, tmp_path, planted_file, chunk, first, last,
                                                         caplog):
    start, end = T0 + timedelta(minutes=first), T0 + timedelta(minutes=last)
    reference = run_engine(ref_url, tmp_path, *from_file(planted_file), *window_of(start, end))
    expected = events(ref_url)
    n_minutes = timedelta(minutes=N)
    inside = [(ts, d) for ts, d in PLANTED if start + n_minutes <= ts < end - n_minutes]
    assert [(ts, d) for ts, d, *_ in expected] == inside and inside
    assert all(confirm == ts + n_minutes for ts, _, _, confirm in expected)
    assert reference["detect"]["lookahead_complete"] is False, "the stored bars end with the window"

    with caplog.at_level(logging.INFO, logger="engine"):
        chunked = run_engine(db_url, tmp_path, *from_file(planted_file), *window_of(start, end),
                             f"window.chunk={chunk}")
    assert events(db_url) == expected and bars(db_url) == bars(ref_url)
    assert ingest_counts(chunked) == ingest_counts(reference) == (last - first, 0, 0)
    detect = chunked["detect"]
    assert detect["events"] == reference["detect"]["events"]
    assert detect["events_written"] == len(expected) and detect["bars_in_window"] == last - first
    # The stored bars end with the window: the chunks holding any of its last n bars cannot have all their
    # confirming bars yet, so they are pending (not recorded done); all the others are recorded.
    pieces = parse_window(WindowConfig(start=iso(start), end=iso(end), chunk=chunk)).chunks()
    last_bars = [end - timedelta(minutes=m) for m in range(1, N + 1)]
    waiting = [p for p in pieces if any(p.start <= t < p.end for t in last_bars)]
    assert len(waiting) == {"1h": 1, "1min": 5, "7min": 2}[chunk]
    assert (detect["chunks_done"], detect["chunks_pending"]) == (len(pieces) - len(waiting), len(waiting))
    assert detect["lookahead_complete"] is False
    assert detect_chunks(db_url) == [(p.start, p.end) for p in pieces if p not in waiting]
    pending = [r.getMessage() for r in caplog.records if "left pending" in r.getMessage()]
    assert len(pending) == len(waiting) and f"detect chunk {len(pieces)}/{len(pieces)}" in pending[-1]
    assert f"only 0 of the 5 bars after {end:%Y-%m-%dT%H:%MZ} are stored" in pending[-1]


def test_detect_alone_chunked_records_only_the_chunks_with_their_look_ahead(db_url, ref_url, tmp_path,
                                                                           planted_file):
    run_engine(ref_url, tmp_path, *from_file(planted_file), *WINDOW)
    run_engine(db_url, tmp_path, *from_file(planted_file), "stages=[ingest]", *WINDOW)
    detect = run_engine(db_url, tmp_path, *from_file(planted_file), "stages=[detect]", *WINDOW,
                        "window.chunk=1h")["detect"]
    assert events(db_url) == events(ref_url)
    assert (detect["chunks_done"], detect["chunks_pending"], detect["lookahead_complete"]) == (2, 1, False)
    assert detect_chunks(db_url) == [(T0, T0 + timedelta(minutes=30)), (T0 + timedelta(minutes=30),
                                                                        T0 + timedelta(minutes=90))]


def test_a_pending_chunk_is_redone_by_the_next_run_and_completes_once_later_bars_exist(db_url, tmp_path):
    short = write_dbn(tmp_path / "short.ohlcv-1m.dbn.zst", planted_bars(120))
    command = [*from_file(short), *WINDOW, "window.chunk=1h"]
    first = run_engine(db_url, tmp_path, *command)
    assert first["detect"]["chunks_pending"] == 1
    again = run_engine(db_url, tmp_path, *command)
    assert (again["ingest"]["chunks_skipped"], again["ingest"]["chunks_done"]) == (3, 0)
    detect = again["detect"]
    assert (detect["chunks_skipped"], detect["chunks_done"], detect["chunks_pending"]) == (2, 0, 1)
    assert (16, 27) not in [(ts.hour, ts.minute) for ts, *_ in events(db_url)]

    longer = write_dbn(tmp_path / "longer.ohlcv-1m.dbn.zst", planted_bars(150))  # 16:30 .. 16:59 added
    run_engine(db_url, tmp_path, "source=dbn_file", f"source.paths=[{longer}]", "stages=[ingest]",
               "window.start=2025-12-01T16:30:00Z", "window.end=2025-12-01T17:00:00Z")
    healed = run_engine(db_url, tmp_path, *command)["detect"]
    assert (healed["chunks_skipped"], healed["chunks_done"], healed["chunks_pending"]) == (2, 1, 0)
    assert healed["lookahead_complete"] is True and len(detect_chunks(db_url)) == 3
    assert [(ts, d) for ts, d, *_ in events(db_url)] == sorted([*PLANTED, (T0 + timedelta(minutes=117), "BEAR")])


# ---------------------------------------------------------------------------------------------- healing


def old_detect_digest(n: int = N) -> str:
    """The detect chunk-settings digest exactly as the engine before issue 9 computed it (commit 101d073)."""
    settings = {"symbol": SYMBOL, "source_table": "market_bars_ohlcv_1m_clean", "logic_version": LOGIC,
                "detector": {"name": "williams_fractals", "n": n, "swing_high": "BEAR", "swing_low": "BULL"}}
    return sha256_text(json.dumps(settings, sort_keys=True, default=str))


def test_chunks_wrongly_recorded_done_by_the_old_engine_are_healed_by_the_next_run(db_url, ref_url, tmp_path,
                                                                                  planted_file):
    run_engine(ref_url, tmp_path, *from_file(planted_file), *WINDOW)
    # What the old engine left: per chunk, the chunk's ingest (recorded done, as today), then a detect of that
    # chunk alone, before the next chunk's bars existed, recorded done with the old settings digest.
    edges = [T0, T0 + timedelta(minutes=30), T0 + timedelta(minutes=90), T0 + timedelta(minutes=120)]
    engine = sa.create_engine(db_url)
    for start, end in zip(edges, edges[1:], strict=False):
        run_engine(db_url, tmp_path, *from_file(planted_file), "stages=[ingest]", *window_of(start, end),
                   "window.chunk=1h")
        summary = run_engine(db_url, tmp_path, *from_file(planted_file), "stages=[detect]", *window_of(start, end))
        with engine.begin() as conn:
            run_id = conn.execute(sa.text("SELECT max(id) FROM engine_runs")).scalar_one()
            conn.execute(sa.insert(stage_chunks).values(
                engine_run_id=run_id, stage="detect", symbol=SYMBOL, start_ts=start, end_ts=end,
                settings_sha256=old_detect_digest(), status="success", finished_at=datetime.now(UTC),
                summary=json.dumps(summary["detect"], sort_keys=True, default=str)))
    engine.dispose()
    broken = events(db_url)
    lost = sorted(set(events(ref_url)) - set(broken))
    assert [(ts.strftime("%H:%M"), d) for ts, d, *_ in lost] == [
        ("14:56", "BULL"), ("14:59", "BEAR"), ("15:55", "BEAR"), ("15:57", "BULL")], "the old engine's loss"
    assert len(broken) == 2

    healed = run_engine(db_url, tmp_path, *from_file(planted_file), *WINDOW, "window.chunk=1h")
    assert events(db_url) == events(ref_url) and bars(db_url) == bars(ref_url)
    assert (healed["ingest"]["chunks_skipped"], healed["ingest"]["chunks_done"]) == (3, 0)
    detect = healed["detect"]
    assert (detect["chunks_skipped"], detect["chunks_done"], detect["chunks_pending"]) == (0, 2, 1)
    again = run_engine(db_url, tmp_path, *from_file(planted_file), *WINDOW, "window.chunk=1h")["detect"]
    assert (again["chunks_skipped"], again["chunks_done"]) == (2, 0) and events(db_url) == events(ref_url)


# ---------------------------------------------------------------------------------------------- property

# The synthetic source's Globex hours: Thursday 2025-12-11 to Tuesday 2025-12-16 spans a weekend close (Friday
# 22:00 to Sunday 23:00 UTC) and the daily 22:00-23:00 UTC break.
SPAN_START = datetime(2025, 12, 11, tzinfo=UTC)
SPAN_MINUTES = 5 * 24 * 60
CHUNK_LENGTHS = ["1min", "2min", "3min", "5min", "7min", "13min", "1h", "2h", "7h", "1d", "1w"]
CHUNK_MINUTES = {"min": 1, "h": 60, "d": 1440, "w": 10080}
MAX_CHUNKS = 40


@st.composite
def chunked_windows(draw) -> tuple[datetime, datetime, str]:
    chunk = draw(st.sampled_from(CHUNK_LENGTHS))
    number, unit = re.fullmatch(r"(\d+)(\D+)", chunk).groups()
    step = int(number) * CHUNK_MINUTES[unit]
    length = draw(st.integers(1, min(MAX_CHUNKS * step, 3 * 1440)))
    offset = draw(st.integers(0, SPAN_MINUTES - length))
    start = SPAN_START + timedelta(minutes=offset)
    return start, start + timedelta(minutes=length), chunk


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(case=chunked_windows())
@example(case=(datetime(2025, 12, 12, 20, 0, tzinfo=UTC), datetime(2025, 12, 15, 2, 0, tzinfo=UTC), "1h"))
@example(case=(datetime(2025, 12, 11, 13, 3, tzinfo=UTC), datetime(2025, 12, 11, 13, 41, tzinfo=UTC), "1min"))
def test_property_chunked_equals_unchunked(db_url, ref_url, tmp_path, case):
    start, end, chunk = case
    wipe_if_migrated(db_url)
    wipe_if_migrated(ref_url)
    common = ["stages=[ingest,detect]", "detector.n=3", *window_of(start, end)]
    reference = run_engine(ref_url, tmp_path, *common)
    chunked = run_engine(db_url, tmp_path, *common, f"window.chunk={chunk}")
    assert bars(db_url) == bars(ref_url)
    assert events(db_url) == events(ref_url)
    assert chunked["ingest"]["bars_received"] == reference["ingest"]["bars_received"]
    assert ingest_counts(chunked) == ingest_counts(reference)
    for key in ("bars_in_window", "events_written"):
        assert chunked["detect"][key] == reference["detect"][key], key
    assert chunked["detect"]["events"] == reference["detect"]["events"]
    detect = chunked["detect"]
    assert detect["chunks_done"] + detect["chunks_pending"] == chunk_count(start, end, chunk)
    assert detect["lookahead_complete"] == (detect["chunks_pending"] == 0)


def wipe_if_migrated(url: str) -> None:
    """Hypothesis runs several examples in one test's databases: start each from empty tables."""
    if url.startswith("sqlite") and not Path(url.removeprefix("sqlite:///")).exists():
        return
    engine = sa.create_engine(url)
    migrated = "alembic_version" in sa.inspect(engine).get_table_names()
    engine.dispose()
    if migrated:
        wipe(url)


# ---------------------------------------------------------------------------------------------- kill -9


@pytest.mark.slow
def test_kill_9_mid_backfill_then_resume_ends_identical_to_an_unchunked_run(db_url, ref_url, tmp_path):
    window = ["window.start=2025-12-09T00:00:00Z", "window.end=2025-12-10T12:00:00Z"]
    total = chunk_count(datetime(2025, 12, 9, tzinfo=UTC), datetime(2025, 12, 10, 12, tzinfo=UTC), "10min")
    command = [sys.executable, "-m", "engine", f"db.url={db_url}", "stages=[ingest,detect]", *window,
               "window.chunk=10min"]
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if db_url.startswith("sqlite") and not Path(db_url.removeprefix("sqlite:///")).exists():
                time.sleep(0.05)
                continue
            try:
                if query(db_url, "SELECT count(*) FROM stage_chunks WHERE stage = 'detect'")[0][0] >= 20:
                    break
            except sa.exc.SQLAlchemyError:
                pass  # not migrated yet
            time.sleep(0.05)
        assert proc.poll() is None, "the backfill finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    done = dict(query(db_url, "SELECT stage, count(*) FROM stage_chunks GROUP BY stage"))
    assert 20 <= done["detect"] < done["ingest"] < total, done

    resumed = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    result = json.loads(max((tmp_path / "runs").rglob("result.json"), key=lambda p: p.stat().st_mtime).read_text())
    stages = result["stages"]
    assert stages["ingest"]["chunks_skipped"] >= done["ingest"]
    assert stages["detect"]["chunks_skipped"] == done["detect"]
    assert stages["detect"]["chunks_skipped"] + stages["detect"]["chunks_done"] + stages["detect"][
        "chunks_pending"] == total

    run_engine(ref_url, tmp_path, "stages=[ingest,detect]", *window)
    assert bars(db_url) == bars(ref_url)
    assert events(db_url) == events(ref_url) and len(events(ref_url)) > 100
