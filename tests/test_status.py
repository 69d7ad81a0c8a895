"""`engine status` and `engine runs` on a database the engine filled: planted gaps, a failed and an abandoned run.

The database (one per backend, shared by the tests of this module) is made by real `python -m engine` processes:
an NQ ingest killed with SIGKILL as soon as its run row exists (the next run marks it abandoned), a sweep ingesting
and detecting NQ and ES over [Mon Dec 8 session open, Wed 00:00), NQ over [Mon Dec 1, Thu Dec 4 00:00) (so NQ has a
gap on Thursday and Friday), ES over [Mon Dec 1, Fri Dec 5 close) (only the weekend lies between its windows: no
gap), and an NQ detect across NQ's gap, refused by the clean-only contract (a failed run).
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
import uuid
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sql_rows import query

from engine.db.connect import create_db_engine
from engine.detectors import params_json
from engine.detectors.williams_fractals import WilliamsFractals
from engine.status import ranges_and_gaps, symbol_status

NQ, ES = "GLBX.MDP3:NQ", "GLBX.MDP3:ES"
SWEEP = ["symbol=NQ,ES", "window.start=2025-12-07T23:00:00Z", "window.end=2025-12-10T00:00:00Z",
         "stages=[registry,ingest,detect]", "-m"]
NQ_EARLY = ["symbol=NQ", "window.start=2025-12-01", "window.end=2025-12-04", "stages=[ingest]"]
ES_EARLY = ["symbol=ES", "window.start=2025-12-01", "window.end=2025-12-05T22:00:00Z", "stages=[ingest]"]
FAILED = ["symbol=NQ", "window.start=2025-12-03", "window.end=2025-12-09", "stages=[detect]", "adjust=ratio",
          "detector.n=3"]
KILLED = ["symbol=NQ", "window.start=2019-01-01", "window.end=2025-01-01", "stages=[ingest]"]


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def engine(cwd: Path, url: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", *args, f"db.url={url}"], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "COLUMNS": "200"})


def results(cwd: Path) -> dict[str, dict]:
    """result.json of every run under cwd/runs, by run directory."""
    return {str(p.parent): json.loads(p.read_text()) for p in (cwd / "runs").rglob("result.json")}


def kill_when_started(cwd: Path, url: str) -> int:
    """Start an ingest, SIGKILL it as soon as its engine_runs row exists; its pid."""
    proc = subprocess.Popen([sys.executable, "-m", "engine", *KILLED, f"db.url={url}"], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            try:
                if query(url, "SELECT id FROM engine_runs WHERE pid = :pid", pid=proc.pid):
                    return proc.pid
            except sa.exc.SQLAlchemyError:
                pass  # no database or tables yet
            time.sleep(0.02)
        raise AssertionError("the run row never appeared")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def filled(request, tmp_path_factory):
    """(url, working directory, {step: run row}) of the database described in the module docstring."""
    cwd = tmp_path_factory.mktemp(f"status-{request.param}")
    if request.param == "sqlite":
        url, drop = f"sqlite:///{cwd / 'market.sqlite'}", None
    else:
        admin = request.getfixturevalue("pg_admin")
        name = f"engine_test_{uuid.uuid4().hex[:12]}"
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        url = admin.url.set(database=name).render_as_string(hide_password=False)
        drop = (admin, name)
    try:
        pid = kill_when_started(cwd, url)
        steps = {}
        for step, args, code in (("sweep", SWEEP, 0), ("nq_early", NQ_EARLY, 0), ("es_early", ES_EARLY, 0),
                                 ("failed", FAILED, 2)):
            before = set(results(cwd))
            done = engine(cwd, url, *args)
            assert done.returncode == code, done.stdout + done.stderr
            steps[step] = [results(cwd)[d] for d in sorted(set(results(cwd)) - before)]
        rows = {r["id"]: r for r in query(url, "SELECT * FROM engine_runs ORDER BY id")}
        [killed] = [r for r in rows.values() if r["pid"] == pid]
        assert killed["status"] == "abandoned", killed
        runs = {"killed": killed["id"], "sweep_nq": steps["sweep"][0]["run_id"],
                "sweep_es": steps["sweep"][1]["run_id"], "nq_early": steps["nq_early"][0]["run_id"],
                "es_early": steps["es_early"][0]["run_id"], "failed": steps["failed"][0]["run_id"]}
        assert [rows[runs["sweep_nq"]]["symbol"], rows[runs["sweep_es"]]["symbol"]] == ["NQ", "ES"]
        yield url, cwd, runs
    finally:
        if drop is not None:
            with drop[0].connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{drop[1]}" WITH (FORCE)'))


def view(capsys, monkeypatch, cwd: Path, *args: str) -> tuple[int, str]:
    """Run `engine <args>` in this process (the console script's own entry point); (exit code, output)."""
    from engine.__main__ import cli

    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["engine", *args])
    code = 0
    try:
        cli()
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out + out.err


def view_json(capsys, monkeypatch, cwd: Path, *args: str) -> dict:
    code, out = view(capsys, monkeypatch, cwd, *args, "--json")
    assert code == 0, out
    return json.loads(out)


def count(url: str, sql: str, **params) -> int:
    return query(url, sql, **params)[0]["n"]


def test_status_json_field_by_field(filled, capsys, monkeypatch):
    url, cwd, runs = filled
    status = view_json(capsys, monkeypatch, cwd, "status", f"db.url={url}", "--no-png")
    assert status["heatmap"] is None
    assert [s["symbol"] for s in status["symbols"]] == [ES, NQ]  # the killed NQ run is in NQ's list
    es, nq = status["symbols"]

    # Coverage: NQ's Thursday and Friday are a gap, named from its first open minute to its last; ES's windows are
    # separated by the weekend only, which is closed time: one covered range, no gap.
    assert nq["covered"] == [{"start": "2025-12-01T00:00:00Z", "end": "2025-12-04T00:00:00Z"},
                             {"start": "2025-12-07T23:00:00Z", "end": "2025-12-10T00:00:00Z"}]
    assert nq["gaps"] == [{"start": "2025-12-04T00:00:00Z", "end": "2025-12-05T22:00:00Z",
                           "trading_minutes": 22 * 60 + 23 * 60}]
    assert es["covered"] == [{"start": "2025-12-01T00:00:00Z", "end": "2025-12-10T00:00:00Z"}]
    assert es["gaps"] == []

    for entry in (es, nq):
        symbol = entry["symbol"]
        bars = query(url, "SELECT count(*) AS n, min(ts) AS a, max(ts) AS b FROM market_bars_ohlcv_1m_clean "
                          "WHERE symbol = :s", s=symbol)[0]
        inserted = count(url, "SELECT sum(bars_inserted) AS n FROM clean_ingest_runs WHERE symbol = :s", s=symbol)
        assert entry["bars"] == bars["n"] == inserted > 3 * 1300
        assert utc(entry["first_bar"]) == _ts(bars["a"]) and utc(entry["last_bar"]) == _ts(bars["b"])
        # Sessions: every session_quality row of a covered or gap session (all of them here), those with missing
        # minutes listed with the table's numbers.
        quality = query(url, "SELECT * FROM session_quality WHERE symbol = :s ORDER BY trade_date", s=symbol)
        missing = [q for q in quality if q["missing_minutes"] > 0]
        assert entry["sessions"] == {"with_quality": len(quality), "with_missing_minutes": len(missing),
                                     "missing_minutes": sum(q["missing_minutes"] for q in missing),
                                     "without_quality": 0}
        assert entry["sessions_with_missing_minutes"] == [
            {"trade_date": str(q["trade_date"]), "expected_minutes": q["expected_minutes"],
             "bars_present": q["bars_present"], "missing_minutes": q["missing_minutes"],
             "longest_gap_minutes": q["longest_gap_minutes"]} for q in missing]
    # NQ's Thursday session: only its first hour (Wed 23:00 to Thu 00:00) was ingested.
    thursday = next(d for d in nq["sessions_with_missing_minutes"] if d["trade_date"] == "2025-12-04")
    first_hour = count(url, "SELECT count(*) AS n FROM market_bars_ohlcv_1m_clean WHERE symbol = :s AND ts >= :a "
                            "AND ts < :b", s=NQ, a=_bind(url, "2025-12-03T23:00:00Z"),
                       b=_bind(url, "2025-12-04T00:00:00Z"))
    assert thursday == {"trade_date": "2025-12-04", "expected_minutes": 1380, "bars_present": first_hour,
                        "missing_minutes": 1380 - first_hour, "longest_gap_minutes": 1320}
    assert {q["trade_date"] for q in nq["sessions_with_missing_minutes"]} >= {"2025-12-04", "2025-12-10"}

    # Last ingest and detect: NQ's last ingest is its early window, its last detect the failed one.
    logic = query(url, "SELECT logic_version FROM engine_runs WHERE id = :i", i=runs["nq_early"])[0]["logic_version"]
    nq_ingest = query(url, "SELECT * FROM clean_ingest_runs WHERE engine_run_id = :i", i=runs["nq_early"])[0]
    assert nq["last_ingest"] == {
        "ingest_id": nq_ingest["id"], "run_id": runs["nq_early"], "status": "success",
        "run_at": _iso(nq_ingest["run_at"]), "window_start": "2025-12-01T00:00:00Z",
        "window_end": "2025-12-04T00:00:00Z", "bars_inserted": nq_ingest["bars_inserted"], "bars_updated": 0,
        "bars_unchanged": 0, "bars_skipped": 0, "logic_version": logic}
    assert es["last_ingest"]["run_id"] == runs["es_early"] and es["last_ingest"]["status"] == "success"
    failed = nq["last_detect"]
    assert (failed["id"], failed["status"], failed["stages"]) == (runs["failed"], "failed", ["detect"])
    assert (failed["window_start"], failed["window_end"]) == ("2025-12-03T00:00:00Z", "2025-12-09T00:00:00Z")
    assert (failed["adjustment"], json.loads(failed["detector_params"])["n"]) == ("ratio", 3)
    assert "Clean table not available" in failed["error"] and failed["counts"]["events"] == 0
    es_events = count(url, "SELECT count(*) AS n FROM triangle_events_v1 WHERE symbol = :s", s=ES)
    assert es_events > 50
    assert (es["last_detect"]["id"], es["last_detect"]["status"]) == (runs["sweep_es"], "success")
    assert es["last_detect"]["counts"]["events"] == es_events
    assert es["last_detect"]["logic_version"] == logic

    # Events per detector.
    nq_events = query(url, "SELECT count(*) AS n, min(ts) AS a, max(ts) AS b FROM triangle_events_v1 "
                           "WHERE symbol = :s", s=NQ)[0]
    assert nq["events"] == [{"detector": "williams_fractals", "detector_params": params_json(WilliamsFractals(n=5)),
                             "adjustment": "none", "logic_version": logic,
                             "source_table": "market_bars_ohlcv_1m_clean", "events": nq_events["n"],
                             "first_event": _iso(nq_events["a"]), "last_event": _iso(nq_events["b"])}]

    # The killed run, marked abandoned by the next run.
    [abandoned] = nq["abandoned_runs"]
    assert abandoned["id"] == runs["killed"] and abandoned["finished_at"] is not None
    assert (abandoned["window_start"], abandoned["window_end"]) == ("2019-01-01T00:00:00Z", "2025-01-01T00:00:00Z")
    assert abandoned["error"].startswith("abandoned: process ") and "is gone" in abandoned["error"]
    assert es["abandoned_runs"] == []


def test_runs_json_lists_the_runs_newest_first_with_their_counts(filled, capsys, monkeypatch):
    url, cwd, runs = filled
    listed = view_json(capsys, monkeypatch, cwd, "runs", f"db.url={url}")["runs"]
    order = ["failed", "es_early", "nq_early", "sweep_es", "sweep_nq", "killed"]
    assert [r["id"] for r in listed] == [runs[k] for k in order]
    by = {k: r for k, r in zip(order, listed, strict=True)}
    assert [by[k]["status"] for k in order] == ["failed", "success", "success", "success", "success", "abandoned"]
    assert [by[k]["symbol"] for k in order] == ["NQ", "ES", "NQ", "ES", "NQ", "NQ"]
    assert by["sweep_nq"]["stages"] == ["registry", "ingest", "detect"] and by["nq_early"]["stages"] == ["ingest"]
    assert (by["sweep_nq"]["window_start"], by["sweep_nq"]["window_end"]) == ("2025-12-07T23:00:00Z",
                                                                             "2025-12-10T00:00:00Z")
    assert (by["es_early"]["window_start"], by["es_early"]["window_end"]) == ("2025-12-01T00:00:00Z",
                                                                             "2025-12-05T22:00:00Z")
    for key in ("sweep_nq", "nq_early", "es_early"):
        ingest = query(url, "SELECT * FROM clean_ingest_runs WHERE engine_run_id = :i", i=runs[key])[0]
        counts = by[key]["counts"]
        assert counts["bars_inserted"] == ingest["bars_inserted"] > 0
        assert counts["bars_received"] == ingest["bars_received"]
    events = count(url, "SELECT count(*) AS n FROM triangle_events_v1 WHERE run_id = :i", i=runs["sweep_nq"])
    assert by["sweep_nq"]["counts"]["events"] == events > 0 and by["nq_early"]["counts"]["events"] == 0
    assert by["failed"]["counts"] == dict.fromkeys(by["failed"]["counts"], 0)
    for key in order:
        row = by[key]
        assert row["duration_seconds"] is not None and row["duration_seconds"] >= 0
        assert Path(row["run_dir"]).parent.parent == cwd.resolve() / "runs" or key == "sweep_nq" or key == "sweep_es"
        assert Path(row["run_dir"]).is_dir()
    assert (by["sweep_es"]["detector"], by["sweep_es"]["adjustment"]) == ("williams_fractals", "none")
    assert by["sweep_es"]["detector_params"] == params_json(WilliamsFractals(n=5))
    assert by["killed"]["error"].startswith("abandoned:") and by["failed"]["error"].startswith("ERROR: Clean table")


def test_runs_filters(filled, capsys, monkeypatch):
    url, cwd, runs = filled

    def ids(*args):
        return [r["id"] for r in view_json(capsys, monkeypatch, cwd, "runs", f"db.url={url}", *args)["runs"]]

    assert ids("--symbol", "ES") == [runs["es_early"], runs["sweep_es"]]
    assert ids("--symbol=GLBX.MDP3:ES") == ids("--symbol", "es")
    assert ids("--status", "failed,abandoned") == [runs["failed"], runs["killed"]]
    assert ids("--status", "abandoned", "--status", "failed") == [runs["failed"], runs["killed"]]
    assert ids("--last", "2") == [runs["failed"], runs["es_early"]]
    assert ids("--symbol", "NQ", "--status", "success", "--last", "1") == [runs["nq_early"]]
    assert ids("--symbol", "NQ,ES", "--status", "success") == [runs[k] for k in ("es_early", "nq_early", "sweep_es",
                                                                                 "sweep_nq")]
    status = view_json(capsys, monkeypatch, cwd, "status", f"db.url={url}", "--symbol", "ES", "--no-png")
    assert [s["symbol"] for s in status["symbols"]] == [ES]
    code, out = view(capsys, monkeypatch, cwd, "status", f"db.url={url}", "status.format=json", "--no-png")
    assert code == 0 and [s["symbol"] for s in json.loads(out)["symbols"]] == [ES, NQ]


def test_heatmap_cells_mark_gaps_and_failed_and_abandoned_runs(filled):
    url, _cwd, _runs = filled
    db = create_db_engine(url)
    try:
        with db.connect() as conn:
            nq, es = symbol_status(conn, NQ), symbol_status(conn, ES)
    finally:
        db.dispose()
    days = [date(2025, 12, d) for d in (1, 2, 3, 4, 5, 8, 9, 10)]
    assert sorted(nq.days.share) == [d for d in days if d != date(2025, 12, 5)]  # Friday has no quality row: gap
    assert nq.days.gap_days == {date(2025, 12, 4), date(2025, 12, 5)}
    assert nq.days.failed_days == {date(2025, 12, d) for d in (3, 4, 5, 8, 9)}  # the failed detect's window
    # The killed run's window: from the first session after New Year's Day 2019 to the last one of 2024.
    assert min(nq.days.abandoned_days) == date(2019, 1, 2) and max(nq.days.abandoned_days) == date(2024, 12, 31)
    assert sorted(es.days.share) == days and es.days.gap_days == es.days.failed_days == es.days.abandoned_days == set()
    quality = {q["trade_date"]: q for q in query(url, "SELECT * FROM session_quality WHERE symbol = :s", s=ES)}
    for day, share in es.days.share.items():
        q = quality[day if isinstance(next(iter(quality)), date) else str(day)]
        assert share == q["bars_present"] / q["expected_minutes"]


@pytest.mark.slow
def test_tables_and_png_from_the_command_line(filled, tmp_path):
    url, cwd, runs = filled
    done = subprocess.run([sys.executable, "-m", "engine", "status", f"db.url={url}"], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for line in (NQ, ES, "[2025-12-04T00:00Z, 2025-12-05T22:00Z) 2,700 trading minutes",
                 "2025-12-01T00:00Z → 2025-12-04T00:00Z", f"run {runs['killed']} started",
                 f"run {runs['failed']} failed", "heatmap: runs/status/coverage.png"):
        assert line in out, f"{line!r} not in\n{out}"
    assert _png_size(cwd / "runs" / "status" / "coverage.png") >= (1200, 300)
    png = tmp_path / "deep" / "map.png"
    done = subprocess.run([sys.executable, "-m", "engine", "status", f"db.url={url}", "--json", "--png", str(png)],
                          cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and json.loads(done.stdout)["heatmap"] == str(png), done.stderr
    assert _png_size(png) >= (1200, 300)
    done = subprocess.run([sys.executable, "-m", "engine", "runs", f"db.url={url}", "--last", "3"], cwd=cwd,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "250"})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "last 3 run(s)" in lines[0] and "abandoned" not in done.stdout
    [es_early] = [i for i, line in enumerate(lines) if f"│ {runs['es_early']:>2} │" in line]
    assert "success" in lines[es_early] and "2025-12-01T00:00Z →" in lines[es_early]
    assert "2025-12-05T22:00Z" in lines[es_early + 1]
    assert any(f"│ {runs['failed']:>2} │ failed" in line for line in lines)


@pytest.mark.parametrize(("args", "says"), [
    (["runs", "--last", "zero"], ["--last zero: not a number of runs", "Fix: give a whole number >= 1"]),
    (["runs", "--status", "faild"], ["--status faild: not a run status", "did you mean 'failed'", "Fix: use one of"]),
    (["status", "--jsn"], ["unknown option '--jsn'", "did you mean '--json'", "Fix: options of engine status"]),
    (["runs", "--png", "x.png"], ["unknown option '--png'", "Fix: options of engine runs"]),
    (["status", "--symbol", "ZZ"], ["--symbol ZZ is not in this database", "Fix: pick one of: GLBX.MDP3:ES"]),
    (["status", "status.format=xml"], ["status.format=xml: takes json or table", "Fix: write status.format=json"]),
    (["status", "--json=yes"], ["--json takes no value", "Fix: write --json alone"]),
    (["runs", "--last"], ["--last needs a value", "Fix: e.g. --last 20"]),
    (["status", "NQ"], ["'NQ' is neither an option nor a key=value override", "Fix: see `engine status --help`"]),
    (["status", "db.uri=x"], ["db.uri"]),
])
def test_bad_options_exit_2_with_the_key_and_the_fix(args, says, sqlite_filled, capsys, monkeypatch):
    url, cwd = sqlite_filled
    code, out = view(capsys, monkeypatch, cwd, args[0], f"db.url={url}", *args[1:])
    assert code == 2, out
    assert "Traceback" not in out and "ERROR" in out
    for text in says:
        assert text in out, out


def test_a_missing_database_or_an_old_one_is_refused(tmp_path, capsys, monkeypatch, sqlite_url):
    code, out = view(capsys, monkeypatch, tmp_path, "status", f"db.url=sqlite:///{tmp_path / 'none.sqlite'}")
    assert code == 2 and "no database at" in out and "Fix: run a job first" in out
    assert not (tmp_path / "none.sqlite").exists()
    from engine.db.connect import upgrade

    db = create_db_engine(sqlite_url)
    upgrade(db, "0012")
    db.dispose()
    code, out = view(capsys, monkeypatch, tmp_path, "runs", f"db.url={sqlite_url}")
    assert code == 2 and "is at migration 0012" in out and "engine-migrate upgrade head" in out


def test_help_and_an_empty_database(tmp_path, capsys, monkeypatch, db_url):
    code, out = view(capsys, monkeypatch, tmp_path, "runs", "--help")
    assert code == 0 and "usage: engine runs" in out and "--status S" in out
    from engine.db.connect import upgrade

    db = create_db_engine(db_url)
    upgrade(db)
    db.dispose()
    assert view_json(capsys, monkeypatch, tmp_path, "status", f"db.url={db_url}")["symbols"] == []
    assert view_json(capsys, monkeypatch, tmp_path, "runs", f"db.url={db_url}")["runs"] == []
    assert not (tmp_path / "runs" / "status").exists()  # nothing to draw


def test_ranges_and_gaps_bridge_closed_time_only():
    t = utc
    # Friday close to Sunday open, and Christmas Day (closed) with the day before's early close: no gap.
    assert ranges_and_gaps([(t("2025-12-01T00:00Z"), t("2025-12-05T22:00Z")),
                            (t("2025-12-07T23:00Z"), t("2025-12-10T00:00Z"))]) == (
        [(t("2025-12-01T00:00Z"), t("2025-12-10T00:00Z"))], [])
    assert ranges_and_gaps([(t("2025-12-22T00:00Z"), t("2025-12-24T18:15Z")),
                            (t("2025-12-25T23:00Z"), t("2025-12-27T00:00Z"))])[1] == []
    # One open minute uncovered is a gap of one trading minute; overlapping intervals merge.
    covered, gaps = ranges_and_gaps([(t("2025-12-01T00:00Z"), t("2025-12-02T10:00Z")),
                                     (t("2025-12-01T05:00Z"), t("2025-12-02T12:00Z")),
                                     (t("2025-12-02T12:01Z"), t("2025-12-03T00:00Z"))])
    assert covered == [(t("2025-12-01T00:00Z"), t("2025-12-02T12:00Z")),
                       (t("2025-12-02T12:01Z"), t("2025-12-03T00:00Z"))]
    assert [(g.start, g.end, g.trading_minutes) for g in gaps] == [(t("2025-12-02T12:00Z"), t("2025-12-02T12:01Z"), 1)]
    # A gap across the daily halt counts only the open minutes, and is named from open minute to open minute.
    _covered, [gap] = ranges_and_gaps([(t("2025-12-01T00:00Z"), t("2025-12-02T21:00Z")),
                                       (t("2025-12-03T01:00Z"), t("2025-12-04T00:00Z"))])
    assert (gap.start, gap.end, gap.trading_minutes) == (t("2025-12-02T21:00Z"), t("2025-12-03T01:00Z"), 60 + 120)


@pytest.fixture(scope="module")
def sqlite_filled(tmp_path_factory):
    """A small SQLite database of one demo run (for the option checks, which need a database to name symbols)."""
    cwd = tmp_path_factory.mktemp("status-options")
    url = f"sqlite:///{cwd / 'market.sqlite'}"
    done = engine(cwd, url, "symbol=ES", "stages=[registry,ingest]", "window.start=2025-12-01",
                  "window.end=2025-12-02")
    assert done.returncode == 0, done.stdout + done.stderr
    return url, cwd


def test_the_run_row_records_window_detector_and_adjustment(filled):
    url, _cwd, runs = filled
    rows = {r["id"]: r for r in query(url, "SELECT * FROM engine_runs")}
    sweep = rows[runs["sweep_nq"]]
    assert _ts(sweep["window_start"]) == utc("2025-12-07T23:00Z")
    assert _ts(sweep["window_end"]) == utc("2025-12-10T00:00Z")
    assert (sweep["detector"], sweep["detector_params"], sweep["adjustment"]) == (
        "williams_fractals", params_json(WilliamsFractals(n=5)), "none")
    failed = rows[runs["failed"]]
    assert (failed["detector_params"], failed["adjustment"]) == (params_json(WilliamsFractals(n=3)), "ratio")


def _ts(value) -> datetime:
    """A timestamp as either database returns it from a plain query."""
    return utc(value) if isinstance(value, str) else value.astimezone(UTC)


def _iso(value) -> str:
    return _ts(value).isoformat(timespec="seconds").replace("+00:00", "Z")


def _bind(url: str, text: str):
    return utc(text).strftime("%Y-%m-%d %H:%M:%S+00:00") if url.startswith("sqlite") else utc(text)


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_covered_sessions_without_quality_rows_are_counted_and_unknown(filled):
    """An ingest older than session quality left no rows: its covered sessions are counted and drawn as unknown."""
    url, _cwd, _runs = filled
    db = create_db_engine(url)
    try:
        with db.connect() as conn:
            trans = conn.begin()
            conn.execute(sa.text("DELETE FROM session_quality WHERE symbol = :s AND trade_date IN (:a, :b)"),
                         {"s": ES, "a": date(2025, 12, 2), "b": date(2025, 12, 8)})
            es = symbol_status(conn, ES)
            trans.rollback()
    finally:
        db.dispose()
    assert es.sessions.without_quality == 2
    assert es.days.share[date(2025, 12, 2)] is None and es.days.share[date(2025, 12, 8)] is None
    assert es.days.share[date(2025, 12, 3)] > 0.9
    assert date(2025, 12, 2) not in {d.trade_date for d in es.missing_sessions}


def test_the_database_comes_from_conf_local_as_for_a_job(sqlite_filled, tmp_path, capsys, monkeypatch):
    url, _cwd = sqlite_filled
    (tmp_path / "conf" / "local").mkdir(parents=True)
    (tmp_path / "conf" / "local" / "default.yaml").write_text(f"db:\n  url: {url}\n")
    status = view_json(capsys, monkeypatch, tmp_path, "status", "--no-png")
    assert status["database"] == url and [s["symbol"] for s in status["symbols"]] == [ES]
    code, out = view(capsys, monkeypatch, tmp_path, "runs", "db.url=sqlite:///elsewhere.sqlite")
    assert code == 2 and "no database at elsewhere.sqlite" in out  # the command line overrides conf/local
