"""An outright contract as its own series (GLBX.MDP3:ESU4, stype_in raw_symbol): seeded from registry.seed,
resolved, shown by the registry stage; roll settings refused; continuous rows unchanged (SQLite and PostgreSQL)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from engine.config import DbConfig, EngineConfig, PolicyConfig, RegistryConfig, WindowConfig, normalize_symbol
from engine.console import console
from engine.context import RunRecord, StageContext
from engine.db import registry, runs
from engine.errors import EngineError
from engine.job_plugins import packaged_node
from engine.plan import _symbol_from_conf
from engine.provenance import CodeVersion
from engine.stages import registry as registry_stage
from engine.symbols import ADD_OUTRIGHT_SQL, ADD_SYMBOL_SQL, outright_root, resolve_symbol, seed_rows
from engine.windows import Window

log = logging.getLogger("test")
SEED = ["NQ", "ES", "ESU4"]
CONTINUOUS = ("v", 0, "ohlcv-1m", "continuous")


def cfg(**fields) -> EngineConfig:
    return EngineConfig(registry=RegistryConfig(seed=list(SEED)), **fields)


def seed(db) -> int:
    return registry.insert_missing(db, seed_rows(EngineConfig().registry.defaults, SEED))


def test_outright_names_by_the_cme_month_code_pattern():
    for name, root in (("ESU4", "ES"), ("esu4", "ES"), ("RTYZ24", "RTY"), ("NQH5", "NQ"), ("6EU4", "6E"),
                       ("M2KU4", "M2K")):
        assert outright_root(name) == root, name
    for name in ("ES", "NQ", "RTY", "M2K", "6E", "ESU", "ESA4", "ESU456", "ESU4-ESZ4", "ES.v.0", "U4"):
        assert outright_root(name) is None, name
    assert normalize_symbol("ESU4", "GLBX.MDP3") == "GLBX.MDP3:ESU4"
    assert normalize_symbol("esu4", "GLBX.MDP3") == "GLBX.MDP3:ESU4"
    assert normalize_symbol("GLBX.MDP3:ESU4", "GLBX.MDP3") == "GLBX.MDP3:ESU4"


def test_seeding_an_outright_makes_a_raw_symbol_row_of_its_product_root(db):
    assert seed(db) == 1  # NQ and ES are there already
    row = registry.registry_row(db, "GLBX.MDP3:ESU4")
    assert row == {"internal_symbol": "GLBX.MDP3:ESU4", "dataset": "GLBX.MDP3", "root": "ES", "roll_rule": None,
                   "rank": None, "schema": "ohlcv-1m", "stype_in": "raw_symbol", "is_active": True}
    assert seed(db) == 0
    for symbol in ("GLBX.MDP3:NQ", "GLBX.MDP3:ES"):  # continuous rows unchanged
        row = registry.registry_row(db, symbol)
        assert (row["roll_rule"], row["rank"], row["schema"], row["stype_in"]) == CONTINUOUS


@pytest.mark.parametrize("spelling", ["GLBX.MDP3:ESU4", "ESU4", "esu4"])
def test_an_outright_resolves_to_its_contract(db, caplog, spelling):
    seed(db)
    with caplog.at_level(logging.INFO):
        resolved = resolve_symbol(db, cfg(symbol=spelling), log)
    assert resolved.internal_symbol == "GLBX.MDP3:ESU4" and resolved.is_outright
    assert (resolved.dataset, resolved.root, resolved.databento_symbol) == ("GLBX.MDP3", "ES", "ESU4")
    assert (resolved.roll_rule, resolved.rank, resolved.schema, resolved.stype_in) == (
        None, None, "ohlcv-1m", "raw_symbol")
    assert resolved.origin == {"schema": "registry", "stype_in": "registry"}
    assert EngineConfig().registry.tick_sizes[resolved.root] == 0.25  # the product's tick applies
    assert "GLBX.MDP3:ESU4 -> ESU4 (one contract of ES" in caplog.text
    with pytest.raises(ValueError, match="no continuous symbol"):
        _ = resolved.continuous
    with pytest.raises(ValueError, match="no roll rule"):
        _ = resolved.rule


def test_continuous_symbols_resolve_as_before_beside_an_outright(db, caplog):
    seed(db)
    with caplog.at_level(logging.INFO):
        es = resolve_symbol(db, cfg(symbol="ES"), log)
    assert not es.is_outright and (es.continuous, es.databento_symbol, es.rule) == ("ES.v.0", "ES.v.0", "v.0")
    assert es.origin == dict.fromkeys(("roll_rule", "rank", "schema", "stype_in"), "registry")
    assert "roll_rule from registry, rank from registry" in caplog.text
    nq = resolve_symbol(db, cfg(symbol="NQ", roll_rule="c", rank=1), log)
    assert nq.continuous == "NQ.c.1" and nq.origin["roll_rule"] == "config"


@pytest.mark.parametrize(("overrides", "named"), [({"roll_rule": "c"}, "roll_rule=c"), ({"rank": 1}, "rank=1"),
                                                  ({"roll_rule": "v", "rank": 0}, "roll_rule=v rank=0")])
def test_roll_settings_for_an_outright_are_refused(db, overrides, named):
    seed(db)
    with pytest.raises(EngineError) as err:
        resolve_symbol(db, cfg(symbol="ESU4", **overrides), log)
    message = str(err.value)
    assert f"{named} does not apply to symbol 'GLBX.MDP3:ESU4': it is one contract" in message
    assert f"symbol=GLBX.MDP3:ES {named}" in message  # the continuous series they may have meant


def test_an_outright_row_with_a_roll_rule_is_refused(db):
    seed(db)
    with db.begin() as conn:
        conn.execute(sa.text("UPDATE symbol_registry SET roll_rule = 'v' WHERE internal_symbol = 'GLBX.MDP3:ESU4'"))
    with pytest.raises(EngineError, match="has roll_rule=v: roll rules do not apply") as err:
        resolve_symbol(db, cfg(symbol="ESU4"), log)
    fix = "UPDATE symbol_registry SET roll_rule = NULL, rank = NULL WHERE internal_symbol = 'GLBX.MDP3:ESU4';"
    assert fix in str(err.value)
    with db.begin() as conn:
        conn.exec_driver_sql(fix)
    assert resolve_symbol(db, cfg(symbol="ESU4"), log).databento_symbol == "ESU4"


def test_a_contract_name_registered_as_a_continuous_series_is_refused(db):
    with db.begin() as conn:  # the old hint's SQL for a contract name: a continuous row
        conn.exec_driver_sql(ADD_SYMBOL_SQL.format(symbol="GLBX.MDP3:NQZ4", dataset="GLBX.MDP3", root="NQ"))
    with pytest.raises(EngineError, match="named like one contract but its registry row has stype_in 'continuous'"):
        resolve_symbol(db, cfg(symbol="NQZ4"), log)


def test_unknown_outright_hints_sql_that_registers_it(db):
    with pytest.raises(EngineError) as err:
        resolve_symbol(db, cfg(symbol="NQZ4"), log)
    hint = ADD_OUTRIGHT_SQL.format(symbol="GLBX.MDP3:NQZ4", dataset="GLBX.MDP3", root="NQ")
    message = str(err.value)
    assert "unknown symbol 'GLBX.MDP3:NQZ4'" in message and hint in message and "registry.seed" in message
    with db.begin() as conn:
        conn.exec_driver_sql(hint.rstrip(";"))
    resolved = resolve_symbol(db, cfg(symbol="NQZ4"), log)
    assert (resolved.root, resolved.databento_symbol, resolved.is_outright) == ("NQ", "NQZ4", True)
    assert resolved.origin == {"schema": "defaults", "stype_in": "registry"}
    with pytest.raises(EngineError) as err:  # a root still gets the continuous hint
        resolve_symbol(db, cfg(symbol="ZN"), log)
    assert ADD_SYMBOL_SQL.format(symbol="GLBX.MDP3:ZN", dataset="GLBX.MDP3", root="ZN") in str(err.value)


def test_registry_stage_seeds_and_resolves_an_outright(db, tmp_path):
    day = datetime(2024, 7, 1, tzinfo=UTC)
    config = cfg(
        db=DbConfig(url=db.url.render_as_string(hide_password=False)), source=packaged_node("source", "synthetic"),
        window=WindowConfig(start="2024-07-01T00:00:00Z", end="2024-07-02T00:00:00Z"),
        policy=PolicyConfig(name="clean_only"), detector=packaged_node("detector", "williams_fractals"),
        stages=["registry"], symbol="ESU4",
    )
    run_id = runs.start_run(db, symbol="ESU4", stages='["registry"]', run_dir=str(tmp_path), git_hash=None,
                            git_dirty=None, logic_version="test", config_sha256="0" * 64, overrides="[]",
                            data_kind="demo")
    ctx = StageContext(cfg=config, window=Window(day, day.replace(day=2)), db=db,
                       run=RunRecord(run_id, tmp_path, CodeVersion(None, None, "test")), log=log)
    with console.capture() as captured:
        result = registry_stage.run(ctx)
    assert (result.seeded, result.registered) == (1, 5)
    assert (result.symbol, result.databento_symbol) == ("GLBX.MDP3:ESU4", "ESU4")
    assert result.resolved_from == {"schema": "registry", "stype_in": "registry"}
    assert "GLBX.MDP3:ESU4 (ESU4, from" in result.describe()
    line = next(line for line in captured.get().splitlines() if "GLBX.MDP3:ESU4" in line)
    assert [cell.strip() for cell in line.strip("│┃ ").split("│")] == [
        "GLBX.MDP3:ESU4", "GLBX.MDP3", "ES", "NULL", "NULL", "ohlcv-1m", "raw_symbol", "True"]


def test_a_dry_run_before_the_registry_exists_plans_the_outright_as_seeded():
    resolved = _symbol_from_conf(cfg(symbol="ESU4"))
    assert (resolved.internal_symbol, resolved.root, resolved.databento_symbol) == ("GLBX.MDP3:ESU4", "ES", "ESU4")
    assert resolved.is_outright and resolved.origin == {"schema": "defaults", "stype_in": "defaults"}
    assert _symbol_from_conf(cfg(symbol="ES")).continuous == "ES.v.0"
    with pytest.raises(EngineError, match="does not apply"):
        _symbol_from_conf(cfg(symbol="ESU4", rank=1))
