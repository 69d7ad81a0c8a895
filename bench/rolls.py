"""Benchmark (issue 12): building a continuous series from 4 quarters of outright bars, compute only (target: >= 2M
bars/s). `rolls_bars_per_second()` builds ~1.05M synthetic ES outright bars of 2024 (the three nearest quarterly
contracts every minute of every session), then times what the ingest does with them in memory: the volume per
(session, contract) pass, the roll schedule (rule v, rule c) and the per-bar selection of the chosen contract."""

from __future__ import annotations

import datetime as dt
import time

import numpy as np

from engine.bars import NS_PER_MINUTE, PRICE_SCALE, RAW_BAR_DTYPE
from engine.calendar import session_bounds_ns
from engine.db.types import datetime_to_ns
from engine.rolls import (
    ContractCodes,
    Sessions,
    contract_expiry,
    expiry_sessions,
    schedule,
    session_volumes,
)

CONTRACTS = ("ESH4", "ESM4", "ESU4", "ESZ4", "ESH5", "ESM5")
_START = datetime_to_ns(dt.datetime(2024, 1, 1, tzinfo=dt.UTC))
_END = datetime_to_ns(dt.datetime(2025, 1, 1, tzinfo=dt.UTC))


def outright_bars() -> np.ndarray:
    """Every minute of every 2024 session for the three nearest unexpired contracts (RAW_BAR_DTYPE, raw_symbol set)."""
    opens, closes = session_bounds_ns(_START, _END)
    minutes = np.concatenate([np.arange(a, b, NS_PER_MINUTE) for a, b in zip(opens, closes, strict=True)])
    expiry = np.array([datetime_to_ns(dt.datetime.combine(contract_expiry(c, "ES", dt.date(2024, 1, 1)),
                                                           dt.time(13, 30), dt.UTC)) for c in CONTRACTS])
    front = np.searchsorted(expiry, minutes, side="right")  # first contract not expired at that minute
    parts = []
    for offset in (0, 1, 2):
        code = front + offset
        ok = code < len(CONTRACTS)
        out = np.zeros(int(ok.sum()), dtype=RAW_BAR_DTYPE)
        out["ts"] = minutes[ok]
        out["instrument_id"] = 1000 + code[ok]
        out["raw_symbol"] = np.array([c.encode() for c in CONTRACTS], dtype="S16")[code[ok]]
        out["close"] = out["open"] = out["high"] = out["low"] = 5000 * PRICE_SCALE
        rng = np.random.default_rng(offset)
        out["volume"] = rng.integers(1, (500, 200, 20)[offset], len(out))
        parts.append(out)
    bars = np.concatenate(parts)
    return bars[np.argsort(bars["ts"], kind="stable")]


def build_series(bars: np.ndarray, rule: str = "v", rank: int = 0, chunk: int = 250_000) -> np.ndarray:
    """The chosen-bar mask of the continuous series, computed as the ingest does (two passes over the chunks)."""
    sessions = Sessions(_START - 10 * 86_400 * 10**9, _END + 10 * 86_400 * 10**9)
    codes = ContractCodes(CONTRACTS)
    volume = np.zeros((sessions.count, len(codes)))
    present = np.zeros((sessions.count, len(codes)), dtype=np.int64)
    for i in range(0, len(bars), chunk):
        part = bars[i:i + chunk]
        vol, n = session_volumes(sessions.index(part["ts"]), codes.codes(part["raw_symbol"]), part["volume"],
                                 sessions.count, len(codes))
        volume += vol
        present += n
    first = np.argmax(present > 0, axis=0)
    expiry = np.array([(contract_expiry(label, "ES", sessions.trade_date(int(s))) - dt.date(1970, 1, 1)).days
                       for label, s in zip(codes.labels, first, strict=True)])
    chosen, _ = schedule(rule, rank, volume, present.sum(axis=0) > 0, expiry_sessions(sessions, expiry), 0)
    chosen = np.append(chosen, -1)
    keep = np.empty(len(bars), dtype=bool)
    for i in range(0, len(bars), chunk):
        part = bars[i:i + chunk]
        code = codes.codes(part["raw_symbol"])
        keep[i:i + chunk] = (code >= 0) & (code == chosen[np.minimum(sessions.index(part["ts"]), sessions.count)])
    return keep


def rolls_bars_per_second(repeat: int = 3, rule: str = "v") -> dict:
    """{"bars": n, "seconds": best time, "bars_per_second": n / best} of `build_series` (calendar warmed up)."""
    bars = outright_bars()
    keep = build_series(bars, rule)  # warm-up: loads the calendar
    assert np.count_nonzero(keep) == len(np.unique(bars["ts"])), "one contract per minute"
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        build_series(bars, rule)
        best = min(best, time.perf_counter() - started)
    return {"bars": len(bars), "seconds": round(best, 4), "bars_per_second": round(len(bars) / best)}


if __name__ == "__main__":
    print(rolls_bars_per_second())
