"""Stage `parity`: compare the triangle events of two sides for the symbol and window.

A side is either events in triangle_events_v1 ({source_table, logic_version, adjust}, this run's detector) or a
CSV file exported from another tool (columns ts, direction). A database side compares the events detected on the
series read with its `adjust` (none | difference | ratio; null: the run's `adjust`), so
`parity.right.adjust=difference` alone compares the unadjusted events with the difference-adjusted ones.
Events match on (ts, direction). The differences go to <run dir>/parity_differences.csv; more mismatches than
``parity.tolerance`` fail the job.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path

from rich.table import Table
from rich.text import Text

from engine.config import Adjustment, BarsTable, ParitySideConfig
from engine.console import console
from engine.context import StageContext
from engine.db.events import read_events
from engine.db.types import datetime_to_ns
from engine.errors import EngineError
from engine.results import StageResult
from engine.stages.detect import bars_table, event_key

DIFFERENCES_CSV = "parity_differences.csv"
_EPOCH_SECONDS = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")
_MAX_EPOCH_SECONDS = 100_000_000_000  # year 5138: anything larger is milliseconds or nanoseconds
_DIRECTIONS = ("BULL", "BEAR")

Event = tuple[int, str]  # (ts in ns since the epoch, UTC; BULL | BEAR)


@dataclass(frozen=True)
class Side:
    name: str  # left | right
    label: str  # what it is, for the table and the log
    events: frozenset[Event]


@dataclass
class ParityResult(StageResult):
    symbol: str
    left: str
    right: str
    left_events: int
    right_events: int
    matched: int
    only_left: int
    only_right: int
    mismatches: int
    tolerance: int
    differences_csv: str

    def describe(self) -> str:
        return (f"{self.matched:,} matched, {self.only_left:,} only left, {self.only_right:,} only right "
                f"(tolerance {self.tolerance:,})")

    def rows(self, stage: str) -> list[tuple[str, str]]:
        return [("parity", self.describe()), ("differences", self.differences_csv)]


class Parity:
    """Stage `parity` (see the module docstring)."""

    def run(self, ctx: StageContext) -> ParityResult:
        return run(ctx)


def run(ctx: StageContext) -> ParityResult:
    cfg = ctx.cfg.parity
    if isinstance(cfg.tolerance, bool) or not isinstance(cfg.tolerance, int) or cfg.tolerance < 0:
        raise EngineError(f"parity.tolerance={cfg.tolerance!r} is not a count", "set parity.tolerance=0 or more")
    if _is_unset(cfg.right):
        raise EngineError(
            "parity needs a right side to compare with; parity.right is not set",
            "set parity.right.csv=<events.csv> (columns ts, direction), or parity.right.logic_version=<version>, "
            "parity.right.source_table=clean|legacy and/or parity.right.adjust=none|difference|ratio for events "
            "already in the database",
        )
    start_ns, end_ns = datetime_to_ns(ctx.window.start), datetime_to_ns(ctx.window.end)
    left = load_side(ctx, "left", cfg.left, start_ns, end_ns)
    right = load_side(ctx, "right", cfg.right, start_ns, end_ns)

    matched = left.events & right.events
    only_left = left.events - right.events
    only_right = right.events - left.events
    differences = sorted([(ts, d, "left") for ts, d in only_left] + [(ts, d, "right") for ts, d in only_right])
    out = Path(ctx.run.dir) / DIFFERENCES_CSV
    with out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ts", "direction", "side"])
        writer.writerows((format_ns(ts), direction, side) for ts, direction, side in differences)

    mismatches = len(only_left) + len(only_right)
    result = ParityResult(symbol=ctx.symbol.internal_symbol, left=left.label, right=right.label,
                          left_events=len(left.events), right_events=len(right.events), matched=len(matched),
                          only_left=len(only_left), only_right=len(only_right), mismatches=mismatches,
                          tolerance=cfg.tolerance, differences_csv=str(out))
    _print(ctx, result, differences)
    ctx.log.info("parity %s: %s, differences in %s", result.symbol, result.describe(), out)
    if mismatches > cfg.tolerance:
        raise EngineError(
            f"parity: {mismatches} mismatched events (only_left {len(only_left)}, only_right {len(only_right)}) "
            f"exceed parity.tolerance={cfg.tolerance}; differences in {out}",
            "look into the differences, or set parity.tolerance=<count> to accept that many",
        )
    return result


def _is_unset(side: ParitySideConfig) -> bool:
    return side.csv is None and side.source_table is None and side.logic_version is None and side.adjust is None


def load_side(ctx: StageContext, name: str, side: ParitySideConfig, start_ns: int, end_ns: int) -> Side:
    if side.csv is not None:
        if side.source_table is not None or side.logic_version is not None or side.adjust is not None:
            raise EngineError(
                f"parity.{name} sets both csv and source_table/logic_version/adjust",
                f"a side is either a CSV file or events in the database: drop parity.{name}.csv or the others",
            )
        path = Path(side.csv).expanduser()
        events = {e for e in read_events_csv(path, f"parity.{name}.csv") if start_ns <= e[0] < end_ns}
        return Side(name, f"csv {path}", frozenset(events))
    table = _table(name, side.source_table) if side.source_table is not None else bars_table(ctx.cfg)
    version = side.logic_version if side.logic_version is not None else ctx.run.code.logic_version
    key, detector = event_key(ctx, table, str(version), _adjustment(name, side.adjust))
    rows = read_events(ctx.db, key, ctx.window.start, ctx.window.end)
    events = frozenset(zip(rows["ts"].tolist(), rows["direction"].tolist(), strict=True))
    adjusted = "" if key.adjustment == Adjustment.none else f", adjust={key.adjustment}"
    return Side(name, f"{table} @ {version} (n={detector.lookahead_bars}{adjusted})", events)


def _adjustment(name: str, value) -> Adjustment | None:
    """A side's `adjust` (None: the run's)."""
    if value is None:
        return None
    try:
        return Adjustment(getattr(value, "value", str(value).strip()))
    except ValueError:
        raise EngineError(f"parity.{name}.adjust={value!r} is not an adjustment",
                          f"use one of: {', '.join(a.value for a in Adjustment)} (or null for the run's adjust)"
                          ) from None


def _table(name: str, value: str) -> str:
    text = str(value).strip()
    for table in BarsTable:
        if text in (table.name, table.value):
            return table.value
    raise EngineError(
        f"parity.{name}.source_table={text!r} is not a bars table",
        f"use one of: {', '.join(t.name for t in BarsTable)} (or {', '.join(t.value for t in BarsTable)})",
    )


def read_events_csv(path: Path, key: str = "csv") -> set[Event]:
    """Events of a CSV file with columns ts (ISO-8601 UTC or epoch seconds) and direction (BULL/BEAR, any case).

    Other columns are ignored; a naive ISO time is taken as UTC, an offset is converted to UTC.
    """
    if not path.is_file():
        raise EngineError(f"{key}: no such file {str(path)!r}", f"set {key} to an existing CSV file of events")
    events: set[Event] = set()
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        columns = {name.strip().lower(): i for i, name in enumerate(header or [])}
        missing = [c for c in ("ts", "direction") if c not in columns]
        if missing:
            raise EngineError(
                f"{key} {str(path)!r}: no column {' or '.join(missing)} in the header {header or []}",
                "the first line must name the columns, with at least: ts,direction",
            )
        ts_col, dir_col = columns["ts"], columns["direction"]
        for line, row in enumerate(reader, start=2):
            if not row or all(not cell.strip() for cell in row):
                continue
            if max(ts_col, dir_col) >= len(row):
                raise EngineError(f"{key} {str(path)!r} line {line}: too few columns", "fix or drop that line")
            direction = row[dir_col].strip().upper()
            if direction not in _DIRECTIONS:
                raise EngineError(
                    f"{key} {str(path)!r} line {line}: direction {row[dir_col]!r} is not BULL or BEAR",
                    "write directions as BULL or BEAR (any case)",
                )
            events.add((parse_ts_ns(row[ts_col], f"{key} {str(path)!r} line {line}"), direction))
    return events


def parse_ts_ns(value: str, where: str) -> int:
    """ISO-8601 (naive = UTC) or epoch seconds (integer or decimal) -> ns since the epoch."""
    text = value.strip()
    if _EPOCH_SECONDS.match(text):
        try:
            seconds = Decimal(text)
        except InvalidOperation:  # pragma: no cover - the pattern only lets numbers through
            seconds = None
        if seconds is not None and abs(seconds) < _MAX_EPOCH_SECONDS:
            return int(seconds * 1_000_000_000)
        raise EngineError(f"{where}: ts {text!r} is too large for epoch seconds",
                          "export epoch seconds (not milliseconds), or ISO-8601 UTC times")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise EngineError(f"{where}: ts {text!r} is neither ISO-8601 nor epoch seconds",
                          "write ts as e.g. 2025-12-01T14:30:00Z or 1764599400") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return datetime_to_ns(parsed.astimezone(UTC))


def format_ns(ns: int) -> str:
    seconds, rest = divmod(int(ns), 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{rest:09d}".rstrip("0") + "Z" if rest else f"{stamp}Z"


def _print(ctx: StageContext, result: ParityResult, differences: list[tuple[int, str, str]]) -> None:
    ok = result.mismatches <= result.tolerance
    table = Table(title=f"parity {result.symbol}  {ctx.window.start:%Y-%m-%d %H:%M} → "
                        f"{ctx.window.end:%Y-%m-%d %H:%M} UTC", title_justify="left")
    table.add_column("")
    table.add_column("events", justify="right")
    table.add_row(Text(f"left: {result.left}"), str(result.left_events))
    table.add_row(Text(f"right: {result.right}"), str(result.right_events))
    table.add_row("matched", str(result.matched))
    table.add_row("only left", str(result.only_left))
    table.add_row("only right", str(result.only_right))
    table.add_row("tolerance", str(result.tolerance))
    table.add_row("result", "[green]within tolerance[/]" if ok else "[red]MISMATCH[/]")
    console.print(table)
    for ts, direction, side in differences[:10]:
        console.print(f"  only {side:5} {format_ns(ts)} {direction}", markup=False, highlight=False)
    if len(differences) > 10:
        console.print(f"  … {len(differences) - 10} more in {result.differences_csv}", markup=False)
