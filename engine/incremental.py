"""`window=incremental`: the job's window from the database and the source, resolved once the database is open.

* start: where the symbol's verified clean coverage ends: the end of its last covered stretch (clean_coverage of
  successful ingests, merged) that holds open-market time. Holes in the middle of the history are not refilled
  (`status` reports them); a trailing stretch of closed market time after a hole is not verified by any bar, so
  the hole before it is fetched again. A symbol without coverage starts at `window.since`.
* end: the latest whole minute the source has (`available_end(cfg)` of the source: Databento's
  metadata.get_dataset_range, the DBN files' own end, now for the demo), floored to the minute.
* nothing new (end <= start): an empty window [start, start); the job records a successful run that did nothing,
  "up to date through <start>".
* detection re-evaluates the tail (Window.reopen_tail): the pivots among the last look-ahead bars before start
  could not be confirmed by the previous run.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import Engine, inspect

from engine import calendar
from engine.config import EngineConfig, WindowMode, normalize_symbol
from engine.db import coverage as coverage_db
from engine.errors import EngineError
from engine.windows import Window, iso_minute, parse_chunk, parse_utc

if TYPE_CHECKING:
    from engine.job_plugins import JobPlugins

# CME Globex never closes for a week: a covered stretch longer than this holds open-market time in its last week.
_LONGEST_CLOSURE = timedelta(days=7)


def is_incremental(cfg: EngineConfig) -> bool:
    return cfg.window.mode is WindowMode.incremental


def check_config(cfg: EngineConfig, source) -> datetime | None:
    """Before anything opens: the keys of an incremental window make sense; `window.since` parsed (None unset)."""
    for key in ("start", "end", "warmup_start"):
        if getattr(cfg.window, key) is not None:
            raise EngineError(
                f"window.{key} is set with window=incremental, which starts where the symbol's coverage ends and "
                "ends at the latest minute the source has",
                f"drop window.{key} (the first run of a symbol takes window.since=<date>), or use a fixed window "
                "without window=incremental",
            )
    if "ingest" not in cfg.stages:
        raise EngineError(
            f"window=incremental continues the ingested history, but stages={list(cfg.stages)} has no ingest",
            "add ingest to stages (e.g. stages=[registry,ingest,detect]), or give a fixed window "
            "(window.start=... window.end=...) for the other stages",
        )
    if not callable(getattr(source, "available_end", None)):
        raise EngineError(
            f"window=incremental needs to know where the source's data ends, and {type(source).__name__} cannot "
            "say (it has no available_end)",
            "give the window yourself (window.start=... window.end=...) or use source=databento, dbn_file or "
            "synthetic",
        )
    parse_chunk(cfg.window.chunk)
    return None if cfg.window.since is None else parse_utc(cfg.window.since, "window.since")


def resolve(cfg: EngineConfig, plugins: JobPlugins, db: Engine | None, log: logging.Logger) -> Window:
    """The incremental window of the job; `db` None: a database that does not exist yet (a dry run's)."""
    symbol = normalize_symbol(cfg.symbol, cfg.registry.defaults.dataset)
    covered = verified_end(db, symbol) if db is not None else None
    if covered is None:
        if cfg.window.since is None:
            raise missing_since(symbol)
        start, origin = parse_utc(cfg.window.since, "window.since"), "window.since"
    else:
        start, origin = covered, "the end of its clean coverage"
        if cfg.window.since is not None:
            log.info("window.since=%s not used: the clean coverage of %s reaches %s", cfg.window.since, symbol,
                     iso_minute(covered))
    end = floor_minute(plugins.source.obj.available_end(cfg))
    if end <= start:
        return Window(start, start, chunk=parse_chunk(cfg.window.chunk))
    log.info("window=incremental %s: %s (from %s to the latest minute %s has)", symbol,
             Window(start, end).label, origin, plugins.source.name)
    return Window(start, end, chunk=parse_chunk(cfg.window.chunk), reopen_tail=covered is not None)


def missing_since(symbol: str) -> EngineError:
    """A first incremental run of `symbol` without window.since."""
    return EngineError(
        f"window=incremental: the database has no clean coverage of {symbol} yet, so there is no end to continue "
        "from",
        f"give the first run a start: window.since=<date> (e.g. window.since=2025-01-02); later runs continue where "
        f"{symbol}'s coverage ends",
    )


def up_to_date(window: Window) -> str:
    """The one line an incremental job with nothing new reports."""
    return f"up to date through {iso_minute(window.start)}"


def verified_end(db: Engine, symbol: str) -> datetime | None:
    """The end of the symbol's last covered stretch that holds open-market time; None without any coverage."""
    if not inspect(db).has_table("clean_coverage"):  # a database made before coverage existed (a dry run's)
        return None
    stretches = _merged(coverage_db.symbol_intervals(db, symbol))
    for start, end in reversed(stretches):
        if calendar.sessions(max(start, end - _LONGEST_CLOSURE), end):
            return end
    return None


def floor_minute(value: datetime) -> datetime:
    """`value` as UTC, down to its whole minute."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).replace(second=0, microsecond=0)


def _merged(intervals: list[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    """Overlapping or touching [start, end) intervals joined, in order."""
    out: list[tuple[datetime, datetime]] = []
    for start, end in sorted(intervals):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out
