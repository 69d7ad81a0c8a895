"""Dry runs: `dry_run=true` writes a deterministic plan.md, `dry_run.compare` diffs it against an earlier plan."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import pytest
from fake_databento import ohlcv_dbn
from hydra import compose, initialize_config_dir
from sql_rows import all_tables

import engine
from engine.config import expand_dry_run_argv, register_configs
from engine.sources.databento_api import RawRequest

THREE_DAYS = ["window.start=2025-12-09T00:00:00Z", "window.end=2025-12-12T00:00:00Z", "window.chunk=1d"]
UTC = dt.UTC


def files_under(folder: Path) -> dict[str, str]:
    """Every file under `folder` with its sha256."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def changes(plan_md: str) -> list[str]:
    """The +/- lines of the plan's "Changes since" diff (without the ---/+++ headers)."""
    section = plan_md.split("\n## Changes since ", 1)[1]
    return [line for line in section.splitlines()
            if line.startswith(("+", "-")) and not line.startswith(("+++", "---"))]


def dry_run(engine_cli, *overrides: str, run_dir: str):
    """Run a dry run into `run_dir`: the finished run, the text of its plan.md and its result.json."""
    run = engine_cli("dry_run=true", f"hydra.run.dir={run_dir}", *overrides)
    assert run.returncode == 0, run.output
    return run, (run.cwd / run_dir / "plan.md").read_text(), json.loads((run.cwd / run_dir / "result.json").read_text())


def land(data_dir: Path, start: dt.datetime, end: dt.datetime) -> Path:
    """A raw file where the Databento source lands the request for [start, end) of NQ.v.0."""
    req = RawRequest("GLBX.MDP3", "NQ.v.0", "ohlcv-1m", "continuous", start, end)
    path = req.landing_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(ohlcv_dbn(start=start, end=end, records=50, stride=29))
    return path


# -------------------------------------------------------------------------------------------------- the key


@pytest.mark.parametrize(("argv", "enabled", "compare"), [
    ([], False, None),
    (["dry_run=true"], True, None),
    (["dry_run=false"], False, None),
    (["dry_run=true", "dry_run.compare=runs/x"], True, "runs/x"),
    (["dry_run.compare=runs/x"], False, "runs/x"),
])
def test_dry_run_true_false_and_compare_compose(argv, enabled, compare):
    register_configs()
    with initialize_config_dir(str(Path(engine.__file__).parent / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=expand_dry_run_argv(argv))
    assert cfg.dry_run.enabled is enabled and cfg.dry_run.compare == compare


# -------------------------------------------------------------------------------------------------- plan.md


@pytest.mark.slow
def test_the_same_config_gives_the_same_plan_bytes_and_writes_nothing_else(engine_cli, db_url, tmp_path):
    job = [f"db.url={db_url}", "stages=[registry,ingest,detect]", *THREE_DAYS]
    seeded = engine_cli(f"db.url={db_url}", "stages=[registry]")
    assert seeded.returncode == 0, seeded.output
    before, files = all_tables(db_url), files_under(tmp_path)

    first, text, result = dry_run(engine_cli, *job, run_dir="plans/a")
    _, again, _ = dry_run(engine_cli, *job, run_dir="plans/b")

    assert text == again
    assert all_tables(db_url) == before, "a dry run writes nothing to the database"
    after = files_under(tmp_path)
    assert {f for f in after if not f.startswith(("plans/a/", "plans/b/"))} == set(files)
    assert all(after[f] == digest for f, digest in files.items()), "nothing outside its run directory changes"
    assert "plans/a" not in text and str(tmp_path) not in text.replace(db_url, "")
    assert "| Databento symbol | NQ.v.0 (roll_rule v from registry, rank 0 from registry," in text
    assert "| chunks | 3 (window.chunk=1d) |" in text and "| schema | at head (" in text
    assert "| 3 | 2025-12-11T00:00:00Z | 2025-12-12T00:00:00Z |" in text
    assert "| detect | market_bars_ohlcv_1m_clean, clean_coverage, clean_ingest_runs, stage_chunks |" in text
    assert "## Resolved config" in text and "\ndry_run:" not in text.split("```yaml")[1]
    assert result["plan_file"].endswith("plans/a/plan.md") and "plans/a/plan.md" in first.output


@pytest.mark.slow
def test_compare_shows_exactly_the_changed_lines(engine_cli):
    dry_run(engine_cli, *THREE_DAYS, run_dir="plans/base")

    _, n7, _ = dry_run(engine_cli, *THREE_DAYS, "detector.n=7", "dry_run.compare=plans/base", run_dir="plans/n7")
    assert "\n## Changes since plans/base\n" in n7
    assert changes(n7) == ["-| detector | williams_fractals (n=5, swing_high=BEAR, swing_low=BULL) |",
                             "+| detector | williams_fractals (n=7, swing_high=BEAR, swing_low=BULL) |",
                           "-  'n': 5", "+  'n': 7"]

    longer = ["window.end=2025-12-13T00:00:00Z" if o.startswith("window.end=") else o for o in THREE_DAYS]
    _, text, _ = dry_run(engine_cli, *longer, "dry_run.compare=plans/base/plan.md", run_dir="plans/longer")
    assert changes(text) == [
        "-# Plan: GLBX.MDP3:NQ [2025-12-09T00:00:00Z, 2025-12-12T00:00:00Z)",
        "+# Plan: GLBX.MDP3:NQ [2025-12-09T00:00:00Z, 2025-12-13T00:00:00Z)",
        "-| window | [2025-12-09T00:00:00Z, 2025-12-12T00:00:00Z) |",
        "-| chunks | 3 (window.chunk=1d) |",
        "+| window | [2025-12-09T00:00:00Z, 2025-12-13T00:00:00Z) |",
        "+| chunks | 4 (window.chunk=1d) |",
        "+| 4 | 2025-12-12T00:00:00Z | 2025-12-13T00:00:00Z |",
        "-  end: '2025-12-12T00:00:00Z'",
        "+  end: '2025-12-13T00:00:00Z'",
    ]

    # The same config again, compared with a plan that has a Changes section of its own: that section is no part
    # of the comparison, and without dry_run=true the compare key alone makes it a dry run.
    same = engine_cli(*THREE_DAYS, "detector.n=7", "dry_run.compare=plans/n7", "hydra.run.dir=plans/same")
    assert same.returncode == 0, same.output
    text = (same.cwd / "plans/same/plan.md").read_text()
    result = json.loads((same.cwd / "plans/same/result.json").read_text())
    assert text.endswith("\n## Changes since plans/n7\n\nNo changes.\n")
    assert result["dry_run"] is True and result["plan"]["changes"] == 0
    assert "none since plans/n7" in same.output
    assert text.split("\n## Changes since")[0] == n7.split("\n## Changes since")[0], "same plan, same bytes"


@pytest.mark.parametrize("target", ["missing", "empty_dir", "not_a_plan", "binary"])
def test_a_compare_path_that_holds_no_plan_is_refused(engine_cli, tmp_path, target):
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "not_a_plan").write_text("hello\n")
    (tmp_path / "binary").write_bytes(b"\xff\xfe\x00plan")
    run = engine_cli("dry_run=true", f"dry_run.compare={target}", "hydra.run.dir=plans/x")
    assert run.returncode == 2, run.output
    assert f"dry_run.compare={target}" in run.output and "Fix:" in run.output
    assert "Traceback" not in run.output
    assert not (tmp_path / "plans/x/plan.md").exists(), "nothing half-written"


# -------------------------------------------------------------------------------------------------- cost


@pytest.mark.slow
def test_offline_cost_is_unknown_and_a_landed_raw_file_is_reused_at_no_cost(engine_cli, tmp_path, monkeypatch):
    monkeypatch.delenv("DATABENTO_API_KEY", raising=False)
    job = ["source=databento", "source.definitions=false", "stages=[registry,ingest,detect]", *THREE_DAYS]
    landed = land(tmp_path / "data", dt.datetime(2025, 12, 10, tzinfo=UTC), dt.datetime(2025, 12, 11, tzinfo=UTC))

    _, text, result = dry_run(engine_cli, *job, run_dir="plans/offline")
    assert ("| Databento cost | unknown (DATABENTO_API_KEY not set) for 2 of 3 requests; "
            "1 landed raw file reused at $0 |") in text
    assert "| 1 | 2025-12-09T00:00:00Z | 2025-12-10T00:00:00Z | to download | unknown |" in text
    assert "| 2 | 2025-12-10T00:00:00Z | 2025-12-11T00:00:00Z | landed: reused | $0.0000 |" in text
    assert "Raw files land under `data/raw/GLBX.MDP3/ohlcv-1m/NQ.v.0/`." in text
    assert result["plan"]["cost_usd"] == "unknown (DATABENTO_API_KEY not set)"
    assert [r["landed"] for r in result["plan"]["raw_files"]] == [False, True, False]
    assert result["plan"]["raw_files"][1]["path"] == landed.relative_to(tmp_path).as_posix()

    for day in (9, 11):  # every file landed: the plan costs nothing, and needs no key to say so
        land(tmp_path / "data", dt.datetime(2025, 12, day, tzinfo=UTC), dt.datetime(2025, 12, day + 1, tzinfo=UTC))
    _, text, result = dry_run(engine_cli, *job, run_dir="plans/landed")
    assert "| Databento cost | $0.0000 for 0 of 3 requests; 3 landed raw files reused at $0 |" in text
    assert result["plan"]["cost_usd"] == 0.0


def test_a_long_plan_lists_its_first_and_last_chunks_with_a_count(engine_cli):
    _, text, _ = dry_run(engine_cli, "window.start=2025-09-01", "window.end=2025-11-30", "window.chunk=1d",
                      run_dir="plans/long")
    rows = [line for line in text.split("## Chunks")[1].split("## Resolved config")[0].splitlines()
            if line.startswith("| ") and not line.startswith("| #")]
    assert len(rows) == 21 and rows[10] == "| … | 70 more chunks | |"
    assert rows[0].startswith("| 1 | 2025-09-01T00:00:00Z ") and rows[-1].startswith("| 90 | 2025-11-29T00:00:00Z ")
    assert "| chunks | 90 (window.chunk=1d) |" in text


@pytest.mark.slow
def test_a_rerun_can_be_planned_also_from_a_run_saved_when_dry_run_was_a_bool(engine_cli, tmp_path):
    first = engine_cli(f"db.url=sqlite:///{tmp_path / 'engine.sqlite'}", "stages=[registry]")
    assert first.returncode == 0, first.output
    saved = first.run_dir / "resolved_config.yaml"
    text = saved.read_text()
    assert "dry_run:\n  enabled: false\n  compare: null\n" in text
    saved.write_text(text.replace("dry_run:\n  enabled: false\n  compare: null\n", "dry_run: false\n"))

    _, plan_md, result = dry_run(engine_cli, f"rerun={first.run_dir}", run_dir="plans/rerun")
    assert result["status"] == "success" and result["dry_run"] is True
    assert "| stages | registry |" in plan_md and f"rerun: {first.run_dir}" in plan_md


@pytest.mark.slow
def test_the_tables_a_plan_says_a_run_writes_are_the_tables_it_writes(engine_cli, tmp_path):
    url = f"sqlite:///{tmp_path / 'engine.sqlite'}"
    job = [f"db.url={url}", "stages=[registry,ingest,detect]", *THREE_DAYS]
    _, _, result = dry_run(engine_cli, *job, run_dir="plans/tables")
    declared = {t for used in result["plan"]["tables"].values() for t in used["writes"]}

    run = engine_cli(*job)
    assert run.returncode == 0, run.output
    written = {name for name, rows in all_tables(url).items() if rows}
    assert written <= declared
    assert declared - written == {"clean_ingest_quarantine"}, "no bar of the demo data is quarantined"


@pytest.mark.slow
def test_with_a_key_each_request_not_landed_shows_its_quote(engine_cli, fake_databento, tmp_path):
    fake = fake_databento("db-PLANTESTKEY0000000000000", records=50, stride=29, subprocess=True)
    land(tmp_path / "data", dt.datetime(2025, 12, 10, tzinfo=UTC), dt.datetime(2025, 12, 11, tzinfo=UTC))
    _, text, result = dry_run(engine_cli, "source=databento", f"source.gateway={fake.gateway}",
                              "source.definitions=false", "stages=[registry,ingest]", *THREE_DAYS,
                              run_dir="plans/online")
    assert "| Databento cost | $0.5000 for 2 of 3 requests; 1 landed raw file reused at $0 |" in text
    assert "| 1 | 2025-12-09T00:00:00Z | 2025-12-10T00:00:00Z | to download | $0.2500 |" in text
    assert "| 2 | 2025-12-10T00:00:00Z | 2025-12-11T00:00:00Z | landed: reused | $0.0000 |" in text
    assert result["plan"]["cost_usd"] == pytest.approx(0.5)
    assert "db-PLANTESTKEY" not in text


def test_the_plan_shows_the_adjustment_and_the_rolls_it_reads(engine_cli):
    job = ["stages=[detect,chart]", "window.start=2025-12-09T00:00:00Z", "window.end=2025-12-10T00:00:00Z"]
    _, plain, result = dry_run(engine_cli, *job, run_dir="plans/none")
    assert "| adjustment | none (the contracts' own prices) |" in plain
    assert result["plan"]["tables"]["detect"]["reads"] == ["market_bars_ohlcv_1m_clean", "clean_coverage",
                                                           "clean_ingest_runs"]
    assert result["plan"]["tables"]["chart"]["reads"] == ["market_bars_ohlcv_1m_clean", "contract_rolls",
                                                          "triangle_events_v1"]
    _, text, result = dry_run(engine_cli, *job, "adjust=difference", "dry_run.compare=plans/none",
                              run_dir="plans/difference")
    assert result["plan"]["adjustment"].startswith("difference (back-adjusted at every roll to the latest contract")
    assert changes(text) == [
        "-| adjustment | none (the contracts' own prices) |",
        f"+| adjustment | {result['plan']['adjustment']} |",
        "-| detect | market_bars_ohlcv_1m_clean, clean_coverage, clean_ingest_runs | triangle_events_v1 |",
        "+| detect | market_bars_ohlcv_1m_clean, contract_rolls, clean_coverage, clean_ingest_runs | "
        "triangle_events_v1 |",
        "-adjust: none",
        "+adjust: difference",
    ]
