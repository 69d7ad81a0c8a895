"""The measurements. Each figure group fills its rows of the table; counts are asserted on every run.

Timing is wall clock (time.perf_counter) around exactly the work named; set-up (fresh databases, migrations,
TRUNCATE + CHECKPOINT, encoding baseline payloads, building DataFrames) is outside the timed region.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench import data as bench_data
from bench.data import BarFile, iso
from bench.dbs import PgScratch, autocommit, finish, make_ctx, open_db, pg_admin_url, sqlite_url
from bench.report import ERROR, INFO, MISS, PASS, PENDING, ROWS, SKIP, Check, Row, fmt_count, fmt_rate, fmt_seconds
from bench.report import fmt_timing as timing
from bench.report import median as med
from engine.db.schema import CLEAN_BARS
from engine.detectors.williams_fractals import (
    reference_swing_highs,
    reference_swing_lows,
    swing_highs,
    swing_lows,
)
from engine.job_plugins import packaged_node
from engine.stages.detect import DetectResult
from engine.stages.ingest import IngestResult
from engine.validate import to_prices

SYMBOL = "GLBX.MDP3:NQ"
DETECTOR_N = 5  # detector.n default (conf/detector/williams_fractals.yaml)
SWEEP_SYMBOLS = ("NQ", "ES", "YM", "RTY")
INCREMENTAL_YEARS, INCREMENTAL_SMOKE_YEARS = 10.0, 0.05  # history per symbol under the incremental update
_TRUNCATE = f"TRUNCATE {CLEAN_BARS}, clean_ingest_quarantine"
_COPY_SQL = (f"COPY {CLEAN_BARS} (symbol, ts, open, high, low, close, volume, instrument_id, ingest_run_id, "
             "raw_symbol) FROM STDIN (FORMAT BINARY)")
_COPY_WRITE = 1 << 20
_SCRATCH_SUFFIXES = (".sqlite", ".sqlite-wal", ".sqlite-shm", ".migrate.lock", ".dbn", ".dbn.zst")


class CheckFailed(AssertionError):
    pass


class Skipped(Exception):  # noqa: N818 - a figure that cannot run here, not an error
    pass


DEFAULT_BATCH_SIZE = packaged_node("source", "dbn_file")["batch_size"]


def dbn_file_node(path) -> dict:
    """The dbn_file source's plugin node, as `source=dbn_file source.paths=[path]` composes it."""
    return {**packaged_node("source", "dbn_file"), "paths": [str(path)]}


def _pg_encoder() -> tuple[Callable[[np.ndarray, int, bytes], bytes], str]:
    """The engine's binary COPY encoder when importable, else an equivalent one written here."""
    try:
        from engine.db.bars_postgres import pg_encode

        return pg_encode, "engine.db.bars_postgres.pg_encode"
    except ImportError:
        pass

    def encode(batch: np.ndarray, run_id: int, symbol: bytes) -> bytes:
        fields = [("symbol", f"S{len(symbol)}"), ("ts", ">i8"), ("open", ">f8"), ("high", ">f8"), ("low", ">f8"),
                  ("close", ">f8"), ("volume", ">i8"), ("instrument_id", ">i8"), ("ingest_run_id", ">i4")]
        layout = [("nfields", ">i2")]
        for name, kind in fields:
            layout += [(f"{name}_len", ">i4"), (name, kind)]
        rec = np.empty(len(batch), dtype=np.dtype(layout))
        rec["nfields"] = len(fields)
        for name, _ in fields:
            rec[f"{name}_len"] = rec.dtype[name].itemsize
        rec["symbol"] = symbol
        rec["ts"] = batch["ts"] // 1000 - 946_684_800_000_000
        for name in ("open", "high", "low", "close"):
            rec[name] = to_prices(batch[name])
        rec["volume"] = batch["volume"].view(np.int64)
        rec["instrument_id"] = batch["instrument_id"]
        rec["ingest_run_id"] = run_id
        header = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
        return header + rec.tobytes() + b"\xff\xff"

    return encode, "bench.figures (engine encoder not importable)"


@contextlib.contextmanager
def quiet_engine():
    """Keep the engine's progress bars and summary tables off the bench output while it is timed."""
    from engine.console import console

    before = console.quiet
    console.quiet = True
    try:
        yield
    finally:
        console.quiet = before


class Bench:
    def __init__(self, *, n: int, mem_n: int, smoke: bool, reps: int, slow_reps: int, ref_slice: int,
                 help_reps: int, sweep_reps: int, run_dir: Path, only: set[str] | None, say: Callable[[str], None]):
        self.n, self.mem_n, self.smoke = n, mem_n, smoke
        self.reps, self.slow_reps, self.ref_slice = reps, slow_reps, ref_slice
        self.help_reps, self.sweep_reps = help_reps, sweep_reps
        self.run_dir, self.only, self.say = run_dir, only, say
        self.history_years = INCREMENTAL_SMOKE_YEARS if smoke else INCREMENTAL_YEARS
        self.rows = {key: Row(key, figure.format(mem_n=f"{fmt_count(mem_n)}-bar", n=f"{fmt_count(n)}-bar",
                                                 years=f"{self.history_years:g}"), db)
                     for key, figure, db in ROWS}
        self.checks: list[Check] = []
        self.notes: list[str] = []
        self.loads: list[str] = []  # 1-minute load average as each figure group starts (other work on the machine)
        self.data_dir = run_dir / "data"
        self.pg = PgScratch(pg_admin_url())
        self.file: BarFile | None = None
        self.changed: BarFile | None = None
        self.n_changed = 0
        self.bars: np.ndarray | None = None
        self.expected_events = 0
        self.encoder, encoder_name = _pg_encoder()
        self.notes.append(f"raw COPY payloads are encoded by {encoder_name} before the clock starts")

    # ---- bookkeeping

    def check(self, name: str, passed: bool, detail: str) -> None:
        self.checks.append(Check(name, bool(passed), detail))
        if not passed:
            raise CheckFailed(f"{name}: {detail}")

    def counts(self, name: str, summary: IngestResult, *, inserted: int, updated: int, unchanged: int) -> None:
        keys = ("bars_received", "bars_inserted", "bars_updated", "bars_unchanged", "bars_skipped")
        got = tuple(getattr(summary, k) for k in keys)
        want = (self.n, inserted, updated, unchanged, 0)
        self.check(name, got == want, f"received/inserted/updated/unchanged/skipped = {got}, expected {want}")

    def judge(self, key: str, ok: bool, *, info: bool = False) -> None:
        self.rows[key].status = INFO if info else (PASS if ok else MISS)

    def run_group(self, name: str, keys: tuple[str, ...], fn: Callable[[], None]) -> None:
        if self.only and name not in self.only:
            for key in keys:
                self.rows[key].status, self.rows[key].note = SKIP, "not selected (--only)"
            return
        load = os.getloadavg()[0]
        self.say(f"[bold]{name}[/] … (load average {load:.2f})")
        self.loads.append(f"{name} {load:.1f}")
        started = time.perf_counter()
        try:
            fn()
        except Skipped as exc:
            for key in keys:
                if self.rows[key].status == PENDING:
                    self.rows[key].status, self.rows[key].note = SKIP, str(exc)
        except Exception as exc:  # noqa: BLE001 - recorded in the table; the exit code says it failed
            text = f"{type(exc).__name__}: {exc}"
            with (self.run_dir / "bench_errors.log").open("a") as out:
                out.write(f"--- {name}\n{traceback.format_exc()}\n")
            self.say(f"[red]{name} failed[/]: {text[:500]}")
            for key in keys:
                if self.rows[key].status == PENDING:
                    self.rows[key].status, self.rows[key].note = ERROR, text[:300]
        self.say(f"{name} done in {time.perf_counter() - started:.1f} s")

    # ---- inputs

    def prepare(self) -> None:
        started = time.perf_counter()
        self.file = bench_data.synthetic_file(self.data_dir, self.n)
        self.changed, self.n_changed = bench_data.changed_copy(
            self.file, self.data_dir / f"NQ_{self.n}_changed.ohlcv-1m.dbn.zst")
        self.bars = self.file.read()
        bench_data.check_bars(self.bars, self.n)
        high, low = to_prices(self.bars["high"]), to_prices(self.bars["low"])
        self.expected_events = int(swing_highs(high, DETECTOR_N).sum() + swing_lows(low, DETECTOR_N).sum())
        self.notes.append(
            f"input: {self.file.path.name}, {self.n:,} synthetic NQ.v.0 1-minute bars "
            f"{iso(self.file.start)} → {iso(self.file.end)} (write_synthetic_dbn, seed 7, zstd); the 1%-changed copy "
            f"moves the close of every 100th bar up one tick ({self.n_changed:,} bars); "
            f"prepared in {time.perf_counter() - started:.1f} s")

    # ---- the engine's ingest, in process

    def ingest(self, db, bar_file: BarFile, label: str) -> tuple[float, IngestResult]:
        """ingest.run(ctx) as `python -m engine source=dbn_file stages=[ingest]` runs it: acquire (sha256 of the
        file), DbnBarFile decode, validate_chunk, CleanBarWriter, run log. Returns (seconds, summary)."""
        from engine.stages import ingest

        ctx = make_ctx(db, self.run_dir / "engine_runs" / label, bar_file.start, bar_file.end, stages=["ingest"],
                       source=dbn_file_node(bar_file.path))
        with quiet_engine():
            started = time.perf_counter()
            summary = ingest.run(ctx)
            seconds = time.perf_counter() - started
        finish(ctx)
        return seconds, summary

    def detect(self, db, label: str) -> tuple[float, DetectResult]:
        from engine.stages import detect

        ctx = make_ctx(db, self.run_dir / "engine_runs" / label, self.file.start, self.file.end, stages=["detect"],
                       source=dbn_file_node(self.file.path))
        with quiet_engine():
            started = time.perf_counter()
            summary = detect.run(ctx)
            seconds = time.perf_counter() - started
        finish(ctx)
        self.check(f"{label}: detect counts", summary.bars_in_window == self.n
                   and summary.events_written == self.expected_events
                   and sum(summary.events.values()) == self.expected_events,
                   f"bars_in_window {summary.bars_in_window:,} (expected {self.n:,}), events written "
                   f"{summary.events_written:,} (expected {self.expected_events:,} = swing_highs + swing_lows "
                   f"over the same bars), events replaced {summary.events_replaced:,}")
        return seconds, summary

    def detect_rows(self, db, dialect: str, first_key: str, rerun_key: str, reset: Callable[[], None],
                    settle: Callable[[], None] | None, target: float | None) -> None:
        """First detection (no events of this key in the table; emptied untimed before each run), then reruns
        that replace the same events."""
        first = []
        for k in range(self.reps):
            reset()
            first.append(self.detect(db, f"{dialect}_detect_{k}")[0])
        rerun = []
        for k in range(self.reps):
            if settle:
                settle()
            seconds, summary = self.detect(db, f"{dialect}_detect_rerun_{k}")
            self.check(f"{dialect}_detect_rerun_{k}: replaced", summary.events_replaced == self.expected_events,
                       f"{summary.events_replaced:,} events replaced")
            rerun.append(seconds)
        for key, times, what in ((first_key, first, "no events of this (symbol, table, logic version, n) in "
                                  "triangle_events_v1 yet (emptied untimed before each run)"),
                                 (rerun_key, rerun, f"the key's {self.expected_events:,} events already there: "
                                  "deleted and written again in one transaction")):
            row = self.rows[key]
            row.engine, row.data = timing(self.n, times), {"engine_seconds": times}
            row.note = (f"detect.run(ctx) in process (coverage check, read in 91-day pieces, detect, write "
                        f"{self.expected_events:,} events); {what}")
            if target is None:
                row.note += "; no target on SQLite"
                self.judge(key, True, info=True)
            else:
                row.target = f"≥ {fmt_count(target)} bars/s"
                self.judge(key, self.n / med(times) >= target)
        if settle:
            self.rows[rerun_key].note += ("; VACUUM triangle_events_v1 before each rerun (untimed: this server runs "
                                          "autovacuum=off, so dead index entries would pile up run after run)")

    def stored_rows(self, db) -> int:
        with db.connect() as conn:
            return conn.exec_driver_sql(f"SELECT count(*) FROM {CLEAN_BARS}").scalar_one()

    def reingests(self, db, dialect: str, prefix: str, before=None) -> tuple[list[float], list[float]]:
        """Pairs of (unchanged rerun, rerun with 1% changed), interleaved so that drift and other load on the
        machine hit both alike. The table holds the bars of file A: re-ingest A (all unchanged), then B (1% differ
        from A: all of them updated); B becomes A. `before()` runs untimed before every ingest."""
        current, other = self.file, self.changed
        unchanged, changed = [], []
        for k in range(self.reps):
            if before:
                before()
            seconds, summary = self.ingest(db, current, f"{prefix}_rerun_{k}")
            self.counts(f"{dialect} re-ingest unchanged #{k + 1}", summary, inserted=0, updated=0, unchanged=self.n)
            unchanged.append(seconds)
            if before:
                before()
            seconds, summary = self.ingest(db, other, f"{prefix}_changed_{k}")
            self.counts(f"{dialect} re-ingest 1% changed #{k + 1}", summary, inserted=0, updated=self.n_changed,
                        unchanged=self.n - self.n_changed)
            changed.append(seconds)
            current, other = other, current
        if current is not self.file:  # leave the original bars in the table for detect (untimed)
            _, summary = self.ingest(db, self.file, f"{prefix}_restore")
            self.counts(f"{dialect} restore original", summary, inserted=0, updated=self.n_changed,
                        unchanged=self.n - self.n_changed)
        return unchanged, changed

    def changed_row(self, key: str, unchanged: list[float], changed: list[float]) -> None:
        row = self.rows[key]
        ratio = med(changed) / med(unchanged)
        row.engine = timing(self.n, changed)
        row.baseline = f"unchanged rerun {fmt_seconds(med(unchanged))}"
        row.ratio = f"{ratio:.2f}× time"
        row.target = "counts exact; ≤ 1.2× time"
        row.note = (f"{self.n_changed:,} updated + {self.n - self.n_changed:,} unchanged asserted on every run; each "
                    "changed run follows an unchanged rerun of the same table state (interleaved pairs); the file "
                    "alternates between the changed copy and the original, so every changed run changes 1%")
        row.data = {"engine_seconds": changed, "baseline_seconds": unchanged, "ratio": ratio}
        self.judge(key, ratio <= 1.2)

    # ---- pandas.DataFrame.to_sql baseline

    def frame(self, dialect: str, bars: np.ndarray):
        import pandas as pd

        from engine.db.types import sqlite_ts_text

        if dialect == "sqlite":
            ts = sqlite_ts_text(bars["ts"]).astype(object)
        else:
            ts = pd.to_datetime(bars["ts"], unit="ns", utc=True)
        columns = {"symbol": SYMBOL, "ts": ts}
        for name in ("open", "high", "low", "close"):
            columns[name] = to_prices(bars[name])
        columns["volume"] = bars["volume"].view(np.int64)
        columns["instrument_id"] = bars["instrument_id"].astype(np.int64)
        columns["ingest_run_id"] = 1
        return pd.DataFrame(columns)

    def to_sql(self, dialect: str, frame, method: str | None, chunksize: int, label: str, pg_db=None) -> float:
        if dialect == "sqlite":
            db = open_db(sqlite_url(self.run_dir / "sqlite" / f"{label}.sqlite"))
        else:
            db = pg_db
            autocommit(db, _TRUNCATE, "CHECKPOINT")
        started = time.perf_counter()
        frame.to_sql(CLEAN_BARS, db, if_exists="append", index=False, chunksize=chunksize, method=method)
        seconds = time.perf_counter() - started
        stored = self.stored_rows(db)
        self.check(f"{label}: rows stored", stored == len(frame), f"{stored:,} rows, expected {len(frame):,}")
        if dialect == "sqlite":
            db.dispose()
            self._drop_sqlite(label)
        return seconds

    def to_sql_baseline(self, dialect: str, pg_db=None) -> tuple[list[float], str]:
        """Probe method=None (executemany) and 'multi' on a slice, then time the faster one on all N bars."""
        frame = self.frame(dialect, self.bars)
        probe_n = min(self.n, 50_000)
        # 'multi' sends one statement per chunk: keep it under the bound-parameter limit (PostgreSQL: 65535).
        limit = 65_535
        if dialect == "sqlite":
            import sqlite3

            limit = sqlite3.connect(":memory:").getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        chunks = {None: 10_000, "multi": min(10_000, limit // frame.shape[1])}
        probe = {m: self.to_sql(dialect, frame.iloc[:probe_n], m, c, f"{dialect}_to_sql_probe_{m or 'default'}",
                                pg_db) for m, c in chunks.items()}
        method = min(probe, key=lambda m: probe[m])
        times = [self.to_sql(dialect, frame, method, chunks[method], f"{dialect}_to_sql_{k}", pg_db)
                 for k in range(self.slow_reps)]
        note = (f"to_sql method={method or 'default'!r} chunksize={chunks[method]:,} (faster on a {probe_n:,}-row "
                f"probe: default {fmt_rate(probe_n, probe[None])}, 'multi' {fmt_rate(probe_n, probe['multi'])}); "
                f"DataFrame built before the clock starts")
        return times, note

    def _drop_sqlite(self, label: str) -> None:
        base = self.run_dir / "sqlite" / f"{label}.sqlite"
        for path in (base, Path(f"{base}-wal"), Path(f"{base}-shm"), Path(f"{base}.migrate.lock")):
            path.unlink(missing_ok=True)

    # ---- figure groups

    def fig_help(self) -> None:
        """`--help`, then two everyday commands measured against it: a refused bad input and a dry-run plan."""
        helps = self._cli_times("--help", ["--help"], lambda p: p.returncode == 0 and "override" in p.stdout.lower())
        m = med(helps)
        row = self.rows["help_time"]
        row.engine, row.target, row.data = f"{m:.2f} s (×{len(helps)})", "≤ 1.0 s", {"engine_seconds": helps}
        row.note = "wall time of the whole process (interpreter start, imports, Hydra parsing)"
        self.judge("help_time", m <= 1.0)
        refused = self._cli_times("refusal", ["detector.n=-1"],
                                  lambda p: p.returncode == 2 and "detector.n=-1" in p.stderr and "Fix:" in p.stderr)
        self._vs_help("refusal_time", refused, helps, 1.5, "composition, the pre-run checks and the run's record "
                      "(result.json); no database opened")
        plans = self._cli_times("plan", ["dry_run=true", "stages=[ingest,detect]", "window.start=2019-01-06T23:00:00Z",
                                         "window.end=2024-01-07T23:00:00Z", "window.chunk=1w"],
                                lambda p: p.returncode == 0 and "plan.md" in p.stderr)
        self._vs_help("plan_time", plans, helps, 3.0, "symbol resolved from the defaults (no database yet), every "
                      "chunk listed in plan.md")

    def _cli_times(self, name: str, args: list[str], ok: Callable[[subprocess.CompletedProcess], bool]) -> list[float]:
        times = []
        for k in range(self.help_reps):
            started = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True,
                                  cwd=self.run_dir, timeout=120, env=_env())
            times.append(time.perf_counter() - started)
            self.check(f"{name} #{k + 1}", ok(proc), f"exit {proc.returncode}: {proc.stderr[-300:]}")
        return times

    def _vs_help(self, key: str, times: list[float], helps: list[float], limit: float, note: str) -> None:
        row, m, h = self.rows[key], med(times), med(helps)
        row.engine, row.baseline = f"{m:.2f} s (×{len(times)})", f"`--help` {h:.2f} s (×{len(helps)})"
        row.ratio, row.target = f"{m / h:.2f}× time", f"≤ {limit:g}× `--help`"
        row.data, row.note = {"engine_seconds": times, "help_seconds": helps}, f"whole process: {note}"
        self.judge(key, m / h <= limit)

    def fig_compute(self) -> None:
        row = self.rows["detect_compute"]
        high, low = to_prices(self.bars["high"]), to_prices(self.bars["low"])
        times = []
        for _ in range(max(self.reps, 5)):
            started = time.perf_counter()
            highs, lows = swing_highs(high, DETECTOR_N), swing_lows(low, DETECTOR_N)
            times.append(time.perf_counter() - started)
        self.check("compute-only events", int(highs.sum() + lows.sum()) == self.expected_events,
                   f"{int(highs.sum() + lows.sum()):,} pivots")
        m = min(self.n, self.ref_slice)
        ref_times = []
        for _ in range(self.slow_reps):
            started = time.perf_counter()
            ref_highs, ref_lows = reference_swing_highs(high[:m], DETECTOR_N), reference_swing_lows(low[:m], DETECTOR_N)
            ref_times.append(time.perf_counter() - started)
        same = np.array_equal(ref_highs, swing_highs(high[:m], DETECTOR_N)) and np.array_equal(
            ref_lows, swing_lows(low[:m], DETECTOR_N))
        self.check("vectorised == reference on the slice", same,
                   f"{int(ref_highs.sum()):,} highs, {int(ref_lows.sum()):,} lows in {m:,} bars")
        engine_s, ref_per_bar = med(times), med(ref_times) / m
        ref_s = ref_per_bar * self.n
        row.engine = timing(self.n, times)
        row.baseline = f"{fmt_seconds(ref_s)} · {fmt_rate(self.n, ref_s)} (extrapolated)"
        row.ratio = f"{ref_s / engine_s:,.0f}× speed"
        row.target = "≥ 30M bars/s"
        row.note = (f"swing_highs + swing_lows (n={DETECTOR_N}) over highs/lows already in memory; the plain-loop "
                    f"reference_* pair was timed on the first {m:,} bars ({fmt_seconds(med(ref_times))}, "
                    f"×{len(ref_times)}) and extrapolated per bar to {self.n:,}; both give identical masks there")
        row.data = {"engine_seconds": times, "reference_slice": m, "reference_slice_seconds": ref_times,
                    "baseline_seconds_extrapolated": ref_s}
        self.judge("detect_compute", self.n / engine_s >= 30e6)

    def fig_futures(self) -> None:
        """Issue 12: the roll schedule + per-bar contract choice, and an adjusted read against the plain one."""
        from bench.adjusted_read import adjusted_read_ratio  # noqa: PLC0415 - only when this group runs
        from bench.rolls import rolls_bars_per_second  # noqa: PLC0415

        rolls = rolls_bars_per_second(repeat=max(self.reps, 3))
        row = self.rows["rolls_compute"]
        row.engine = f"{fmt_seconds(rolls['seconds'])} · {fmt_rate(rolls['bars'], rolls['seconds'])} (best of 3)"
        row.target = "≥ 2M bars/s"
        row.note = (f"{rolls['bars']:,} ES outright bars of 2024 (3 contracts every minute): volume per session and "
                    "contract, the rule-v schedule, the chosen contract's bars; one contract per minute checked")
        row.data = rolls
        self.judge("rolls_compute", rolls["bars_per_second"] >= 2e6, info=self.smoke)
        read = adjusted_read_ratio(self.run_dir / "adjusted_read.sqlite", n=self.n, reps=max(self.reps, 3))
        row = self.rows["adjusted_read_sqlite"]
        row.engine = f"{fmt_seconds(read['adjusted_seconds'])} (median of {max(self.reps, 3)})"
        row.baseline = f"{fmt_seconds(read['plain_seconds'])} plain read_bars"
        row.ratio = f"{read['ratio']:.2f}× time"
        row.target = f"≤ {read['target']}× time"
        row.note = f"{read['bars']:,} bars, {read['rolls']} rolls read from contract_rolls and applied"
        row.data = read
        self.judge("adjusted_read_sqlite", read["ratio"] <= read["target"], info=self.smoke)

    def fig_read(self) -> None:
        """Issue 13: `read_bars` to pandas from SQLite (bars/s) and from PostgreSQL against a plain ADBC read."""
        from bench.read_api import pg_figure, sqlite_figure  # noqa: PLC0415 - only when this group runs

        reps = max(self.reps, 3)
        db = open_db(sqlite_url(self.run_dir / "read_api.sqlite"))
        try:
            got = sqlite_figure(db, self.n, reps)
        finally:
            db.dispose()
        row = self.rows["read_bars_sqlite"]
        row.engine = f"{fmt_seconds(got['seconds'])} · {fmt_rate(got['bars'], got['seconds'])} (median of {reps})"
        row.baseline = f"{fmt_seconds(got['plain_seconds'])} sqlite3 `fetchall`"
        row.ratio = f"{got['ratio']:.2f}× speed"
        row.target = f"≥ {fmt_count(got['target'])} bars/s"
        row.note = (f"{got['bars']:,} bars of one symbol, clean-only (schema and coverage checked) → DataFrame on a "
                    "UTC DatetimeIndex; the baseline (no target) is sqlite3's plain fetchall of the same rows")
        row.data = got
        self.judge("read_bars_sqlite", got["bars_per_second"] >= got["target"], info=self.smoke)
        if not self.pg.available:
            raise Skipped(f"PostgreSQL unreachable at {self.pg.admin_url}: {self.pg.error}")
        db = open_db(self.pg.create("read"))
        try:
            got = pg_figure(db, self.n, reps)
        finally:
            db.dispose()
        row = self.rows["read_bars_pg"]
        row.engine = f"{fmt_seconds(got['seconds'])} (median of {reps})"
        row.baseline = f"{fmt_seconds(got['adbc_seconds'])} ADBC `fetch_df`"
        row.ratio = f"{got['ratio']:.2f}× speed"
        row.target = f"≥ {got['target']}× speed"
        row.note = (f"{got['bars']:,} bars, clean-only; read_bars = binary COPY decoded by numpy; the two alternate "
                    "and return the same bars")
        row.data = got
        self.judge("read_bars_pg", got["ratio"] >= got["target"], info=self.smoke)

    def fig_incremental(self) -> None:
        """Issue 13: the daily 4-symbol incremental update on a database of years of history vs an empty one."""
        from bench.incremental import incremental_update_ratio  # noqa: PLC0415 - only when this group runs

        for key, pg in (("incremental_update_sqlite", None), ("incremental_update_pg", self.pg)):
            if pg is not None and not pg.available:
                raise Skipped(f"PostgreSQL unreachable: {pg.error}")
            result = incremental_update_ratio(self.run_dir / key, years=self.history_years, reps=max(self.reps, 1),
                                              env=_env(), new_pg_database=pg.create if pg else None)
            row = self.rows[key]
            row.engine = f"{fmt_seconds(result['full_seconds'])} (median of {len(result['full_runs'])})"
            row.baseline = f"{fmt_seconds(result['empty_seconds'])} on an empty database"
            row.ratio = f"{result['ratio']:.2f}× time"
            row.target = f"≤ {result['target']}× time"
            row.note = (f"`engine -m symbol=NQ,ES,YM,RTY window=incremental stages=[registry,ingest,detect]`, "
                        f"dbn_file, one session ({result['new_bars']:,} new bars) onto {result['history_bars']:,} "
                        "bars of history written by SQL; the sum of the 4 jobs' durations (result.json), without "
                        f"interpreter start-up (whole process {fmt_seconds(result['process_seconds_median'])})")
            row.data = result
            self.judge(key, result["ratio"] <= result["target"], info=self.smoke)

    def fig_sqlite(self) -> None:
        rows = self.rows
        empty = []
        db = None
        for k in range(self.reps):
            if db is not None:
                db.dispose()
                self._drop_sqlite(f"ingest_{k - 1}")
            db = open_db(sqlite_url(self.run_dir / "sqlite" / f"ingest_{k}.sqlite"))
            seconds, summary = self.ingest(db, self.file, f"sqlite_ingest_{k}")
            self.counts(f"sqlite ingest empty #{k + 1}", summary, inserted=self.n, updated=0, unchanged=0)
            stored = self.stored_rows(db)
            self.check(f"sqlite ingest empty #{k + 1}: rows stored", stored == self.n, f"{stored:,} rows")
            empty.append(seconds)
        tosql, note = self.to_sql_baseline("sqlite")
        row = rows["ingest_empty_sqlite"]
        ratio = med(tosql) / med(empty)
        rate = self.n / med(empty)
        row.engine, row.baseline = timing(self.n, empty), f"to_sql {timing(self.n, tosql)}"
        row.ratio, row.target = f"{ratio:.1f}× speed", "≥ 250k bars/s and ≥ 2× to_sql"
        row.note = f"fresh migrated SQLite file per run; inserted == {self.n:,} asserted; {note}"
        row.data = {"engine_seconds": empty, "baseline_seconds": tosql, "ratio": ratio}
        self.judge("ingest_empty_sqlite", rate >= 250e3 and ratio >= 2)

        unchanged, changed = self.reingests(db, "sqlite", "sqlite")
        row = rows["reingest_unchanged_sqlite"]
        row.engine, row.data = timing(self.n, unchanged), {"engine_seconds": unchanged}
        row.note = f"unchanged == {self.n:,} asserted; no target on SQLite"
        self.judge("reingest_unchanged_sqlite", True, info=True)
        self.changed_row("reingest_changed_sqlite", unchanged, changed)

        def reset() -> None:
            with db.begin() as conn:
                conn.exec_driver_sql("DELETE FROM triangle_events_v1")

        self.detect_rows(db, "sqlite", "detect_stage_sqlite", "detect_rerun_sqlite", reset, None, None)
        db.dispose()

    def fig_pg(self) -> None:
        if not self.pg.available:
            raise Skipped(f"PostgreSQL unreachable at {self.pg.admin_url}: {self.pg.error}")
        rows = self.rows
        db = open_db(self.pg.create("main"))
        try:
            # Raw binary COPY of the same rows, pre-encoded, into the empty table.
            payload = self.encoder(self.bars, 1, SYMBOL.encode())
            copies = []
            for k in range(self.reps):
                autocommit(db, _TRUNCATE, "CHECKPOINT")
                started = time.perf_counter()
                with db.begin() as conn:
                    raw = conn.connection.driver_connection
                    with raw.cursor() as cur, cur.copy(_COPY_SQL) as copy:
                        view = memoryview(payload)
                        for offset in range(0, len(view), _COPY_WRITE):
                            copy.write(view[offset : offset + _COPY_WRITE])
                copies.append(time.perf_counter() - started)
                stored = self.stored_rows(db)
                self.check(f"pg raw COPY #{k + 1}: rows stored", stored == self.n, f"{stored:,} rows")
            del payload
            tosql, tosql_note = self.to_sql_baseline("postgresql", db)

            empty = []
            for k in range(self.reps):
                autocommit(db, _TRUNCATE, "CHECKPOINT")
                seconds, summary = self.ingest(db, self.file, f"pg_ingest_{k}")
                self.counts(f"pg ingest empty #{k + 1}", summary, inserted=self.n, updated=0, unchanged=0)
                stored = self.stored_rows(db)
                self.check(f"pg ingest empty #{k + 1}: rows stored", stored == self.n, f"{stored:,} rows")
                empty.append(seconds)
            copy_s, engine_s = med(copies), med(empty)
            row = rows["ingest_empty_pg_copy"]
            row.engine, row.baseline = timing(self.n, empty), f"COPY {timing(self.n, copies)}"
            row.ratio, row.target = f"{copy_s / engine_s:.2f}× speed", "≥ 0.95× COPY"
            row.note = ("TRUNCATE + CHECKPOINT before every run (untimed); the baseline is one binary COPY of all "
                        f"rows in one transaction; inserted == {self.n:,} asserted")
            row.data = {"engine_seconds": empty, "baseline_seconds": copies, "ratio": copy_s / engine_s}
            self.judge("ingest_empty_pg_copy", copy_s / engine_s >= 0.95)
            row = rows["ingest_empty_pg_tosql"]
            ratio = med(tosql) / engine_s
            row.engine, row.baseline = timing(self.n, empty), f"to_sql {timing(self.n, tosql)}"
            row.ratio, row.target, row.note = f"{ratio:.1f}× speed", "≥ 6× to_sql", tosql_note
            row.data = {"engine_seconds": empty, "baseline_seconds": tosql, "ratio": ratio}
            self.judge("ingest_empty_pg_tosql", ratio >= 6)
            self.bookkeeping_pg(db, summary, empty)

            # The table now holds the bars of the last engine ingest. Settle it as a later rerun would find it.
            autocommit(db, f"VACUUM ANALYZE {CLEAN_BARS}", "CHECKPOINT")
            unchanged, changed = self.reingests(db, "pg", "pg", before=lambda: autocommit(db, "CHECKPOINT"))
            row = rows["reingest_unchanged_pg"]
            ratio = copy_s / med(unchanged)
            row.engine, row.baseline = timing(self.n, unchanged), f"COPY {fmt_seconds(copy_s)} (into empty table)"
            row.ratio, row.target = f"{ratio:.2f}× speed", "≥ 0.8× COPY"
            row.note = (f"unchanged == {self.n:,} asserted; VACUUM ANALYZE once after the first ingest and "
                        "CHECKPOINT before every run (untimed), as a later rerun would find the table")
            row.data = {"engine_seconds": unchanged, "baseline_seconds": copies, "ratio": ratio}
            self.judge("reingest_unchanged_pg", ratio >= 0.8)
            self.changed_row("reingest_changed_pg", unchanged, changed)

            self.detect_rows(db, "pg", "detect_stage_pg", "detect_rerun_pg",
                             lambda: autocommit(db, "TRUNCATE triangle_events_v1", "CHECKPOINT"),
                             lambda: autocommit(db, "VACUUM triangle_events_v1", "CHECKPOINT"), 800e3)
        finally:
            db.dispose()

    def bookkeeping_pg(self, db, summary: IngestResult, ingest_seconds: list[float]) -> None:
        """What the ingest spends on keeping its records true, as a share of the ingest time (issue 9: ≤ 3%).

        Per-batch counters: the same number of `clean_ingest_runs` counter UPDATEs as the ingest committed batches
        (add_batch_counts, the ingest's own statement, on its row), timed alone on the same database. In the ingest
        each UPDATE rides in its batch's transaction; here each gets a transaction and a COMMIT of its own, so this
        is an upper bound. Liveness: `liveness_pg` (see there)."""
        from engine.db.bars import WriteCounts
        from engine.db.ingest_runs import add_batch_counts

        row = self.rows["ingest_bookkeeping_pg"]
        commits, [run_id] = summary.batch_commits, summary.ingest_run_ids
        counters = []
        for _ in range(self.reps):
            started = time.perf_counter()
            for _ in range(commits):
                with db.begin() as conn:  # zero increments: the same statement, the row's counts stay as they are
                    add_batch_counts(conn, run_id, received=0, counts=WriteCounts(), skipped=0,
                                     skipped_by_reason={}, ignored_instruments={}, retries=0)
            counters.append(time.perf_counter() - started)
        liveness = self.liveness_pg(db)
        parts = [("counters", med(counters))] + ([("liveness", med(liveness))] if liveness else [])
        total, ingest_s = sum(s for _, s in parts), med(ingest_seconds)
        share = 100 * total / ingest_s
        row.engine = " + ".join(f"{name} {fmt_seconds(s)}" for name, s in parts) + f" (×{len(counters)})"
        row.baseline = f"ingest {timing(self.n, ingest_seconds)}"
        row.ratio, row.target = f"{share:.2f}% of the ingest", "≤ 3% of the ingest time"
        row.note = (f"{commits} counter UPDATEs (one per committed batch of the ingest above, source.batch_size "
                    f"{DEFAULT_BATCH_SIZE:,}), each in its own transaction here (an upper bound: in the "
                    "ingest it shares its batch's COMMIT), timed alone after the ingests; "
                    + ("liveness: one session advisory lock taken and released + one reconciliation query"
                       if liveness else "liveness: not measured yet (hook Bench.liveness_pg)"))
        row.data = {"counter_seconds": counters, "liveness_seconds": liveness, "ingest_seconds": ingest_seconds,
                    "batch_commits": commits, "share_percent": share}
        self.judge("ingest_bookkeeping_pg", share <= 3)

    def liveness_pg(self, db) -> list[float] | None:
        """The liveness part of the bookkeeping figure, per rep: a run's start with liveness (row + session advisory
        lock on its own connection), its reconciliation query and its stop, less a plain start and finish of the row."""
        from engine.db import liveness, runs

        fields = {"symbol": "GLBX.MDP3:NQ", "stages": "[]", "run_dir": "bench", "logic_version": "bench",
                  "config_sha256": "bench", "overrides": "[]", "data_kind": "market"}
        added = []
        for _ in range(self.reps):
            started = time.perf_counter()
            live = liveness.start(db, **fields)
            live.reconcile()
            runs.finish_run(db, live.id, "success")
            live.stop()
            with_liveness = time.perf_counter() - started
            started = time.perf_counter()
            runs.finish_run(db, runs.start_run(db, **fields), "success")
            added.append(max(0.0, with_liveness - (time.perf_counter() - started)))
        return added

    def parallel_headroom(self) -> float:
        """Speed-up of two CPU-bound processes run side by side over one after the other (2.0 = two idle cores)."""
        cmd = [sys.executable, "-c", "sum(range(20_000_000))"]
        started = time.perf_counter()
        for _ in range(2):
            subprocess.run(cmd, check=True)
        serial = time.perf_counter() - started
        started = time.perf_counter()
        procs = [subprocess.Popen(cmd) for _ in range(2)]
        for proc in procs:
            proc.wait()
        return serial / (time.perf_counter() - started)

    def fig_sweep(self) -> None:
        row = self.rows["sweep_4_symbols"]
        headroom = [self.parallel_headroom()]
        start, end = self.file.start, self.file.end  # the N-bar NQ window of the other figures, for every symbol
        times: dict[str, list[float]] = {"basic": [], "joblib": []}
        counts: dict[str, dict] = {}
        for k in range(self.sweep_reps):
            for launcher in ("basic", "joblib"):
                folder = self.run_dir / "sweep" / f"{launcher}_{k}"
                folder.mkdir(parents=True)
                cmd = [sys.executable, "-m", "engine", "-m", f"symbol={','.join(SWEEP_SYMBOLS)}",
                       *(["hydra/launcher=joblib"] if launcher == "joblib" else []),
                       "db.url=sqlite:///${data_dir}/${symbol}.sqlite", f"data_dir='{folder / 'data'}'",
                       "stages=[ingest,detect]", f"window.start={iso(start)}", f"window.end={iso(end)}",
                       f"hydra.sweep.dir='{folder / 'multirun'}'"]
                started = time.perf_counter()
                proc = subprocess.run(cmd, capture_output=True, text=True, cwd=folder, timeout=1800, env=_env())
                times[launcher].append(time.perf_counter() - started)
                (folder / "output.txt").write_text(proc.stdout + proc.stderr)
                self.check(f"sweep {launcher} #{k + 1} exits 0", proc.returncode == 0,
                           f"exit {proc.returncode}; output in {folder / 'output.txt'}")
                headroom.append(self.parallel_headroom())
                got = self._sweep_counts(folder / "multirun", f"{launcher} #{k + 1}")
                counts.setdefault("first", got)
                self.check(f"sweep {launcher} #{k + 1}: same counts as the first sweep", got == counts["first"],
                           json.dumps(got))
        basic, joblib = med(times["basic"]), med(times["joblib"])
        total = sum(c[0] for c in counts["first"].values())
        row.engine = f"joblib {fmt_seconds(joblib)} (×{len(times['joblib'])})"
        row.baseline = f"basic {fmt_seconds(basic)} (×{len(times['basic'])})"
        row.ratio, row.target = f"{basic / joblib:.2f}× speed", "≥ 1.6× with joblib"
        row.note = (f"`python -m engine -m symbol={','.join(SWEEP_SYMBOLS)} [hydra/launcher=joblib] stages=[ingest,"
                    f"detect]` with source=synthetic, the N-bar window {iso(start)} → {iso(end)} for every symbol "
                    f"({total:,} bars in all), " "db.url=sqlite:///${data_dir}/${symbol}.sqlite and a fresh "
                    "data_dir per sweep; wall time of the whole command; runs interleave basic and joblib (default "
                    "n_jobs=-1: one worker per core); per-job counts asserted "
                    f"(bars per job: {', '.join(f'{s} {c[0]:,}' for s, c in counts['first'].items())}); "
                    f"parallel headroom around the sweeps (two CPU-bound processes side by side vs one after the "
                    f"other; 2.0 = two idle cores): {', '.join(f'{h:.2f}' for h in headroom)}")
        row.data = {"basic_seconds": times["basic"], "joblib_seconds": times["joblib"], "ratio": basic / joblib,
                    "jobs": counts["first"], "parallel_headroom": headroom}
        self.judge("sweep_4_symbols", basic / joblib >= 1.6)

    def _sweep_counts(self, sweep_dir: Path, label: str) -> dict[str, list[int]]:
        jobs = json.loads((sweep_dir / "sweep_summary.json").read_text())
        self.check(f"sweep {label}: 4 jobs succeeded",
                   len(jobs) == 4 and all(j["status"] == "success" for j in jobs),
                   ", ".join(f"{j.get('symbol')}: {j['status']}" for j in jobs))
        got = {}
        for job in jobs:
            ingest, detect = job["stages"]["ingest"], job["stages"]["detect"]
            ok = (ingest["bars_inserted"] == ingest["bars_received"] > 0 and ingest["bars_skipped"] == 0
                  and ingest["bars_updated"] == ingest["bars_unchanged"] == 0
                  and detect["bars_in_window"] == ingest["bars_inserted"] and detect["events_written"] > 0)
            self.check(f"sweep {label}: {job['symbol']} counts", ok,
                       f"ingest {ingest['bars_received']:,} received / {ingest['bars_inserted']:,} inserted, detect "
                       f"{detect['bars_in_window']:,} bars / {detect['events_written']:,} events")
            got[job["symbol"]] = [ingest["bars_inserted"], detect["events_written"]]
        return got

    def fig_memory(self, dialect: str) -> None:
        key = f"peak_rss_{'pg' if dialect == 'postgresql' else 'sqlite'}"
        row = self.rows[key]
        if dialect == "postgresql" and not self.pg.available:
            raise Skipped(f"PostgreSQL unreachable at {self.pg.admin_url}: {self.pg.error}")
        started = time.perf_counter()
        big = bench_data.synthetic_file(self.data_dir, self.mem_n)
        made = time.perf_counter() - started
        folder = self.run_dir / f"memory_{dialect}"
        folder.mkdir(parents=True)
        url = self.pg.create("mem") if dialect == "postgresql" else sqlite_url(folder / "market.sqlite")
        cmd = [sys.executable, "-m", "engine", "source=dbn_file", f"source.paths=['{big.path}']", "stages=[ingest]",
               f"db.url='{url}'", f"window.start={iso(big.start)}", f"window.end={iso(big.end)}",
               f"hydra.run.dir='{folder / 'run'}'"]
        usage_file = folder / "rusage.json"
        with open(folder / "output.txt", "w") as out:
            started = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", _RSS_LAUNCHER, str(usage_file), *cmd], stdout=out,
                                  stderr=subprocess.STDOUT, cwd=folder, env=_env(), timeout=3600)
            seconds = time.perf_counter() - started
        usage = json.loads(usage_file.read_text()) if usage_file.exists() else {"exit": proc.returncode}
        self.check(f"memory {dialect}: exits 0", proc.returncode == 0 and usage["exit"] == 0,
                   f"exit {usage['exit']}; output in {folder / 'output.txt'}")
        summary = json.loads((folder / "run" / "result.json").read_text())["stages"]["ingest"]
        self.check(f"memory {dialect}: counts", summary["bars_inserted"] == summary["bars_received"] == self.mem_n
                   and summary["bars_skipped"] == 0,
                   f"received {summary['bars_received']:,}, inserted {summary['bars_inserted']:,}")
        rss_mb = usage["maxrss_kb"] / 1024
        row.engine = f"{rss_mb:.0f} MB max RSS"
        row.target = "≤ 400 MB" + (" (not judged in --smoke)" if self.smoke else "")
        row.note = (f"`python -m engine source=dbn_file stages=[ingest]` child, {self.mem_n:,} bars, max RSS from "
                    "os.wait4 in a small launcher process (a child forked straight from the bench would report the "
                    f"bench's own high-water mark); whole process {fmt_seconds(seconds)} "
                    f"({fmt_rate(self.mem_n, summary['duration_seconds'])} inside the ingest stage); input file "
                    f"generated in {fmt_seconds(made)}")
        row.data = {"max_rss_mb": rss_mb, "process_seconds": seconds, "summary": summary}
        self.judge(key, rss_mb <= 400, info=self.smoke)

    def fig_export(self) -> None:
        """Issue 13: the export stage's Parquet write path on 10 × N bars against pyarrow writing the same arrays."""
        from bench.export import export_ratio  # noqa: PLC0415 - only when this group runs

        n = 10 * self.n
        out = export_ratio(self.run_dir / "export", n=n, reps=max(self.reps, 3))
        row = self.rows["export_parquet"]
        row.engine = f"{timing(n, out['engine_seconds'])}"
        row.baseline = f"{timing(n, out['pyarrow_seconds'])} pyarrow"
        row.ratio = f"{out['ratio']:.2f}× speed"
        row.target = f"≥ {out['target']}× speed"
        row.note = (f"{n:,} one-minute bars, {out['partitions']:,} date partitions, {out['compression']}, arrays in "
                    "memory (the database read is not timed), in the stage's 91-day pieces, the two writers "
                    "alternating piece by piece; engine: content digest, provenance metadata, temp file, rename, "
                    "synced per 64 partitions; pyarrow: write_table to the final path, no sync; both read back "
                    f"equal through DuckDB; CPU ratio {out['cpu_ratio']:.2f}; re-export of the unchanged bars "
                    f"{fmt_seconds(out['rerun_seconds'])} (nothing rewritten)")
        row.data = out
        self.check("export: partitions", out["partitions"] > 0, f"{out['partitions']:,} partitions of {n:,} bars")
        self.judge("export_parquet", out["ratio"] >= out["target"], info=self.smoke)

    def fig_landing(self) -> None:
        """Issue 14 item 1: what of a 10-year window is landed (names only), and the cost of landing by day."""
        from bench.landing import reuse_lookup, split_overhead  # noqa: PLC0415 - only when this group runs

        lookup = reuse_lookup(self.run_dir / "landing_lookup", reps=max(self.reps, 11))
        self.check("landing lookup: every day landed, none missing",
                   lookup["landed"] == lookup["days"] and lookup["missing"] == 0, f"{lookup['landed']:,} days")
        row = self.rows["landing_reuse_lookup"]
        row.engine = (f"{lookup['ms']:.1f} ms (best of {len(lookup['runs_ms'])}; median {lookup['median_ms']:.1f} ms, "
                      f"CPU {lookup['cpu_median_ms']:.1f} ms)")
        row.target = f"≤ {lookup['target_ms']:g} ms"
        row.note = (f"`plan_days` over {lookup['days']:,} landed day files (+ sidecars): one directory listing, "
                    "names only; the days that then serve the window are checked (size, sha256) as they are used")
        row.data = lookup
        self.judge("landing_reuse_lookup", lookup["ms"] <= lookup["target_ms"], info=self.smoke)
        split = split_overhead(self.run_dir / "landing_split", reps=max(self.reps, 1), days=7 if self.smoke else 31)
        self.check("landing split: every bar landed both ways, one get_range each",
                   split["days_records"] == split["one_records"] == split["bars"]
                   and split["days_get_range"] == split["one_get_range"] == 1
                   and split["day_files"] == split["days"], f"{split['days_records']:,} bars")
        row = self.rows["landing_day_split"]
        row.engine = f"{fmt_seconds(split['days_seconds'])} (median of {len(split['days_runs'])})"
        row.baseline = f"{fmt_seconds(split['one_seconds'])} one request, one file"
        row.ratio = f"{split['ratio']:.2f}× time"
        row.target = f"≤ {split['target']}× time"
        row.note = (f"{split['days']} days, {split['bars']:,} bars (one a minute) from tests/fake_databento.py "
                    "over TLS with the official client: get_cost + get_record_count + one get_range each way; by day "
                    f"the body is split into {split['day_files']} DBN files with their own metadata and sidecars")
        row.data = split
        self.judge("landing_day_split", split["ratio"] <= split["target"], info=self.smoke)

    # ---- all of it

    def run(self) -> None:
        self.prepare()
        self.run_group("help", ("help_time", "refusal_time", "plan_time"), self.fig_help)
        self.run_group("compute", ("detect_compute",), self.fig_compute)
        self.run_group("futures", ("rolls_compute", "adjusted_read_sqlite"), self.fig_futures)
        self.run_group("read", ("read_bars_sqlite", "read_bars_pg"), self.fig_read)
        self.run_group("sqlite", ("ingest_empty_sqlite", "reingest_unchanged_sqlite", "reingest_changed_sqlite",
                                  "detect_stage_sqlite", "detect_rerun_sqlite"), self.fig_sqlite)
        self.run_group("postgresql", ("ingest_empty_pg_copy", "ingest_empty_pg_tosql", "ingest_bookkeeping_pg",
                                      "reingest_unchanged_pg",
                                      "reingest_changed_pg", "detect_stage_pg", "detect_rerun_pg"), self.fig_pg)
        self.run_group("sweep", ("sweep_4_symbols",), self.fig_sweep)
        self.run_group("incremental", ("incremental_update_sqlite", "incremental_update_pg"), self.fig_incremental)
        self.run_group("memory", ("peak_rss_pg",), lambda: self.fig_memory("postgresql"))
        self.run_group("memory", ("peak_rss_sqlite",), lambda: self.fig_memory("sqlite"))
        self.run_group("export", ("export_parquet",), self.fig_export)
        self.run_group("landing", ("landing_reuse_lookup", "landing_day_split"), self.fig_landing)

    def close(self, keep_files: bool = False) -> None:
        """Drop the scratch PostgreSQL databases; delete the scratch SQLite and DBN files (GBs) unless asked not to."""
        if self.pg.available:
            self.pg.drop_all()
        if not keep_files:
            for path in self.run_dir.rglob("*"):
                if path.is_file() and path.name.endswith(_SCRATCH_SUFFIXES):
                    path.unlink()


# Runs argv[2:] and writes its exit code and max RSS (KiB) as JSON to argv[1]. A process keeps the RSS high-water mark
# of the process it was forked from until it execs, so the child must come from a small process, not from the bench.
_RSS_LAUNCHER = """
import json, os, subprocess, sys
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
child.returncode = code = os.waitstatus_to_exitcode(status)
with open(sys.argv[1], "w") as out:
    json.dump({"exit": code, "maxrss_kb": usage.ru_maxrss}, out)
sys.exit(code)
"""


def _env() -> dict[str, str]:
    return {**os.environ, "COLUMNS": "160", "PYTHONUNBUFFERED": "1"}

