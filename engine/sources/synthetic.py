"""Deterministic synthetic CME Globex 1-minute bars, written as a real (continuous-symbology) DBN file.

The data imitates what Databento returns for ``ohlcv-1m`` with ``stype_in=continuous`` (e.g. ``NQ.v.0``):

* Globex hours: the session of trade date D runs from D-1 17:00 to D 16:00 America/Chicago (Sunday 17:00
  opens Monday's session; closed Friday 16:00 to Sunday 17:00 and daily 16:00-17:00; DST handled by
  zoneinfo). Exchange holidays are not modelled. One bar per traded minute, a few minutes without trades
  (no bar) at ``missing_rate``.
* Prices on the product's tick at realistic levels, OHLC consistent, more volume (and volatility) during US
  cash hours 09:30-16:00 America/New_York (13:30-20:00 UTC in summer).
* The continuous symbol rolls quarterly (H/M/U/Z) on the Thursday 8 days before the third Friday of the
  contract month, at that day's 17:00 Chicago session open. Prices are not back-adjusted: every contract
  carries a cost-of-carry premium over a common spot path, so the series jumps up at each roll.
* Chunk invariance: each session's path comes from a RNG seeded with (seed, root, trade date) and is pinned
  between opening levels that are a deterministic function of the date, so the bar of a minute never depends
  on the requested window (Jan-Mar == Jan-Feb + Feb-Mar).

Symbology: the file's metadata maps the continuous symbol to each contract's instrument_id with date-granular
intervals (start_date inclusive, end_date exclusive, UTC dates). A roll happens at 22:00/23:00 UTC, inside a
UTC day, so on a roll date both the old and the new instrument map to the continuous symbol (the old
interval ends the day after the roll date, the new one starts on it): every record resolves by the UTC date
of its ts_event, both with ``engine.sources.dbn.DbnBarFile`` and with databento's ``InstrumentMap``.
"""

from __future__ import annotations

import datetime as dt
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import ClassVar
from zoneinfo import ZoneInfo

import databento_dbn
import numpy as np
import zstandard

from engine.bars import NS_PER_MINUTE, PRICE_SCALE
from engine.config import DataKind
from engine.db.types import datetime_to_ns
from engine.errors import EngineError
from engine.sources import Landing, SourceParams
from engine.sources.dbn import DBN_OHLCV_DTYPE
from engine.sources.landing import file_digest, replacing

__all__ = [
    "SyntheticContract",
    "continuous_contracts",
    "globex_sessions",
    "instrument_id_for",
    "iter_synthetic_records",
    "tick_size",
    "write_synthetic_dbn",
]

CHICAGO = ZoneInfo("America/Chicago")
NEW_YORK = ZoneInfo("America/New_York")
NS_PER_SECOND = 1_000_000_000
NS_PER_DAY = 86_400 * NS_PER_SECOND
_EPOCH = dt.date(1970, 1, 1)
GLBX_PUBLISHER_ID = 1  # GLBX.MDP3 / GLBX
_RTYPE_OHLCV_1M = int(databento_dbn.RType.OHLCV_1M.value)

_TICK = {"ES": 0.25, "NQ": 0.25, "YM": 1.0, "RTY": 0.10}
_LEVEL = {"ES": 6000.0, "NQ": 21000.0, "YM": 44000.0, "RTY": 2400.0}
_CASH_VOLUME = {"ES": 1800.0, "NQ": 700.0, "YM": 150.0, "RTY": 250.0}  # mean contracts/minute, cash hours
_VOL_MULT = {"ES": 1.0, "NQ": 1.25, "YM": 0.9, "RTY": 1.35}
_DEFAULT_TICK, _DEFAULT_LEVEL, _DEFAULT_CASH_VOLUME = 0.25, 1000.0, 100.0
_SIGMA_CASH, _SIGMA_NIGHT = 0.00040, 0.00015  # per-minute log-return volatility
_OVERNIGHT_VOLUME_SHARE = 0.07
_CARRY_PER_YEAR = 0.04  # contract premium over spot: carry * days-to-expiry / 365
_QUARTER_CODES = {3: "H", 6: "M", 9: "U", 12: "Z"}
_ROLL_RULES = ("c", "n", "v")
_FLUSH_RECORDS = 1 << 18


def tick_size(root: str) -> float:
    """Minimum price increment of the product (0.25 when the root is unknown)."""
    return _TICK.get(root, _DEFAULT_TICK)


def _utc_date(ns: int) -> dt.date:
    return _EPOCH + dt.timedelta(days=int(ns) // NS_PER_DAY)


def _stable_hash(*parts: object) -> int:
    return zlib.crc32("\x1f".join(str(p) for p in parts).encode())


def instrument_id_for(root: str, year: int, month: int) -> int:
    """A made-up but stable instrument_id for the contract (root, year, month)."""
    return 1_000_000 + _stable_hash("synthetic-instrument", root, year, month) % 2_000_000_000


@dataclass(frozen=True)
class SyntheticContract:
    """One quarterly contract and the window in which the continuous symbol maps to it."""

    raw_symbol: str  # e.g. "NQZ5"
    instrument_id: int
    expiry: dt.date  # third Friday of the contract month
    active_from_ns: int  # clipped to the requested window
    active_to_ns: int  # exclusive, clipped to the requested window


def _third_friday(year: int, month: int) -> dt.date:
    first = dt.date(year, month, 1)
    return first + dt.timedelta(days=(4 - first.weekday()) % 7 + 14)


@lru_cache(maxsize=1024)
def _roll_ns(year: int, month: int) -> int:
    """When the contract stops being the front month: 17:00 Chicago on the Thursday 8 days before expiry."""
    thursday = _third_friday(year, month) - dt.timedelta(days=8)
    return datetime_to_ns(dt.datetime.combine(thursday, dt.time(17, 0), tzinfo=CHICAGO))


@dataclass(frozen=True)
class _Quarterly:
    year: int
    month: int
    roll_ns: int


def _quarterlies(first_year: int, last_year: int) -> list[_Quarterly]:
    return [
        _Quarterly(y, m, _roll_ns(y, m))
        for y in range(first_year, last_year + 1)
        for m in sorted(_QUARTER_CODES)
    ]


def _contract_of(root: str, q: _Quarterly, lo: int, hi: int) -> SyntheticContract:
    return SyntheticContract(
        raw_symbol=f"{root}{_QUARTER_CODES[q.month]}{q.year % 10}",
        instrument_id=instrument_id_for(root, q.year, q.month),
        expiry=_third_friday(q.year, q.month),
        active_from_ns=lo,
        active_to_ns=hi,
    )


def continuous_contracts(root: str, start_ns: int, end_ns: int, rank: int = 0) -> list[SyntheticContract]:
    """The contracts the continuous symbol (rank 0 = front month) maps to during [start_ns, end_ns)."""
    start_ns, end_ns = int(start_ns), int(end_ns)
    first_year, last_year = _utc_date(start_ns).year - 1, _utc_date(end_ns).year + 2 + rank // 4
    qs = _quarterlies(first_year, last_year)
    out: list[SyntheticContract] = []
    # The rank-r contract is qs[k + r] while qs[k] is the front: from qs[k-1].roll_ns to qs[k].roll_ns.
    for k in range(1, len(qs) - rank):
        lo, hi = max(qs[k - 1].roll_ns, start_ns), min(qs[k].roll_ns, end_ns)
        if lo < hi:
            out.append(_contract_of(root, qs[k + rank], lo, hi))
    return out


def _contract_at(root: str, t_ns: int, rank: int) -> SyntheticContract:
    return continuous_contracts(root, t_ns, t_ns + 1, rank)[0]


def globex_sessions(start_ns: int, end_ns: int) -> list[tuple[dt.date, int, int]]:
    """(trade_date, open_ns, close_ns) of the Globex sessions overlapping [start_ns, end_ns)."""
    start_ns, end_ns = int(start_ns), int(end_ns)
    out = []
    day = _utc_date(start_ns) - dt.timedelta(days=1)
    last = _utc_date(end_ns) + dt.timedelta(days=2)
    while day <= last:
        if day.weekday() < 5:
            open_ns = datetime_to_ns(dt.datetime.combine(day - dt.timedelta(days=1), dt.time(17, 0), tzinfo=CHICAGO))
            close_ns = datetime_to_ns(dt.datetime.combine(day, dt.time(16, 0), tzinfo=CHICAGO))
            if open_ns < end_ns and close_ns > start_ns:
                out.append((day, open_ns, close_ns))
        day += dt.timedelta(days=1)
    return out


def _splitmix64(x: np.ndarray) -> np.ndarray:
    z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _anchor_log(root: str, seed: int, days: np.ndarray) -> np.ndarray:
    """Log spot level at the start of each calendar day (days since the epoch): slow waves plus jitter."""
    key = _stable_hash("synthetic-anchor", seed, root)
    phases = [((key >> s) & 0xFFFF) / 0x10000 * 2 * np.pi for s in (0, 8, 16)]
    d = days.astype(np.float64)
    wave = (
        0.12 * np.sin(2 * np.pi * d / 900 + phases[0])
        + 0.05 * np.sin(2 * np.pi * d / 140 + phases[1])
        + 0.015 * np.sin(2 * np.pi * d / 29 + phases[2])
    )
    u = (_splitmix64(days.astype(np.int64).astype(np.uint64) ^ np.uint64(key)) >> np.uint64(11)).astype(
        np.float64
    ) * 2.0**-53
    return np.log(_LEVEL.get(root, _DEFAULT_LEVEL)) + wave + 0.006 * (2 * u - 1)


def _session_records(
    root: str, seed: int, rank: int, missing_rate: float, trade_date: dt.date, open_ns: int, close_ns: int
) -> np.ndarray:
    """All bars of one session (independent of any window), as DBN OHLCV records."""
    n = (close_ns - open_ns) // NS_PER_MINUTE
    day = (trade_date - _EPOCH).days
    rng = np.random.default_rng([seed & 0xFFFFFFFFFFFFFFFF, _stable_hash("synthetic-session", root), day])
    ts = open_ns + np.arange(n, dtype=np.int64) * NS_PER_MINUTE

    cash_lo = datetime_to_ns(dt.datetime.combine(trade_date, dt.time(9, 30), tzinfo=NEW_YORK))
    cash_hi = datetime_to_ns(dt.datetime.combine(trade_date, dt.time(16, 0), tzinfo=NEW_YORK))
    in_cash = (ts >= cash_lo) & (ts < cash_hi)
    sigma = np.where(in_cash, _SIGMA_CASH, _SIGMA_NIGHT) * _VOL_MULT.get(root, 1.0)

    # Brownian bridge (in variance time) from today's opening level to tomorrow's: no state crosses days.
    eps = rng.standard_normal(n) * sigma
    walk = np.cumsum(eps)
    var_time = np.cumsum(sigma * sigma)
    bridge = walk - var_time / var_time[-1] * walk[-1]
    la0, la1 = _anchor_log(root, seed, np.array([day, day + 1]))
    log_close = la0 + (la1 - la0) * (np.arange(1, n + 1) / n) + bridge
    log_open = np.concatenate(([la0], log_close[:-1]))

    contract = _contract_at(root, open_ns, rank)
    premium = 1.0 + _CARRY_PER_YEAR * max((contract.expiry - trade_date).days, 0) / 365.0
    tick = tick_size(root)
    p_close = np.exp(log_close) * premium
    o = np.rint(np.exp(log_open) * premium / tick).astype(np.int64)
    c = np.rint(p_close / tick).astype(np.int64)
    wicks = np.floor(np.abs(rng.standard_normal((2, n))) * (0.6 * sigma * p_close / tick)).astype(np.int64)
    h = np.maximum(o, c) + wicks[0]
    lo = np.minimum(o, c) - wicks[1]

    cash_volume = _CASH_VOLUME.get(root, _DEFAULT_CASH_VOLUME)
    base = np.where(in_cash, cash_volume, cash_volume * _OVERNIGHT_VOLUME_SHARE)
    base = np.where(in_cash & (ts < cash_lo + 30 * NS_PER_MINUTE), base * 1.8, base)  # opening rush
    volume = np.maximum(
        1, np.rint(base * np.exp(0.45 * rng.standard_normal(n)) * (1 + 0.3 * np.abs(eps) / sigma))
    ).astype(np.uint64)
    traded = rng.random(n) >= missing_rate

    ts, o, h, lo, c, volume = (x[traded] for x in (ts, o, h, lo, c, volume))
    rec = np.empty(len(ts), dtype=DBN_OHLCV_DTYPE)
    rec["length"] = DBN_OHLCV_DTYPE.itemsize // 4
    rec["rtype"] = _RTYPE_OHLCV_1M
    rec["publisher_id"] = GLBX_PUBLISHER_ID
    rec["instrument_id"] = contract.instrument_id
    rec["ts_event"] = ts
    tick_fp = round(tick * PRICE_SCALE)
    rec["open"], rec["high"], rec["low"], rec["close"] = o * tick_fp, h * tick_fp, lo * tick_fp, c * tick_fp
    rec["volume"] = volume
    return rec


def _check_args(
    root: str, start_ns: int, end_ns: int, roll_rule: str, rank: int, missing_rate: float
) -> None:
    if not root or not root.isalnum():
        raise EngineError(f"invalid product root {root!r}", fix="use a CME root such as ES, NQ, YM or RTY")
    if end_ns <= start_ns:
        raise EngineError(
            f"empty synthetic window: end ({end_ns}) is not after start ({start_ns})",
            fix="choose an end time later than the start time",
        )
    if roll_rule not in _ROLL_RULES:
        raise EngineError(f"unknown roll rule {roll_rule!r}", fix="use one of 'c', 'n' or 'v'")
    if rank < 0:
        raise EngineError(f"negative contract rank {rank}", fix="use rank 0 (front month), 1, 2, ...")
    if not 0.0 <= missing_rate < 1.0:
        raise EngineError(f"missing_rate {missing_rate} is not in [0, 1)", fix="use e.g. 0.002")


def iter_synthetic_records(
    root: str,
    start_ns: int,
    end_ns: int,
    *,
    seed: int = 7,
    rank: int = 0,
    missing_rate: float = 0.002,
    chunk_records: int = _FLUSH_RECORDS,
) -> Iterator[np.ndarray]:
    """Synthetic bars with ts in [start_ns, end_ns) as arrays of DBN OHLCV records (DBN_OHLCV_DTYPE)."""
    start_ns, end_ns = int(start_ns), int(end_ns)
    _check_args(root, start_ns, end_ns, "v", rank, missing_rate)
    pending: list[np.ndarray] = []
    pending_n = 0
    for trade_date, open_ns, close_ns in globex_sessions(start_ns, end_ns):
        rec = _session_records(root, seed, rank, missing_rate, trade_date, open_ns, close_ns)
        if open_ns < start_ns or close_ns > end_ns:
            rec = rec[(rec["ts_event"] >= start_ns) & (rec["ts_event"] < end_ns)]
        if len(rec):
            pending.append(rec)
            pending_n += len(rec)
        if pending_n >= chunk_records:
            yield np.concatenate(pending)
            pending, pending_n = [], 0
    if pending:
        yield np.concatenate(pending)


@dataclass(frozen=True)
class _Interval:
    start_date: dt.date
    end_date: dt.date
    symbol: str


@dataclass(frozen=True)
class _SymbolMapping:
    raw_symbol: str
    intervals: list[_Interval]


def _metadata(
    root: str, start_ns: int, end_ns: int, roll_rule: str, rank: int, dataset: str
) -> databento_dbn.Metadata:
    continuous = f"{root}.{roll_rule}.{rank}"
    intervals = [
        _Interval(
            start_date=_utc_date(c.active_from_ns),
            end_date=_utc_date(c.active_to_ns - 1) + dt.timedelta(days=1),
            symbol=str(c.instrument_id),
        )
        for c in continuous_contracts(root, start_ns, end_ns, rank)
    ]
    return databento_dbn.Metadata(
        dataset=dataset,
        start=start_ns,
        stype_in=databento_dbn.SType.CONTINUOUS,
        stype_out=databento_dbn.SType.INSTRUMENT_ID,
        schema=databento_dbn.Schema.OHLCV_1M,
        symbols=[continuous],
        partial=[],
        not_found=[],
        mappings=[_SymbolMapping(continuous, intervals)],
        end=end_ns,
    )


def write_synthetic_dbn(
    path: Path,
    *,
    root: str,
    start_ns: int,
    end_ns: int,
    seed: int = 7,
    roll_rule: str = "v",
    rank: int = 0,
    missing_rate: float = 0.002,
    dataset: str = "GLBX.MDP3",
) -> int:
    """Write synthetic ``{root}.{roll_rule}.{rank}`` 1-minute bars for [start_ns, end_ns) as a DBN file.

    Zstd-compressed when ``path`` ends in ``.zst``. Written in chunks (memory stays flat for any window) to a
    temporary file that is renamed into place. Returns the number of records written.
    """
    start_ns, end_ns = int(start_ns), int(end_ns)
    _check_args(root, start_ns, end_ns, roll_rule, rank, missing_rate)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = _metadata(root, start_ns, end_ns, roll_rule, rank, dataset).encode()
    written = 0
    with replacing(path) as tmp:
        raw = open(tmp, "wb")  # noqa: SIM115 - closed with `out` below
        compress = path.name.endswith(".zst")
        out = zstandard.ZstdCompressor(write_checksum=True).stream_writer(raw, closefd=True) if compress else raw
        with out:
            out.write(header)
            for chunk in iter_synthetic_records(
                root, start_ns, end_ns, seed=seed, rank=rank, missing_rate=missing_rate
            ):
                out.write(chunk.tobytes())
                written += len(chunk)
    return written


@dataclass(kw_only=True)
class SyntheticSource(SourceParams):
    """Deterministic demo bars written as a real DBN file (no key, no network)."""

    seed: int = 7
    missing_rate: float = 0.002
    data_kind: DataKind = DataKind.demo
    local: ClassVar[bool] = True

    def acquire(self, ctx, progress) -> Landing:
        return acquire(ctx, progress)

    def available_end(self, cfg) -> dt.datetime:
        """Demo bars exist for every minute that has begun: now, floored to the minute."""
        return dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)


def acquire(ctx, progress) -> Landing:
    """Write (or reuse) the demo DBN file for the job's symbol and window under <data_dir>/synthetic/."""
    symbol, source = ctx.symbol, ctx.source
    if symbol.is_outright:
        raise EngineError(f"the synthetic source makes continuous demo series only, not one contract "
                          f"({symbol.databento_symbol})",
                          "use a continuous symbol (e.g. symbol=ES) with source=synthetic, or source=dbn_file / "
                          "source=databento for one contract")
    start_ns, end_ns = datetime_to_ns(ctx.window.start), datetime_to_ns(ctx.window.end)
    path = (
        Path(ctx.cfg.data_dir) / "synthetic" / symbol.continuous
        / f"{start_ns}_{end_ns}_seed{source.seed}_missing{source.missing_rate}.dbn.zst"
    )
    reused = path.exists()
    if not reused:
        write_synthetic_dbn(
            path, root=symbol.root, start_ns=start_ns, end_ns=end_ns, seed=source.seed,
            roll_rule=symbol.roll_rule, rank=symbol.rank, missing_rate=source.missing_rate, dataset=symbol.dataset,
        )
    return Landing([path], raw_files=[{"path": str(path), "sha256": file_digest(path)[0], "reused": reused}])
