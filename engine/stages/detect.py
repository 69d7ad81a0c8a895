"""Stage `detect`: the events of the selected detector in the window, from the bars table, into triangle_events_v1.

* The detector (engine/detectors/__init__.py; `detector_of`) gets the bars of the window plus its
  ``warmup_bars`` bars before it (or the bars from ``window.warmup_start``) and its ``lookahead_bars`` bars from
  window.end on, so the events of a range do not depend on how it is cut into windows. Events are the ones
  whose pivot bar lies in [window.start, window.end). The stage uses that itself: it works through long
  windows in pieces of PIECE_SPAN (bounded memory); the storage layer decides how the pieces are read while
  events are written (engine/db/producers.py).
* Writes replace the events of (symbol, source_table, logic_version, detector, detector_params, adjustment) in
  the window in one transaction: a rerun leaves the same rows, and other detectors' events stay.
* ``adjust=difference|ratio`` detects on the back-adjusted series (engine/adjust.py: every bar adjusted by all the
  symbol's rolls after it, anchored on the latest contract): events record the adjustment, their prices are
  adjusted prices, and they sit beside the unadjusted events (adjust=none), which they never replace. Rolls
  that cannot be adjusted are logged and listed in the result (their raw jump stays in the series). The prices
  are those of the anchor at detection time (the result names it): after a newer roll is ingested, a rerun
  moves them onto the new anchor; their ts and direction do not change.
* Clean-only contract: unless ``policy.allow_legacy``, reads market_bars_ohlcv_1m_clean and requires the
  coverage of successful clean ingests (clean_coverage: closed market time, and the sessions where they landed
  bars; see engine/coverage.py) over the whole window, and over the warm-up and look-ahead bars it reads: where
  those would reach across uncovered open-market time to older or newer bars it stops and names the range. At
  the edge of the stored history (no older or newer bars at all) it proceeds and logs that.
* A window that continues the stored history (``window.reopen_tail``, window=incremental) starts back at the
  oldest of the detector's ``lookahead_bars`` bars before it: their pivots could not be confirmed before this
  window's bars existed, so they are detected again (and replaced, never duplicated).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import numpy as np

from engine.adjust import adjust_bars, roll_note, why_unadjusted
from engine.config import Adjustment, EngineConfig
from engine.console import showing_chunk_lines
from engine.context import StageContext
from engine.coverage import uncovered_ranges
from engine.db.bars import read_bars
from engine.db.chunks import count_bars
from engine.db.events import EventKey, bar_span, nth_bar_before, nth_bar_from, replace_events
from engine.db.rolls import Roll, rolls_of
from engine.db.schema import CLEAN_BARS, LEGACY_BARS
from engine.db.types import datetime_to_ns
from engine.detectors import DIRECTIONS, Detector, check_detector, checked_events, detector_params, params_json
from engine.errors import EngineError
from engine.results import StageResult, instant, same, total

CONTRACT_ERROR = (
    "ERROR: Clean table not available for this range\n"
    "  Clean table is required for Phase D.0+\n"
    "  To use legacy table, pass policy=allow_legacy (not recommended)"
)
_MAX_LISTED_GAPS = 20
# Detection runs piece by piece (bounded memory). A quarter is ~90k one-minute bars.
PIECE_SPAN = timedelta(days=91)


def bars_table(cfg: EngineConfig) -> str:
    """The bars table detection reads: clean, or legacy only under policy allow_legacy."""
    return LEGACY_BARS if cfg.policy.allow_legacy else CLEAN_BARS


def detector_of(ctx: StageContext) -> tuple[str, Detector]:
    """The run's detector and the name it was selected under (what its events record as `detector`)."""
    return ctx.plugins.detector.name, check_detector(ctx.plugins.detector.name, ctx.detector)


def event_key(ctx: StageContext, table: str, logic_version: str, adjustment: Adjustment | str | None = None
              ) -> tuple[EventKey, Detector]:
    """The events key of this run's detector over `table` at `logic_version` on the series read with
    `adjustment` (None: the run's `adjust`), and the detector."""
    name, detector = detector_of(ctx)
    how = Adjustment(ctx.cfg.adjust if adjustment is None else adjustment)
    return EventKey(ctx.symbol.internal_symbol, table, logic_version, name, params_json(detector), how.value), detector


@dataclass
class DetectResult(StageResult):
    """What one detection (or the chunks of a chunked one, merged) read and wrote."""

    symbol: str
    source_table: str
    logic_version: str
    detector: str
    detector_params: str
    n: int
    window_start: str
    window_end: str
    bars_in_window: int = 0
    bars_read: int = 0
    warmup_bars: int = 0  # before the (first) window
    confirm_bars: int = 0  # from the end of the (last) window
    events: dict[str, int] = field(default_factory=dict)
    events_written: int = 0
    events_replaced: int = 0
    # Every bar of the window that could be a pivot has its look-ahead bars (or there is no bar): newer bars
    # stored later cannot change these events. Chunked runs record a chunk done only then.
    lookahead_complete: bool = True
    pieces: int = 0
    seconds: float = 0.0
    adjustment: str = "none"  # none | difference | ratio: the series the events were detected on
    anchor: str | None = None  # adjusted: the contract whose own prices the series keeps (its latest)
    unadjusted_rolls: list[str] = field(default_factory=list)  # rolls the adjustment had to skip (roll_note)

    def merge(self, later: DetectResult) -> DetectResult:
        """Two detections of one run (consecutive chunks): counts added, the window spanning both, the warm-up of
        the earlier and the look-ahead of the later."""
        first, last = (self, later) if instant(self.window_start) <= instant(later.window_start) else (later, self)
        return DetectResult(
            **{name: same(name, getattr(self, name), getattr(later, name)) for name in _SHARED},
            window_start=first.window_start, window_end=max(self.window_end, later.window_end, key=instant),
            **{name: getattr(self, name) + getattr(later, name) for name in _SUMMED},
            warmup_bars=first.warmup_bars, confirm_bars=last.confirm_bars, events=total(self.events, later.events),
            lookahead_complete=self.lookahead_complete and later.lookahead_complete,
            seconds=round(self.seconds + later.seconds, 3), anchor=later.anchor or self.anchor,
            unadjusted_rolls=list(dict.fromkeys([*self.unadjusted_rolls, *later.unadjusted_rolls])))

    def describe(self) -> str:
        count = sum(self.events.values())
        by_direction = ", ".join(f"{n:,} {direction}" for direction, n in self.events.items())
        return f"{self.bars_in_window:,} bars, {count:,} events" + (f" ({by_direction})" if count else "")

    def brief(self, stage: str) -> str:
        adjusted = f"({self.adjustment}) " if self.adjustment != Adjustment.none else ""
        return f"events {adjusted}" + " ".join(f"{k} {v:,}" for k, v in self.events.items())

    def rows(self, stage: str) -> list[tuple[str, str]]:
        rows = [("events", f"{self.describe()} from {self.source_table} ({self.logic_version})")]
        if self.adjustment != Adjustment.none:
            rows.append(("adjustment", self.adjustment_note()))
        return rows

    def adjustment_note(self) -> str:
        """`difference, anchored on ESU4; not adjusted: ESM4 → ESU4 at ...` (adjusted series only)."""
        text = f"{self.adjustment}, anchored on {self.anchor or 'the stored prices (no roll on record)'}"
        if self.unadjusted_rolls:
            text += f"; not adjusted (raw jump kept): {', '.join(self.unadjusted_rolls)}"
        return text

    def pending_reason(self) -> str:
        """Why a detection with `lookahead_complete` false is not final (for the chunk's closing log line)."""
        return (f"only {self.confirm_bars} of the {self.n} bars after {self.window_end} are stored, so pivots among "
                f"the chunk's last {self.n} bars cannot be confirmed yet (ingest the bars after it, or rerun once "
                "they exist)")


_SHARED = ("symbol", "source_table", "logic_version", "detector", "detector_params", "n", "adjustment")
_SUMMED = ("bars_in_window", "bars_read", "events_written", "events_replaced", "pieces")


class Detect:
    """Stage `detect` (see the module docstring)."""

    def run(self, ctx: StageContext) -> DetectResult:
        if not ctx.window.reopen_tail:
            return run(ctx)
        window = ctx.window
        ctx.window = replace(window, start=tail_start(ctx), reopen_tail=False)
        try:
            return run(ctx)
        finally:
            ctx.window = window

    def chunk_settings(self, ctx: StageContext) -> dict:
        return chunk_settings(ctx)

    def lookahead_ready(self, ctx: StageContext, through: datetime) -> bool:
        return lookahead_ready(ctx, through)


def run(ctx: StageContext) -> DetectResult:
    started = time.perf_counter()
    cfg, window, log = ctx.cfg, ctx.window, ctx.log
    symbol = ctx.symbol.internal_symbol
    table = bars_table(cfg)
    key, detector = event_key(ctx, table, ctx.run.code.logic_version)
    warmup, lookahead = int(detector.warmup_bars), int(detector.lookahead_bars)
    if cfg.policy.allow_legacy:
        log.warning("detect %s: policy allow_legacy, reading the legacy table %s (not recommended); events are "
                    "recorded with source_table=%s", symbol, table, table)
    else:
        log.info("detect %s: reading %s (clean-only policy)", symbol, table)
        require_clean_coverage(ctx, symbol)
    how = Adjustment(key.adjustment)
    rolls = series_rolls(ctx, symbol, how)
    adjusted = {"anchor": None, "unadjusted": {}}

    # Pieces cover the bars actually there (the last one runs to window.end), so a window much wider than
    # the data costs nothing extra.
    span = bar_span(ctx.db, table, symbol, window.start, window.end)
    pieces = split_window(span[0], span[1] + timedelta(microseconds=1)) if span else []
    if pieces:
        pieces[-1] = (pieces[-1][0], window.end)
    counts = {"bars_in_window": 0, "bars_read": 0, "warmup_bars": 0, "confirm_bars": 0}
    by_direction = dict.fromkeys(DIRECTIONS, 0)

    def events_of_pieces() -> Iterator[np.ndarray]:
        reads = read_pieces(ctx, table, symbol, pieces, warmup, lookahead)
        for k, (piece_start, piece_end, bars) in enumerate(reads):
            start_ns, end_ns = datetime_to_ns(piece_start), datetime_to_ns(piece_end)
            i0, i1 = (int(i) for i in np.searchsorted(bars["ts"], [start_ns, end_ns], side="left"))
            if k == 0:
                counts["warmup_bars"] = i0
                if window.warmup_start is not None and i0 < warmup:
                    log.warning("detect %s: window.warmup_start leaves %d warm-up bars, the detector needs %d: "
                                "pivots among the first bars of the window may be missed", symbol, i0, warmup)
            counts["bars_in_window"] += i1 - i0
            counts["bars_read"] += len(bars)
            counts["confirm_bars"] = len(bars) - i1
            if how is not Adjustment.none:
                view = adjust_bars(bars, rolls, how, copy=False)  # bars of this read only
                bars, adjusted["anchor"] = view.bars, view.anchor
                adjusted["unadjusted"].update((roll_note(r), r) for r in view.unadjusted_rolls)
            events = checked_events(key.detector, detector.detect(bars), bars)
            events = events[(events["ts"] >= start_ns) & (events["ts"] < end_ns)]
            for direction in DIRECTIONS:
                by_direction[direction] += int(np.count_nonzero(events["direction"] == direction))
            yield events

    deleted, inserted = replace_events(ctx.db, key, window.start, window.end, events_of_pieces(), ctx.run.id,
                                       n=lookahead)
    seconds = time.perf_counter() - started
    if not counts["bars_in_window"]:  # news for a window; a chunk without bars (a weekend) is not
        log.log(logging.INFO if showing_chunk_lines() else logging.WARNING, "detect %s: no bars in %s between %s "
                "and %s", symbol, table, _fmt(window.start), _fmt(window.end))
    result = DetectResult(
        symbol=symbol, source_table=table, logic_version=key.logic_version, detector=key.detector,
        detector_params=key.params, n=lookahead, window_start=_fmt(window.start), window_end=_fmt(window.end),
        **counts, events=by_direction, events_written=inserted, events_replaced=deleted,
        lookahead_complete=counts["confirm_bars"] >= lookahead or not counts["bars_in_window"], pieces=len(pieces),
        seconds=round(seconds, 3), adjustment=how.value, anchor=adjusted["anchor"],
        unadjusted_rolls=list(adjusted["unadjusted"]))
    for note in result.unadjusted_rolls:
        log.warning("detect %s: roll %s cannot be adjusted (%s): skipped, its raw jump stays in the %s series "
                    "(events near it may be false)", symbol, note, why_unadjusted(adjusted["unadjusted"][note], how),
                    how.value)
    log.info("detect %s: %d bars in window (%d read), %s from %s, logic version %s, adjust %s, %.3f s (%.0f bars/s)",
             symbol, counts["bars_in_window"], counts["bars_read"],
             ", ".join(f"{v} {k}" for k, v in by_direction.items()), table, key.logic_version,
             result.adjustment_note() if how is not Adjustment.none else "none", seconds,
             counts["bars_in_window"] / max(seconds, 1e-9))
    return result


def tail_start(ctx: StageContext) -> datetime:
    """Where a window continuing the stored history starts detecting: the oldest of the detector's look-ahead
    bars before window.start (window.start when there are none)."""
    lookahead = int(detector_of(ctx)[1].lookahead_bars)
    start = ctx.window.start
    tail = nth_bar_before(ctx.db, bars_table(ctx.cfg), ctx.symbol.internal_symbol, start, lookahead) \
        if lookahead else None
    if tail is None:
        return start
    ctx.log.info("detect %s: re-evaluating from %s (the last %d bars before %s, whose look-ahead this window "
                 "brings)", ctx.symbol.internal_symbol, _fmt(tail), lookahead, _fmt(start))
    return tail


def chunk_settings(ctx: StageContext) -> dict:
    """What makes two detections of the same chunk the same work (for resuming chunked runs).

    `detector` is the selected name with the detector's parameters (for Williams Fractals the same dict as the
    detector config gave before detectors were plugins, so recorded chunks still match). `done_when` is part of
    the digest so that chunks recorded by engines that recorded a chunk done before its look-ahead bars existed
    (their events miss the pivots among the chunk's last n bars) no longer match: the next run over that range
    redoes them.
    """
    name, detector = detector_of(ctx)
    settings = {
        "symbol": ctx.symbol.internal_symbol,
        "source_table": bars_table(ctx.cfg),
        "logic_version": ctx.run.code.logic_version,
        "detector": {**detector_params(detector), "name": name},
        "done_when": "lookahead_complete",
    }
    if Adjustment(ctx.cfg.adjust) is not Adjustment.none:  # absent for none: chunks recorded before still match
        settings["adjustment"] = Adjustment(ctx.cfg.adjust).value
    return settings


def series_rolls(ctx: StageContext, symbol: str, how: Adjustment) -> list[Roll]:
    """All the symbol's rolls (an adjusted bar is adjusted by every roll after it, up to the latest contract);
    none are needed for adjust=none."""
    if how is Adjustment.none:
        return []
    rolls = rolls_of(ctx.db, symbol)
    if not rolls:
        ctx.log.warning("detect %s: adjust=%s but no rolls of %s are on record (contract_rolls): the series is read "
                        "as stored", symbol, how.value, symbol)
    return rolls


def lookahead_ready(ctx: StageContext, through: datetime) -> bool:
    """Whether the window's look-ahead (the detector's lookahead_bars from window.end on) is stored before
    `through`.

    A chunked run detects a chunk once the chunks ingested after it reach `through`: bars written later lie
    at or after `through`, so they cannot change the chunk's events.
    """
    lookahead = int(detector_of(ctx)[1].lookahead_bars)
    stored = count_bars(ctx.db, bars_table(ctx.cfg), ctx.symbol.internal_symbol, ctx.window.end, through, lookahead)
    return stored >= lookahead


def split_window(start: datetime, end: datetime, span: timedelta | None = None) -> list[tuple[datetime, datetime]]:
    """[start, end) as consecutive pieces of at most `span` (PIECE_SPAN): each gives the same events alone."""
    span = span or PIECE_SPAN
    edges = [start]
    while edges[-1] + span < end:
        edges.append(edges[-1] + span)
    edges.append(end)
    return list(zip(edges, edges[1:], strict=False))


def read_pieces(ctx: StageContext, table: str, symbol: str, pieces: list[tuple[datetime, datetime]], warmup: int,
                lookahead: int) -> Iterator[tuple[datetime, datetime, np.ndarray]]:
    """For each piece: its bars, the `warmup` bars before it and the `lookahead` bars from its end on.

    The first piece starts at window.warmup_start instead when that is set. Under the clean-only policy the
    warm-up of the first piece and the look-ahead of the last are checked against clean coverage first.
    """
    clean = table == CLEAN_BARS
    for k, (piece_start, piece_end) in enumerate(pieces):
        if k == 0 and ctx.window.warmup_start is not None:
            read_start = ctx.window.warmup_start
            oldest = bar_span(ctx.db, table, symbol, read_start, piece_start)
            oldest = oldest and oldest[0]
        else:
            read_start = oldest = nth_bar_before(ctx.db, table, symbol, piece_start, warmup) if warmup else None
        last_confirming = nth_bar_from(ctx.db, table, symbol, piece_end, lookahead) if lookahead else None
        if clean and k == 0 and (warmup or ctx.window.warmup_start is not None):
            require_context_coverage(ctx, symbol, "warm-up", oldest, ctx.window.start)
        if clean and k == len(pieces) - 1 and lookahead:
            require_context_coverage(ctx, symbol, "look-ahead", last_confirming, ctx.window.end)
        read_start = read_start or piece_start
        read_end = last_confirming + timedelta(microseconds=1) if last_confirming else piece_end
        yield piece_start, piece_end, read_bars(ctx.db, table, symbol, read_start, read_end)


def require_clean_coverage(ctx: StageContext, symbol: str, stage: str = "detect") -> None:
    """Raise the clean-table contract error unless clean coverage spans [window.start, window.end)."""
    start, end = ctx.window.start, ctx.window.end
    gaps = uncovered_ranges(ctx.db, symbol, start, end)
    if not gaps:
        ctx.log.info("%s %s: clean ingests cover %s → %s", stage, symbol, _fmt(start), _fmt(end))
        return
    raise EngineError(f"{CONTRACT_ERROR}\n  Missing: {_listed(gaps)}", None)


def require_context_coverage(ctx: StageContext, symbol: str, what: str, bar_ts: datetime | None,
                             edge: datetime) -> None:
    """The warm-up (bars before the window) or look-ahead (bars from its end) must not reach across uncovered
    open-market time: `bar_ts` is the farthest bar it reads, `edge` the window boundary it starts from."""
    direction = "before" if what == "warm-up" else "from"
    if bar_ts is None:
        ctx.log.info("detect %s: no bars %s %s: the %s stops at the edge of the stored history", symbol, direction,
                     _fmt(edge), what)
        return
    lo, hi = (bar_ts, edge) if bar_ts < edge else (edge, bar_ts)
    gaps = uncovered_ranges(ctx.db, symbol, lo, hi)
    if not gaps:
        return
    raise EngineError(
        f"{CONTRACT_ERROR}\n  Missing: {_listed(gaps)}\n  (the {what} bars {direction} {_fmt(edge)} reach "
        f"across it to {_fmt(bar_ts)})",
        f"ingest the missing range (stages=[ingest] window.start={_fmt(gaps[0][0])} window.end={_fmt(gaps[-1][1])}), "
        "then run detect again",
    )


def _listed(gaps: list[tuple[datetime, datetime]]) -> str:
    listed = ", ".join(f"{_fmt(a)} → {_fmt(b)}" for a, b in gaps[:_MAX_LISTED_GAPS])
    if len(gaps) > _MAX_LISTED_GAPS:
        listed += f", … and {len(gaps) - _MAX_LISTED_GAPS} more"
    return listed


def _fmt(value: datetime) -> str:
    return f"{value:%Y-%m-%dT%H:%M:%SZ}" if value.second or value.microsecond else f"{value:%Y-%m-%dT%H:%MZ}"
