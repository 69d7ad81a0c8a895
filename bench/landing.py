"""Benchmarks (issue 14 item 1): bars landed by UTC day.

`reuse_lookup()`: deciding what of a 10-year window is landed and what is missing, with 3,652 day pieces on disk
(target ≤ 50 ms; names only, nothing hashed). `split_overhead()`: a 1-month window (every minute, 44,640 bars)
streamed from the local fake of Databento's API (tests/fake_databento.py, real TLS, the official client) and landed
by day (one get_range, split into 31 day files with metadata and sidecars) against the same request landed as one
file (`fetch_raw`), alternating, fresh folders each time (target ≤ 1.2× time).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from engine.sources.databento_days import days_dir, plan_days
from engine.sources.databento_request import RawRequest

LOOKUP_TARGET_MS = 50.0
SPLIT_TARGET = 1.2
_KEY = "db-BENCHLANDINGKEY0123456789ab"
_TESTS = Path(__file__).resolve().parents[1] / "tests"


def _bars(start: dt.datetime, end: dt.datetime) -> RawRequest:
    return RawRequest("GLBX.MDP3", "NQ.v.0", "ohlcv-1m", "continuous", start, end)


def reuse_lookup(folder: Path, *, years: int = 10, reps: int = 11) -> dict:
    """Best (least disturbed) wall milliseconds of `plan_days`, with the median and the CPU time, for a
    `years`-year window whose days are all landed (empty files with the pieces' names: the lookup reads names only),
    and the check that it finds nothing missing."""
    start = dt.datetime(2016, 1, 1, tzinfo=dt.UTC)
    end = start.replace(year=start.year + years)
    window = _bars(start, end)
    days = days_dir(folder, window)
    days.mkdir(parents=True, exist_ok=True)
    count = (end - start).days
    for n in range(count):
        (days / f"{start.date() + dt.timedelta(days=n):%Y%m%d}.dbn.zst").touch()
        (days / f"{start.date() + dt.timedelta(days=n):%Y%m%d}.dbn.zst.json").touch()
    runs, cpu = [], []
    for _ in range(reps):
        started, started_cpu = time.perf_counter(), time.process_time()
        plan = plan_days(folder, window)
        runs.append((time.perf_counter() - started) * 1000)
        cpu.append((time.process_time() - started_cpu) * 1000)
    return {"days": count, "landed": len(plan.names), "missing": len(plan.missing), "runs_ms": runs, "cpu_ms": cpu,
            "ms": min(runs), "median_ms": statistics.median(runs), "cpu_median_ms": statistics.median(cpu),
            "target_ms": LOOKUP_TARGET_MS}


class _Env:
    """Enough of pytest's monkeypatch for FakeDatabento.install, undone on exit."""

    def __init__(self):
        self.saved: dict[str, str | None] = {}

    def setenv(self, name: str, value: str) -> None:
        self.saved.setdefault(name, os.environ.get(name))
        os.environ[name] = value

    def delenv(self, name: str, raising: bool = True) -> None:
        self.saved.setdefault(name, os.environ.get(name))
        os.environ.pop(name, None)

    def setattr(self, target, name: str, value) -> None:  # plain HTTP only (no openssl)
        setattr(target, name, value)

    def undo(self) -> None:
        for name, value in self.saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _fake_gateway(scratch: Path) -> Iterator[object]:
    sys.path.insert(0, str(_TESTS))
    try:
        from fake_databento import FakeDatabento, make_cert  # noqa: PLC0415 - the test fake, only for this figure
    finally:
        sys.path.remove(str(_TESTS))
    env = _Env()
    try:
        with FakeDatabento(cert=make_cert(scratch), every_minutes=1) as fake:
            fake.install(env)
            env.setenv("DATABENTO_API_KEY", _KEY)
            yield fake
    finally:
        env.undo()


def split_overhead(scratch: Path, *, reps: int = 3, days: int = 31) -> dict:
    """Median seconds of landing a `days`-day window by day (`fetch_days`) and as one file (`fetch_raw`), each from
    the fake gateway into a fresh folder, alternating; the ratio of the two; and the checks that both hold every bar
    and that the day split made one get_range."""
    from engine.sources.databento_api import fetch_days, fetch_raw  # noqa: PLC0415
    from engine.sources.dbn import count_records  # noqa: PLC0415

    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    window = _bars(start, start + dt.timedelta(days=days))
    scratch.mkdir(parents=True, exist_ok=True)
    whole, by_day, checks = [], [], {}
    with _fake_gateway(scratch) as fake:
        for k in range(reps + 1):  # the first pair warms up (TLS, imports, the fake's first body)
            for how in ("one", "days"):
                folder = Path(tempfile.mkdtemp(prefix=f"{how}-", dir=scratch))
                before = len(fake.seen("timeseries.get_range"))
                started = time.perf_counter()
                if how == "one":
                    result = fetch_raw(window, folder, max_cost_usd=10.0, gateway=fake.gateway)
                    seconds, records = time.perf_counter() - started, count_records(result.path)[1]
                else:
                    results = fetch_days(window, folder, max_cost_usd=10.0, gateway=fake.gateway)
                    seconds = time.perf_counter() - started
                    records = sum(count_records(r.path)[1] for r in results)
                    checks["day_files"] = len(results)
                checks[f"{how}_records"] = records
                checks[f"{how}_get_range"] = len(fake.seen("timeseries.get_range")) - before
                if k:
                    (whole if how == "one" else by_day).append(seconds)
                shutil.rmtree(folder)
    ratio = statistics.median(by_day) / statistics.median(whole)
    return {"days": days, "bars": days * 1440, "one_seconds": statistics.median(whole),
            "days_seconds": statistics.median(by_day), "one_runs": whole, "days_runs": by_day, "ratio": ratio,
            "target": SPLIT_TARGET, **checks}
