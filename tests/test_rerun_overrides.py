"""Reruns never ignore what you typed: key overrides apply on top of the saved config and are recorded; group
selections, which would compose a new config, are refused before anything is written."""

from __future__ import annotations

import json

import pytest
import yaml
from sql_rows import all_tables, query

DAY = ["window.start=2025-12-09T00:00:00Z", "window.end=2025-12-10T00:00:00Z"]

pytestmark = pytest.mark.slow




@pytest.fixture
def saved_nq_run(engine_cli, db_url):
    first = engine_cli(f"db.url={db_url}", "symbol=NQ", "stages=[registry,ingest]", *DAY)
    assert first.returncode == 0, first.output
    return first


def test_key_overrides_apply_on_top_of_the_saved_config_and_are_recorded(engine_cli, db_url, saved_nq_run):
    rerun = engine_cli(f"rerun={saved_nq_run.run_dir}", "symbol=ES", "stages=[registry]")
    assert rerun.returncode == 0, rerun.output
    assert rerun.result["rerun_of"] == saved_nq_run.result["run_id"]
    assert list(rerun.result["stages"]) == ["registry"]
    assert rerun.result["rerun_overrides"] == ["symbol=ES", "stages=[registry]"]
    provenance = json.loads((rerun.run_dir / "provenance.json").read_text())
    assert provenance["rerun_overrides"] == ["symbol=ES", "stages=[registry]"]
    resolved = yaml.safe_load((rerun.run_dir / "resolved_config.yaml").read_text())
    saved = yaml.safe_load((saved_nq_run.run_dir / "resolved_config.yaml").read_text())
    assert (resolved["symbol"], resolved["stages"]) == ("ES", ["registry"])
    assert resolved["window"] == saved["window"] and resolved["db"] == saved["db"]  # the rest is the saved run's
    [row] = query(db_url, "SELECT symbol, stages, rerun_of FROM engine_runs WHERE id = :id", id=rerun.result["run_id"])
    assert (row["symbol"], json.loads(row["stages"]), row["rerun_of"]) == ("ES", ["registry"],
                                                                          saved_nq_run.result["run_id"])
    es_bars = query(db_url, "SELECT count(*) AS n FROM market_bars_ohlcv_1m_clean WHERE symbol LIKE '%ES'")
    assert es_bars == [{"n": 0}]  # no ingest ran
    assert "with symbol=ES stages=[registry]" in rerun.output


def test_a_plain_rerun_records_no_overrides(engine_cli, saved_nq_run):
    rerun = engine_cli(f"rerun={saved_nq_run.run_dir}", "force=true")
    assert rerun.returncode == 0, rerun.output
    assert rerun.result["rerun_overrides"] == [] and sorted(rerun.result["stages"]) == ["ingest", "registry"]


@pytest.mark.parametrize("selection", ["source=databento", "window=demo", "~detector"])
def test_a_group_selection_on_a_rerun_is_refused_before_anything_is_written(engine_cli, db_url, saved_nq_run,
                                                                            selection):
    before = all_tables(db_url)
    rerun = engine_cli(f"rerun={saved_nq_run.run_dir}", "symbol=ES", selection)
    assert rerun.returncode == 2, rerun.output
    assert "ERROR" in rerun.output and selection in rerun.output and "Fix:" in rerun.output
    assert "Traceback" not in rerun.output
    assert all_tables(db_url) == before


def test_a_rerun_takes_overrides_of_its_saved_sources_own_keys(engine_cli, db_url, dbn_fixtures):
    one, other = sorted(dbn_fixtures.glob("*.ohlcv-1m.dbn.zst"))[:2]
    first = engine_cli(f"db.url={db_url}", "source=dbn_file", f"source.paths=[{one}]", "stages=[registry]")
    assert first.returncode == 0, first.output
    # today's default source (synthetic) has no `paths`: the rerun is composed with the saved run's source
    rerun = engine_cli(f"rerun={first.run_dir}", f"source.paths=[{other}]")
    assert rerun.returncode == 0, rerun.output
    resolved = yaml.safe_load((rerun.run_dir / "resolved_config.yaml").read_text())
    assert (resolved["choices"]["source"], resolved["source"]["paths"]) == ("dbn_file", [str(other)])
    assert rerun.result["rerun_overrides"] == [f"source.paths=[{other}]"]


def test_a_run_saved_before_plugins_reruns_with_the_packaged_plugins(engine_cli, db_url, saved_nq_run, tmp_path):
    """A resolved config saved by an engine before sources and detectors were plugins (`source.name`, no
    `_target_`, no `choices`) reruns as the packaged options it named, with its saved parameters."""
    import shutil

    old = tmp_path / "old_run"
    shutil.copytree(saved_nq_run.run_dir, old)
    saved = yaml.safe_load((old / "resolved_config.yaml").read_text())
    saved.pop("choices"), saved.pop("stage")
    saved["source"] = {"name": "synthetic", "seed": 7, "missing_rate": 0.002, "data_kind": "demo",
                       "batch_size": 50000}
    saved["detector"] = {"name": "williams_fractals", "n": 6, "swing_high": "BEAR", "swing_low": "BULL"}
    (old / "resolved_config.yaml").write_text(yaml.safe_dump(saved))

    rerun = engine_cli(f"rerun={old}")
    assert rerun.returncode == 0, rerun.output
    resolved = yaml.safe_load((rerun.run_dir / "resolved_config.yaml").read_text())
    assert resolved["choices"] == {"source": "synthetic", "detector": "williams_fractals"}
    assert resolved["source"]["_target_"] == "engine.sources.synthetic.SyntheticSource"
    assert resolved["detector"] == {"_target_": "engine.detectors.williams_fractals.WilliamsFractals", "n": 6,
                                    "swing_high": "BEAR", "swing_low": "BULL"}
    ingest = rerun.result["stages"]["ingest"]
    assert ingest["bars_unchanged"] == ingest["bars_received"] > 0  # the same source parameters: the same bars
