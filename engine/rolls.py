"""Which contract each session of a continuous series comes from, computed from outright bars (pure numpy).

Contracts are CME equity-index outrights (``ESU4``, ``ESH26``): month code + year digit(s), expiring on the third
Friday of the contract month. The year digits are decoded relative to a date: the first year with those last
digits whose contract expires on or after that date (``contract_expiry``).

Sessions are the CME calendar's (``engine.calendar``); a bar belongs to the first session whose close is after
it, so bars in the daily break or on a weekend belong to the next session.

Roll rules (``schedule``), rank k = the k-th choice (0 = front):

- ``c``: expiry order. A contract is eligible for session s while s < (its expiry session) - ``roll_days``,
  i.e. with roll_days=0 the expiry day's session already belongs to the next contract.
- ``v``: by the PREVIOUS session's volume (session s is decided from the volumes of session s-1 only, never
  its own); ties and contracts without volume there follow expiry order; contracts whose expiry session is at
  or before s are not eligible. A session whose previous session has no volume of any contract (the first
  session of the inputs, or after a gap) falls back to the ``c`` order.
- ``n`` (open interest) cannot be computed from OHLCV bars: refused by the ingest.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence

import numpy as np

from engine.calendar import session_bounds_ns

__all__ = ["ContractCodes", "Sessions", "contract_expiry", "roll_prices", "schedule", "SeriesRuns",
           "session_volumes", "third_friday"]

NS_PER_DAY = 86_400_000_000_000
_EPOCH = dt.date(1970, 1, 1)
_MONTH_CODES = "FGHJKMNQUVXZ"
NONE = -1  # no contract chosen (no eligible contract in the inputs)


def third_friday(year: int, month: int) -> dt.date:
    first = dt.date(year, month, 1)
    return first + dt.timedelta(days=(4 - first.weekday()) % 7 + 14)


def contract_expiry(raw_symbol: str, root: str, on: dt.date) -> dt.date | None:
    """The expiry of outright `raw_symbol` of `root` (third Friday of its month), its year digits decoded as the
    first such year whose contract expires on or after `on`; None when it is not an outright of the root."""
    match = re.fullmatch(rf"{re.escape(root)}([{_MONTH_CODES}])(\d{{1,2}})", raw_symbol)
    if match is None:
        return None
    month = _MONTH_CODES.index(match.group(1)) + 1
    digits = match.group(2)
    modulus = 10 ** len(digits)
    year = on.year - on.year % modulus + int(digits)
    while third_friday(year, month) < on:
        year += modulus
    return third_friday(year, month)


class Sessions:
    """The CME sessions overlapping [start_ns, end_ns): opens, closes, trade days, and each bar's session."""

    def __init__(self, start_ns: int, end_ns: int):
        self.opens, self.closes = session_bounds_ns(start_ns, end_ns)
        self.trade_days = self.closes // NS_PER_DAY  # the session closes (16:00 Chicago) on its trade date
        self.count = len(self.opens)

    def index(self, ts: np.ndarray) -> np.ndarray:
        """Session index of each ts (``count`` for a ts after the last close): breaks and weekends count forward."""
        return np.searchsorted(self.closes, np.asarray(ts, dtype=np.int64), side="right")

    def trade_date(self, s: int) -> dt.date:
        return _EPOCH + dt.timedelta(days=int(self.trade_days[s]))


class ContractCodes:
    """raw_symbol (S16) -> a small code per known contract, vectorised on the symbol's first 8 bytes.

    Outright symbols of a root are at most 8 bytes (``RTYH26``); a longer label is not a code (-1)."""

    def __init__(self, labels: Sequence[str]):
        self.labels = tuple(sorted({s for s in labels if 0 < len(s.encode()) <= 8}))
        keys = np.array([s.encode() for s in self.labels], dtype="S16").view("<u8").reshape(-1, 2)[:, 0]
        self._order = np.argsort(keys)
        self._keys = keys[self._order]

    def __len__(self) -> int:
        return len(self.labels)

    def codes(self, raw: np.ndarray) -> np.ndarray:
        """int64 code per raw_symbol; -1 where it is not a known contract."""
        raw = np.ascontiguousarray(raw, dtype="S16")
        words = raw.view("<u8").reshape(-1, 2)
        if not len(self._keys):
            return np.full(len(raw), -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self._keys, words[:, 0]), len(self._keys) - 1)
        found = (self._keys[pos] == words[:, 0]) & (words[:, 1] == 0)
        return np.where(found, self._order[pos], -1).astype(np.int64)


def session_volumes(session: np.ndarray, code: np.ndarray, volume: np.ndarray, n_sessions: int,
                    n_contracts: int) -> tuple[np.ndarray, np.ndarray]:
    """(volume, bar count) per (session, contract) of one chunk, for bars inside the sessions with a known code."""
    ok = (session < n_sessions) & (code >= 0)
    flat = session[ok] * n_contracts + code[ok]
    size = n_sessions * n_contracts
    vol = np.bincount(flat, weights=volume[ok].astype(np.float64), minlength=size).reshape(n_sessions, n_contracts)
    bars = np.bincount(flat, minlength=size).reshape(n_sessions, n_contracts)
    return vol, bars


def expiry_sessions(sessions: Sessions, expiry_days: np.ndarray) -> np.ndarray:
    """Index of each contract's expiry session (the first session trading on or after its expiry day)."""
    return np.searchsorted(sessions.trade_days, expiry_days, side="left")


def schedule(rule: str, rank: int, volume: np.ndarray, present: np.ndarray, expiry_session: np.ndarray,
             roll_days: int) -> tuple[np.ndarray, np.ndarray]:
    """(chosen contract code per session (NONE where none is eligible), per session: whether rule v fell back to
    expiry order). ``volume``: float (sessions, contracts); ``present``: bool per contract (has bars at all);
    ``expiry_session``: int per contract (``expiry_sessions``)."""
    n_sessions, n_contracts = volume.shape
    s = np.arange(n_sessions)[:, None]
    by_expiry = np.argsort(expiry_session, kind="stable")  # contract codes in expiry order
    c_ok = present[None, :] & (s < expiry_session[None, :] - roll_days)
    fallback = np.zeros(n_sessions, dtype=bool)
    if rule == "c":
        ok, prev = c_ok, None
    elif rule == "v":
        prev = np.zeros_like(volume)
        prev[1:] = volume[:-1]
        ok = present[None, :] & (s < expiry_session[None, :])
        fallback = ~(prev > 0).any(axis=1)
        ok = np.where(fallback[:, None], c_ok, ok)
    else:
        raise ValueError(f"roll rule {rule!r} cannot be computed from OHLCV bars")
    # Rank inside each session: eligible contracts first, then (rule v) larger previous volume, then expiry order.
    ok_e = ok[:, by_expiry]
    key = np.where(ok_e, 0.0, 1.0)
    if prev is not None:
        key = key * 1e30 - np.where(fallback[:, None] | ~ok_e, 0.0, prev[:, by_expiry])
    order = np.argsort(key, axis=1, kind="stable")
    chosen = np.full(n_sessions, NONE, dtype=np.int64)
    if rank < n_contracts:
        col = order[:, rank]
        valid = ok_e[np.arange(n_sessions), col]
        chosen[valid] = by_expiry[col[valid]]
    return chosen, fallback


def roll_prices(ts: np.ndarray, iid: np.ndarray, close: np.ndarray, lo_ns: int, roll_ns: int, outgoing: int,
                incoming: int) -> tuple[int, int, int] | None:
    """(price_ts, outgoing close, incoming close) at the latest minute in [lo_ns, roll_ns] where both contracts
    have a bar (raw fixed-point closes); None when they have no common minute there."""
    span = (ts >= lo_ns) & (ts <= roll_ns)
    out_m, in_m = span & (iid == outgoing), span & (iid == incoming)
    common = np.intersect1d(ts[out_m], ts[in_m])
    if not len(common):
        return None
    at = int(common[-1])
    return at, int(close[out_m & (ts == at)][0]), int(close[in_m & (ts == at)][0])


class SeriesRuns:
    """Where the instrument of a series changes, from its accepted bars chunk by chunk (runs of one instrument).

    Memory is one row per run; chunks may come in any order as long as their runs do not interleave in time."""

    def __init__(self) -> None:
        self._first: list[np.ndarray] = []
        self._iid: list[np.ndarray] = []
        self._raw: list[np.ndarray] = []

    def add(self, ts: np.ndarray, iid: np.ndarray, raw: np.ndarray) -> None:
        """Bars of one chunk, sorted by ts."""
        if not len(ts):
            return
        start = np.flatnonzero(np.concatenate(([True], iid[1:] != iid[:-1])))
        self._first.append(ts[start])
        self._iid.append(iid[start])
        self._raw.append(raw[start])

    def changes(self, before: tuple[int, int, bytes] | None = None) -> list[tuple[int, int, bytes, int, bytes]]:
        """(ts of the incoming's first bar, outgoing id, outgoing raw, incoming id, incoming raw) per change,
        starting from the bar `before` the first chunk (ts, instrument_id, raw_symbol), when there is one."""
        if not self._first:
            return []
        first = np.concatenate(self._first)
        iid = np.concatenate(self._iid).astype(np.int64)
        raw = np.concatenate(self._raw)
        order = np.argsort(first, kind="stable")
        first, iid, raw = first[order], iid[order], raw[order]
        if before is not None:
            first = np.concatenate(([before[0]], first))
            iid = np.concatenate(([before[1]], iid))
            raw = np.concatenate((np.array([before[2]], dtype=raw.dtype), raw))
        at = np.flatnonzero(iid[1:] != iid[:-1]) + 1
        return [(int(first[i]), int(iid[i - 1]), bytes(raw[i - 1]), int(iid[i]), bytes(raw[i])) for i in at]
