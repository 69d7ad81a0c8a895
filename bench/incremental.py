"""The daily incremental update on a database holding years of history against the same update on an empty one
(issue 13: ≤ 1.3× time: the cost follows the new data, not the table).

`incremental_update_ratio(folder)` writes `years` of one-minute bars of each of 4 symbols (every minute of every CME
session) straight into a SQLite clean table, with one successful ingest covering them (clean_ingest_runs +
clean_coverage): set-up, not timed, not through the ingest. Then it times the daily job as a person runs it,
`engine -m symbol=NQ,ES,YM,RTY window=incremental stages=[registry,ingest,detect]` from DBN files of the next session
(one per symbol), on that database and on an empty, migrated one (`window.since` at the same session open),
alternating; the time of one update is the sum of the four jobs' own durations (result.json), without interpreter
start-up. Between repetitions the new session's rows are deleted again, so every update brings the same new data.
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from sqlalchemy import delete, insert, select, text

from engine.bars import NS_PER_MINUTE, PRICE_SCALE
from engine.calendar import session_bounds_ns
from engine.db.connect import create_db_engine, upgrade
from engine.db.schema import (
    CLEAN_BARS,
    clean_bars,
    clean_coverage,
    clean_ingest_quarantine,
    clean_ingest_runs,
    contract_rolls,
    session_quality,
    triangle_events,
)
from engine.db.types import datetime_to_ns, ns_to_datetime, sqlite_ts_text

ROOTS = {"NQ": 0.25, "ES": 0.25, "YM": 1.0, "RTY": 0.1}  # root -> tick (registry.tick_sizes)
NEW_SESSION_OPEN = datetime(2025, 12, 7, 23, tzinfo=UTC)  # Sunday 17:00 Chicago: the session of Monday 2025-12-08
TARGET = 1.3
_BASE_RUN_ID = 1  # the ingest run that "covers" the history


def incremental_update_ratio(folder: Path, years: float = 10.0, reps: int = 3, env: dict | None = None,
                             new_pg_database: Callable[[str], str] | None = None) -> dict:
    """{"history_bars", "new_bars", "full_seconds", "empty_seconds", "ratio", "target", ...}: medians of `reps`.

    SQLite files in `folder`, or with `new_pg_database` (a name suffix -> the URL of a new PostgreSQL database)
    PostgreSQL databases."""
    folder.mkdir(parents=True, exist_ok=True)
    history_start = datetime_to_ns(NEW_SESSION_OPEN) - int(years * 365.25 * 86_400) * 10**9
    if new_pg_database is None:
        full = f"sqlite:///{folder / 'history.sqlite'}"
        history = _write_history(folder / "history.sqlite", history_start)
    else:
        full = new_pg_database("incr_history")
        history = _write_history_pg(full, history_start)
    files, new_bars = _write_new_session(folder / "new")
    full_times, empty_times, whole = [], [], []
    for k in range(reps):
        empty = new_pg_database(f"incr_empty{k}") if new_pg_database else f"sqlite:///{folder / f'empty{k}.sqlite'}"
        _migrated(empty)  # as the history database is: the update, not the migrations, is timed
        for label, url, since in ((f"empty{k}", empty, True), (f"full{k}", full, False)):
            seconds, process = _update(folder / label, url, files, since, new_bars, env)
            (empty_times if since else full_times).append(seconds)
            whole.append(process)
        _forget_new_session(full)
    full_s, empty_s = statistics.median(full_times), statistics.median(empty_times)
    return {"history_bars": history, "new_bars": new_bars, "symbols": len(ROOTS), "years": years,
            "full_seconds": round(full_s, 3), "empty_seconds": round(empty_s, 3), "ratio": round(full_s / empty_s, 3),
            "target": TARGET, "full_runs": full_times, "empty_runs": empty_times,
            "process_seconds_median": round(statistics.median(whole), 3)}


def _migrated(url: str) -> None:
    db = create_db_engine(url)
    upgrade(db)
    db.dispose()


def _session_minutes(start_ns: int, end_ns: int) -> np.ndarray:
    opens, closes = session_bounds_ns(start_ns, end_ns)
    opens, closes = np.maximum(opens, start_ns), np.minimum(closes, end_ns)
    return np.concatenate([np.arange(a, b, NS_PER_MINUTE, dtype=np.int64) for a, b in zip(opens, closes, strict=True)])


def _prices(ts: np.ndarray, tick: float, seed: int) -> dict[str, np.ndarray]:
    """A random walk on the tick (deterministic per symbol), OHLC consistent, as floats."""
    rng = np.random.default_rng(seed)
    ticks = 20_000 / tick + np.cumsum(rng.integers(-2, 3, len(ts)))
    close = ticks * tick
    return {"open": close, "high": close + 2 * tick, "low": close - 2 * tick, "close": close,
            "volume": rng.integers(1, 500, len(ts))}


def _write_history(path: Path, start_ns: int) -> int:
    """Every session minute from `start_ns` to the new session's open, per symbol, plus the ingest covering it."""
    for stale in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        stale.unlink(missing_ok=True)
    _migrated(f"sqlite:///{path}")
    end_ns = datetime_to_ns(NEW_SESSION_OPEN)
    ts = _session_minutes(start_ns, end_ns)
    start, end = (str(sqlite_ts_text(np.array([v]))[0]) for v in (start_ns, end_ns))
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=OFF")  # set-up only: the engine opens it in WAL mode again
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("INSERT INTO clean_ingest_runs (id, symbol, start_ts, end_ts, bars_received, bars_inserted, "
                     "bars_updated, bars_skipped, batch_commits, retries, run_at, status) VALUES "
                     "(?, 'history', ?, ?, 0, 0, 0, 0, 0, 0, ?, 'success')", (_BASE_RUN_ID, start, end, end))
        text = sqlite_ts_text(ts).tolist()
        for k, (root, tick) in enumerate(ROOTS.items()):
            symbol = f"GLBX.MDP3:{root}"
            p = _prices(ts, tick, k)
            conn.executemany(
                f"INSERT INTO {CLEAN_BARS} (symbol, ts, open, high, low, close, volume, instrument_id, ingest_run_id) "
                f"VALUES (?, ?, ?, ?, ?, ?, ?, {1000 + k}, {_BASE_RUN_ID})",
                zip([symbol] * len(ts), text, p["open"].tolist(), p["high"].tolist(), p["low"].tolist(),
                    p["close"].tolist(), p["volume"].tolist(), strict=True))
            conn.execute("INSERT INTO clean_coverage (ingest_run_id, symbol, start_ts, end_ts) VALUES (?, ?, ?, ?)",
                         (_BASE_RUN_ID, symbol, start, end))
        conn.execute("INSERT INTO engine_database (id, data_kind, recorded_at) VALUES (1, 'market', ?)", (end,))
    return len(ts) * len(ROOTS)


def _write_history_pg(url: str, start_ns: int) -> int:
    """As `_write_history`, generated by the server (generate_series over the sessions), then ANALYZEd (the bench's
    server runs with autovacuum off)."""
    _migrated(url)
    end_ns = datetime_to_ns(NEW_SESSION_OPEN)
    opens, closes = session_bounds_ns(start_ns, end_ns)
    sessions = [{"open": ns_to_datetime(int(max(a, start_ns))), "close": ns_to_datetime(int(min(b, end_ns)))}
                for a, b in zip(opens, closes, strict=True)]
    start, end = ns_to_datetime(start_ns), NEW_SESSION_OPEN
    db = create_db_engine(url)
    try:
        with db.begin() as conn:
            conn.execute(insert(clean_ingest_runs).values(
                id=_BASE_RUN_ID, symbol="history", start_ts=start, end_ts=end, bars_received=0, bars_inserted=0,
                bars_updated=0, bars_skipped=0, batch_commits=0, retries=0, run_at=end, status="success"))
            conn.exec_driver_sql(f"SELECT setval(pg_get_serial_sequence('clean_ingest_runs', 'id'), {_BASE_RUN_ID})")
            conn.exec_driver_sql("CREATE TEMP TABLE bench_sessions (open timestamptz, close timestamptz)")
            conn.execute(text("INSERT INTO bench_sessions VALUES (:open, :close)"), sessions)
            for k, (root, tick) in enumerate(ROOTS.items()):
                symbol = f"GLBX.MDP3:{root}"
                conn.execute(text(
                    f"INSERT INTO {CLEAN_BARS} (symbol, ts, open, high, low, close, volume, instrument_id, "
                    "ingest_run_id) SELECT :symbol, ts, p, p + 2 * :tick, p - 2 * :tick, p, 100, :iid, :run "
                    "FROM bench_sessions, LATERAL generate_series(open, close - interval '1 minute', "
                    "interval '1 minute') AS ts, LATERAL (SELECT round((20000 + 40 * sin(extract(epoch FROM ts) "
                    "/ 977.0)) / :tick) * :tick AS p) AS price"),
                    {"symbol": symbol, "tick": tick, "iid": 1000 + k, "run": _BASE_RUN_ID})
                conn.execute(insert(clean_coverage).values(ingest_run_id=_BASE_RUN_ID, symbol=symbol, start_ts=start,
                                                           end_ts=end))
            conn.exec_driver_sql("INSERT INTO engine_database (id, data_kind, recorded_at) VALUES (1, 'market', now())")
            count = conn.execute(text(f"SELECT count(*) FROM {CLEAN_BARS}")).scalar_one()
        with db.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")
    finally:
        db.dispose()
    return int(count)


def _write_new_session(folder: Path) -> tuple[list[Path], int]:
    """One DBN file per symbol with every minute of the session after the history (continuous ROOT.v.0)."""
    from types import SimpleNamespace  # noqa: PLC0415

    import databento_dbn  # noqa: PLC0415
    import zstandard  # noqa: PLC0415

    from engine.sources.dbn import DBN_OHLCV_DTYPE  # noqa: PLC0415

    folder.mkdir(parents=True, exist_ok=True)
    opens, closes = session_bounds_ns(datetime_to_ns(NEW_SESSION_OPEN), datetime_to_ns(NEW_SESSION_OPEN) + 1)
    ts = np.arange(opens[0], closes[0], NS_PER_MINUTE, dtype=np.int64)
    day = ns_to_datetime(int(ts[0])).date()
    paths = []
    for k, (root, tick) in enumerate(ROOTS.items()):
        p = _prices(ts, tick, 100 + k)
        rec = np.zeros(len(ts), dtype=DBN_OHLCV_DTYPE)
        rec["length"], rec["rtype"], rec["publisher_id"] = 14, int(databento_dbn.RType.OHLCV_1M.value), 1
        rec["instrument_id"], rec["ts_event"] = 1000 + k, ts
        for name in ("open", "high", "low", "close"):
            rec[name] = np.rint(p[name] * PRICE_SCALE).astype(np.int64)
        rec["volume"] = p["volume"]
        symbol = f"{root}.v.0"
        meta = databento_dbn.Metadata(
            dataset="GLBX.MDP3", start=int(ts[0]), end=int(ts[-1]) + NS_PER_MINUTE,
            stype_in=databento_dbn.SType.CONTINUOUS, stype_out=databento_dbn.SType.INSTRUMENT_ID,
            schema=databento_dbn.Schema.OHLCV_1M, symbols=[symbol],
            mappings=[SimpleNamespace(raw_symbol=symbol, intervals=[SimpleNamespace(
                start_date=day - timedelta(days=1), end_date=day + timedelta(days=2), symbol=str(1000 + k))])])
        path = folder / f"{root}.ohlcv-1m.dbn.zst"
        path.write_bytes(zstandard.ZstdCompressor().compress(meta.encode() + rec.tobytes()))
        paths.append(path)
    return paths, len(ts) * len(ROOTS)


def _update(workdir: Path, url: str, files: list[Path], since: bool, new_bars: int, env: dict | None
            ) -> tuple[float, float]:
    """The 4-symbol incremental job in a child process: (sum of the jobs' durations, the whole process's seconds)."""
    import time  # noqa: PLC0415

    workdir.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "engine", "-m", f"symbol={','.join(ROOTS)}", "window=incremental",
            "stages=[registry,ingest,detect]", "source=dbn_file", f"source.paths=[{','.join(map(str, files))}]",
            f"db.url={url}", f"hydra.sweep.dir={workdir / 'sweep'}"]
    if since:
        args.append(f"window.since={NEW_SESSION_OPEN:%Y-%m-%dT%H:%M:%SZ}")
    started = time.perf_counter()
    proc = subprocess.run(args, cwd=workdir, capture_output=True, text=True, timeout=1800, env=env)
    process = time.perf_counter() - started
    results = [json.loads(p.read_text()) for p in sorted((workdir / "sweep").rglob("result.json"))]
    inserted = sum(r.get("stages", {}).get("ingest", {}).get("bars_inserted", 0) for r in results)
    if proc.returncode != 0 or len(results) != len(ROOTS) or inserted != new_bars:
        raise RuntimeError(f"the update in {workdir} exited {proc.returncode} with {len(results)} results, "
                           f"{inserted:,} of {new_bars:,} bars inserted: {proc.stderr[-800:]}")
    return sum(r["duration_seconds"] for r in results), process


def _forget_new_session(url: str) -> None:
    """Put the history database back as it was before the update (the new session's rows deleted)."""
    db = create_db_engine(url)
    try:
        with db.begin() as conn:
            later = select(clean_ingest_runs.c.id).where(clean_ingest_runs.c.id > _BASE_RUN_ID)
            conn.execute(delete(clean_bars).where(clean_bars.c.ts >= NEW_SESSION_OPEN))
            for table in (clean_coverage, clean_ingest_quarantine, contract_rolls, session_quality):
                conn.execute(delete(table).where(table.c.ingest_run_id.in_(later)))
            conn.execute(delete(clean_ingest_runs).where(clean_ingest_runs.c.id > _BASE_RUN_ID))
            conn.execute(delete(triangle_events))
    finally:
        db.dispose()


if __name__ == "__main__":  # python -m bench.incremental [years]
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        print(incremental_update_ratio(Path(scratch), float(sys.argv[1]) if len(sys.argv) > 1 else 10.0))
