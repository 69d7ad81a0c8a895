"""A continuous Databento download also lands its instrument definitions and the outright bars of each roll.

Against the local fake of Databento's API (tests/fake_databento.py, real DBN bytes, the official client
unmodified): the landing part in process (no database), the ingest end to end on SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import databento
import pytest
from fake_databento import CONTRACTS, GET_COST, GET_RANGE, RESOLVE, Reply, raw_symbol
from rich.progress import Progress
from sql_rows import query

from engine.errors import EngineError
from engine.sources import Landing
from engine.sources.databento import DatabentoSource
from engine.sources.databento_api import acquire, rolls_of
from engine.sources.dbn import count_records
from engine.symbols import ResolvedSymbol
from engine.windows import Window

KEY = "db-ROLLSTESTKEY0123456789abcd"
UTC = dt.UTC
START, END = dt.datetime(2025, 12, 1, tzinfo=UTC), dt.datetime(2025, 12, 3, tzinfo=UTC)
ROLL = dt.date(2025, 12, 2)
OLD, NEW = CONTRACTS[0][0], CONTRACTS[1][0]
OUTRIGHT_IDS = f"{OLD},{NEW}"
NQ = ResolvedSymbol("GLBX.MDP3:NQ", "GLBX.MDP3", "NQ", "v", 0, "ohlcv-1m", "continuous", {})
WINDOW_ARGS = [f"window.start={START:%Y-%m-%dT%H:%M:%SZ}", f"window.end={END:%Y-%m-%dT%H:%M:%SZ}"]
RECORDS, STRIDE = 90, 32  # one bar every 32 minutes: 48 hours, across the roll


@pytest.fixture
def fake(fake_databento):
    return fake_databento(KEY, records=RECORDS, stride=STRIDE, rolls=(ROLL,))


def land(fake, data_dir: Path, **source) -> Landing:
    """The databento source's acquire for NQ.v.0 over [START, END), in this process."""
    src = DatabentoSource(gateway=fake.gateway, backoff_seconds=0.01, **source)
    ctx = SimpleNamespace(symbol=NQ, source=src, window=Window(START, END), cfg=SimpleNamespace(data_dir=data_dir))
    with Progress(disable=True) as progress:
        return acquire(ctx, progress)


def ranges(fake) -> list[tuple[str, str, str]]:
    """(schema, stype_in, symbols) of each timeseries.get_range the fake received."""
    return [(s.params["schema"], s.params["stype_in"], s.params["symbols"]) for s in fake.seen(GET_RANGE)]


BARS = ("ohlcv-1m", "continuous", "NQ.v.0")
DEFINITIONS = ("definition", "continuous", "NQ.v.0")
OUTRIGHTS = ("ohlcv-1m", "instrument_id", OUTRIGHT_IDS)


def sidecar(path: Path) -> dict:
    return json.loads(path.with_name(path.name + ".json").read_text())


# --------------------------------------------------------------------------------------------- rolls


def test_a_roll_is_where_the_continuous_symbol_changes_instrument():
    day = (dt.date(2025, 12, 1) - dt.date(1970, 1, 1)).days
    intervals = [
        (7, day + 2, day + 3, "NQ.v.0"), (5, day, day + 1, "NQ.v.0"), (5, day + 1, day + 2, "NQ.v.0"),
        (9, day, day + 3, "ES.v.0"),  # another symbol's mapping is not this one's roll
    ]
    assert rolls_of(intervals, "NQ.v.0") == [(dt.date(2025, 12, 3), 5, 7)]
    assert rolls_of(intervals, "ES.v.0") == []


# --------------------------------------------------------------------------------------------- landing


def test_a_continuous_download_lands_bars_definitions_and_the_roll_outrights(fake, tmp_path):
    landing = land(fake, tmp_path)

    assert ranges(fake) == [BARS, DEFINITIONS, OUTRIGHTS]
    assert len(fake.seen(RESOLVE)) == 1, "the rolls are priced before anything is bought (symbology.resolve)"
    assert len(fake.seen(GET_COST)) == 3
    [outright] = fake.seen(GET_RANGE)[2:]
    assert (outright.params["start"], outright.params["end"]) == ("2025-11-30T00:00:00+00:00",
                                                                  "2025-12-03T00:00:00+00:00")
    bars, [definitions], [outrights] = landing.paths, landing.definitions, landing.outrights
    assert [p.name for p in bars] == ["20251201.dbn.zst", "20251202.dbn.zst"]  # the bars land by UTC day
    assert definitions.parent.parts[-3:] == ("GLBX.MDP3", "definition", "NQ.v.0")
    assert outrights.parent.name == f"{OLD}_{NEW}"
    assert [entry.get("kind") for entry in landing.raw_files] == [None, "definitions", "outrights"]
    assert all(entry["reused"] is False and entry["cost_usd"] == 0.25 for entry in landing.raw_files)

    defs = list(databento.DBNStore.from_file(definitions))
    assert [(d.instrument_id, d.raw_symbol) for d in defs] == [
        (OLD, "NQZ5"), (NEW, "NQH6")]  # one a day: 12-01 the outgoing contract, 12-02 the incoming one
    assert defs[0].expiration == int(CONTRACTS[0][2].timestamp()) * 1_000_000_000
    assert sidecar(definitions)["records"] == 2 and sidecar(definitions)["request"]["schema"] == "definition"

    store = databento.DBNStore.from_file(outrights)
    assert {r.instrument_id for r in store} == {OLD, NEW}
    assert sidecar(outrights)["records"] == count_records(outrights)[1] == 2 * RECORDS
    assert sidecar(outrights)["request"]["stype_in"] == "instrument_id"
    assert [{iid for iid, *_ in count_records(day)[0].intervals} for day in bars] == [{OLD}, {NEW}]


def test_a_second_run_reuses_every_landing_without_any_request(fake, tmp_path):
    first = land(fake, tmp_path)
    before = len(fake.seen())
    again = land(fake, tmp_path)
    assert len(fake.seen()) == before, "nothing is priced, resolved or bought twice"
    assert (again.paths, again.definitions, again.outrights) == (first.paths, first.definitions, first.outrights)
    assert all(entry["reused"] for entry in again.raw_files)
    assert [e["sha256"] for e in again.raw_files] == [e["sha256"] for e in first.raw_files]


def test_the_cost_guard_prices_the_extras_too_and_buys_nothing_above_the_limit(fake, tmp_path):
    with pytest.raises(EngineError) as refused:
        land(fake, tmp_path, max_cost_usd=0.6)  # the bars alone ($0.25) would pass; with the extras $0.75
    assert "source.max_cost_usd=$0.60" in refused.value.problem and "$0.75" in refused.value.problem
    assert "definitions $0.25" in refused.value.problem and "outrights $0.25" in refused.value.problem
    assert "source.definitions=false" in refused.value.fix and "source.max_cost_usd=0.75" in refused.value.fix
    assert fake.seen(GET_RANGE) == [], "no paid request"
    assert not (tmp_path / "raw").exists() or not any(p.is_file() for p in (tmp_path / "raw").rglob("*.zst"))

    landing = land(fake, tmp_path, max_cost_usd=0.6, definitions=False, roll_outrights=False)
    assert ranges(fake) == [BARS] and (landing.definitions, landing.outrights) == ([], [])


def test_each_extra_can_be_turned_off(fake, tmp_path):
    no_defs = land(fake, tmp_path / "a", definitions=False)
    assert ranges(fake) == [BARS, OUTRIGHTS] and no_defs.definitions == [] and len(no_defs.outrights) == 1
    resolves = len(fake.seen(RESOLVE))

    no_outrights = land(fake, tmp_path / "b", roll_outrights=False)
    assert ranges(fake)[2:] == [BARS, DEFINITIONS] and no_outrights.outrights == []
    assert len(fake.seen(RESOLVE)) == resolves, "without outrights the rolls are not even looked up"


def test_the_rolls_come_from_the_landed_bars_when_they_are_there(fake, tmp_path):
    land(fake, tmp_path, definitions=False, roll_outrights=False)
    landing = land(fake, tmp_path)  # bars reused: their own mappings name the roll; only the day before is resolved
    assert [(s.params["start_date"], s.params["end_date"]) for s in fake.seen(RESOLVE)] == [("2025-11-30",
                                                                                             "2025-12-01")]
    assert ranges(fake) == [BARS, DEFINITIONS, OUTRIGHTS]
    assert len(landing.outrights) == 1 and landing.raw_files[0]["reused"] is True


def test_a_roll_on_the_windows_first_day_gets_its_outrights(fake, tmp_path):
    """A chunk that starts on the roll day (window.chunk=1d) sees one contract in its own mappings: the mapping of the
    day before (one free resolve, kept beside the landings) shows the roll, so its outright bars are landed."""
    src = DatabentoSource(gateway=fake.gateway, backoff_seconds=0.01)
    roll_day = dt.datetime.combine(ROLL, dt.time(), UTC)
    ctx = SimpleNamespace(symbol=NQ, source=src, window=Window(roll_day, END), cfg=SimpleNamespace(data_dir=tmp_path))
    with Progress(disable=True) as progress:
        landing = acquire(ctx, progress)
    assert ranges(fake)[-1] == OUTRIGHTS and len(landing.outrights) == 1
    assert (tmp_path / "raw/GLBX.MDP3/symbology/NQ.v.0_20251201.json").is_file()
    seen = len(fake.seen())
    with Progress(disable=True) as progress:
        again = acquire(ctx, progress)
    assert len(fake.seen()) == seen, "the second run asks nothing, the day before included"
    assert again.outrights == landing.outrights


def test_a_cut_definitions_download_is_refused_and_never_kept(fake, tmp_path):
    fake.script(GET_RANGE, Reply(), Reply.cut_at_frame(1), Reply.cut_at_frame(1))
    with pytest.raises(EngineError, match="not the DBN asked for") as refused:
        land(fake, tmp_path)
    assert "received 1 of 2 records" in refused.value.problem
    assert ranges(fake) == [BARS, DEFINITIONS, DEFINITIONS]
    folder = tmp_path / "raw/GLBX.MDP3/definition/NQ.v.0"
    assert sorted(p.name.split(".dbn.zst")[1] for p in folder.iterdir() if not p.name.endswith(".lock")) == [
        ".rejected-1", ".rejected-2"]

    landing = land(fake, tmp_path)  # the next run buys it once more; the bars stay reused
    assert ranges(fake)[3:] == [DEFINITIONS, OUTRIGHTS] and landing.raw_files[0]["reused"] is True
    assert count_records(landing.definitions[0])[1] == 2


def test_a_landed_definitions_file_damaged_later_is_not_reused(fake, tmp_path):
    landing = land(fake, tmp_path)
    [definitions] = landing.definitions
    definitions.write_bytes(definitions.read_bytes()[:-7])
    before = len(fake.seen())
    with pytest.raises(EngineError, match="not a complete download"):
        land(fake, tmp_path)
    assert len(fake.seen()) == before and not definitions.exists()
    assert definitions.with_name(definitions.name + ".rejected-1").is_file()

    again = land(fake, tmp_path)
    assert ranges(fake)[3:] == [DEFINITIONS] and again.definitions == [definitions]
    assert [e["reused"] for e in again.raw_files] == [True, False, True]


def test_the_official_client_reads_definitions_and_outrights_from_the_fake(fake):
    client = databento.Historical(key=KEY, gateway=fake.gateway)
    defs = client.timeseries.get_range(dataset="GLBX.MDP3", symbols=["NQ.v.0"], schema="definition",
                                       stype_in="continuous", start=START, end=END)
    assert [(d.instrument_id, d.raw_symbol) for d in defs] == [(OLD, "NQZ5"), (NEW, "NQH6")]
    assert defs.symbology["mappings"]["NQ.v.0"] == [
        {"start_date": dt.date(2025, 12, 1), "end_date": ROLL, "symbol": str(OLD)},
        {"start_date": ROLL, "end_date": dt.date(2025, 12, 3), "symbol": str(NEW)}]
    assert client.metadata.get_record_count(dataset="GLBX.MDP3", symbols=["NQ.v.0"], schema="definition",
                                            stype_in="continuous", start=START, end=END) == 2
    bars = client.timeseries.get_range(dataset="GLBX.MDP3", symbols=[OLD, NEW], schema="ohlcv-1m",
                                       stype_in="instrument_id", start=START, end=END)
    assert {b.instrument_id for b in bars} == {OLD, NEW}
    resolved = client.symbology.resolve(dataset="GLBX.MDP3", symbols=["NQ.v.0"], stype_in="continuous",
                                        stype_out="instrument_id", start_date="2025-12-01", end_date="2025-12-03")
    assert resolved["result"]["NQ.v.0"] == [{"d0": "2025-12-01", "d1": "2025-12-02", "s": str(OLD)},
                                            {"d0": "2025-12-02", "d1": "2025-12-03", "s": str(NEW)}]
    assert raw_symbol(NEW, "ES") == "ESH6"


# --------------------------------------------------------------------------------------------- end to end


@pytest.fixture
def served(fake_databento):
    return fake_databento(KEY, records=RECORDS, stride=STRIDE, rolls=(ROLL,), subprocess=True)


def from_databento(fake) -> list[str]:
    return ["source=databento", f"source.gateway={fake.gateway}", "source.backoff_seconds=0.01", "symbol=NQ"]


def test_ingest_lands_bars_definitions_and_outrights_once(engine_cli, db_url, served):
    job = [f"db.url={db_url}", "stages=[ingest]", *from_databento(served), *WINDOW_ARGS]
    first = engine_cli(*job)
    assert first.returncode == 0, first.output
    summary = first.result["stages"]["ingest"]
    assert summary["bars_inserted"] == RECORDS
    assert [entry.get("kind") for entry in summary["raw_files"]] == [None, "definitions", "outrights"]
    assert ranges(served) == [BARS, DEFINITIONS, OUTRIGHTS]
    for entry in summary["raw_files"]:
        path = first.cwd / entry["path"] if not Path(entry["path"]).is_absolute() else Path(entry["path"])
        if entry.get("days"):  # the bars by day: the digest of the days' digests, in order
            days = sorted(path.glob("*.dbn.zst"))
            digest = hashlib.sha256("".join(sidecar(day)["sha256"] for day in days).encode()).hexdigest()
            assert (entry["days"], digest) == (2, entry["sha256"])
        else:
            assert sidecar(path)["sha256"] == entry["sha256"]
    rolls = query(db_url, "SELECT * FROM contract_rolls")
    assert len(rolls) == 1 and summary["rolls_unadjusted"] == [], summary
    roll = rolls[0]
    assert (roll["origin"], roll["rule"], roll["outgoing_instrument_id"], roll["incoming_instrument_id"]) == (
        "databento", "v.0", OLD, NEW)
    # The definitions name both contracts; the landed outright bars price the roll at a minute both traded.
    assert (roll["outgoing_raw_symbol"], roll["incoming_raw_symbol"]) == (raw_symbol(OLD, "NQ"), raw_symbol(NEW, "NQ"))
    assert roll["price_ts"] is not None and roll["outgoing_close"] and roll["incoming_close"]
    named = query(db_url, "SELECT raw_symbol, count(*) AS n FROM market_bars_ohlcv_1m_clean GROUP BY raw_symbol "
                          "ORDER BY raw_symbol")
    assert sum(r["n"] for r in named) == RECORDS and all(r["raw_symbol"] for r in named), named
    assert summary["raw_symbol_unknown"] == 0
    before = len(served.seen())

    second = engine_cli(*job)
    assert second.returncode == 0, second.output
    assert len(served.seen()) == before, "a second run makes no request at all"
    again = second.result["stages"]["ingest"]
    assert all(entry["reused"] for entry in again["raw_files"]) and again["bars_unchanged"] == RECORDS


def test_dry_run_lists_the_extra_requests_with_their_price(engine_cli, served, tmp_path):
    run = engine_cli("dry_run=true", "hydra.run.dir=plans/rolls", "stages=[registry,ingest]",
                     *from_databento(served), *WINDOW_ARGS)
    assert run.returncode == 0, run.output
    text = (tmp_path / "plans/rolls/plan.md").read_text()
    assert "| Databento cost | $0.7500 for 3 of 3 requests; 0 landed raw files reused at $0 |" in text
    assert "| 1 | 2025-12-01T00:00:00Z | 2025-12-03T00:00:00Z | to download | $0.2500 |" in text
    assert "| 2 | 2025-12-01T00:00:00Z | 2025-12-03T00:00:00Z | definitions: to download | $0.2500 |" in text
    assert (f"| 3 | 2025-11-30T00:00:00Z | 2025-12-03T00:00:00Z | outrights {OLD} → {NEW} (roll 2025-12-02): "
            "to download | $0.2500 |") in text
    assert served.seen(GET_RANGE) == [], "a dry run buys nothing"
    plan = json.loads((tmp_path / "plans/rolls/result.json").read_text())["plan"]
    assert [r.get("request", "bars") for r in plan["raw_files"]][:2] == ["bars", "definitions"]
