"""Issue 14 item 5: symbology up front. `python -m engine` against the fake gateway: a symbol Databento does not
know, or one mapped on only part of the window, stops with exit 2 before anything is priced or bought; a mapped
one lands with the checked mappings in its sidecar."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from fake_databento import GET_COST, GET_RANGE, GET_RECORD_COUNT, RESOLVE, FakeDatabento

KEY = "db-SYMBOLOGYTESTKEY00000000000"
WINDOW = ["window.start=2025-12-09T00:00:00Z", "window.end=2025-12-12T00:00:00Z"]


def source(fake: FakeDatabento, db_url: str) -> list[str]:
    return ["source=databento", f"source.gateway={fake.gateway}", f"db.url={db_url}", "stages=[registry,ingest]"]


def nothing_priced_or_bought(fake: FakeDatabento) -> None:
    assert fake.seen(GET_COST) == [] and fake.seen(GET_RECORD_COUNT) == [] and fake.seen(GET_RANGE) == []


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_symbol_databento_does_not_know_exits_2_before_any_charge(engine_cli, db_url, fake_databento, dry_run):
    fake = fake_databento(KEY, subprocess=True, unknown_symbols=("NQ.v.0",))
    run = engine_cli(*source(fake, db_url), *WINDOW, *(["dry_run=true"] if dry_run else []))
    assert run.returncode == 2, run.output
    text = " ".join(run.output.split())
    assert "NQ.v.0 (continuous) in GLBX.MDP3 is unknown to Databento" in text
    assert "2025-12-09 to 2025-12-11" in text and "not_found" in text and "'Not found'" in text
    assert "nothing was priced or bought" in text and "source.dataset" in text
    assert "Traceback" not in run.output
    assert len(fake.seen(RESOLVE)) == 1
    nothing_priced_or_bought(fake)


def test_a_symbol_mapped_from_mid_window_is_refused_with_the_first_mapped_day(engine_cli, db_url, fake_databento):
    fake = fake_databento(KEY, subprocess=True, symbol_starts={"NQ.v.0": dt.date(2025, 12, 10)})
    run = engine_cli(*source(fake, db_url), *WINDOW)
    assert run.returncode == 2, run.output
    text = " ".join(run.output.split())
    assert "NQ.v.0 (continuous) in GLBX.MDP3 is mapped by Databento only from 2025-12-10 to 2025-12-11" in text
    assert "unmapped 2025-12-09" in text and "(partial)" in text and "'Partially resolved'" in text
    assert "window.start=2025-12-10" in text
    nothing_priced_or_bought(fake)

    moved = engine_cli(*source(fake, db_url), "window.start=2025-12-10T00:00:00Z", WINDOW[1])
    assert moved.returncode == 0, moved.output
    assert [s.params["schema"] for s in fake.seen(GET_RANGE)] == ["ohlcv-1m", "definition"]


def test_each_day_landing_keeps_its_mappings(engine_cli, db_url, fake_databento, tmp_path):
    fake = fake_databento(KEY, subprocess=True, records=50, stride=29, rolls=(dt.date(2025, 12, 11),))
    run = engine_cli(*source(fake, db_url), *WINDOW, "source.definitions=false", "source.roll_outrights=false")
    assert run.returncode == 0, run.output
    [bars] = [f for f in run.result["stages"]["ingest"]["raw_files"] if "kind" not in f]
    # Each UTC day is a landing whose sidecar keeps that day's mappings (the roll on 2025-12-11 included).
    days = {path.name[:8]: json.loads(path.read_text())["symbology"]["NQ.v.0"]
            for path in sorted((tmp_path / bars["path"]).glob("2025*.dbn.zst.json"))}
    assert sorted(days) == ["20251209", "20251210", "20251211"]
    for day, mappings in days.items():
        assert [(m["start_date"], m["end_date"]) for m in mappings] == [
            (f"{day[:4]}-{day[4:6]}-{day[6:]}", (dt.date(int(day[:4]), int(day[4:6]), int(day[6:]))
                                                 + dt.timedelta(days=1)).isoformat())]
    instrument = {day: mappings[0]["symbol"] for day, mappings in days.items()}
    assert instrument["20251209"] == instrument["20251210"] != instrument["20251211"], instrument
    assert run.result["stages"]["ingest"]["rate_limited"] == 0

    again = engine_cli(*source(fake, db_url), *WINDOW, "source.definitions=false", "source.roll_outrights=false")
    assert again.returncode == 0, again.output
    assert len(fake.seen(RESOLVE)) == 1, "a landed window buys nothing, so it is not resolved again"
