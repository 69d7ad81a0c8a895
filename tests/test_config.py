"""Config composition and validation: every file in conf/ composes; bad input stops the run clearly."""

from datetime import UTC, datetime
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from engine.config import EngineConfig, normalize_symbol, register_configs, to_typed
from engine.errors import EngineError
from engine.job_plugins import load_plugins
from engine.windows import parse_utc

CONF = Path(__file__).resolve().parents[1] / "engine" / "conf"
# Keys a group option leaves for the person running it to fill in.
REQUIRED_FROM_USER = {"source=dbn_file": ["source.paths=[/tmp/some.dbn.zst]"]}


def group_options():
    for group_dir in sorted(p for p in CONF.iterdir() if p.is_dir() and p.name not in {"hydra", "local"}):
        for option in sorted(group_dir.glob("*.yaml")):
            # A stage option is selected by naming it in the list of stages.
            yield f"stages=[{option.stem}]" if group_dir.name == "stage" else f"{group_dir.name}={option.stem}"


@pytest.fixture(scope="module")
def hydra_conf():
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield


def test_conf_has_every_group_the_issue_names():
    options = set(group_options())
    for expected in ("db=sqlite", "db=postgres", "source=synthetic", "policy=clean_only", "policy=allow_legacy",
                     "window=demo", "detector=williams_fractals"):
        assert expected in options


@pytest.mark.parametrize("option", list(group_options()))
def test_every_config_file_composes_and_validates(hydra_conf, option):
    cfg = compose("config", overrides=[option, *REQUIRED_FROM_USER.get(option, [])])
    typed = to_typed(cfg)
    assert isinstance(typed, EngineConfig)
    assert "${" not in OmegaConf.to_yaml(cfg, resolve=True)
    load_plugins(typed)  # every plugin of the composition is created from its YAML


def test_default_config_is_demo_sqlite_clean_only(hydra_conf):
    typed = to_typed(compose("config"))
    assert typed.db.url.startswith("sqlite:///") and typed.db.url.endswith("demo.sqlite")
    plugins = load_plugins(typed)
    assert plugins.source.name == "synthetic" and typed.policy.allow_legacy is False
    assert plugins.detector.obj.n == 5


def test_market_sources_use_another_sqlite_file_than_demo(hydra_conf):
    demo = to_typed(compose("config")).db.url
    market = to_typed(compose("config", overrides=REQUIRED_FROM_USER["source=dbn_file"] + ["source=dbn_file"]))
    assert market.db.url != demo and market.db.url.endswith("market.sqlite")


@pytest.mark.parametrize(
    "overrides",
    [
        ["symbol=NQ"],
        ["symbol=GLBX.MDP3:NQ"],
        ["db.url=postgresql+psycopg://someone@db.example:5432/market"],
        ["window.start=2025-11-30T23:00:00Z", "window.end=2025-12-02T05:00:00Z"],
        ["policy=allow_legacy"],
        ["stages=[registry]"],
    ],
)
def test_documented_overrides_compose(hydra_conf, overrides):
    typed = to_typed(compose("config", overrides=overrides))
    for override in overrides:
        key, _, value = override.partition("=")
        if key in {"symbol", "db.url", "window.start", "window.end"}:
            assert str(OmegaConf.select(OmegaConf.structured(typed), key)) == value
    if "policy=allow_legacy" in overrides:
        assert typed.policy.allow_legacy is True


def test_bare_date_is_midnight_utc_and_z_is_utc():
    assert parse_utc("2025-12-01", "window.start") == datetime(2025, 12, 1, tzinfo=UTC)
    assert parse_utc("2025-11-30T23:00:00Z", "window.start") == datetime(2025, 11, 30, 23, tzinfo=UTC)
    assert parse_utc("2025-11-30T18:00:00-05:00", "window.start") == datetime(2025, 11, 30, 23, tzinfo=UTC)


def test_symbol_normalisation():
    assert normalize_symbol("NQ", "GLBX.MDP3") == "GLBX.MDP3:NQ"
    assert normalize_symbol("GLBX.MDP3:NQ", "GLBX.MDP3") == "GLBX.MDP3:NQ"
    assert normalize_symbol("es", "GLBX.MDP3") == "GLBX.MDP3:ES"
    with pytest.raises(EngineError, match="not a symbol"):
        normalize_symbol("NQ.v.0", "GLBX.MDP3")


# ----------------------------------------------------------------------------------------------
# The same checks through the real command line: message names the key, exit code is non-zero

BAD_INPUT = [
    (["windw.start=2025-01-01"], "unknown config key 'windw.start' (did you mean 'window.start'?)"),
    (["detector.nn=3"], "unknown config key 'detector.nn' (did you mean 'detector.n'?)"),
    (["detector.n=abc"], "detector.n"),
    (["detector.swing_high=UP"], "detector.swing_high takes one of BULL, BEAR"),
    (["policy=allow_legacyy"], "allow_legacyy"),
    (["window.start=2025-12-02", "window.end=2025-12-01"], "window.end (2025-12-01T00:00:00Z) is not after"),
    (["window.start=yesterday"], "window.start='yesterday' is not a date"),
    (["stages=[registry,ingset]"], "unknown stage 'ingset'"),
    (["db.url=mysql://root@localhost/x"], "db.url backend 'mysql' is not supported"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_INPUT, ids=[o[0][0] for o in BAD_INPUT])
def test_bad_config_stops_with_named_key_and_nonzero_exit(engine_cli, overrides, message):
    run = engine_cli(*overrides)
    assert run.returncode != 0
    assert message in run.output
    assert not (run.cwd / "data").exists(), "nothing may be written to a database on bad config"


def test_unknown_stage_error_lists_known_stages(engine_cli):
    run = engine_cli("stages=[registry,ingset]")
    assert run.returncode == 2
    assert "use stages from: registry" in run.output


def test_cfg_job_resolve_prints_resolved_config(engine_cli):
    run = engine_cli("--cfg", "job", "--resolve", "symbol=ES")
    assert run.returncode == 0
    cfg = OmegaConf.create(run.stdout)
    assert cfg.symbol == "ES"
    assert cfg.db.url.endswith("/demo.sqlite")
    assert "${" not in run.stdout
    assert not (run.cwd / "runs").exists()


def test_configs_found_when_started_by_path_from_another_folder(engine_cli, tmp_path):
    import subprocess
    import sys

    main_py = Path(__file__).resolve().parents[1] / "engine" / "__main__.py"
    proc = subprocess.run([sys.executable, str(main_py), "--cfg", "job"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert OmegaConf.create(proc.stdout).detector.n == 5


def test_machine_local_override_file_is_merged_last(engine_cli, tmp_path):
    local = tmp_path / "site" / "local"
    local.mkdir(parents=True)
    (local / "default.yaml").write_text("db:\n  url: sqlite:///from-local.sqlite\ndetector:\n  n: 7\n")
    run = engine_cli("--cfg", "job", f"hydra.searchpath=[file://{tmp_path / 'site'}]")
    assert run.returncode == 0, run.output
    cfg = OmegaConf.create(run.stdout)
    assert cfg.db.url == "sqlite:///from-local.sqlite"
    assert cfg.detector.n == 7
