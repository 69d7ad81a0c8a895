"""Vectorised validation of decoded 1-minute bars: every check is a numpy expression over the whole chunk.

Each bar is checked against the rules in ``REASONS`` order; a rejected bar carries the FIRST rule it fails.

Duplicates: ``duplicate_ts`` is the last rule, so only bars that pass every other rule take part in duplicate
detection. A bar rejected for another reason never "claims" its ts: if a bad bar and a good bar share a ts,
the good bar is kept and the bad one is rejected for its own reason. Among the bars that pass every other
rule, the first one in file order (across all chunks of the ingest, tracked by ``SeenTimestamps``) wins and
every later one is rejected as ``duplicate_ts``, whatever its values. Because the claim is made per chunk in
file order, it does not depend on whether the input is sorted.

A duplicate is the same instrument twice: the ingest picks one contract per minute (``engine.stages.ingest``,
``engine.rolls``) before validation, so another contract's bar at the same minute never reaches it (it is
counted as not chosen, not quarantined).
"""

from __future__ import annotations

from dataclasses import dataclass

import databento_dbn
import numpy as np

from engine.bars import NS_PER_MINUTE, PRICE_SCALE, RAW_BAR_DTYPE, REASONS, to_prices

__all__ = [
    "REASONS",
    "REASON_CODES",
    "UNDEF_PRICE",
    "SeenTimestamps",
    "ValidatedChunk",
    "prices_representable",
    "tick_raw",
    "to_prices",
    "validate_chunk",
]

REASON_CODES = {reason: code for code, reason in enumerate(REASONS)}
_REASON_ARRAY = np.array(REASONS)
_NO_REASON = np.uint8(255)

UNDEF_PRICE = int(databento_dbn.UNDEF_PRICE)
_PRICE_FIELDS = ("open", "high", "low", "close")
_I64_MAX = np.iinfo(np.int64).max
# float64 values at or above 2**63 cannot be cast back to int64.
_TWO_POW_63 = float(2**63)


def prices_representable(raw: np.ndarray) -> np.ndarray:
    """True where ``np.rint(to_prices(raw) * 1e9).astype(int64) == raw`` (no overflow warnings)."""
    raw = np.asarray(raw, dtype=np.int64)
    back = np.rint(to_prices(raw) * PRICE_SCALE)
    in_range = np.abs(back) < _TWO_POW_63
    return in_range & (np.where(in_range, back, 0.0).astype(np.int64) == raw)


def tick_raw(tick: float, key: str = "tick size") -> int:
    """A tick size in points as a positive integer in the 1e-9 fixed-point price space (0.25 -> 250_000_000).

    Raises ValueError when the tick is not positive or not a whole number of 1e-9 units.
    """
    raw = round(float(tick) * PRICE_SCALE)
    if not raw > 0 or abs(float(tick) * PRICE_SCALE - raw) > 1e-6 * max(1, raw):
        raise ValueError(f"{key} {tick!r} is not a positive multiple of 1e-9")
    return int(raw)


class SeenTimestamps:
    """The bar minutes already accepted in this ingest (duplicate detection across chunks).

    One flag per minute between the earliest and latest accepted bar (1 byte a minute: 10 MB for 19 years),
    so memory does not grow with the number of bars and a lookup is one array index. Only timestamps on a
    whole minute reach it: every other one is rejected before duplicate detection.
    """

    def __init__(self) -> None:
        self._origin = 0  # minute number of flag 0
        self._flags = np.zeros(0, dtype=bool)
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def contains(self, ts: np.ndarray) -> np.ndarray:
        minutes = self._minutes(ts)
        offset = minutes - self._origin
        inside = (offset >= 0) & (offset < len(self._flags))
        found = np.zeros(len(minutes), dtype=bool)
        found[inside] = self._flags[offset[inside]]
        return found

    def any_between(self, start_ns: int, end_ns: int) -> bool:
        """Whether a minute in [start_ns, end_ns) is in the set (no copy of the flags)."""
        lo = max(-(-start_ns // NS_PER_MINUTE) - self._origin, 0)
        hi = min(-(-end_ns // NS_PER_MINUTE) - self._origin, len(self._flags))
        return lo < hi and bool(self._flags[lo:hi].any())

    def timestamps(self) -> np.ndarray:
        """The minutes in the set as ts (ns since the epoch, int64), ascending."""
        return (np.flatnonzero(self._flags).astype(np.int64) + self._origin) * NS_PER_MINUTE

    def add(self, ts: np.ndarray) -> None:
        """Add timestamps (need not be sorted or unique, but must not already be in the set)."""
        minutes = self._minutes(ts)
        if len(minutes) == 0:
            return
        self._cover(int(minutes.min()), int(minutes.max()))
        offset = minutes - self._origin
        self._count += int(np.count_nonzero(~self._flags[offset]))
        self._flags[offset] = True

    def _cover(self, lo: int, hi: int) -> None:
        if len(self._flags) and self._origin <= lo and hi < self._origin + len(self._flags):
            return
        old_lo, old_hi = self._origin, self._origin + len(self._flags) - 1
        if len(self._flags):
            span = old_hi - old_lo + 1  # grow by at least doubling, so widening stays amortised O(1)
            lo = min(lo, old_lo - span if lo < old_lo else old_lo)
            hi = max(hi, old_hi + span if hi > old_hi else old_hi)
        flags = np.zeros(hi - lo + 1, dtype=bool)
        if len(self._flags):
            flags[old_lo - lo: old_hi - lo + 1] = self._flags
        self._origin, self._flags = lo, flags

    @staticmethod
    def _minutes(ts: np.ndarray) -> np.ndarray:
        ts = np.asarray(ts, dtype=np.int64)
        if len(ts) and np.any(ts % NS_PER_MINUTE):
            raise ValueError("SeenTimestamps holds whole-minute timestamps only")
        return ts // NS_PER_MINUTE


@dataclass
class ValidatedChunk:
    good: np.ndarray  # RAW_BAR_DTYPE rows that passed, sorted by ts
    bad: np.ndarray  # RAW_BAR_DTYPE rows rejected, in input order
    bad_reason: np.ndarray  # str per bad row: the first failing reason in REASONS order
    bad_code: np.ndarray  # uint8 per bad row: index into REASONS

    def reason_counts(self) -> dict[str, int]:
        codes, counts = np.unique(self.bad_code, return_counts=True)
        return {REASONS[int(code)]: int(count) for code, count in zip(codes, counts, strict=True)}


def _first_reason(chunk: np.ndarray, start_ns: int, end_ns: int, tick: int | None) -> np.ndarray:
    """uint8 code of the first failing rule (all but duplicate_ts) per row; _NO_REASON where none fails."""
    prices = [chunk[name].astype(np.int64, copy=False) for name in _PRICE_FIELDS]
    o, h, lo, c = prices
    ts = chunk["ts"].astype(np.int64, copy=False)
    volume = chunk["volume"].astype(np.uint64, copy=False)

    checks = [
        np.logical_or.reduce([p == UNDEF_PRICE for p in prices]),
        np.logical_or.reduce([p <= 0 for p in prices]),
        ~np.logical_and.reduce([prices_representable(p) for p in prices]),
        (h < np.maximum(o, c)) | (lo > np.minimum(o, c)) | (lo > h),
        volume > np.uint64(_I64_MAX),  # a negative int written unsigned
        (ts % NS_PER_MINUTE) != 0,
        (ts < start_ns) | (ts >= end_ns),
        np.logical_or.reduce([p % tick != 0 for p in prices]) if tick else np.zeros(len(chunk), dtype=bool),
    ]
    code = np.full(len(chunk), _NO_REASON, dtype=np.uint8)
    # Assign in reverse so that the earliest failing rule is the one left standing.
    for index in range(len(checks) - 1, -1, -1):
        code[checks[index]] = index
    return code


def validate_chunk(
    chunk: np.ndarray, start_ns: int, end_ns: int, seen_ts: SeenTimestamps | None, tick: int | None = None
) -> ValidatedChunk:
    """Split a chunk of RAW_BAR_DTYPE bars into good (sorted by ts) and bad (with their first failing reason).

    ``seen_ts`` is the ingest-wide duplicate state: pass the same ``SeenTimestamps`` for every chunk of one
    ingest, in file order (it is updated with the ts of the good rows). ``None`` detects duplicates within
    this chunk only. The window is ``[start_ns, end_ns)``. ``tick``: the product's tick in 1e-9 units
    (``tick_raw``); every price must be a whole multiple of it (``off_tick``); None skips that check.
    """
    chunk = np.asarray(chunk)
    if chunk.dtype != RAW_BAR_DTYPE:
        raise TypeError(f"expected RAW_BAR_DTYPE rows, got dtype {chunk.dtype}")
    if seen_ts is None:
        seen_ts = SeenTimestamps()

    code = _first_reason(chunk, start_ns, end_ns, tick)
    candidates = np.flatnonzero(code == _NO_REASON)
    cand_ts = chunk["ts"][candidates]
    # np.unique's return_index gives the first occurrence (in chunk order) of each value.
    unique_ts, first_pos = np.unique(cand_ts, return_index=True)
    is_first = np.zeros(len(candidates), dtype=bool)
    is_first[first_pos] = True
    already = np.zeros(len(candidates), dtype=bool)
    already[first_pos] = seen_ts.contains(unique_ts)
    duplicate = ~is_first | already
    code[candidates[duplicate]] = REASON_CODES["duplicate_ts"]
    seen_ts.add(cand_ts[~duplicate])

    good_mask = code == _NO_REASON
    good = chunk[good_mask]
    if len(good) > 1 and not bool(np.all(good["ts"][1:] > good["ts"][:-1])):
        good = good[np.argsort(good["ts"], kind="stable")]
    bad_code = code[~good_mask]
    return ValidatedChunk(
        good=good,
        bad=chunk[~good_mask],
        bad_reason=_REASON_ARRAY[bad_code],
        bad_code=bad_code,
    )
