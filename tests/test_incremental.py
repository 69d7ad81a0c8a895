"""`window=incremental` (issue 13 item 1): from where the symbol's verified clean coverage ends to the latest minute the
source has, on SQLite and PostgreSQL.

Jobs run in this process through the real command line (`engine.__main__.cli`, Hydra and all: resolution, run row,
result.json), except the one end-to-end test of the shipped daily job, which runs `python -m engine -m`. The data:
whole CME sessions of real DBN files (tests/dbn_files.py) for dbn_file, the local fake gateway
(tests/fake_databento.py) for Databento.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from dbn_files import write_dbn
from fake_databento import GET_DATASET_RANGE, GET_RANGE
from test_chunked_equality import query, ref_url  # noqa: F401 - ref_url: a second empty database, a fixture

from engine.__main__ import cli
from engine.bars import NS_PER_MINUTE, PRICE_SCALE, RAW_BAR_DTYPE
from engine.config import register_configs
from engine.db.connect import create_db_engine, upgrade
from engine.db.schema import clean_bars, clean_coverage, clean_ingest_runs, engine_runs, triangle_events
from engine.db.types import datetime_to_ns
from engine.incremental import verified_end
from engine.sources.databento import DatabentoSource
from engine.sources.dbn import DbnFileSource
from engine.sources.synthetic import SyntheticSource

register_configs()
SYMBOL = "GLBX.MDP3:NQ"
KEY = "db-" + "A" * 32
SESSION_MINUTES = 23 * 60  # a Globex session in December: 23:00 UTC to 22:00 UTC the next day
# Sessions of trade dates 2025-12-02, 03 and 04 (they open the evening before, 17:00 Chicago = 23:00 UTC).
OPENS = [datetime(2025, 12, d, 23, tzinfo=UTC) for d in (1, 2, 3)]
N = 5  # Williams fractals' look-ahead (conf/detector/williams_fractals.yaml)
# Planted pivots: minute offsets into each session. Session 0's last one (1377) has only 2 bars after it in its
# session: only the next session's bars confirm it (the tail an incremental run must re-evaluate); likewise
# session 1's last low; session 2's last high is never confirmed (no bars after it).
HIGHS = {0: [300, SESSION_MINUTES - 3], 1: [700], 2: [40, SESSION_MINUTES - 1]}
LOWS = {0: [900], 1: [2, SESSION_MINUTES - 2], 2: [1000]}


def session_bars(k: int) -> np.ndarray:
    """Every minute of session k on a rising line (no pivot of its own) with the planted highs and lows."""
    out = np.zeros(SESSION_MINUTES, dtype=RAW_BAR_DTYPE)
    out["ts"] = datetime_to_ns(OPENS[k]) + np.arange(SESSION_MINUTES) * NS_PER_MINUTE
    out["instrument_id"] = 4242
    mid = 21000.0 + 0.25 * (np.arange(SESSION_MINUTES) + k * SESSION_MINUTES)
    high, low = mid + 0.5, mid - 0.5
    high[HIGHS[k]] += 50
    low[LOWS[k]] -= 50
    for column, values in (("open", mid), ("close", mid), ("high", high), ("low", low)):
        out[column] = np.rint(values * PRICE_SCALE)
    out["volume"] = 100
    return out


def pivot_ts(k: int, minute: int) -> datetime:
    return OPENS[k] + timedelta(minutes=minute)


def land_session(folder: Path, k: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return write_dbn(folder / f"session{k}.ohlcv-1m.dbn.zst", session_bars(k))


def iso(value: datetime) -> str:
    return f"{value:%Y-%m-%dT%H:%M:%SZ}"


def engine(workdir: Path, monkeypatch, *args: str) -> tuple[int, dict]:
    """`engine <args>` in this process, in `workdir`: its exit code and the result.json of its run."""
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    before = set((workdir / "runs").rglob("result.json"))
    monkeypatch.setattr(sys, "argv", ["engine", *args])
    code = 0
    try:
        cli()
    except SystemExit as exc:
        code = exc.code or 0
    (new,) = set((workdir / "runs").rglob("result.json")) - before
    return code, json.loads(new.read_text())


def dbn_job(url: str, folder: Path, *extra: str) -> list[str]:
    return [f"db.url={url}", "source=dbn_file", f"source.paths=[{folder}]", "stages=[registry,ingest,detect]",
            "window=incremental", *extra]


def bars_rows(url: str) -> list[tuple]:
    c = clean_bars.c
    return query(url, sa.select(c.symbol, c.ts, c.open, c.high, c.low, c.close, c.volume, c.instrument_id)
                 .order_by(c.symbol, c.ts))


def event_rows(url: str) -> list[tuple]:
    c = triangle_events.c
    return query(url, sa.select(c.symbol, c.ts, c.direction, c.price, c.confirm_ts, c.n, c.source_table, c.detector,
                                c.adjustment).order_by(c.ts, c.direction))


def planted(sessions: range) -> list[tuple[datetime, str]]:
    """The pivots the detector must find in those sessions, (ts, direction) in order."""
    return sorted([(pivot_ts(k, m), "BEAR") for k in sessions for m in HIGHS[k]]
                  + [(pivot_ts(k, m), "BULL") for k in sessions for m in LOWS[k]])


# ---------------------------------------------------------------------------------------------- the dataset's end


def test_dataset_end_of_each_source_kind(tmp_path, fake_databento):
    """dbn_file: the files' metadata end (else the last bar + 1 min); synthetic: now; Databento: the schema's end
    from metadata.get_dataset_range (GET, dataset in the query), each floored to a whole minute by the resolver."""
    from engine.config import EngineConfig
    from engine.incremental import floor_minute

    cfg = EngineConfig(symbol="NQ")
    land_session(tmp_path / "a", 0)
    write_dbn(tmp_path / "a" / "open.ohlcv-1m.dbn.zst", session_bars(1)[:10], open_end=True)
    files = DbnFileSource(paths=[str(tmp_path / "a" / "session0.ohlcv-1m.dbn.zst")])
    assert files.available_end(cfg) == OPENS[0] + timedelta(minutes=SESSION_MINUTES)
    open_end = DbnFileSource(paths=[str(tmp_path / "a" / "open.ohlcv-1m.dbn.zst")])
    assert open_end.available_end(cfg) == OPENS[1] + timedelta(minutes=10)  # no metadata end: last bar + 1 min
    assert DbnFileSource(paths=[str(tmp_path / "a")]).available_end(cfg) == OPENS[1] + timedelta(minutes=10)

    before = datetime.now(UTC).replace(second=0, microsecond=0)
    demo = SyntheticSource().available_end(cfg)
    assert before <= demo <= datetime.now(UTC) and demo.second == 0 and demo.microsecond == 0

    dataset_end = datetime(2025, 12, 9, 22, 0, 41, 123456, tzinfo=UTC)
    fake = fake_databento(KEY, dataset_end=dataset_end + timedelta(hours=1),
                          schema_ends={"ohlcv-1m": dataset_end})
    source = DatabentoSource(gateway=fake.gateway, max_retries=0)
    assert source.available_end(cfg) == dataset_end  # the schema's own end, to the microsecond
    assert floor_minute(dataset_end) == datetime(2025, 12, 9, 22, 0, tzinfo=UTC)
    (seen,) = fake.seen()
    assert (seen.endpoint, seen.method, seen.params) == (GET_DATASET_RANGE, "GET", {"dataset": "GLBX.MDP3"})


# ---------------------------------------------------------------------------------------------- refusals


def test_first_run_without_since_exits_2_naming_window_since(db_url, tmp_path, monkeypatch):
    land_session(tmp_path / "files", 0)
    code, result = engine(tmp_path, monkeypatch, *dbn_job(db_url, tmp_path / "files"))
    assert code == 2 and result["exit_code"] == 2 and result["status"] == "failed"
    assert "no clean coverage of GLBX.MDP3:NQ" in result["error"] and "window.since=<date>" in result["error"]
    if db_url.startswith("sqlite"):
        assert not Path(db_url.removeprefix("sqlite:///")).exists()  # refused before the file was made
    else:  # the server's database exists: migrated, read, left without a run or a bar
        assert query(db_url, sa.select(sa.func.count()).select_from(clean_bars)) == [(0,)]
        assert query(db_url, sa.select(sa.func.count()).select_from(engine_runs)) == [(0,)]


def test_a_fixed_window_key_or_no_ingest_with_incremental_exits_2(sqlite_url, tmp_path, monkeypatch):
    land_session(tmp_path / "files", 0)
    code, result = engine(tmp_path, monkeypatch, *dbn_job(sqlite_url, tmp_path / "files",
                                                          "window.start=2025-12-01"))
    assert code == 2 and "window.start is set with window=incremental" in result["error"]
    assert "window.since" in result["error"]
    code, result = engine(tmp_path, monkeypatch, *dbn_job(sqlite_url, tmp_path / "files", "stages=[detect]"))
    assert code == 2 and "has no ingest" in result["error"] and "add ingest to stages" in result["error"]


# ---------------------------------------------------------------------------------------------- dbn_file runs


def test_first_run_with_since_then_up_to_date_then_new_files(db_url, tmp_path, monkeypatch):
    """The first run starts at window.since and ends at the files' end; the next one has nothing new (exit 0, a
    successful run row, the note "up to date through ..."); a dry run plans the resolved window."""
    folder = tmp_path / "files"
    land_session(folder, 0)
    since = OPENS[0]
    code, first = engine(tmp_path, monkeypatch, *dbn_job(db_url, folder, f"window.since={iso(since)}"))
    end0 = OPENS[0] + timedelta(minutes=SESSION_MINUTES)
    assert code == 0, first.get("error")
    assert (first["stages"]["ingest"]["window_start"], first["stages"]["ingest"]["window_end"]) == (
        "2025-12-01T23:00Z", "2025-12-02T22:00Z")
    assert first["stages"]["ingest"]["bars_inserted"] == SESSION_MINUTES

    code, again = engine(tmp_path, monkeypatch, *dbn_job(db_url, folder, f"window.since={iso(since)}"))
    assert code == 0 and again["status"] == "success" and again["stages"] == {}
    assert again["note"] == f"up to date through {end0:%Y-%m-%dT%H:%M}Z"
    status = query(db_url, sa.select(engine_runs.c.status).where(engine_runs.c.id == again["run_id"]))
    assert status == [("success",)]
    assert query(db_url, sa.select(sa.func.count()).select_from(clean_ingest_runs)) == [(1,)]  # no second ingest

    land_session(folder, 1)
    code, plan = engine(tmp_path, monkeypatch, *dbn_job(db_url, folder), "dry_run=true")
    assert code == 0 and plan["plan"]["window"] == ["2025-12-02T22:00:00Z", "2025-12-03T22:00:00Z"]
    code, second = engine(tmp_path, monkeypatch, *dbn_job(db_url, folder))
    assert code == 0 and second["stages"]["ingest"]["bars_inserted"] == SESSION_MINUTES
    assert second["stages"]["ingest"]["window_start"] == "2025-12-02T22:00Z"

    # A rerun of the first run replays the window it resolved, not "from where the coverage ends" as of today.
    code, rerun = engine(tmp_path, monkeypatch, f"rerun={first['run_dir']}")
    assert code == 0, rerun.get("error")
    assert rerun["window"] == first["window"] == {"start": "2025-12-01T23:00Z", "end": "2025-12-02T22:00Z"}
    assert rerun["stages"]["ingest"]["window_start"] == "2025-12-01T23:00Z"
    assert rerun["stages"]["ingest"]["bars_unchanged"] == SESSION_MINUTES


@pytest.mark.parametrize("chunk", [None, "1d"])
def test_day_by_day_equals_one_backfill_and_reevaluates_the_tail(db_url, ref_url, tmp_path, monkeypatch, chunk):  # noqa: F811
    """Three sessions, one incremental run after each lands, give the bars and events of one fixed-window backfill
    over all three; the pivot among session 0's last bars appears only once session 1's bars confirm it; no event
    is stored twice."""
    chunked = [f"window.chunk={chunk}"] if chunk else []
    folder = tmp_path / "files"
    tail = (pivot_ts(0, SESSION_MINUTES - 3), "BEAR")
    for k in range(3):
        land_session(folder, k)
        code, result = engine(tmp_path, monkeypatch, *dbn_job(db_url, folder, f"window.since={iso(OPENS[0])}",
                                                              *chunked))
        assert code == 0, result.get("error")
        found = [(ts, direction) for _symbol, ts, direction, *_ in event_rows(db_url)]
        waiting = [(ts, d) for ts, d in planted(range(k, k + 1)) if ts > pivot_ts(k, SESSION_MINUTES - 1 - N)]
        assert (tail in found) == (k > 0)  # only 2 bars after it until session 1 lands: confirmed by the next run
        assert waiting and found == [e for e in planted(range(k + 1)) if e not in waiting]

    whole = [f"window.start={iso(OPENS[0])}", f"window.end={iso(OPENS[2] + timedelta(minutes=SESSION_MINUTES))}"]
    code, result = engine(tmp_path, monkeypatch, f"db.url={ref_url}", "source=dbn_file", f"source.paths=[{folder}]",
                          "stages=[registry,ingest,detect]", *whole, *chunked)
    assert code == 0, result.get("error")
    assert bars_rows(db_url) == bars_rows(ref_url) and len(bars_rows(db_url)) == 3 * SESSION_MINUTES
    assert event_rows(db_url) == event_rows(ref_url) and len(event_rows(db_url)) == len(planted(range(3))) - 1
    assert len(set(event_rows(db_url))) == len(event_rows(db_url))


def test_coverage_ends_before_a_trailing_hole(db):
    """The verified end is the end of the last covered stretch holding open-market time: closed time covered after
    a hole (a session without bars) does not count, so the next run fetches the hole again."""
    monday, tuesday = OPENS[0], OPENS[1]
    with db.begin() as conn:
        run_id = conn.execute(sa.insert(clean_ingest_runs).values(
            symbol=SYMBOL, start_ts=monday, end_ts=tuesday + timedelta(minutes=SESSION_MINUTES + 30),
            bars_received=1, bars_inserted=1, bars_updated=0, bars_skipped=0, batch_commits=1, retries=0,
            run_at=monday, status="success")).inserted_primary_key[0]
        failed = conn.execute(sa.insert(clean_ingest_runs).values(
            symbol=SYMBOL, start_ts=monday, end_ts=tuesday, bars_received=1, bars_inserted=1, bars_updated=0,
            bars_skipped=0, batch_commits=1, retries=0, run_at=monday, status="failed")).inserted_primary_key[0]
        conn.execute(sa.insert(clean_coverage), [
            # Monday's session covered; Tuesday's (trade date 12-03) a hole; its closing halt covered.
            {"ingest_run_id": run_id, "symbol": SYMBOL, "start_ts": monday, "end_ts": tuesday},
            {"ingest_run_id": run_id, "symbol": SYMBOL, "start_ts": tuesday + timedelta(minutes=SESSION_MINUTES),
             "end_ts": tuesday + timedelta(minutes=SESSION_MINUTES + 30)},
            {"ingest_run_id": failed, "symbol": SYMBOL, "start_ts": tuesday, "end_ts": OPENS[2]},  # not counted
        ])
    assert verified_end(db, SYMBOL) == tuesday
    assert verified_end(db, "GLBX.MDP3:ES") is None


# ---------------------------------------------------------------------------------------------- Databento


def test_databento_second_run_fetches_nothing_but_the_dataset_range(db_url, tmp_path, monkeypatch, fake_databento):
    """First run from window.since to Databento's end of ohlcv-1m; the second asks only metadata.get_dataset_range
    and is up to date."""
    end = OPENS[0] + timedelta(hours=2, seconds=30)
    fake = fake_databento(KEY, dataset_end=end + timedelta(hours=5), schema_ends={"ohlcv-1m": end})
    job = [f"db.url={db_url}", "source=databento", f"source.gateway={fake.gateway}", "stages=[registry,ingest,detect]",
           "window=incremental", f"window.since={iso(OPENS[0])}", f"data_dir={tmp_path / 'data'}"]
    code, first = engine(tmp_path, monkeypatch, *job)
    assert code == 0, first.get("error")
    ranges = [s for s in fake.seen(GET_RANGE) if s.params["schema"] == "ohlcv-1m"]
    windows = [(r.params["start"][:16], r.params["end"][:16]) for r in ranges]
    assert windows == [("2025-12-01T23:00", "2025-12-02T01:00")]  # the schema's end, floored to the minute
    assert first["stages"]["ingest"]["bars_inserted"] == 60
    seen = len(fake.seen())

    code, second = engine(tmp_path, monkeypatch, *job)
    assert code == 0 and second["note"] == "up to date through 2025-12-02T01:00Z"
    assert [s.endpoint for s in fake.seen()[seen:]] == [GET_DATASET_RANGE]


@pytest.mark.slow
def test_the_daily_job_for_two_symbols_then_again(engine_cli, sqlite_url, tmp_path, fake_databento):
    """`engine +job=daily_update symbol=NQ,ES -m` (the shipped job) in a real process: both symbols ingested from
    window.since; run again, both are up to date and the gateway is asked only for the dataset range."""
    end = OPENS[0] + timedelta(hours=1)
    fake = fake_databento(KEY, subprocess=True, dataset_end=end)
    env = {"DATABENTO_API_KEY": KEY}
    job = ["+job=daily_update", "symbol=NQ,ES", "-m", f"db.url={sqlite_url}", f"source.gateway={fake.gateway}",
           f"window.since={iso(OPENS[0])}"]
    first = engine_cli(*job, env=env)
    assert first.returncode == 0, first.output
    results = [json.loads((d / "result.json").read_text()) for d in first.run_dirs]
    assert sorted(r["symbol"] for r in results) == ["ES", "NQ"]
    assert all(r["stages"]["ingest"]["bars_inserted"] == 60 and r["stages"]["detect"]["bars_in_window"] == 60
               for r in results)
    seen = len(fake.seen())
    again = engine_cli(*job, env=env)
    assert again.returncode == 0, again.output
    assert again.output.count("up to date through 2025-12-02T00:00Z") >= 2
    assert [s.endpoint for s in fake.seen()[seen:]] == [GET_DATASET_RANGE, GET_DATASET_RANGE]
    engine_db = create_db_engine(sqlite_url)
    upgrade(engine_db)
    engine_db.dispose()
    assert query(sqlite_url, sa.select(engine_runs.c.status).order_by(engine_runs.c.id)) == [("success",)] * 4
