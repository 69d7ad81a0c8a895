"""Plugins from outside the repository: a user's package plus YAML files in their own config directory add a
detector, a source and a stage, run through `python -m engine` on SQLite and PostgreSQL (issue 11, item 4).

The user's project is written into a temporary directory: `my_plugins/` (on PYTHONPATH) and `conf/` (found as
the working directory's ./conf, through --config-dir, or through hydra.searchpath).
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sql_rows import query

HIGHEST_CLOSE = '''
from dataclasses import dataclass

import numpy as np

EVENT = [("ts", "i8"), ("direction", "U4"), ("price", "f8"), ("confirm_ts", "i8")]


@dataclass
class HighestClose:
    """A bar whose close is the highest of the last k closes: BEAR at its close, confirmed lookahead_bars later."""

    k: int = 10
    lookahead_bars: int = 2

    @property
    def warmup_bars(self) -> int:
        return self.k - 1

    def detect(self, bars):
        close = bars["close"]
        if len(bars) < self.k + self.lookahead_bars:
            return np.zeros(0, EVENT)
        highest = np.lib.stride_tricks.sliding_window_view(close, self.k).max(axis=1)  # of close[i-k+1 .. i]
        pivots = self.k - 1 + np.flatnonzero(close[self.k - 1:] >= highest)
        pivots = pivots[pivots + self.lookahead_bars < len(bars)]
        events = np.zeros(len(pivots), EVENT)
        events["ts"], events["direction"], events["price"] = bars["ts"][pivots], "BEAR", close[pivots]
        events["confirm_ts"] = bars["ts"][pivots + self.lookahead_bars]
        return events


class Unfinished:
    """A detector that forgot its detect method."""

    warmup_bars = 0
    lookahead_bars = 0
'''

CSV_BARS = '''
import csv
import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import databento_dbn

from engine.sources import Landing, SourceParams


@dataclass(kw_only=True)
class CsvBars(SourceParams):
    """Bars of a CSV file (ts ISO-8601 UTC, open, high, low, close, volume), landed as one DBN file."""

    path: str
    instrument_id: int = 42
    local: ClassVar[bool] = True

    def acquire(self, ctx, progress) -> Landing:
        with open(self.path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        ts = [int(dt.datetime.fromisoformat(row["ts"]).timestamp()) * 10**9 for row in rows]
        day = dt.timedelta(days=1)
        first, last = (dt.datetime.fromtimestamp(t / 1e9, dt.UTC).date() for t in (ts[0], ts[-1]))
        symbol = ctx.symbol.continuous
        mapping = SimpleNamespace(raw_symbol=symbol, intervals=[
            SimpleNamespace(start_date=first, end_date=last + day, symbol=str(self.instrument_id))])
        metadata = databento_dbn.Metadata(
            dataset=ctx.symbol.dataset, start=ts[0], end=ts[-1] + 60 * 10**9, schema=databento_dbn.Schema.OHLCV_1M,
            stype_in=databento_dbn.SType.CONTINUOUS, stype_out=databento_dbn.SType.INSTRUMENT_ID,
            symbols=[symbol], partial=[], not_found=[], mappings=[mapping])
        out = Path(ctx.run.dir) / (Path(self.path).stem + ".dbn")
        with open(out, "wb") as dbn:
            dbn.write(metadata.encode())
            for t, row in zip(ts, rows):
                prices = (round(float(row[name]) * 1e9) for name in ("open", "high", "low", "close"))
                dbn.write(bytes(databento_dbn.OHLCVMsg(databento_dbn.RType.OHLCV_1M, 1, self.instrument_id, t,
                                                       *prices, int(row["volume"]))))
        return Landing([out], raw_files=[{"path": str(out), "from": self.path}])
'''

REPORT = '''
import json
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from engine.db.schema import clean_bars
from engine.results import StageResult


@dataclass
class ReportResult(StageResult):
    title: str
    bars: int
    path: str


class Report:
    """Writes report.json into the run directory: the title and the number of clean bars in the window."""

    def __init__(self, title: str = "bars in the window", file: str = "report.json"):
        self.title, self.file = title, file

    def run(self, ctx) -> ReportResult:
        window = (clean_bars.c.symbol == ctx.symbol.internal_symbol) & (clean_bars.c.ts >= ctx.window.start) & (
            clean_bars.c.ts < ctx.window.end)
        with ctx.db.connect() as conn:
            bars = conn.execute(sa.select(sa.func.count()).select_from(clean_bars).where(window)).scalar_one()
        path = Path(ctx.run.dir) / self.file
        path.write_text(json.dumps({"title": self.title, "bars": bars}))
        return ReportResult(title=self.title, bars=bars, path=str(path))
'''

PROJECT = {
    "my_plugins/__init__.py": "",
    "my_plugins/highest_close.py": HIGHEST_CLOSE,
    "my_plugins/csv_bars.py": CSV_BARS,
    "my_plugins/report.py": REPORT,
    "conf/detector/highest_close.yaml": "_target_: my_plugins.highest_close.HighestClose\nk: 10\nlookahead_bars: 2\n",
    "conf/detector/unfinished.yaml": "_target_: my_plugins.highest_close.Unfinished\n",
    "conf/detector/nowhere.yaml": "_target_: my_plugins.nowhere.Detector\n",
    "conf/source/csv_bars.yaml": "_target_: my_plugins.csv_bars.CsvBars\npath: ???\ndata_kind: market\n",
    "conf/stage/report.yaml": "_target_: my_plugins.report.Report\ntitle: bars in the window\n",
}

# A Monday of the demo week, 08:00-14:00 Chicago: the market is open throughout.
START = datetime(2025, 12, 8, 14, 0, tzinfo=UTC)
END = START + timedelta(hours=6)


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%MZ")


WINDOW = (f"window.start={iso(START)}", f"window.end={iso(END)}")


@pytest.fixture
def project(tmp_path) -> Path:
    """The user's own project: a plugin package and its config directory."""
    root = tmp_path / "project"
    for name, text in PROJECT.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text.lstrip())
    return root


@pytest.fixture
def elsewhere(tmp_path, project) -> tuple[Path, dict]:
    """A working directory without conf/, and the environment that puts the plugin package on PYTHONPATH."""
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    return workdir, {"PYTHONPATH": os.pathsep.join(filter(None, [str(project), os.environ.get("PYTHONPATH")]))}


def instant(value) -> datetime:
    """A timestamp column read back as text (SQLite) or a datetime (PostgreSQL), as an aware datetime."""
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def events(url: str) -> list[dict]:
    rows = query(url, "SELECT id, run_id, detector, detector_params, ts, direction, price, confirm_ts "
                      "FROM triangle_events_v1 ORDER BY detector, ts, direction")
    return [{**row, "ts": instant(row["ts"]), "confirm_ts": instant(row["confirm_ts"])} for row in rows]


def highest_close_oracle(bars: list[dict], k: int, lookahead: int) -> list[tuple]:
    """(ts, direction, price, confirm_ts) of the toy detector's rule, bar by bar."""
    close = [b["close"] for b in bars]
    return [(bars[i]["ts"], "BEAR", close[i], bars[i + lookahead]["ts"])
            for i in range(k - 1, len(bars) - lookahead) if close[i] >= max(close[i - k + 1:i + 1])]


def clean_bars(url: str) -> list[dict]:
    rows = query(url, "SELECT ts, open, high, low, close, volume FROM market_bars_ohlcv_1m_clean ORDER BY ts")
    return [{**row, "ts": instant(row["ts"])} for row in rows]


def test_toy_detector_events_coexist_with_williams_and_a_rerun_replaces_only_its_own(db_url, project, engine_cli):
    """./conf of the working directory holds the detector's YAML; `python -m engine` puts the working directory on
    sys.path, so the package is found too."""
    seed = engine_cli(f"db.url={db_url}", "stages=[registry,ingest,detect]", *WINDOW, cwd=project)
    assert seed.returncode == 0, seed.output
    williams = events(db_url)
    assert williams and {e["detector"] for e in williams} == {"williams_fractals"}

    toy_command = (f"db.url={db_url}", "stages=[detect]", "detector=highest_close", "detector.k=8", *WINDOW)
    first = engine_cli(*toy_command, cwd=project)
    assert first.returncode == 0, first.output
    stored = events(db_url)
    toy = [e for e in stored if e["detector"] == "highest_close"]
    assert [e for e in stored if e["detector"] == "williams_fractals"] == williams
    expected = highest_close_oracle(clean_bars(db_url), k=8, lookahead=2)
    assert len(expected) > 20
    assert [(e["ts"], e["direction"], e["price"], e["confirm_ts"]) for e in toy] == expected
    assert {e["detector_params"] for e in toy} == {json.dumps({"k": 8, "lookahead_bars": 2}, sort_keys=True)}
    assert {e["run_id"] for e in toy} == {first.result["run_id"]}
    assert {k: v for k, v in first.result["stages"]["detect"]["events"].items() if v} == {"BEAR": len(expected)}

    again = engine_cli(*toy_command, cwd=project)
    assert again.returncode == 0, again.output
    rerun = events(db_url)
    assert len(rerun) == len(stored) == len(williams) + len(expected)
    assert [e for e in rerun if e["detector"] == "williams_fractals"] == williams  # same ids, same run
    toy_again = [e for e in rerun if e["detector"] == "highest_close"]
    assert [{**e, "id": None, "run_id": None} for e in toy_again] == [{**e, "id": None, "run_id": None} for e in toy]
    assert {e["run_id"] for e in toy_again} == {again.result["run_id"]}


def write_csv(path: Path, count: int) -> list[dict]:
    """`count` NQ bars from START, on NQ's 0.25 tick; the bars as they should be stored."""
    bars = []
    for i in range(count):
        level = 21000.0 + 0.25 * ((i * 7) % 11)
        bars.append({"ts": START + timedelta(minutes=i), "open": level, "high": level + 1.0, "low": level - 0.5,
                     "close": level + 0.25, "volume": 10 + i})
    lines = ["ts,open,high,low,close,volume"] + [
        f"{iso(b['ts'])},{b['open']},{b['high']},{b['low']},{b['close']},{b['volume']}" for b in bars]
    path.write_text("\n".join(lines) + "\n")
    return bars


def test_csv_source_lands_dbn_and_the_clean_table_holds_exactly_its_bars(db_url, project, elsewhere, engine_cli):
    """--config-dir names the user's config directory; the package comes from PYTHONPATH."""
    workdir, env = elsewhere
    bars = write_csv(project / "bars.csv", 45)
    run = engine_cli("--config-dir", str(project / "conf"), f"db.url={db_url}", "source=csv_bars",
                     f"source.path={project / 'bars.csv'}", "stages=[registry,ingest]", *WINDOW, cwd=workdir, env=env)
    assert run.returncode == 0, run.output
    assert clean_bars(db_url) == bars
    ingest = run.result["stages"]["ingest"]
    assert ingest["bars_received"] == ingest["bars_inserted"] == 45 and ingest["bars_skipped"] == 0
    assert (run.run_dir / "bars.dbn").stat().st_size > 45 * 56


def test_report_stage_with_a_command_line_parameter_records_its_result(db_url, project, elsewhere, engine_cli):
    """hydra.searchpath names the user's config directory; the stage's YAML is conf/stage/report.yaml."""
    workdir, env = elsewhere
    run = engine_cli(f"hydra.searchpath=[file://{project / 'conf'}]", f"db.url={db_url}",
                     "stages=[registry,ingest,report]", "stage.report.title=Monday morning", *WINDOW,
                     cwd=workdir, env=env)
    assert run.returncode == 0, run.output
    inserted = run.result["stages"]["ingest"]["bars_inserted"]
    assert inserted > 300
    report = json.loads((run.run_dir / "report.json").read_text())
    assert report == {"title": "Monday morning", "bars": inserted}
    assert run.result["stages"]["report"] == {"title": "Monday morning", "bars": inserted,
                                              "path": str(run.run_dir / "report.json"),
                                              "result_type": "my_plugins.report.ReportResult"}


@pytest.mark.parametrize(("overrides", "named"), [
    (["stages=[registry,report]", "stage.report.titel=x"], "unknown config key 'stage.report.titel' (did you mean "
                                                           "'stage.report.title'?)"),
    (["detector=highest_close", "detector.k=many"], "detector.k takes a whole number"),
    (["detector=nowhere"], "detector._target_='my_plugins.nowhere.Detector' cannot be imported"),
    (["detector=unfinished"], "my_plugins.highest_close.Unfinished has no detect"),
], ids=["unknown-parameter", "mistyped-parameter", "target-not-importable", "missing-attribute"])
def test_mistakes_in_an_out_of_tree_plugin_are_user_errors(overrides, named, sqlite_url, project, engine_cli):
    run = engine_cli(f"db.url={sqlite_url}", *WINDOW, *overrides, cwd=project)
    assert run.returncode == 2, run.output
    assert named in run.output
    assert "Traceback" not in run.output
    assert not Path(sqlite_url.removeprefix("sqlite:///")).exists()  # refused before the database was opened
