"""Williams Fractals swing highs / swing lows, as in TradingView's built-in indicator (Periods = n).

Bar p of one symbol's time-ordered bars (index 0 = oldest, no gap filling) is a swing high when

* each of the n newer bars p+1 .. p+n has high < high[p], and
* for some k in 0 .. MAX_LEFT_TIES: bars p-1 .. p-k have high <= high[p] and bars p-k-1 .. p-k-n have
  high < high[p] (up to four equal-or-lower bars right before the pivot, on the older side only).

Swing lows mirror this on lows (> and >=). Bars that do not exist make the condition false, so the first
bars without enough history and the last n bars are never pivots; one bar can be both a high and a low.

``WilliamsFractals`` is the detector (engine/detectors/__init__.py): a swing high becomes a ``swing_high`` (BEAR)
event at the bar's high, a swing low a ``swing_low`` (BULL) event at its low, confirmed by the bar n bars later.

``swing_highs`` / ``swing_lows`` are vectorised numpy (sliding extreme by doubling, then one comparison per
tie count k), run over cache-sized chunks; ``reference_swing_highs`` / ``reference_swing_lows`` are
plain-Python transcriptions of the rule used as the test oracle.

Inputs are meant to be NaN-free. Should a NaN slip in, both versions agree: every comparison with NaN is
false, so a NaN bar is never a pivot and blocks any pivot whose required bars include it.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from engine.config import Direction
from engine.detectors import EVENT_DTYPE
from engine.errors import EngineError

MAX_LEFT_TIES = 4
# A fractal needs n bars on each side of its pivot: beyond a day of minutes on each side the detector would
# confirm an event a day late, which no chart setting means.
MAX_N = 1440

# Bars per chunk: the temporaries of one chunk stay in cache, which is ~3x faster than whole-array passes.
_CHUNK = 1 << 17

# (sliding extreme, "other bar is strictly beyond the pivot's side", "... or equal") for highs and lows.
_Ops = tuple[np.ufunc, np.ufunc, np.ufunc]
_HIGH_OPS: _Ops = (np.maximum, np.less, np.less_equal)
_LOW_OPS: _Ops = (np.minimum, np.greater, np.greater_equal)


@dataclass(frozen=True)
class WilliamsFractals:
    """Williams Fractals of period n: BEAR at swing highs, BULL at swing lows (unless swapped)."""

    n: int = 5
    swing_high: Direction = Direction.BEAR
    swing_low: Direction = Direction.BULL

    def __post_init__(self) -> None:
        n = self.n
        if isinstance(n, bool) or not isinstance(n, int | np.integer):
            raise EngineError(f"detector.n={n!r} is not a usable period", "set detector.n to an integer >= 2, e.g. 5")
        if not 2 <= n <= MAX_N:
            raise EngineError(
                f"detector.n={n} is outside 2…{MAX_N}: a fractal needs at least 2 bars on each side of its pivot, "
                f"and more than {MAX_N} (a day of minutes) would confirm events a day late",
                "set detector.n between 2 and 1440; TradingView's Williams Fractals use 2, the engine's default is 5")
        for name in ("swing_high", "swing_low"):  # YAML and plain callers pass the names
            value = getattr(self, name)
            if value not in tuple(Direction):
                raise EngineError(f"detector.{name}={value!r} is not a direction", f"set detector.{name} to BULL or "
                                  "BEAR")
            object.__setattr__(self, name, Direction(value))
        if self.swing_high == self.swing_low:
            raise EngineError(
                f"detector.swing_high and detector.swing_low are both {self.swing_high.value}",
                "use different directions, e.g. detector.swing_high=BEAR detector.swing_low=BULL",
            )

    @property
    def warmup_bars(self) -> int:
        return warmup_bars(self.n)

    @property
    def lookahead_bars(self) -> int:
        return int(self.n)

    def detect(self, bars: np.ndarray) -> np.ndarray:
        """Every pivot of `bars` (ordered by ts) as EVENT_DTYPE, ordered by (ts, direction)."""
        n, ts = int(self.n), bars["ts"]
        parts = []
        for mask, column, direction in ((swing_highs(bars["high"], n), "high", self.swing_high),
                                        (swing_lows(bars["low"], n), "low", self.swing_low)):
            idx = np.flatnonzero(mask)  # a pivot always has n bars after it, so idx + n exists
            part = np.empty(len(idx), EVENT_DTYPE)
            part["ts"] = ts[idx]
            part["confirm_ts"] = ts[idx + n]
            part["price"] = bars[column][idx]
            part["direction"] = direction.value
            parts.append(part)
        events = np.concatenate(parts)
        return events[np.lexsort((events["direction"], events["ts"]))]


def warmup_bars(n: int) -> int:
    """Bars needed before a pivot for every tie rule to be decidable (n + MAX_LEFT_TIES)."""
    return n + MAX_LEFT_TIES


def swing_highs(high: np.ndarray, n: int) -> np.ndarray:
    """Bool mask, same length as ``high``: True where the bar is a Williams-fractal swing high."""
    return _swings(high, n, _HIGH_OPS)


def swing_lows(low: np.ndarray, n: int) -> np.ndarray:
    """Bool mask, same length as ``low``: True where the bar is a Williams-fractal swing low."""
    return _swings(low, n, _LOW_OPS)


def reference_swing_highs(high: Sequence[float] | np.ndarray, n: int) -> np.ndarray:
    """Slow literal transcription of the swing-high rule (test oracle)."""
    return _reference(high, n, operator.lt, operator.le)


def reference_swing_lows(low: Sequence[float] | np.ndarray, n: int) -> np.ndarray:
    """Slow literal transcription of the swing-low rule (test oracle)."""
    return _reference(low, n, operator.gt, operator.ge)


def _check_n(n: int) -> None:
    if not isinstance(n, int | np.integer) or n < 2:  # bool is an int; True < 2 is rejected too
        raise ValueError(f"detector.n must be an integer >= 2, got {n!r}")


def _as_series(values: Sequence[float] | np.ndarray) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"expected a 1-D price array, got shape {x.shape}")
    return x


def _reference(
    values: Sequence[float] | np.ndarray,
    n: int,
    beyond: Callable[[float, float], bool],
    beyond_or_equal: Callable[[float, float], bool],
) -> np.ndarray:
    _check_n(n)
    v = [float(x) for x in _as_series(values)]
    size = len(v)
    out = np.zeros(size, dtype=bool)
    for p in range(size):
        if p + n >= size or not all(beyond(v[q], v[p]) for q in range(p + 1, p + n + 1)):
            continue
        out[p] = any(
            p - k - n >= 0
            and all(beyond_or_equal(v[q], v[p]) for q in range(p - k, p))
            and all(beyond(v[q], v[p]) for q in range(p - k - n, p - k))
            for k in range(MAX_LEFT_TIES + 1)
        )
    return out


def _swings(values: np.ndarray, n: int, ops: _Ops) -> np.ndarray:
    _check_n(n)
    n = int(n)
    x = _as_series(values)
    out = np.zeros(len(x), dtype=bool)
    chunk = _CHUNK
    for start in range(0, len(x), chunk):
        stop = min(start + chunk, len(x))
        _mark_chunk(x, n, start, stop, ops, out[start:stop])
    return out


def _sliding_extreme(x: np.ndarray, n: int, extreme: np.ufunc) -> np.ndarray:
    """e[i] = extreme(x[i : i + n]) for i in 0 .. len(x) - n, by O(log n) doubling (needs len(x) >= n)."""
    cur, width = x, 1
    while 2 * width <= n:
        cur = extreme(cur[:-width], cur[width:])
        width *= 2
    if width < n:
        shift = n - width  # 0 < shift < width: the two windows overlap and cover n bars
        cur = extreme(cur[:-shift], cur[shift:])
    return cur


def _mark_chunk(x: np.ndarray, n: int, start: int, stop: int, ops: _Ops, out: np.ndarray) -> None:
    """Set out[i] for pivots p = start + i in [start, stop), reading whatever bars of x they need."""
    extreme, beyond, beyond_or_equal = ops
    lo, hi = max(start, n), min(stop, len(x) - n)  # p < n: no history; p >= len - n: no n newer bars
    if hi <= lo:
        return
    base = max(0, lo - n - MAX_LEFT_TIES)
    ext = _sliding_extreme(x[base : hi + n], n, extreme)  # ext[j - base] = extreme(x[j : j + n])
    pivot = x[lo:hi]
    m = hi - lo

    result = out[lo - start : hi - start]
    beyond(ext[lo + 1 - base : hi + 1 - base], pivot, out=result)  # n newer bars strictly beyond
    left = beyond(ext[lo - n - base : hi - n - base], pivot)  # k = 0: bars p-n .. p-1
    tied = np.empty(m, dtype=bool)  # bars p-1 .. p-k all beyond-or-equal
    cond = np.empty(m, dtype=bool)
    for k in range(1, MAX_LEFT_TIES + 1):
        first = max(0, n + k - lo)  # pivots before lo + first lack the n + k bars of history
        if first >= m:
            break
        p0 = lo + first
        piv, t, c = pivot[first:], tied[first:], cond[first:]
        if k == 1:
            beyond_or_equal(x[p0 - 1 : hi - 1], piv, out=t)
        else:
            np.logical_and(t, beyond_or_equal(x[p0 - k : hi - k], piv, out=c), out=t)
        beyond(ext[p0 - k - n - base : hi - k - n - base], piv, out=c)  # bars p-k-n .. p-k-1
        np.logical_and(c, t, out=c)
        np.logical_or(left[first:], c, out=left[first:])
    np.logical_and(result, left, out=result)
