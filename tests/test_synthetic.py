"""engine.sources.synthetic: realistic, deterministic synthetic bars written as real DBN files."""

from __future__ import annotations

import calendar
import datetime as dt
import time
import warnings
from pathlib import Path
from zoneinfo import ZoneInfo

import databento
import numpy as np
import pandas as pd
import pytest

from engine.bars import NS_PER_MINUTE, PRICE_SCALE
from engine.errors import EngineError
from engine.sources.dbn import DbnBarFile, SymbolFilter
from engine.sources.synthetic import continuous_contracts, tick_size, write_synthetic_dbn

CHICAGO = "America/Chicago"


def ns(text: str) -> int:
    """UTC ISO time -> ns since the epoch."""
    return int(dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp()) * 1_000_000_000


def records(path: Path) -> np.ndarray:
    """Decoded independently of engine code, with databento itself (from bytes: from_file leaks a handle)."""
    return databento.DBNStore.from_bytes(path.read_bytes()).to_ndarray()


def globex_open_minutes(start_ns: int, end_ns: int) -> np.ndarray:
    """Every whole minute in [start, end) when CME Globex equity futures trade, computed with pandas."""
    minutes = np.arange(-(-start_ns // NS_PER_MINUTE), -(-end_ns // NS_PER_MINUTE)) * NS_PER_MINUTE
    local = pd.DatetimeIndex(pd.to_datetime(minutes, utc=True)).tz_convert(CHICAGO)
    wd, hour = local.day_of_week.to_numpy(), local.hour.to_numpy()
    closed = (
        (wd == 5)  # Saturday
        | ((wd == 6) & (hour < 17))  # Sunday before 17:00
        | ((wd == 4) & (hour >= 16))  # Friday from 16:00
        | (hour == 16)  # daily maintenance break 16:00-17:00
    )
    return minutes[~closed]


def write(tmp: Path, name: str, **kwargs: object) -> tuple[Path, int]:
    path = tmp / name
    return path, write_synthetic_dbn(path, **kwargs)  # type: ignore[arg-type]


MARCH = {"root": "ES", "start_ns": ns("2025-03-03T00:00"), "end_ns": ns("2025-03-17T00:00")}  # DST + roll


@pytest.fixture(scope="module")
def march_full(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """ES, 2 weeks around the 2025-03-09 DST change and the 2025-03-13 roll, no missing minutes."""
    path, _ = write(tmp_path_factory.mktemp("syn"), "es_march.dbn.zst", missing_rate=0.0, **MARCH)
    return path, records(path)


@pytest.mark.parametrize(
    ("start", "end"),
    [("2025-03-03T00:00", "2025-03-17T00:00"), ("2025-10-29T13:17", "2025-11-05T02:00")],
    ids=["spring-dst", "fall-dst"],
)
def test_bars_exactly_in_globex_hours(tmp_path: Path, start: str, end: str) -> None:
    path, n = write(tmp_path, "es.dbn.zst", root="ES", start_ns=ns(start), end_ns=ns(end), missing_rate=0.0)
    rec = records(path)
    assert n == len(rec)
    expected = globex_open_minutes(ns(start), ns(end))
    assert np.array_equal(rec["ts_event"].astype(np.int64), expected)
    local = pd.DatetimeIndex(pd.to_datetime(rec["ts_event"].astype(np.int64), utc=True)).tz_convert(CHICAGO)
    assert not (local.day_of_week == 5).any()
    assert not ((local.day_of_week == 6) & (local.hour < 17)).any()
    assert not (local.hour == 16).any()
    assert (local.hour == 17).any() and (local.hour == 15).any()  # open right after / up to the break


def test_sunday_open_follows_dst(march_full: tuple[Path, np.ndarray]) -> None:
    ts = march_full[1]["ts_event"].astype(np.int64)
    # Sunday 17:00 Chicago is 23:00 UTC in CST (Mar 2) and 22:00 UTC in CDT (Mar 9).
    assert ns("2025-03-02T23:00") not in ts  # before the window
    assert ns("2025-03-09T21:59") not in ts and ns("2025-03-09T22:00") in ts
    assert ns("2025-03-07T21:59") in ts and ns("2025-03-07T22:00") not in ts  # Friday 15:59/16:00 CST
    assert ns("2025-03-14T20:59") in ts and ns("2025-03-14T21:00") not in ts  # Friday 15:59/16:00 CDT
    per_day = pd.Series(1, index=pd.to_datetime(ts, utc=True).tz_convert(CHICAGO)).resample("D").sum()
    # Sunday evenings in Chicago: Mar 2 from 18:00 (window start), Mar 9 17:00-24:00, Mar 16 17:00-19:00.
    assert per_day[per_day.index.day_of_week == 6].tolist() == [360, 420, 120]


@pytest.mark.parametrize(
    ("root", "tick", "level"),
    [("ES", 0.25, 6000), ("NQ", 0.25, 21000), ("YM", 1.0, 44000), ("RTY", 0.10, 2400), ("GC", 0.25, 1000)],
)
def test_prices_on_tick_and_consistent(tmp_path: Path, root: str, tick: float, level: float) -> None:
    path, n = write(tmp_path, f"{root}.dbn", root=root, start_ns=ns("2025-06-02"), end_ns=ns("2025-06-05"))
    rec = records(path)
    assert tick_size(root) == tick and n == len(rec) > 3000
    tick_fp = round(tick * PRICE_SCALE)
    for field in ("open", "high", "low", "close"):
        assert (rec[field] % tick_fp == 0).all(), field
    o, h, lo, c = (rec[f].astype(np.int64) for f in ("open", "high", "low", "close"))
    assert (lo <= np.minimum(o, c)).all() and (np.maximum(o, c) <= h).all() and (lo > 0).all()
    assert (h > lo).mean() > 0.5  # bars have ranges, not flat lines
    closes = c / PRICE_SCALE
    assert 0.75 * level < closes.min() and closes.max() < 1.3 * level
    moves = np.abs(np.diff(closes)) / closes[:-1]
    assert np.median(moves) < 0.001 and moves.max() < 0.01  # no wild jumps within a contract
    assert (rec["volume"] >= 1).all() and rec["volume"].dtype == np.uint64


def test_volume_concentrated_in_us_cash_hours(march_full: tuple[Path, np.ndarray]) -> None:
    rec = march_full[1]
    ny = pd.DatetimeIndex(pd.to_datetime(rec["ts_event"].astype(np.int64), utc=True)).tz_convert(
        "America/New_York"
    )
    minute = ny.hour * 60 + ny.minute
    cash = np.asarray((minute >= 9 * 60 + 30) & (minute < 16 * 60))
    vol = rec["volume"].astype(float)
    assert vol[cash].mean() > 5 * vol[~cash].mean()
    assert 500 < vol[cash].mean() < 5000 and 20 < vol[~cash].mean() < 500


def test_roll_changes_instrument_and_mapping_resolves(march_full: tuple[Path, np.ndarray]) -> None:
    path, rec = march_full
    contracts = continuous_contracts("ES", MARCH["start_ns"], MARCH["end_ns"])
    assert [c.raw_symbol for c in contracts] == ["ESH5", "ESM5"]
    old, new = (c.instrument_id for c in contracts)
    assert old != new
    roll = ns("2025-03-13T22:00")  # Thursday 17:00 CDT, 8 days before the third Friday (Mar 21)
    assert contracts[0].active_to_ns == contracts[1].active_from_ns == roll
    ts = rec["ts_event"].astype(np.int64)
    assert set(rec["instrument_id"][ts < roll].tolist()) == {old}
    assert set(rec["instrument_id"][ts >= roll].tolist()) == {new}
    # Not back-adjusted: the next contract trades at a carry premium, so the series jumps at the roll.
    last_old, first_new = rec[ts < roll][-1], rec[ts >= roll][0]
    jump = first_new["open"] / last_old["close"] - 1
    assert 0.003 < jump < 0.02

    store = databento.DBNStore.from_file(path)
    assert str(store.stype_in) == "continuous" and store.symbols == ["ES.v.0"]
    assert str(store.schema) == "ohlcv-1m" and store.dataset == "GLBX.MDP3"
    intervals = store.mappings["ES.v.0"]
    assert [(i["start_date"], i["end_date"], i["symbol"]) for i in intervals] == [
        (dt.date(2025, 3, 3), dt.date(2025, 3, 14), str(old)),
        (dt.date(2025, 3, 13), dt.date(2025, 3, 17), str(new)),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = store.to_df()
    assert set(df["symbol"]) == {"ES.v.0"}  # databento's own InstrumentMap resolves every record

    src = DbnBarFile([path])
    bars = src.read(SymbolFilter("ES", "ES.v.0"))
    assert len(bars) == len(rec) and src.ignored == {}
    assert np.array_equal(bars["instrument_id"], rec["instrument_id"])
    assert src.read(SymbolFilter("NQ", "NQ.v.0")).size == 0 and src.ignored == {"ES.v.0": len(rec)}


def test_rank_and_roll_rule(tmp_path: Path, march_full: tuple[Path, np.ndarray]) -> None:
    window = {"start_ns": ns("2025-03-04T00:00"), "end_ns": ns("2025-03-05T00:00")}
    path, _ = write(tmp_path, "es_c1.dbn", root="ES", roll_rule="c", rank=1, missing_rate=0.0, **window)
    store = databento.DBNStore.from_file(path)
    assert store.symbols == ["ES.c.1"]
    second = store.to_ndarray()
    deferred = continuous_contracts("ES", **window, rank=1)
    assert [c.raw_symbol for c in deferred] == ["ESM5"]
    assert set(second["instrument_id"].tolist()) == {deferred[0].instrument_id}
    front = march_full[1]
    front = front[(front["ts_event"] >= window["start_ns"]) & (front["ts_event"] < window["end_ns"])]
    assert np.array_equal(front["ts_event"], second["ts_event"])
    assert (second["close"] > front["close"]).mean() > 0.95  # deferred contract: higher carry premium
    assert len(DbnBarFile([path]).read(SymbolFilter("ES", "ES.c.1"))) == len(second)


def test_quarterly_roll_schedule() -> None:
    contracts = continuous_contracts("NQ", ns("2025-01-01"), ns("2026-01-01"))
    assert [c.raw_symbol for c in contracts] == ["NQH5", "NQM5", "NQU5", "NQZ5", "NQH6"]
    assert len({c.instrument_id for c in contracts}) == 5
    for prev, c in zip(contracts, contracts[1:], strict=False):
        month = prev.expiry.month
        fridays = [w[calendar.FRIDAY] for w in calendar.monthcalendar(2025, month) if w[calendar.FRIDAY]]
        assert prev.expiry == dt.date(2025, month, fridays[2])
        roll_local = dt.datetime.fromtimestamp(c.active_from_ns // 10**9, tz=ZoneInfo(CHICAGO))
        assert roll_local.weekday() == calendar.THURSDAY and (roll_local.hour, roll_local.minute) == (17, 0)
        assert roll_local.date() == prev.expiry - dt.timedelta(days=8)
    # ids are stable: another window sees the same contract ids
    again = continuous_contracts("NQ", ns("2025-05-01"), ns("2025-05-02"))
    assert again[0].raw_symbol == "NQM5" and again[0].instrument_id == contracts[1].instrument_id
    es = continuous_contracts("ES", ns("2025-05-01"), ns("2025-05-02"))
    assert es[0].raw_symbol == "ESM5" and es[0].instrument_id != again[0].instrument_id


def test_deterministic(tmp_path: Path) -> None:
    args = {"root": "NQ", "start_ns": ns("2025-06-09"), "end_ns": ns("2025-06-11")}
    a, na = write(tmp_path, "a.dbn.zst", **args)
    b, nb = write(tmp_path, "b.dbn.zst", **args)
    c, _ = write(tmp_path, "c.dbn.zst", seed=8, **args)
    assert na == nb > 0 and a.read_bytes() == b.read_bytes()
    ra, rc = records(a), records(c)
    assert not np.array_equal(ra["close"][: min(len(ra), len(rc))], rc["close"][: min(len(ra), len(rc))])


def test_chunk_invariance(tmp_path: Path) -> None:
    start, mid, end = ns("2025-03-10T00:00"), ns("2025-03-13T22:37"), ns("2025-03-17T00:00")
    full = records(write(tmp_path, "full.dbn.zst", root="ES", start_ns=start, end_ns=end)[0])
    first = records(write(tmp_path, "p1.dbn.zst", root="ES", start_ns=start, end_ns=mid)[0])
    second = records(write(tmp_path, "p2.dbn", root="ES", start_ns=mid, end_ns=end)[0])
    assert np.array_equal(full, np.concatenate([first, second]))
    # A window starting a month earlier produces the very same bars for the common minutes.
    longer = records(write(tmp_path, "long.dbn.zst", root="ES", start_ns=ns("2025-02-01"), end_ns=end)[0])
    assert np.array_equal(longer[longer["ts_event"] >= start], full)


def test_missing_minutes(tmp_path: Path, march_full: tuple[Path, np.ndarray]) -> None:
    expected = len(globex_open_minutes(MARCH["start_ns"], MARCH["end_ns"]))
    assert len(march_full[1]) == expected  # missing_rate=0: none missing
    default = records(write(tmp_path, "default.dbn.zst", **MARCH)[0])  # missing_rate=0.002
    missing = expected - len(default)
    assert 0.0005 < missing / expected < 0.006
    open_minutes = globex_open_minutes(MARCH["start_ns"], MARCH["end_ns"])
    assert np.isin(default["ts_event"].astype(np.int64), open_minutes).all()
    many = records(write(tmp_path, "many.dbn", missing_rate=0.05, **MARCH)[0])
    assert 0.04 < 1 - len(many) / expected < 0.06


def test_one_year_window_is_fast_and_decodes(tmp_path: Path) -> None:
    path = tmp_path / "nq_2025.dbn.zst"
    started = time.perf_counter()
    n = write_synthetic_dbn(path, root="NQ", start_ns=ns("2025-01-01"), end_ns=ns("2026-01-01"))
    elapsed = time.perf_counter() - started
    assert 340_000 < n < 365_000
    assert elapsed < 5.0, f"one year took {elapsed:.2f}s"
    src = DbnBarFile([path])
    chunks = list(src.iter_chunks(SymbolFilter("NQ", "NQ.v.0"), chunk_size=100_000))
    assert len(chunks) == 4 and sum(len(c) for c in chunks) == n and src.ignored == {}
    ids = np.concatenate([c["instrument_id"] for c in chunks])
    switches = np.flatnonzero(np.diff(ids.astype(np.int64)))
    assert len(np.unique(ids)) == 5 and len(switches) == 4 and (np.diff(switches) > 80_000).all()
    assert len(databento.DBNStore.from_file(path).mappings["NQ.v.0"]) == 5


def test_compressed_and_plain_files_hold_the_same_records(tmp_path: Path) -> None:
    args = {"root": "RTY", "start_ns": ns("2025-06-09"), "end_ns": ns("2025-06-10")}
    zst, _ = write(tmp_path, "r.dbn.zst", **args)
    raw, _ = write(tmp_path, "r.dbn", **args)
    assert zst.read_bytes()[:4] == b"\x28\xb5\x2f\xfd" and raw.read_bytes()[:3] == b"DBN"
    assert zst.stat().st_size < raw.stat().st_size
    assert np.array_equal(records(zst), records(raw))
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"end_ns": ns("2025-06-09")},
        {"roll_rule": "x"},
        {"rank": -1},
        {"missing_rate": 1.0},
        {"root": "E S"},
    ],
)
def test_invalid_arguments(tmp_path: Path, kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"root": "ES", "start_ns": ns("2025-06-09"), "end_ns": ns("2025-06-10")}
    args.update(kwargs)
    with pytest.raises(EngineError):
        write_synthetic_dbn(tmp_path / "x.dbn", **args)  # type: ignore[arg-type]
    assert not (tmp_path / "x.dbn").exists()
