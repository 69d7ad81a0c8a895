"""Symbol registry: seeded idempotently, user edits kept, resolution order config > registry > conf/ defaults."""

import logging

import pytest
import sqlalchemy as sa

from engine.config import EngineConfig
from engine.db import registry
from engine.errors import EngineError
from engine.symbols import ADD_SYMBOL_SQL, resolve_symbol, seed_rows

log = logging.getLogger("test")


def cfg(**fields) -> EngineConfig:
    return EngineConfig(**fields)


def test_seeded_with_the_four_equity_index_minis(db):
    rows = {r["internal_symbol"]: r for r in registry.all_rows(db)}
    assert set(rows) == {"GLBX.MDP3:NQ", "GLBX.MDP3:ES", "GLBX.MDP3:YM", "GLBX.MDP3:RTY"}
    for symbol, row in rows.items():
        assert row["dataset"] == "GLBX.MDP3" and row["root"] == symbol.split(":")[1]
        assert (row["roll_rule"], row["rank"], row["schema"], row["stype_in"]) == ("v", 0, "ohlcv-1m", "continuous")
        assert row["is_active"] is True


def test_reseeding_never_overwrites_a_row_a_user_edited(db):
    with db.begin() as conn:
        conn.execute(sa.text("UPDATE symbol_registry SET roll_rule='c', rank=1 WHERE root='ES'"))
    defaults = EngineConfig().registry.defaults
    assert registry.insert_missing(db, seed_rows(defaults, ["NQ", "ES", "YM", "RTY"])) == 0
    assert registry.insert_missing(db, seed_rows(defaults, ["NQ", "ES", "YM", "RTY"])) == 0
    es = registry.registry_row(db, "GLBX.MDP3:ES")
    assert (es["roll_rule"], es["rank"]) == ("c", 1)
    assert len(registry.all_rows(db)) == 4


def test_seeding_adds_missing_symbols_once(db):
    defaults = EngineConfig().registry.defaults
    assert registry.insert_missing(db, seed_rows(defaults, ["NQ", "CL"])) == 1
    assert registry.insert_missing(db, seed_rows(defaults, ["NQ", "CL"])) == 0
    assert registry.registry_row(db, "GLBX.MDP3:CL")["root"] == "CL"


def test_resolves_from_registry_and_names_the_databento_symbol(db, caplog):
    with caplog.at_level(logging.INFO):
        resolved = resolve_symbol(db, cfg(symbol="NQ"), log)
    assert resolved.internal_symbol == "GLBX.MDP3:NQ" and resolved.continuous == "NQ.v.0"
    assert resolved.origin == {"roll_rule": "registry", "rank": "registry", "schema": "registry",
                               "stype_in": "registry"}
    assert "roll_rule from registry" in caplog.text


def test_config_roll_rule_and_rank_beat_the_registry(db):
    resolved = resolve_symbol(db, cfg(symbol="GLBX.MDP3:ES", roll_rule="c", rank=1), log)
    assert resolved.continuous == "ES.c.1"
    assert resolved.origin["roll_rule"] == "config" and resolved.origin["rank"] == "config"


def test_symbol_added_with_the_documented_sql_works_and_takes_conf_defaults(db, caplog):
    with db.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO symbol_registry (internal_symbol, dataset, root, roll_rule, rank, is_active) "
            "VALUES ('GLBX.MDP3:CL', 'GLBX.MDP3', 'CL', 'v', 0, TRUE)"
        )
    with caplog.at_level(logging.INFO):
        resolved = resolve_symbol(db, cfg(symbol="CL"), log)
    assert resolved.continuous == "CL.v.0"
    assert (resolved.schema, resolved.stype_in) == ("ohlcv-1m", "continuous")
    assert resolved.origin["schema"] == "defaults" and resolved.origin["roll_rule"] == "registry"
    assert "schema from defaults" in caplog.text


def test_unknown_symbol_lists_the_known_ones_and_how_to_add(db):
    with pytest.raises(EngineError) as err:
        resolve_symbol(db, cfg(symbol="ZN"), log)
    message = str(err.value)
    assert "unknown symbol 'GLBX.MDP3:ZN'" in message
    for known in ("GLBX.MDP3:ES", "GLBX.MDP3:NQ", "GLBX.MDP3:RTY", "GLBX.MDP3:YM"):
        assert known in message
    assert ADD_SYMBOL_SQL.format(symbol="GLBX.MDP3:ZN", dataset="GLBX.MDP3", root="ZN") in message


def test_inactive_symbol_is_refused_with_how_to_enable(db):
    with db.begin() as conn:
        conn.execute(sa.text("UPDATE symbol_registry SET is_active = FALSE WHERE root = 'YM'"))
    with pytest.raises(EngineError, match="inactive") as err:
        resolve_symbol(db, cfg(symbol="YM"), log)
    assert "UPDATE symbol_registry SET is_active = TRUE WHERE internal_symbol = 'GLBX.MDP3:YM'" in str(err.value)
