"""engine.sources.dbn: real Databento files and hand-built DBN files through DbnBarFile."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from types import SimpleNamespace

import databento
import databento_dbn
import numpy as np
import pytest
import zstandard

from engine.bars import NS_PER_MINUTE, PRICE_SCALE, RAW_BAR_DTYPE
from engine.errors import EngineError
from engine.sources.dbn import (
    DBN_OHLCV_DTYPE,
    DbnBarFile,
    InstrumentNames,
    SymbolFilter,
    expand_paths,
    read_definitions,
)

ESU4_NQU4 = "nt_ESU4_NQU4_20240701T2340-0010.ohlcv-1m.dbn.zst"
ESM4_NQM4 = "nt_ESM4_NQM4_20240509T0955-1005.ohlcv-1m.dbn.zst"
ESH1_1M = "dbpy_GLBX_ESH1_20201228.ohlcv-1m.dbn.zst"
ESH1_1H = "dbpy_GLBX_ESH1_20201228.ohlcv-1h.dbn.zst"
ESH1_DEF = "dbpy_GLBX_ESH1.definition.dbn.zst"
ESH1_X100 = "dbn_ESH1_20201228_SCALEx100.ohlcv-1m.dbn"
ESH6 = "nt_ESH6_20260109T2055-2105.ohlcv-1m.dbn.zst"
ES = SymbolFilter("ES", "ES.v.0")
NQ = SymbolFilter("NQ", "NQ.v.0")


def px(values: np.ndarray) -> np.ndarray:
    return values / PRICE_SCALE


def ns(day: dt.date, hour: int = 0, minute: int = 0) -> int:
    return int(dt.datetime.combine(day, dt.time(hour, minute), tzinfo=dt.UTC).timestamp()) * 1_000_000_000


def write_dbn(
    path: Path,
    *,
    stype_in: databento_dbn.SType,
    mappings: dict[str, list[tuple[dt.date, dt.date, str]]],
    records: list[tuple[int, int]],  # (instrument_id, ts_event)
    schema: databento_dbn.Schema = databento_dbn.Schema.OHLCV_1M,
) -> Path:
    """A small DBN file with the given symbology; bar prices are derived from the record index."""
    meta = databento_dbn.Metadata(
        dataset="GLBX.MDP3",
        start=min(ts for _, ts in records),
        stype_in=stype_in,
        stype_out=databento_dbn.SType.INSTRUMENT_ID,
        schema=schema,
        symbols=list(mappings),
        mappings=[
            SimpleNamespace(
                raw_symbol=sym,
                intervals=[SimpleNamespace(start_date=a, end_date=b, symbol=out) for a, b, out in ivs],
            )
            for sym, ivs in mappings.items()
        ],
        end=max(ts for _, ts in records) + NS_PER_MINUTE,
    )
    rec = np.zeros(len(records), dtype=DBN_OHLCV_DTYPE)
    rec["length"], rec["rtype"], rec["publisher_id"] = 14, 33, 1
    rec["instrument_id"] = [i for i, _ in records]
    rec["ts_event"] = [t for _, t in records]
    base = (5000 + np.arange(len(records))) * PRICE_SCALE
    rec["open"], rec["high"], rec["low"], rec["close"] = base, base + PRICE_SCALE, base - PRICE_SCALE, base
    rec["volume"] = np.arange(1, len(records) + 1)
    path.write_bytes(meta.encode() + rec.tobytes())
    return path


# --- SymbolFilter ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("symbol", "expected"),
    [
        ("ES.v.0", True),
        ("ESU4", True),
        ("ESH26", True),
        ("ESZ9", True),
        ("ES.v.1", False),
        ("ES.c.0", False),
        ("ESTX", False),
        ("ESU4-ESZ4", False),
        ("NQU4", False),
        ("ESU", False),
        ("ESA4", False),
        ("ESU123", False),
        ("MESU4", False),
        ("esu4", False),
    ],
)
def test_symbol_filter(symbol: str, expected: bool) -> None:
    assert ES.matches(symbol) is expected


def test_symbol_filter_escapes_root() -> None:
    assert not SymbolFilter("E.", "E..v.0").matches("EXU4")
    assert SymbolFilter("RTY", "RTY.v.0").matches("RTYZ5")


# --- real Databento files ----------------------------------------------------------------------------------


def test_esu4_nqu4_es(dbn_fixtures: Path) -> None:
    src = DbnBarFile([dbn_fixtures / ESU4_NQU4])
    assert (src.schema, src.dataset, src.stype_in) == ("ohlcv-1m", "GLBX.MDP3", "raw_symbol")
    bars = src.read(ES)
    assert bars.dtype == RAW_BAR_DTYPE
    assert len(bars) == 30
    assert set(bars["instrument_id"].tolist()) == {118}
    closes = px(bars["close"])
    assert closes.min() == 5527.50 and closes.max() == 5530.00
    first = bars[0]
    assert first["ts"] == 1719877200 * 10**9  # 2024-07-01 23:40 UTC
    assert px(np.array([first["open"], first["high"], first["low"], first["close"]])).tolist() == [
        5527.25,
        5527.50,
        5527.00,
        5527.50,
    ]
    assert first["volume"] == 180
    assert (np.diff(bars["ts"]) == NS_PER_MINUTE).all()  # crosses UTC midnight, one bar per minute
    assert bars["ts"][-1] == ns(dt.date(2024, 7, 2), 0, 9)
    assert src.ignored == {"NQU4": 30}


def test_real_outright_records_are_labelled_with_their_contract(dbn_fixtures: Path) -> None:
    [(bars, via_continuous)] = list(DbnBarFile([dbn_fixtures / ESU4_NQU4]).iter_labelled(ES))
    assert set(bars["raw_symbol"].tolist()) == {b"ESU4"} and not via_continuous.any()
    [(both, _)] = list(DbnBarFile([dbn_fixtures / ESM4_NQM4]).iter_labelled(ES))
    assert set(both["raw_symbol"].tolist()) == {b"ESM4"}


def test_real_instrument_definitions_name_the_instruments(dbn_fixtures: Path) -> None:
    intervals = read_definitions([dbn_fixtures / "nt_ESU4_NQU4_20240701.definition.dbn.zst"])
    assert sorted((iid, sym) for iid, _, _, sym in intervals) == [(118, "ESU4"), (4358, "NQU4")]
    names = InstrumentNames(intervals)
    ts = np.array([ns(dt.date(2024, 7, 1), 23, 40), ns(dt.date(2024, 9, 20), 13, 0), ns(dt.date(2024, 9, 21)),
                   ns(dt.date(2024, 7, 1), 23, 40)])
    # named from the file's day through the expiration day (2024-09-20); another id is not named
    assert names.lookup(np.array([118, 118, 118, 7]), ts).tolist() == [b"ESU4", b"ESU4", b"", b""]


def test_instrument_labelled_files_are_kept_as_unnamed_outrights(tmp_path: Path) -> None:
    """A file requested by instrument id (stype_in instrument_id, no symbol mappings): with instrument_labels its
    records are kept, raw_symbol unknown; without, they are other instruments."""
    t = ns(dt.date(2024, 6, 14), 14, 30)
    path = write_dbn(tmp_path / "ids.dbn", stype_in=databento_dbn.SType.INSTRUMENT_ID, mappings={},
                     records=[(118, t), (5602, t)])
    src = DbnBarFile([path])
    [(bars, via_continuous)] = list(src.iter_labelled(SymbolFilter("ES", "ES.v.0", instrument_labels=True)))
    assert bars["instrument_id"].tolist() == [118, 5602] and bars["raw_symbol"].tolist() == [b"", b""]
    assert not via_continuous.any()
    assert len(src.read(ES)) == 0 and src.ignored == {"instrument_id=118": 1, "instrument_id=5602": 1}


def test_esu4_nqu4_nq(dbn_fixtures: Path) -> None:
    src = DbnBarFile([dbn_fixtures / ESU4_NQU4])
    bars = src.read(NQ)
    assert len(bars) == 30
    assert set(bars["instrument_id"].tolist()) == {4358}
    assert px(bars["close"]).min() == 20013.25 and px(bars["close"]).max() == 20025.25
    assert src.ignored == {"ESU4": 30}


def test_esm4_nqm4(dbn_fixtures: Path) -> None:
    src = DbnBarFile([dbn_fixtures / ESM4_NQM4])
    es = src.read(ES)
    assert src.ignored == {"NQM4": 10}
    nq = src.read(NQ)
    assert src.ignored == {"ESM4": 10}  # reset on every pass
    assert len(es) == 10 and set(es["instrument_id"].tolist()) == {5602}
    assert (px(es["close"]).min(), px(es["close"]).max()) == (5198.75, 5200.75)
    assert len(nq) == 10 and set(nq["instrument_id"].tolist()) == {13743}
    assert (px(nq["close"]).min(), px(nq["close"]).max()) == (18125.75, 18134.00)
    assert es["ts"][0] == ns(dt.date(2024, 5, 9), 9, 55) and es["ts"][-1] == ns(dt.date(2024, 5, 9), 10, 4)


def test_esh1_20201228(dbn_fixtures: Path) -> None:
    src = DbnBarFile([dbn_fixtures / ESH1_1M])
    bars = src.read(ES)
    assert len(bars) == 4
    assert set(bars["instrument_id"].tolist()) == {5482}
    assert px(bars["close"]).min() == 3703.00 and px(bars["close"]).max() == 3704.75
    assert bars["ts"].tolist() == [ns(dt.date(2020, 12, 28), 0, m) for m in range(4)]
    assert src.ignored == {}
    assert src.read(NQ).size == 0 and src.ignored == {"ESH1": 4}


def test_esh6_2026(dbn_fixtures: Path) -> None:
    bars = DbnBarFile([dbn_fixtures / ESH6]).read(ES)
    assert len(bars) == 10 and set(bars["instrument_id"].tolist()) == {42140878}
    assert (px(bars["close"]).min(), px(bars["close"]).max()) == (7004.00, 7008.50)


def test_uncompressed_older_version_file(dbn_fixtures: Path) -> None:
    src = DbnBarFile([dbn_fixtures / ESH1_X100])
    info = src.files[0]
    assert not info.compressed and info.version < databento_dbn.DBN_VERSION
    bars = src.read(ES)
    assert len(bars) == 2 and set(bars["instrument_id"].tolist()) == {5482}
    assert px(bars["close"]).tolist() == [372100.0, 372150.0]  # 100x the real prices: passed through as is
    assert bars["ts"][0] == ns(dt.date(2020, 12, 28), 13, 0)


@pytest.mark.parametrize("name", [ESU4_NQU4, ESM4_NQM4, ESH1_1M, ESH1_X100, ESH6])
def test_matches_databento_to_ndarray(dbn_fixtures: Path, name: str) -> None:
    ref = databento.DBNStore.from_file(dbn_fixtures / name).to_ndarray()
    src = DbnBarFile([dbn_fixtures / name])
    both = np.concatenate([src.read(ES), src.read(NQ)])
    both = both[np.lexsort((both["instrument_id"], both["ts"]))]
    ref = ref[np.lexsort((ref["instrument_id"], ref["ts_event"]))]
    assert len(both) == len(ref)
    assert (both["ts"] == ref["ts_event"].astype(np.int64)).all()
    for field in ("instrument_id", "open", "high", "low", "close", "volume"):
        assert (both[field] == ref[field]).all(), field


@pytest.mark.parametrize(("name", "schema"), [(ESH1_1H, "ohlcv-1h"), (ESH1_DEF, "definition")])
def test_wrong_schema_is_refused(dbn_fixtures: Path, name: str, schema: str) -> None:
    with pytest.raises(EngineError) as err:
        DbnBarFile([dbn_fixtures / ESH1_1M, dbn_fixtures / name])
    assert name in err.value.problem and schema in err.value.problem
    assert err.value.fix is not None and "ohlcv-1m" in err.value.fix


def test_chunking_does_not_change_the_result(dbn_fixtures: Path) -> None:
    src = DbnBarFile([dbn_fixtures / ESU4_NQU4, dbn_fixtures / ESM4_NQM4])
    big = list(src.iter_chunks(ES, chunk_size=1_000_000))
    ignored_big = dict(src.ignored)
    small = list(src.iter_chunks(ES, chunk_size=7))
    assert len(big) == 2  # one per file
    assert len(small) > len(big)
    assert all(0 < len(c) <= 7 for c in small)
    assert np.array_equal(np.concatenate(big), np.concatenate(small))
    assert src.ignored == ignored_big == {"NQU4": 30, "NQM4": 10}


def test_multiple_files_in_given_order(dbn_fixtures: Path) -> None:
    src = DbnBarFile([dbn_fixtures / ESU4_NQU4, dbn_fixtures / ESH1_1M])
    bars = src.read(ES)
    assert bars["instrument_id"].tolist() == [118] * 30 + [5482] * 4  # file order, not time order
    assert src.ignored == {"NQU4": 30}


def test_iteration_is_lazy(dbn_fixtures: Path) -> None:
    src = DbnBarFile([dbn_fixtures / ESU4_NQU4])
    chunks = src.iter_chunks(ES, chunk_size=4)
    first = next(chunks)
    assert len(first) <= 4
    assert sum(src.ignored.values()) < 30  # the rest of the file has not been read yet
    rest = list(chunks)
    assert len(first) + sum(map(len, rest)) == 30 and src.ignored == {"NQU4": 30}


def test_chunk_size_must_be_positive(dbn_fixtures: Path) -> None:
    with pytest.raises(ValueError):
        next(DbnBarFile([dbn_fixtures / ESH1_1M]).iter_chunks(ES, chunk_size=0))


# --- expand_paths ------------------------------------------------------------------------------------------


def test_expand_paths_glob_and_dedup(dbn_fixtures: Path) -> None:
    found = expand_paths(str(dbn_fixtures / "nt_*.ohlcv-1m.dbn.zst"))
    assert [p.name for p in found] == sorted([ESH6, ESM4_NQM4, ESU4_NQU4])
    again = expand_paths([str(dbn_fixtures / ESU4_NQU4), str(dbn_fixtures / "nt_ES*.ohlcv-1m.dbn.zst")])
    assert [p.name for p in again] == [ESU4_NQU4, ESH6, ESM4_NQM4]
    in_dir = expand_paths(dbn_fixtures)
    assert ESH1_X100 in {p.name for p in in_dir} and "README.md" not in {p.name for p in in_dir}


def test_expand_paths_no_match(tmp_path: Path) -> None:
    pattern = str(tmp_path / "nope_*.dbn.zst")
    with pytest.raises(EngineError) as err:
        expand_paths(pattern)
    assert pattern in err.value.problem and err.value.fix
    with pytest.raises(EngineError):
        expand_paths([])


# --- damaged or foreign files ------------------------------------------------------------------------------


def test_missing_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="not found"):
        DbnBarFile([tmp_path / "absent.dbn.zst"])
    text = tmp_path / "bars.csv"
    text.write_text("ts,open\n1,2\n")
    with pytest.raises(EngineError, match="not a DBN file"):
        DbnBarFile([text])
    with pytest.raises(EngineError):
        DbnBarFile([])


def test_truncated_file(dbn_fixtures: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.dbn"
    cut.write_bytes((dbn_fixtures / ESH1_X100).read_bytes()[:-10])
    src = DbnBarFile([cut])  # the header is intact
    with pytest.raises(EngineError, match="truncated"):
        src.read(ES)


# --- symbology resolution by date --------------------------------------------------------------------------


def test_continuous_mapping_by_date(tmp_path: Path) -> None:
    d1, d2, d3 = dt.date(2025, 3, 12), dt.date(2025, 3, 13), dt.date(2025, 3, 14)
    path = write_dbn(
        tmp_path / "cont.dbn",
        stype_in=databento_dbn.SType.CONTINUOUS,
        mappings={"ES.v.0": [(d1, d2, "111"), (d2, d3, "222")]},
        records=[
            (111, ns(d1, 21, 0)),  # mapped on d1
            (222, ns(d1, 23, 0)),  # 222 is not ES.v.0 on d1
            (111, ns(d2, 1, 0)),  # 111 is no longer ES.v.0 on d2
            (222, ns(d2, 1, 0)),  # mapped on d2
            (222, ns(d3, 0, 0)),  # after the last interval (end date exclusive)
            (999, ns(d2, 2, 0)),  # never mapped
        ],
    )
    src = DbnBarFile([path])
    assert src.stype_in == "continuous"
    bars = src.read(ES)
    assert bars["instrument_id"].tolist() == [111, 222]
    assert bars["ts"].tolist() == [ns(d1, 21, 0), ns(d2, 1, 0)]
    assert src.ignored == {"instrument_id=222": 2, "instrument_id=111": 1, "instrument_id=999": 1}
    assert src.read(NQ).size == 0
    unmapped = {"instrument_id=222": 2, "instrument_id=111": 1, "instrument_id=999": 1}
    assert src.ignored == {"ES.v.0": 2, **unmapped}


def test_raw_symbol_spreads_and_other_products_are_ignored(tmp_path: Path) -> None:
    day = dt.date(2024, 7, 1)
    nxt = day + dt.timedelta(days=1)
    ids = {"ESU4": 1, "ESU4-ESZ4": 2, "NQU4": 3, "ESTX": 4, "ESZ4": 5}
    records = [(ids[s], ns(day, 12, m)) for m in range(5) for s in ids]
    path = write_dbn(
        tmp_path / "raw.dbn",
        stype_in=databento_dbn.SType.RAW_SYMBOL,
        mappings={s: [(day, nxt, str(i))] for s, i in ids.items()},
        records=records,
    )
    src = DbnBarFile([path])
    bars = src.read(ES)
    assert bars["instrument_id"].tolist() == [1, 5] * 5  # outrights of ES only, file order kept
    assert bars["volume"].tolist() == [r + 1 for r, (i, _) in enumerate(records) if i in (1, 5)]
    assert src.ignored == {"ESU4-ESZ4": 5, "NQU4": 5, "ESTX": 5}


def test_instrument_mapped_by_two_symbols(tmp_path: Path) -> None:
    day = dt.date(2024, 7, 1)
    nxt = day + dt.timedelta(days=1)
    path = write_dbn(
        tmp_path / "two.dbn",
        stype_in=databento_dbn.SType.CONTINUOUS,
        mappings={"ES.c.0": [(day, nxt, "7")], "ES.v.0": [(day, nxt, "7")]},
        records=[(7, ns(day, 1, 0)), (7, ns(day, 1, 1))],
    )
    src = DbnBarFile([path])
    assert len(src.read(ES)) == 2 and src.ignored == {}
    assert len(src.read(SymbolFilter("ES", "ES.c.0"))) == 2


def test_bad_bars_pass_through(tmp_path: Path) -> None:
    day = dt.date(2024, 7, 1)
    path = write_dbn(
        tmp_path / "bad.dbn",
        stype_in=databento_dbn.SType.RAW_SYMBOL,
        mappings={"ESU4": [(day, day + dt.timedelta(days=1), "1")]},
        records=[(1, ns(day, 1, 1)), (1, ns(day, 1, 0)), (1, ns(day, 1, 0))],  # out of order + duplicate
    )
    bars = DbnBarFile([path]).read(ES)
    assert bars["ts"].tolist() == [ns(day, 1, 1), ns(day, 1, 0), ns(day, 1, 0)]


def test_decode_speed(tmp_path: Path) -> None:
    n = 1_000_000
    day = dt.date(2024, 1, 1)
    t0 = ns(day)
    meta = databento_dbn.Metadata(
        dataset="GLBX.MDP3",
        start=t0,
        stype_in=databento_dbn.SType.RAW_SYMBOL,
        stype_out=databento_dbn.SType.INSTRUMENT_ID,
        schema=databento_dbn.Schema.OHLCV_1M,
        symbols=["ESH4", "NQH4"],
        mappings=[
            SimpleNamespace(
                raw_symbol=s,
                intervals=[SimpleNamespace(start_date=day, end_date=dt.date(2026, 1, 1), symbol=i)],
            )
            for s, i in (("ESH4", "1"), ("NQH4", "2"))
        ],
        end=t0 + n * NS_PER_MINUTE,
    )
    rec = np.zeros(n, dtype=DBN_OHLCV_DTYPE)
    rec["length"], rec["rtype"], rec["publisher_id"] = 14, 33, 1
    rec["instrument_id"] = 1 + (np.arange(n) % 4 == 3)  # one NQ bar in four
    rec["ts_event"] = t0 + np.arange(n, dtype=np.int64) // 2 * NS_PER_MINUTE
    rec["close"] = 5000 * PRICE_SCALE
    path = tmp_path / "big.dbn"
    path.write_bytes(meta.encode() + rec.tobytes())
    src = DbnBarFile([path])
    start = time.perf_counter()
    total = sum(len(c) for c in src.iter_chunks(ES, chunk_size=250_000))
    elapsed = time.perf_counter() - start
    assert total == 750_000 and src.ignored == {"NQH4": 250_000}
    assert elapsed < 2.0, f"decoding 1M bars took {elapsed:.2f}s"


# ------------------------------------------------------------------------------------------------
# iter_chunks(window=...): a local file's records outside the window are counted, not passed on


def _minutes_file(tmp_path: Path, ts: np.ndarray) -> Path:
    from dbn_files import bars
    from dbn_files import write_dbn as write_bars

    rows = bars(len(ts))
    rows["ts"] = ts
    return write_bars(tmp_path / "minutes.dbn.zst", rows)


DAY0 = ns(dt.date(2025, 12, 1))
DAY = 1440 * NS_PER_MINUTE


def test_window_keeps_its_records_and_stops_at_the_end_of_an_ordered_file(tmp_path: Path) -> None:
    ts = DAY0 + np.arange(3 * 1440, dtype=np.int64) * NS_PER_MINUTE
    bars = DbnBarFile(_minutes_file(tmp_path, ts))
    got = [c["ts"] for c in bars.iter_chunks(SymbolFilter("NQ", "NQ.v.0"), 500, (DAY0 + DAY, DAY0 + 2 * DAY))]
    assert np.concatenate(got).tolist() == ts[1440:2880].tolist()
    # before the window: 1440 records; after it, only the rest of the read that crossed the end (2880..2999)
    assert bars.outside_window == 1440 + 120 and bars.stopped_early == [bars.paths[0]]
    assert bars.ignored == {}
    # the same call without a window passes everything on (a Databento download: validation quarantines)
    assert sum(len(c) for c in bars.iter_chunks(SymbolFilter("NQ", "NQ.v.0"), 500)) == len(ts)
    assert bars.outside_window == 0 and bars.stopped_early == []


def test_window_over_a_file_out_of_time_order_reads_it_all(tmp_path: Path) -> None:
    ts = DAY0 + np.arange(3 * 1440, dtype=np.int64)[::-1] * NS_PER_MINUTE  # newest first
    bars = DbnBarFile(_minutes_file(tmp_path, ts))
    got = np.concatenate(list(bars.iter_chunks(NQ, 500, (DAY0, DAY0 + DAY))))
    assert sorted(got["ts"].tolist()) == ts[-1440:][::-1].tolist()
    assert bars.outside_window == 2 * 1440 and bars.stopped_early == []


def test_one_misplaced_record_past_the_end_does_not_stop_the_read(tmp_path: Path) -> None:
    """A record whose ts jumped ahead (in the file's range) right at the end of a read: the next one breaks
    the time order, so the file is read to its end and nothing of the window is lost."""
    ts = DAY0 + np.arange(3 * 1440, dtype=np.int64) * NS_PER_MINUTE
    ts[499] = DAY0 + 2 * DAY  # last record of the first 500-record read
    bars = DbnBarFile(_minutes_file(tmp_path, ts))
    got = np.concatenate(list(bars.iter_chunks(NQ, 500, (DAY0, DAY0 + DAY))))
    assert got["ts"].tolist() == np.delete(ts[:1440], 499).tolist()
    assert bars.outside_window == 1 + 2 * 1440 and bars.stopped_early == []


def test_a_record_outside_the_files_own_range_is_passed_on(tmp_path: Path) -> None:
    """ts beyond the file's metadata range (a flipped bit) is an anomaly for validation, not 'outside'."""
    ts = DAY0 + np.arange(1440, dtype=np.int64) * NS_PER_MINUTE
    path = _minutes_file(tmp_path, ts)
    data = bytearray(zstandard.ZstdDecompressor().decompress(path.read_bytes(), max_output_size=1 << 26))
    meta_len = 8 + int.from_bytes(data[4:8], "little")
    offset = meta_len + 700 * DBN_OHLCV_DTYPE.itemsize + DBN_OHLCV_DTYPE.fields["ts_event"][1]
    data[offset + 5] ^= 0x40  # bit 46 (+19.5 h) of record 700's ts_event: past the file's end, still mapped
    bad_ts = int(ts[700]) ^ (1 << 46)
    assert bad_ts > int(ts[-1]) + NS_PER_MINUTE
    flipped = tmp_path / "flipped.dbn"
    flipped.write_bytes(bytes(data))
    bars = DbnBarFile(flipped)
    got = np.concatenate(list(bars.iter_chunks(NQ, 500, (DAY0, DAY0 + 600 * NS_PER_MINUTE))))
    assert got["ts"].tolist() == [*ts[:600].tolist(), bad_ts]
    assert bars.outside_window == 1000 - 600 - 1 and bars.stopped_early == [flipped]  # read 500..999, then stop
