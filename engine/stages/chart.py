"""Stage `chart`: a PNG candlestick chart of the window with its triangle events, in the run directory.

Bars come from the table detect reads (clean unless policy.allow_legacy), events from triangle_events_v1 for
(symbol, that table, this run's logic version, this run's detector and parameters): BEAR as ▼ above the bar's
high, BULL as ▲ below its low. A window of more than about one trading day is narrowed to its last session (the
bars after the last gap of 60 minutes or more), so the candles stay readable.

With ``adjust=difference|ratio`` it draws the back-adjusted series (engine/adjust.py; the title says which, and
the anchor contract) and the events detected on it. Every roll in the drawn range is a vertical line labelled
with the two contracts ("ESM4 → ESU4"); a roll the adjustment had to skip is drawn dashed and labelled
"not adjusted".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np

from engine.adjust import Adjusted, read_adjusted, roll_note, why_unadjusted
from engine.config import Adjustment
from engine.context import StageContext
from engine.db.events import read_events
from engine.db.rolls import Roll, rolls_of
from engine.db.types import datetime_to_ns, ns_to_datetime
from engine.errors import EngineError
from engine.results import StageResult
from engine.stages.detect import bars_table, event_key

TRADING_DAY_BARS = 23 * 60  # CME Globex: 23 hours of 1-minute bars
SESSION_GAP_NS = 60 * 60 * 1_000_000_000
ROLL_LABEL = "roll-label"  # the gid of a roll's label on the figure
_MARKERS = {"BEAR": ("v", "#d62728"), "BULL": ("^", "#2ca02c")}


@dataclass
class ChartResult(StageResult):
    path: str
    source_table: str
    logic_version: str
    scope: str  # "window", or "last session" for a window longer than a trading day
    bars: int
    bars_in_window: int
    range_start: str
    range_end: str
    events: dict[str, int]
    adjustment: str = "none"
    title: str = ""
    rolls: list[str] = field(default_factory=list)  # the roll lines drawn (labels), in time order

    def describe(self) -> str:
        return self.path

    def rows(self, stage: str) -> list[tuple[str, str]]:
        return [("chart", self.path)]


class Chart:
    """Stage `chart` (see the module docstring)."""

    def run(self, ctx: StageContext) -> ChartResult:
        return run(ctx)


def run(ctx: StageContext) -> ChartResult:
    cfg, window = ctx.cfg, ctx.window
    symbol = ctx.symbol.internal_symbol
    table = bars_table(cfg)
    key, _ = event_key(ctx, table, ctx.run.code.logic_version)
    if cfg.policy.allow_legacy:
        ctx.log.warning("chart %s: policy allow_legacy, reading the legacy table %s (not recommended)", symbol, table)
    how = Adjustment(key.adjustment)
    all_rolls = rolls_of(ctx.db, symbol)
    view = read_adjusted(ctx.db, table, symbol, window.start, window.end, how, all_rolls)
    bars = view.bars
    if not len(bars):
        raise EngineError(
            f"chart: no bars of {symbol} in {table} between {window.start:%Y-%m-%dT%H:%M}Z and "
            f"{window.end:%Y-%m-%dT%H:%M}Z",
            "ingest the window first (stages=[ingest,...]) or choose a window with bars",
        )
    shown, scope = chart_range(bars)
    first, last = int(shown["ts"][0]), int(shown["ts"][-1])
    events = read_events(ctx.db, key, ns_to_datetime(first), ns_to_datetime(last) + timedelta(microseconds=1))
    if not len(events):
        ctx.log.warning("chart %s: no triangle events of %s / logic version %s / %s %s in the chart range; "
                        "run stages=[detect,chart] to draw them", symbol, table, key.logic_version, key.detector,
                        key.params)
    path = Path(ctx.run.dir) / f"chart_{re.sub(r'[^A-Za-z0-9._-]', '_', symbol)}.png"
    title = f"{symbol}  1m  {ns_to_datetime(first):%Y-%m-%d %H:%M} → {ns_to_datetime(last):%Y-%m-%d %H:%M} UTC"
    title += adjustment_title(view)
    lines = roll_lines(shown, all_rolls, view)
    drawn_rolls = {r.roll_ts for r in all_rolls if ns_to_datetime(first) < r.roll_ts <= ns_to_datetime(last)}
    for roll in (r for r in view.unadjusted_rolls if r.roll_ts in drawn_rolls):
        ctx.log.warning("chart %s: roll %s could not be adjusted (%s): its raw jump is in the chart", symbol,
                        roll_note(roll), why_unadjusted(roll, how))
    drawn, labelled = plot_chart(shown, events, path, title, lines)
    result = ChartResult(path=str(path), source_table=table, logic_version=key.logic_version, scope=scope,
                         bars=len(shown), bars_in_window=len(bars),
                         range_start=f"{ns_to_datetime(first):%Y-%m-%dT%H:%M:%SZ}",
                         range_end=f"{ns_to_datetime(last):%Y-%m-%dT%H:%M:%SZ}", events=drawn,
                         adjustment=how.value, title=title, rolls=[label for _, label in labelled])
    ctx.log.info("chart %s: %s", symbol, path)
    return result


def adjustment_title(view: Adjusted) -> str:
    """What the title adds for an adjusted series: `  back-adjusted (difference) to ESU4`."""
    if view.adjustment is Adjustment.none:
        return ""
    return f"  back-adjusted ({view.adjustment.value}) to {view.anchor or 'the stored prices: no rolls on record'}"


def roll_lines(bars: np.ndarray, rolls: list[Roll], view: Adjusted) -> list[tuple[int, str, bool]]:
    """(index of the roll's first bar in `bars`, label, adjusted) of each roll inside the drawn bars."""
    if not len(bars):
        return []
    skipped = {r.roll_ts for r in view.unadjusted_rolls}
    out = []
    for roll in rolls:
        ns = datetime_to_ns(roll.roll_ts)
        if bars["ts"][0] < ns <= bars["ts"][-1]:  # a roll at the first drawn bar has no outgoing bar to its left
            adjusted = view.adjustment is Adjustment.none or roll.roll_ts not in skipped
            label = roll.label if adjusted else f"{roll.label} (not adjusted)"
            out.append((int(np.searchsorted(bars["ts"], ns, side="left")), label, adjusted))
    return out


def chart_range(bars: np.ndarray) -> tuple[np.ndarray, str]:
    """The whole window if it holds at most a trading day of bars, else its last session (at most a day)."""
    if len(bars) <= TRADING_DAY_BARS:
        return bars, "window"
    gaps = np.flatnonzero(np.diff(bars["ts"]) >= SESSION_GAP_NS)
    session = bars[gaps[-1] + 1 :] if len(gaps) else bars
    return session[-TRADING_DAY_BARS:], "last session"


def plot_chart(bars: np.ndarray, events: np.ndarray, path: Path, title: str,
               rolls: list[tuple[int, str, bool]] = ()) -> tuple[dict[str, int], list[tuple[float, str]]]:
    """Write the candlestick PNG with a vertical line at each of `rolls` (see roll_lines). Returns how many events
    of each direction were drawn, and the roll labels on the figure with their x (candle index) positions."""
    import logging

    import matplotlib

    matplotlib.use("Agg", force=True)
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)  # mplfinance styles ask for "semibold"
    import matplotlib.pyplot as plt
    import mplfinance as mpf
    import pandas as pd

    frame = pd.DataFrame(
        {"Open": bars["open"], "High": bars["high"], "Low": bars["low"], "Close": bars["close"],
         "Volume": bars["volume"]},
        index=pd.DatetimeIndex(bars["ts"].astype("datetime64[ns]"), name="UTC"),
    )
    ranges = bars["high"] - bars["low"]
    pad = float(np.median(ranges)) * 0.6 or float(np.abs(bars["close"]).mean()) * 1e-4 or 1.0
    addplots, drawn = [], {}
    for direction, (marker, color) in _MARKERS.items():
        ts = events["ts"][events["direction"] == direction]
        idx = np.searchsorted(bars["ts"], ts)
        idx = idx[(idx < len(bars)) & (bars["ts"][np.minimum(idx, len(bars) - 1)] == ts)]
        drawn[direction] = len(idx)
        if not len(idx):
            continue
        y = np.full(len(bars), np.nan)
        y[idx] = bars["high"][idx] + pad if direction == "BEAR" else bars["low"][idx] - pad
        addplots.append(mpf.make_addplot(y, type="scatter", marker=marker, markersize=70, color=color))
    options = {"addplot": addplots} if addplots else {}
    fig, _ = mpf.plot(
        frame, type="candle", style="yahoo", volume=True, title=title, ylabel="price", figsize=(16, 9),
        warn_too_much_data=len(frame) + 1, returnfig=True,
        ylim=(float(bars["low"].min()) - 2 * pad, float(bars["high"].max()) + 2 * pad),
        scale_padding={"left": 0.3, "right": 0.9, "top": 0.9, "bottom": 0.8}, **options,
    )
    price_axis = fig.axes[0]
    for index, label, adjusted in rolls:
        x = index - 0.5  # between the outgoing contract's last candle and the incoming one's first
        price_axis.axvline(x, color="#1f77b4", linewidth=1.2, linestyle="-" if adjusted else "--")
        price_axis.annotate(label, xy=(x, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -12),
                            textcoords="offset points", color="#1f77b4", fontsize=9, gid=ROLL_LABEL)
    labelled = [(float(t.xy[0]), t.get_text()) for t in price_axis.texts if t.get_gid() == ROLL_LABEL]
    try:
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return drawn, labelled
