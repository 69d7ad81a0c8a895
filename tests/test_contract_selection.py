"""One contract per minute (issue 12): inputs holding two contracts of one root never splice the series.

Real DBN files written with databento_dbn (outright files: stype_in raw_symbol, mappings raw symbol -> id),
real ingests in this process (as engine/app.py runs them) on SQLite and PostgreSQL, references built by plain
Python over the same bars.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import databento_dbn
import numpy as np
import pytest
import sqlalchemy as sa
import zstandard
from sql_rows import query
from test_chunked_equality import run_engine as run_job

from engine.bars import NS_PER_MINUTE, PRICE_SCALE, RAW_BAR_DTYPE
from engine.calendar import sessions as calendar_sessions
from engine.config import register_configs
from engine.db.connect import create_db_engine, upgrade
from engine.db.schema import clean_bars
from engine.db.types import datetime_to_ns
from engine.sources.dbn import DBN_OHLCV_DTYPE, DbnBarFile, SymbolFilter

REPO = Path(__file__).resolve().parents[1]
register_configs()

ESM4, ESU4 = 5602, 118
IDS = {"ESM4": ESM4, "ESU4": ESU4}
EXPIRY = {"ESM4": dt.date(2024, 6, 21), "ESU4": dt.date(2024, 9, 20)}  # third Fridays
WEEK = ["window.start=2024-06-09T00:00:00Z", "window.end=2024-06-22T00:00:00Z"]
UTC = dt.UTC


# ------------------------------------------------------------------------------------------------ harness


def run_engine(url: str, workdir: Path, *overrides: str) -> dict:
    """One job in this process (test_chunked_equality.run_engine), stages=[ingest] unless the overrides say."""
    stages = [] if any(o.startswith("stages=") for o in overrides) else ["stages=[ingest]"]
    return run_job(url, workdir, *stages, *overrides)


def source(*paths: Path) -> list[str]:
    return ["source=dbn_file", f"source.paths=[{','.join(str(p) for p in paths)}]"]


def stored(url: str, symbol: str = "GLBX.MDP3:ES") -> list[tuple[int, int, float]]:
    """(ts ns, instrument_id, close) of the stored bars in time order."""
    c = clean_bars.c  # typed ts on both databases
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(c.ts, c.instrument_id, c.close).where(c.symbol == symbol).order_by(c.ts))
            return [(datetime_to_ns(r.ts), int(r.instrument_id), float(r.close)) for r in rows]
    finally:
        engine.dispose()


def minute(day: dt.date, hour: int, minute_: int) -> int:
    return datetime_to_ns(dt.datetime(day.year, day.month, day.day, hour, minute_, tzinfo=UTC))


def bars_at(ts: list[int] | np.ndarray, raw: str, price: float, volume: int) -> np.ndarray:
    """Good bars of contract `raw` at the given minutes, closes rising a tick a minute from `price`."""
    out = np.zeros(len(ts), dtype=RAW_BAR_DTYPE)
    out["ts"] = ts
    out["instrument_id"] = IDS.get(raw, 0)
    close = price + 0.25 * np.arange(len(ts))
    out["close"] = np.rint(close * PRICE_SCALE)
    out["open"] = np.rint((close - 0.25) * PRICE_SCALE)
    out["high"] = out["close"] + PRICE_SCALE
    out["low"] = out["open"] - PRICE_SCALE
    out["volume"] = volume
    out["raw_symbol"] = raw.encode()
    return out


def _dbn(path: Path, rows: np.ndarray, stype_in, mappings: list, symbols: list[str]) -> Path:
    ts = rows["ts"].astype(np.int64)
    meta = databento_dbn.Metadata(dataset="GLBX.MDP3", start=int(ts.min()), end=int(ts.max()) + NS_PER_MINUTE,
                                  stype_in=stype_in, stype_out=databento_dbn.SType.INSTRUMENT_ID,
                                  schema=databento_dbn.Schema.OHLCV_1M, symbols=symbols, mappings=mappings)
    rec = np.zeros(len(rows), dtype=DBN_OHLCV_DTYPE)
    rec["length"], rec["rtype"], rec["publisher_id"] = 14, int(databento_dbn.RType.OHLCV_1M.value), 1
    rec["instrument_id"], rec["ts_event"] = rows["instrument_id"], rows["ts"]
    for name in ("open", "high", "low", "close", "volume"):
        rec[name] = rows[name]
    path.write_bytes(zstandard.ZstdCompressor().compress(meta.encode() + rec.tobytes()))
    return path


def _day(ns: int) -> dt.date:
    return dt.datetime.fromtimestamp(ns // 1_000_000_000, UTC).date()


def write_outrights(path: Path, rows: np.ndarray) -> Path:
    """An outright file (stype_in raw_symbol): each contract maps to its instrument id on every day covered."""
    first = _day(int(rows["ts"].min())) - dt.timedelta(days=1)
    last = _day(int(rows["ts"].max())) + dt.timedelta(days=2)
    names = sorted({r.decode() for r in rows["raw_symbol"]})
    mappings = [SimpleNamespace(raw_symbol=n, intervals=[SimpleNamespace(start_date=first, end_date=last,
                                                                         symbol=str(IDS[n]))]) for n in names]
    return _dbn(path, rows, databento_dbn.SType.RAW_SYMBOL, mappings, names)


def write_continuous(path: Path, rows: np.ndarray, intervals: list[tuple[dt.date, dt.date, int]],
                     symbol: str = "ES.v.0") -> Path:
    """A continuous file: `symbol` maps to each interval's instrument (start inclusive, end exclusive)."""
    mappings = [SimpleNamespace(raw_symbol=symbol, intervals=[SimpleNamespace(start_date=a, end_date=b, symbol=str(i))
                                                              for a, b, i in intervals])]
    return _dbn(path, rows, databento_dbn.SType.CONTINUOUS, mappings, [symbol])


# -------------------------------------------------------------------------------------- the roll week


ROLL_DAYS = [dt.date(2024, 6, d) for d in (10, 11, 12, 13, 14, 17, 18, 19, 20, 21)]
SPIKE_DAY = dt.date(2024, 6, 13)  # ESU4's volume spikes in this session: rule v may follow it from the NEXT one


def roll_week() -> np.ndarray:
    """Ten minutes (14:30-14:39 UTC) of both contracts on each weekday; ESM4 is the volume leader until ESU4's
    spike on June 13, ESU4 after it. ESU4 has no bar at 14:39 on June 13 (the roll's common minute is 14:38)."""
    parts = []
    for i, day in enumerate(ROLL_DAYS):
        ts = [minute(day, 14, 30 + m) for m in range(10)]
        m_vol, u_vol = (1000, 100) if day < SPIKE_DAY else (1000, 5000) if day == SPIKE_DAY else (500, 3000)
        parts.append(bars_at(ts, "ESM4", 5300.0 + i, m_vol))
        u_ts = ts[:-1] if day == SPIKE_DAY else ts
        parts.append(bars_at(u_ts, "ESU4", 5360.0 + i, u_vol))
    return np.concatenate(parts)


def sessions_of(rows: np.ndarray) -> tuple[list[tuple[int, int]], list[int]]:
    """The calendar's sessions around the rows and each row's session index (plain Python)."""
    bounds = [(datetime_to_ns(a), datetime_to_ns(b)) for a, b in
              calendar_sessions(dt.datetime(2024, 6, 1, tzinfo=UTC), dt.datetime(2024, 6, 30, tzinfo=UTC))]
    index = [next(i for i, (_, close) in enumerate(bounds) if close > int(ts)) for ts in rows["ts"]]
    return bounds, index


def reference(rows: np.ndarray, rule: str, roll_days: int = 0) -> dict[int, str]:
    """Session index -> chosen contract, by plain Python: rule c by expiry, rule v by the previous session's volume
    (falling back to expiry order when the previous session has none)."""
    bounds, index = sessions_of(rows)
    trade_day = [_day(close) for _, close in bounds]
    expiry_session = {c: next((i for i, d in enumerate(trade_day) if d >= e), len(bounds)) for c, e in EXPIRY.items()}
    volume: dict[tuple[int, str], int] = {}
    for row, s in zip(rows, index, strict=True):
        key = (s, row["raw_symbol"].decode())
        volume[key] = volume.get(key, 0) + int(row["volume"])
    chosen = {}
    for s in sorted(set(index)):
        by_expiry = [c for c in sorted(EXPIRY, key=EXPIRY.get) if s < expiry_session[c] - roll_days]
        previous = {c: volume.get((s - 1, c), 0) for c in EXPIRY if s < expiry_session[c]}
        if rule == "v" and any(previous.values()):
            chosen[s] = max(previous, key=lambda c: (previous[c], -EXPIRY[c].toordinal()))
        else:
            chosen[s] = by_expiry[0]
    return chosen


def expected_series(rows: np.ndarray, chosen: dict[int, str]) -> list[tuple[int, int, float]]:
    _, index = sessions_of(rows)
    keep = [(int(r["ts"]), int(r["instrument_id"]), int(r["close"]) / PRICE_SCALE)
            for r, s in zip(rows, index, strict=True) if r["raw_symbol"].decode() == chosen[s]]
    return sorted(keep)


# ------------------------------------------------------------------------------------------------ tests


def test_two_outrights_never_splice(db_url, tmp_path):
    """ESM4 + ESU4 in one file, ESM4 without trades at 10:02 and 10:05: the series is ESM4 only (holes stay
    holes), ESU4's bars are counted as not chosen, none is quarantined as duplicate_ts."""
    day = dt.date(2024, 5, 9)
    m_ts = [minute(day, 14, m) for m in range(11) if m not in (2, 5)]
    u_ts = [minute(day, 14, m) for m in range(11)]
    rows = np.concatenate([bars_at(m_ts, "ESM4", 5300.0, 500), bars_at(u_ts, "ESU4", 5360.75, 50)])
    rows = rows[np.argsort(rows["ts"], kind="stable")]  # interleaved by minute, as Databento writes them
    path = write_outrights(tmp_path / "es.dbn.zst", rows)
    result = run_engine(db_url, tmp_path, "symbol=ES", *source(path), "window.start=2024-05-09T14:00:00Z",
                        "window.end=2024-05-09T15:00:00Z")["ingest"]
    assert result["bars_received"] == 9 and result["bars_inserted"] == 9 and result["bars_skipped"] == 0
    assert result["contracts_not_chosen"] == {"ESU4": 11} and result["skipped_by_reason"] == {}
    series = stored(db_url)
    assert [s[0] for s in series] == m_ts and {s[1] for s in series} == {ESM4}
    assert max(s[2] for s in series) < 5310  # never a 5360 price of ESU4
    assert query(db_url, "SELECT count(*) AS n FROM clean_ingest_quarantine")[0]["n"] == 0
    [run] = query(db_url, "SELECT * FROM clean_ingest_runs")
    assert json.loads(run["contracts_not_chosen"]) == {"ESU4": 11}
    assert run["bars_received"] == run["bars_inserted"] + run["bars_updated"] + run["bars_unchanged"] + \
        run["bars_skipped"]


def test_two_outrights_table_raw_symbol(db_url, tmp_path):
    """(Passes once the writer stores raw_symbol, another helper's branch.) Every stored bar names ESM4."""
    day = dt.date(2024, 5, 9)
    rows = np.concatenate([bars_at([minute(day, 14, m) for m in (0, 1, 3)], "ESM4", 5300.0, 500),
                           bars_at([minute(day, 14, m) for m in range(4)], "ESU4", 5360.75, 50)])
    path = write_outrights(tmp_path / "es.dbn.zst", rows)
    run_engine(db_url, tmp_path, "symbol=ES", *source(path), "window.start=2024-05-09T14:00:00Z",
               "window.end=2024-05-09T15:00:00Z")
    got = query(db_url, "SELECT raw_symbol, instrument_id FROM market_bars_ohlcv_1m_clean ORDER BY ts")
    assert [(g["raw_symbol"], g["instrument_id"]) for g in got] == [("ESM4", ESM4)] * 3


def test_decoder_labels_outright_and_continuous_records(tmp_path):
    """raw_symbol of an outright record is its contract, b"" for a continuous record; the flag says which is which."""
    day = dt.date(2024, 6, 10)
    cont = bars_at([minute(day, 14, 30)], "ESM4", 5300.0, 10)
    cont["raw_symbol"] = b""
    a = write_continuous(tmp_path / "c.dbn.zst", cont, [(day, day + dt.timedelta(days=1), ESM4)])
    b = write_outrights(tmp_path / "o.dbn.zst", bars_at([minute(day, 14, 30)], "ESU4", 5360.0, 10))
    [(c_rows, c_flag), (o_rows, o_flag)] = list(DbnBarFile([a, b]).iter_labelled(SymbolFilter("ES", "ES.v.0")))
    assert c_rows["raw_symbol"].tolist() == [b""] and c_flag.tolist() == [True]
    assert o_rows["raw_symbol"].tolist() == [b"ESU4"] and o_flag.tolist() == [False]


@pytest.mark.parametrize(("rule", "roll_days"), [("v", 0), ("c", 2)])
def test_continuous_series_from_outrights_equals_the_hand_reference(db_url, tmp_path, rule, roll_days):
    rows = roll_week()
    path = write_outrights(tmp_path / "es.dbn.zst", rows)
    result = run_engine(db_url, tmp_path, "symbol=ES", f"roll_rule={rule}", f"roll_days_before_expiry={roll_days}",
                        *source(path), *WEEK)["ingest"]
    chosen = reference(rows, rule, roll_days)
    want = expected_series(rows, chosen)
    assert stored(db_url) == want
    assert result["bars_received"] == len(want) == result["bars_inserted"] and result["bars_skipped"] == 0
    assert sum(result["contracts_not_chosen"].values()) == len(rows) - len(want)
    bounds, _ = sessions_of(rows)
    days = {_day(bounds[s][1]): c for s, c in chosen.items()}
    if rule == "v":
        # ESU4's own spike session still comes from ESM4; the next session follows the spike.
        assert days[SPIKE_DAY] == "ESM4" and days[dt.date(2024, 6, 14)] == "ESU4"
        assert days[ROLL_DAYS[0]] == "ESM4"  # the first session has no previous one: expiry order (front)
    else:
        assert days[dt.date(2024, 6, 18)] == "ESM4" and days[dt.date(2024, 6, 20)] == "ESU4"


def test_v_rule_ignores_the_sessions_own_volume(db_url, tmp_path):
    """ESU4 leads June 12's own volume 50x: June 12 still comes from ESM4 (decided on June 11's volume), and the
    series follows ESU4 from June 13 on."""
    rows = roll_week()
    day_of = np.array([_day(int(t)) for t in rows["ts"]])
    spike = (day_of == dt.date(2024, 6, 12)) & (rows["raw_symbol"] == b"ESU4")
    rows["volume"][spike] *= 50  # the 12th: ESU4 leads its own session; choice for the 12th must stay ESM4
    run_engine(db_url, tmp_path, "symbol=ES", "roll_rule=v", *source(write_outrights(tmp_path / "s.dbn.zst", rows)),
               *WEEK)
    got = stored(db_url)
    jun12 = [s for s in got if _day(s[0]) == dt.date(2024, 6, 12)]
    jun13 = [s for s in got if _day(s[0]) == dt.date(2024, 6, 13)]
    assert {s[1] for s in jun12} == {ESM4} and {s[1] for s in jun13} == {ESU4}  # follows from the 13th on
    assert got == expected_series(rows, reference(rows, "v"))


def test_outright_as_its_own_series(db_url, tmp_path):
    engine = create_db_engine(db_url)
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO symbol_registry (internal_symbol, dataset, root, roll_rule, rank, schema, "
                             "stype_in, is_active) VALUES ('GLBX.MDP3:ESU4', 'GLBX.MDP3', 'ES', NULL, NULL, "
                             "'ohlcv-1m', 'raw_symbol', TRUE)"))
    engine.dispose()
    rows = roll_week()
    result = run_engine(db_url, tmp_path, "symbol=GLBX.MDP3:ESU4", *source(write_outrights(tmp_path / "o.dbn.zst",
                                                                                            rows)), *WEEK)["ingest"]
    u = rows[rows["raw_symbol"] == b"ESU4"]
    assert stored(db_url, "GLBX.MDP3:ESU4") == [(int(r["ts"]), ESU4, int(r["close"]) / PRICE_SCALE) for r in u]
    assert result["databento_symbol"] == "ESU4" and result["bars_received"] == len(u)
    assert result["contracts_not_chosen"] == {"ESM4": int(np.count_nonzero(rows["raw_symbol"] == b"ESM4"))}
    assert result["rolls"] == [] and query(db_url, "SELECT count(*) AS n FROM contract_rolls")[0]["n"] == 0


def continuous_and_outrights(tmp_path: Path) -> tuple[np.ndarray, Path, Path]:
    """A continuous ES.v.0 file (ESM4 to June 13, ESU4 from June 14: Databento's mapping) and the outright file."""
    rows = roll_week()
    day_of = np.array([_day(int(t)) for t in rows["ts"]])
    roll = dt.date(2024, 6, 14)
    cont = rows[((rows["raw_symbol"] == b"ESM4") & (day_of < roll)) | ((rows["raw_symbol"] == b"ESU4")
                                                                       & (day_of >= roll))].copy()
    cont["raw_symbol"] = b""
    a = write_continuous(tmp_path / "cont.dbn.zst", cont, [(dt.date(2024, 6, 8), roll, ESM4),
                                                           (roll, dt.date(2024, 6, 23), ESU4)])
    return cont, a, write_outrights(tmp_path / "outrights.dbn.zst", rows)


def test_continuous_file_plus_outright_file(db_url, tmp_path):
    """The series is exactly the continuous records; the outright file's bars are not chosen but name them."""
    cont, a, b = continuous_and_outrights(tmp_path)
    result = run_engine(db_url, tmp_path, "symbol=ES", *source(a, b), *WEEK)["ingest"]
    assert stored(db_url) == sorted((int(r["ts"]), int(r["instrument_id"]), int(r["close"]) / PRICE_SCALE)
                                    for r in cont)
    assert result["bars_received"] == len(cont) and result["raw_symbol_unknown"] == 0
    assert result["contracts_not_chosen"] == {"ESM4": 100, "ESU4": 99}
    assert result["bars_skipped"] == 0


def test_continuous_file_alone_says_raw_symbol_is_unknown(db_url, tmp_path):
    cont, a, _ = continuous_and_outrights(tmp_path)
    result = run_engine(db_url, tmp_path, "symbol=ES", *source(a), *WEEK)["ingest"]
    assert result["raw_symbol_unknown"] == len(cont) and result["contracts_not_chosen"] == {}
    assert result["rolls"] == ["2024-06-14T14:30Z id 5602 → id 118"]


def test_continuous_file_plus_outright_file_table_raw_symbol(db_url, tmp_path):
    """(Passes once the writer stores raw_symbol, another helper's branch.)"""
    _, a, b = continuous_and_outrights(tmp_path)
    run_engine(db_url, tmp_path, "symbol=ES", *source(a, b), *WEEK)
    got = query(db_url, "SELECT raw_symbol, instrument_id FROM market_bars_ohlcv_1m_clean")
    assert {(g["raw_symbol"], g["instrument_id"]) for g in got} == {("ESM4", ESM4), ("ESU4", ESU4)}


def test_rule_n_is_refused_with_exit_2(engine_cli, sqlite_url, tmp_path):
    path = write_outrights(tmp_path / "es.dbn.zst", roll_week())
    run = engine_cli(f"db.url={sqlite_url}", "symbol=ES", "stages=[ingest]", "roll_rule=n", *source(path), *WEEK)
    assert run.returncode == 2, run.output
    assert "roll_rule=n" in run.output and "open interest" in run.output and "roll_rule=v" in run.output
    assert "Traceback" not in run.output


def test_landing_definitions_and_outrights_name_and_price_a_continuous_series(tmp_path, dbn_fixtures):
    """What a Databento landing adds beside a continuous file: instrument definitions name its records (the real
    ESU4/NQU4 definitions), and landing.outrights (here one by instrument id) price its rolls."""
    from engine.contracts import roll_price_bars, select_series
    from engine.rolls import roll_prices
    from engine.sources import Landing
    from engine.symbols import ResolvedSymbol

    day = dt.date(2024, 7, 1)
    cont = bars_at([minute(day, 23, m) for m in range(3)], "ESU4", 5527.0, 10)
    cont["instrument_id"], cont["raw_symbol"] = 118, b""
    path = write_continuous(tmp_path / "cont.dbn.zst", cont, [(day, day + dt.timedelta(days=1), 118)])
    symbol = ResolvedSymbol("GLBX.MDP3:ES", "GLBX.MDP3", "ES", "v", 0, "ohlcv-1m", "continuous", {})
    ctx = SimpleNamespace(symbol=symbol, source=SimpleNamespace(batch_size=1000), log=logging.getLogger("test"),
                          cfg=SimpleNamespace(roll_days_before_expiry=0),
                          window=SimpleNamespace(start=dt.datetime(2024, 7, 1, tzinfo=UTC),
                                                 end=dt.datetime(2024, 7, 2, tzinfo=UTC)))
    landing = Landing([path], definitions=[dbn_fixtures / "nt_ESU4_NQU4_20240701.definition.dbn.zst"])
    bars = DbnBarFile([path])
    selection = select_series(ctx, bars, landing, None)
    [(chunk, via_continuous)] = list(bars.iter_labelled(selection.flt))
    chosen, not_chosen, _ = selection.select(chunk, via_continuous)
    assert selection.mode == "continuous" and not_chosen == {}
    assert chosen["raw_symbol"].tolist() == [b"ESU4"] * 3 and chosen["instrument_id"].tolist() == [118] * 3
    without = select_series(ctx, bars, Landing([path]), None)
    [(chunk, via_continuous)] = list(bars.iter_labelled(without.flt))
    assert without.select(chunk, via_continuous)[0]["raw_symbol"].tolist() == [b""] * 3

    # landing.outrights requested by instrument id (no symbol mappings): their bars price a roll 5602 -> 118
    roll_ns = minute(day, 23, 1)
    by_id = np.concatenate([bars_at([minute(day, 22, 59), minute(day, 23, 0)], "ESM4", 5470.0, 5),
                            bars_at([minute(day, 23, 0)], "ESU4", 5527.0, 5)])
    outrights = _dbn(tmp_path / "by_id.dbn.zst", by_id, databento_dbn.SType.INSTRUMENT_ID, [], ["5602", "118"])
    priced = roll_price_bars(ctx, selection, [], Landing([path], outrights=[outrights]),
                     [(roll_ns, ESM4, b"", ESU4, b"")])
    assert roll_prices(priced["ts"], priced["instrument_id"], priced["close"], 0, roll_ns, ESM4, ESU4) == (
        minute(day, 23, 0), int(by_id["close"][1]), int(by_id["close"][2]))
