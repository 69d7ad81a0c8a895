"""Back-adjusted views of a continuous series: `adjust=none|difference|ratio` for every reader of the bars.

The anchor is the series' latest contract: the incoming contract of the symbol's last roll on record. Its bars
keep their own prices (the prices a trader sees on the exchange today); every older bar is moved onto that
contract's price scale by each roll after it, including rolls after the read window's end, so a window reads
the same adjusted prices whatever its bounds. The price of a bar therefore changes when a newer roll is
ingested (the anchor moves on); bar times never change, and neither do the events detected on it: both
adjustments keep the order of prices within every stretch of rolls, and a roll's own jump is removed the same way
whatever the anchor.

* ``difference`` (backward Panama): every bar before a roll is shifted by that roll's incoming − outgoing close,
  summed over all later rolls. There is no jump at the roll (the adjusted outgoing close at the roll's price
  minute equals the incoming close); price differences are kept, returns are not. The difference of two
  on-tick closes is on the tick, so adjusted prices stay on the tick grid. A long history can go negative.
* ``ratio`` (backward ratio): every bar before a roll is multiplied by incoming / outgoing close, multiplied
  over all later rolls. Returns are kept within each contract, and the return across a roll is the incoming
  contract's (incoming close at the price minute against its next bars). Adjusted prices are off the tick grid.
* ``none``: the bars as stored (TradingView parity on unadjusted continuous charts).

Volume and ts are never adjusted. A roll that cannot be adjusted (no common minute with both contracts' closes;
for ratio also a close <= 0) is **skipped, not a stop**: it adds nothing to the bars before it (they still carry
every later roll's adjustment, so they stay on the anchor's scale up to that one roll's gap), and its raw jump
stays in the series at its roll time. `Adjusted.unadjusted_rolls` names those rolls so the caller says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sqlalchemy import Engine

from engine.config import Adjustment
from engine.db.bars_read import read_bars
from engine.db.rolls import Roll, rolls_of
from engine.db.types import datetime_to_ns

__all__ = ["PRICE_FIELDS", "Adjusted", "adjust_bars", "read_adjusted", "roll_note", "why_unadjusted"]

PRICE_FIELDS = ("open", "high", "low", "close")


@dataclass(frozen=True)
class Adjusted:
    """Bars read through an adjustment, and what it did."""

    bars: np.ndarray  # BAR_READ_DTYPE, the same ts and volume as the stored bars
    adjustment: Adjustment
    applied: tuple[Roll, ...] = ()  # rolls after the first bar whose adjustment the bars carry
    unadjusted_rolls: tuple[Roll, ...] = ()  # rolls after the first bar that could not be adjusted (raw jump kept)
    anchor: str | None = None  # the contract whose own prices the series keeps (None: no roll, or adjust=none)


def adjust_bars(bars: np.ndarray, rolls: list[Roll] | tuple[Roll, ...], adjustment: Adjustment | str, *,
                copy: bool = True) -> Adjusted:
    """`bars` (BAR_READ_DTYPE, in ts order) adjusted for `rolls` (the symbol's rolls: all of them, or at least all
    after the first bar, since each bar is adjusted by every roll after it). A new array unless `copy` is false
    (then `bars` itself is adjusted in place: for a caller that just read them).

    A bar at ts t is adjusted by the rolls with roll_ts > t (from roll_ts on, bars are the incoming contract).
    """
    how = Adjustment(adjustment)
    if how is Adjustment.none:
        return Adjusted(bars, how)
    ordered = sorted(rolls, key=lambda r: r.roll_ts)
    anchor = (ordered[-1].incoming_raw_symbol or f"id {ordered[-1].incoming_instrument_id}") if ordered else None
    if not len(bars):
        return Adjusted(bars.copy() if copy else bars, how, anchor=anchor)
    roll_ns = np.array([datetime_to_ns(r.roll_ts) for r in ordered], dtype=np.int64)
    later = roll_ns > bars["ts"][0]  # rolls before the first bar change nothing here
    ordered = [r for r, keep in zip(ordered, later, strict=True) if keep]
    roll_ns = roll_ns[later]
    usable = np.array([_usable(r, how) for r in ordered], dtype=bool)
    applied = tuple(r for r, ok in zip(ordered, usable, strict=True) if ok)
    skipped = tuple(r for r, ok in zip(ordered, usable, strict=True) if not ok)
    out = bars.copy() if copy else bars
    if not applied:
        return Adjusted(out, how, applied, skipped, anchor)
    outgoing = np.array([r.outgoing_close if ok else 0.0 for r, ok in zip(ordered, usable, strict=True)])
    incoming = np.array([r.incoming_close if ok else 0.0 for r, ok in zip(ordered, usable, strict=True)])
    # Segment j holds the bars before roll j and from roll j-1 on; it carries rolls j.. (a suffix sum/product).
    # Segment len(rolls) (the anchor's own bars) carries nothing.
    if how is Adjustment.difference:
        step = np.where(usable, incoming - outgoing, 0.0)
        carried = np.append(np.cumsum(step[::-1])[::-1], 0.0)
    else:
        step = np.where(usable, incoming / np.where(usable, outgoing, 1.0), 1.0)
        carried = np.append(np.cumprod(step[::-1])[::-1], 1.0)
    edges = np.searchsorted(out["ts"], roll_ns, side="left").tolist()
    # One in-place operation per price field and segment (a handful of rolls): no per-bar array is built.
    for lo, hi, value in zip([0, *edges[:-1]], edges, carried[:-1].tolist(), strict=True):
        if hi > lo and value != (0.0 if how is Adjustment.difference else 1.0):
            segment = out[lo:hi]
            for name in PRICE_FIELDS:
                if how is Adjustment.difference:
                    segment[name] += value
                else:
                    segment[name] *= value
    return Adjusted(out, how, applied, skipped, anchor)


def read_adjusted(engine: Engine, table_name: str, symbol: str, start: datetime | None = None,
                  end: datetime | None = None, adjustment: Adjustment | str = Adjustment.none,
                  rolls: list[Roll] | None = None) -> Adjusted:
    """`read_bars` through the adjustment: the bars of [start, end) adjusted by all the symbol's rolls (those
    after `end` too). `rolls`: the symbol's rolls when the caller has them already (one query for many reads)."""
    bars = read_bars(engine, table_name, symbol, start, end)
    if Adjustment(adjustment) is Adjustment.none:
        return Adjusted(bars, Adjustment.none)
    return adjust_bars(bars, rolls_of(engine, symbol) if rolls is None else rolls, adjustment, copy=False)


def roll_note(roll: Roll) -> str:
    """'ESM4 → ESU4 at 2024-06-13T21:00Z' (for logs and results)."""
    return f"{roll.label} at {roll.roll_ts:%Y-%m-%dT%H:%MZ}"


def why_unadjusted(roll: Roll, how: Adjustment | str) -> str:
    """Why `roll` cannot be adjusted by `how` (for a roll in Adjusted.unadjusted_rolls)."""
    if not roll.adjustable:
        return "no common minute with both contracts' closes; ingest the outrights of the roll session"
    return f"a close <= 0 ({roll.outgoing_close} → {roll.incoming_close}) has no {Adjustment(how).value}"


def _usable(roll: Roll, how: Adjustment) -> bool:
    if not roll.adjustable:
        return False
    return how is not Adjustment.ratio or (roll.outgoing_close > 0 and roll.incoming_close > 0)
