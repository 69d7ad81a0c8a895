"""The coverage heatmap of `engine status`: symbols × trading days, one PNG a person takes in at a glance.

Each cell is one CME trading session (its trade date). Colour: the share of the session's expected minutes that
have a bar (session_quality), in bins from red (under half) to dark green (99.5 % or more); grey: covered by a
clean ingest but without a quality row (ingested before session quality); black: a gap (open market time no
successful ingest covers); white: no session (weekend, holiday) or outside what was ingested. A line through the
cells marks the days of a failed (orange) or abandoned (magenta) run's window.

Columns are weekdays (trade dates are Monday to Friday), so a row is solid where data is complete and a weekday
holiday is a white cell. Layout: up to 200 days, one row per symbol; longer, one row per symbol and year with month
ticks, so a decade of four symbols is 40 rows.
"""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import numpy as np

from engine.status import DayCells

_COMPACT_DAYS = 200
_YEAR_COLUMNS = 262  # the most weekdays a year has
_ANNOTATED_DAYS = 45  # up to this many days the cells carry their share as text
_VERTICAL_BAR_ROWS = 8  # from this many rows the colour bar stands beside the cells, else under them
_BINS = [0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.995, 1.0001]
_BIN_COLOURS = ["#b2182b", "#ef6548", "#fdae61", "#fee08b", "#d9ef8b", "#66bd63", "#1a7837"]
_UNKNOWN, _GAP = "#bdbdbd", "#111111"
_FAILED, _ABANDONED = "#ff7f0e", "#d01cd0"
_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


def write_heatmap(path: Path, symbols: dict[str, DayCells], title: str) -> Path | None:
    """Draw the heatmap of `symbols` to `path` (PNG); None when there is no session to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    # The drawn range holds the failed and abandoned runs' windows too: an abandoned backfill shows where it was.
    every = [d for cells in symbols.values()
             for d in (*cells.share, *cells.gap_days, *cells.failed_days, *cells.abandoned_days)]
    if not every:
        return None
    first, last = min(every), max(every)
    compact = (last - first).days < _COMPACT_DAYS
    rows = _rows(symbols, first, last, compact)
    width = _weekdays(first, last) + 1 if compact else _YEAR_COLUMNS
    share = np.full((len(rows), width), np.nan)
    state = np.zeros((len(rows), width), dtype=np.int8)  # 1 unknown, 2 gap
    marks: dict[str, list[tuple[int, int]]] = {"failed": [], "abandoned": []}
    for y, (symbol, year) in enumerate(rows):
        if symbol is None:
            continue
        cells = symbols[symbol]

        def column(day: date, year=year) -> int | None:
            if compact:
                return _weekdays(first, day)
            return _weekdays(date(year, 1, 1), day) if day.year == year else None

        for day, value in cells.share.items():
            if (x := column(day)) is not None:
                if value is None:
                    state[y, x] = 1
                else:
                    share[y, x] = value
        for day in cells.gap_days:
            if (x := column(day)) is not None:
                state[y, x] = 2
        for kind, days in (("failed", cells.failed_days), ("abandoned", cells.abandoned_days)):
            marks[kind] += [(y, x) for day in days if (x := column(day)) is not None]

    fig_height = 1.9 + 0.24 * len(rows) if len(rows) >= _VERTICAL_BAR_ROWS else 2.6 + 0.45 * len(rows)
    fig, ax = plt.subplots(figsize=(15, fig_height), dpi=110)
    cmap = ListedColormap(_BIN_COLOURS)
    cmap.set_bad("white")
    image = ax.imshow(np.ma.masked_invalid(share), aspect="auto", interpolation="nearest", cmap=cmap,
                      norm=BoundaryNorm(_BINS, cmap.N))
    overlay = np.zeros((len(rows), width, 4))
    for code, colour in ((1, _UNKNOWN), (2, _GAP)):
        overlay[state == code] = matplotlib.colors.to_rgba(colour)
    ax.imshow(overlay, aspect="auto", interpolation="nearest")
    for kind, colour in (("failed", _FAILED), ("abandoned", _ABANDONED)):
        for y, x0, x1 in _segments(marks[kind]):
            ax.plot([x0 - 0.5, x1 + 0.5], [y, y], color=colour, linewidth=2.6,
                    solid_capstyle="butt")

    ax.set_yticks(range(len(rows)), [_row_label(symbol, year, compact) for symbol, year in rows], fontsize=8)
    ax.tick_params(axis="y", length=0)
    for y, (symbol, _year) in enumerate(rows):
        if symbol is None:
            ax.axhspan(y - 0.5, y + 0.5, color="white", zorder=3)
    ticks, labels = _x_ticks(first, width, compact)
    ax.set_xticks(ticks, labels, fontsize=8)
    ax.tick_params(axis="x", top=True, labeltop=True)
    ax.set_xlim(-0.5, width - 0.5)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if compact:  # few, wide cells: a white line between days, and the share written in each
        ax.set_xticks(np.arange(width + 1) - 0.5, minor=True)
        ax.tick_params(axis="x", which="minor", length=0)
        ax.grid(which="minor", axis="x", color="white", linewidth=1.5)
        if width <= _ANNOTATED_DAYS:
            for y, x in zip(*np.nonzero(~np.isnan(share)), strict=True):
                ax.text(x, y, f"{share[y, x]:.1%}", ha="center", va="center", fontsize=7,
                        color="white" if share[y, x] >= _BINS[-3] or share[y, x] < _BINS[1] else "black")
    ax.set_title(title, fontsize=10, loc="left")
    horizontal = len(rows) < _VERTICAL_BAR_ROWS
    bar = fig.colorbar(image, ax=ax, fraction=0.025 if not horizontal else 0.15, pad=0.01 if not horizontal else 0.25,
                       ticks=_BINS[:-1] + [1.0], orientation="horizontal" if horizontal else "vertical",
                       aspect=50 if horizontal else 20, shrink=0.5 if horizontal else 1.0, anchor=(0.0, 0.5))
    labels = [f"{b:.1%}".replace(".0%", "%") for b in _BINS[:-1]] + ["100%"]
    (bar.ax.set_xticklabels if horizontal else bar.ax.set_yticklabels)(labels, fontsize=7)
    bar.set_label("minutes with a bar / expected", fontsize=8)
    legend = [Patch(facecolor=_GAP, label="gap: open market not covered"),
              Patch(facecolor=_UNKNOWN, label="covered, no session-quality row"),
              Patch(facecolor="white", edgecolor="#999999", label="no session / not ingested"),
              Line2D([], [], color=_FAILED, linewidth=2.6, label="failed run's window"),
              Line2D([], [], color=_ABANDONED, linewidth=2.6, label="abandoned run's window")]
    ax.legend(handles=legend, loc="upper left", bbox_to_anchor=(0, -0.02 - 0.5 / fig_height), ncol=5,
              fontsize=8, frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # a reader never sees half a PNG
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def _rows(symbols: dict[str, DayCells], first: date, last: date, compact: bool) -> list[tuple[str | None, int]]:
    """(symbol, year) per row; (None, 0) is the blank row between two symbols."""
    rows: list[tuple[str | None, int]] = []
    for symbol in symbols:
        if rows:
            rows.append((None, 0))
        rows += [(symbol, 0)] if compact else [(symbol, year) for year in range(first.year, last.year + 1)]
    return rows


def _row_label(symbol: str | None, year: int, compact: bool) -> str:
    if symbol is None:
        return ""
    short = symbol.rpartition(":")[2]
    return short if compact else f"{short} {year}"


def _weekdays(start: date, day: date) -> int:
    """The column of `day` in a row starting at `start`: Monday to Friday since then (trade dates are weekdays)."""
    return int(np.busday_count(start, day))


def _x_ticks(first: date, width: int, compact: bool) -> tuple[list[int], list[str]]:
    if not compact:  # month starts, as in 2025 (other years differ by a column at most)
        return [_weekdays(date(2025, 1, 1), date(2025, m, 1)) for m in range(1, 13)], _MONTHS
    days = np.busday_offset(first, np.arange(width), roll="forward").astype(date).tolist()
    if width <= 15:
        picks = list(range(width))
    elif width <= 70:
        picks = [x for x, d in enumerate(days) if d.weekday() == 0]
    else:
        picks = [x for x, d in enumerate(days) if x == 0 or d.month != days[x - 1].month]
    return picks, [f"{days[x]:%Y-%m-%d}" for x in picks]


def _segments(points: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """Consecutive columns of one row as (row, first column, last column)."""
    out: list[tuple[int, int, int]] = []
    for y, x in sorted(set(points)):
        if out and out[-1][0] == y and out[-1][2] >= x - 3:  # a holiday or two between marked days: one segment
            out[-1] = (y, out[-1][1], x)
        else:
            out.append((y, x, x))
    return out
