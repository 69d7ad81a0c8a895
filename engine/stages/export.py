"""Stage `export`: the window's clean bars and triangle events as Hive-partitioned Parquet (engine/parquet_export.py).

``python -m engine stages=[export] symbol=NQ window.start=… window.end=… stage.export.dir=exports`` writes
``exports/bars/symbol=GLBX.MDP3%3ANQ/date=2025-12-08/part-0.parquet`` (ts timestamp[ns, UTC], open, high, low,
close, volume) and ``exports/events/…`` (ts, confirm_ts, price, direction), one file per symbol and UTC date.

* Bars are read as detect reads them: the clean table under the clean-only contract (the same coverage check,
  refused with the same message), the legacy one under policy allow_legacy, through the run's ``adjust``
  (engine/adjust.py). Events are those of triangle_events_v1 for (symbol, that table, the run's logic version,
  detector and parameters, adjustment): run detect first; an export without them warns.
* Each file's key-value metadata holds its provenance: dataset, symbol, source_table, adjustment (and the anchor
  contract when adjusted), logic_version, run_id, git_hash, git_dirty, compression, date, rows, content_sha256,
  and for events detector and detector_params.
* Idempotent and atomic (see engine/parquet_export.py): unchanged partitions are not rewritten, changed ones are
  replaced by a rename, partitions of the window left without rows are removed; outside the window nothing is
  touched. One export at a time per directory (a lock file); temp files of a killed export are removed by the next.
* A directory holds one series per dataset: exporting another adjustment, anchor, logic version or detector into it
  is refused (exit 2) rather than mixed in.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from engine.adjust import adjust_bars, read_adjusted, roll_note, why_unadjusted
from engine.config import Adjustment
from engine.context import StageContext
from engine.db.bars_read import BAR_READ_DTYPE
from engine.db.connect import mount_point
from engine.db.events import read_events
from engine.db.rolls import rolls_of
from engine.db.types import datetime_to_ns
from engine.detectors import EVENT_DTYPE
from engine.errors import EngineError
from engine.parquet_export import COMPRESSIONS, NoSpace, PartitionedDataset, SeriesMismatch, export_lock
from engine.results import StageResult
from engine.stages.detect import PIECE_SPAN, bars_table, event_key, require_clean_coverage

DATASETS = ("bars", "events")


@dataclass
class ExportResult(StageResult):
    dir: str
    symbol: str
    source_table: str
    adjustment: str
    logic_version: str
    window_start: str
    window_end: str
    partitions_written: int = 0
    partitions_unchanged: int = 0
    partitions_removed: int = 0
    bars: int = 0
    events: int = 0
    datasets: dict[str, dict[str, int]] = field(default_factory=dict)  # per dataset: written, unchanged, removed, rows
    seconds: float = 0.0

    def describe(self) -> str:
        return (f"{self.bars:,} bars, {self.events:,} events → {self.dir}: {self.partitions_written:,} partitions "
                f"written, {self.partitions_unchanged:,} unchanged, {self.partitions_removed:,} removed")

    def rows(self, stage: str) -> list[tuple[str, str]]:
        return [("export", self.describe())]

    def brief(self, stage: str) -> str:
        return (f"export written {self.partitions_written:,} unchanged {self.partitions_unchanged:,} "
                f"removed {self.partitions_removed:,}")


@dataclass
class Export:
    """Stage `export` (see the module docstring). `dir`: the export's root (default ``<data_dir>/export``);
    `what`: the datasets, bars and/or events; `compression`: the Parquet codec."""

    dir: str | None = None
    what: list[str] = field(default_factory=lambda: list(DATASETS))
    compression: str = "zstd"

    def __post_init__(self) -> None:
        unknown = [name for name in self.what if name not in DATASETS]
        if unknown or not self.what:
            problem = f"unknown {', '.join(unknown)}" if unknown else "empty"
            raise EngineError(f"stage.export.what={list(self.what)}: {problem}",
                              "set stage.export.what to a list of bars and/or events, e.g. 'stage.export.what=[bars]'")
        if self.compression not in COMPRESSIONS:
            raise EngineError(f"stage.export.compression={self.compression!r} is not a Parquet codec",
                              f"use one of: {', '.join(COMPRESSIONS)}")

    def run(self, ctx: StageContext) -> ExportResult:
        return run(ctx, self)


def run(ctx: StageContext, settings: Export | None = None) -> ExportResult:
    started = time.perf_counter()
    settings = settings or Export()
    cfg, window, log = ctx.cfg, ctx.window, ctx.log
    symbol = ctx.symbol.internal_symbol
    table = bars_table(cfg)
    if cfg.policy.allow_legacy:
        log.warning("export %s: policy allow_legacy, reading the legacy table %s (not recommended)", symbol, table)
    else:
        require_clean_coverage(ctx, symbol, "export")
    key, _ = event_key(ctx, table, ctx.run.code.logic_version)
    how = Adjustment(key.adjustment)
    rolls = rolls_of(ctx.db, symbol) if how is not Adjustment.none else []
    root = Path(settings.dir) if settings.dir else Path(cfg.data_dir) / "export"
    provenance = {"logic_version": key.logic_version, "run_id": ctx.run.id, "git_hash": ctx.run.code.git_hash,
                  "git_dirty": ctx.run.code.git_dirty, "source_table": table}
    datasets: dict[str, PartitionedDataset] = {}
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EngineError(f"stage.export.dir={settings.dir or root}: cannot create {root} ({exc.strerror})",
                          "choose a folder you can write (stage.export.dir=<path>)") from None
    with export_lock(root):
        if "bars" in settings.what:
            anchor = adjust_bars(np.empty(0, BAR_READ_DTYPE), rolls, how).anchor  # the latest contract
            datasets["bars"] = PartitionedDataset(
                root, "bars", symbol, BAR_READ_DTYPE, compression=settings.compression, provenance=provenance,
                series={"source_table": table, "adjustment": how.value, "anchor": anchor})
        if "events" in settings.what:
            datasets["events"] = PartitionedDataset(
                root, "events", symbol, EVENT_DTYPE, compression=settings.compression, provenance=provenance,
                series={"source_table": table, "adjustment": how.value, "logic_version": key.logic_version,
                        "detector": key.detector, "detector_params": key.params})
        for dataset in datasets.values():
            if dataset.remove_stale_temps():
                log.info("export %s: removed the temp files of an interrupted export in %s", symbol, dataset.dir)
            try:
                dataset.check_series()
            except SeriesMismatch as exc:
                raise _mismatch(exc) from None
        unadjusted = {}
        try:
            for piece_start, piece_end in day_pieces(window.start, window.end):
                start_ns, end_ns = datetime_to_ns(piece_start), datetime_to_ns(piece_end)
                if "bars" in datasets:
                    view = read_adjusted(ctx.db, table, symbol, piece_start, piece_end, how, rolls)
                    unadjusted.update((roll_note(r), r) for r in view.unadjusted_rolls)
                    datasets["bars"].write_range(view.bars, start_ns, end_ns)
                if "events" in datasets:
                    datasets["events"].write_range(read_events(ctx.db, key, piece_start, piece_end), start_ns, end_ns)
            for dataset in datasets.values():
                dataset.finish()
        except NoSpace as exc:
            raise EngineError(f"export: cannot write {exc.path}: {exc.reason}; its old file, if any, is intact",
                              f"free space on {mount_point(exc.path)} or choose another stage.export.dir, then run "
                              "the export again (every partition holds its old rows or its new ones, whole)") from None
        finally:
            for dataset in datasets.values():
                dataset.close()
    for note, roll in unadjusted.items():
        log.warning("export %s: roll %s could not be adjusted (%s): its raw jump is in the exported bars", symbol,
                    note, why_unadjusted(roll, how))
    counts = {name: vars(dataset.counts).copy() for name, dataset in datasets.items()}
    if "events" in datasets and not counts["events"]["rows"]:
        log.warning("export %s: no triangle events of %s / logic version %s / %s %s in the window; run "
                    "stages=[detect,export] to export them", symbol, table, key.logic_version, key.detector,
                    key.params)
    result = ExportResult(
        dir=str(root), symbol=symbol, source_table=table, adjustment=how.value, logic_version=key.logic_version,
        window_start=f"{window.start:%Y-%m-%dT%H:%M:%SZ}", window_end=f"{window.end:%Y-%m-%dT%H:%M:%SZ}",
        partitions_written=sum(c["written"] for c in counts.values()),
        partitions_unchanged=sum(c["unchanged"] for c in counts.values()),
        partitions_removed=sum(c["removed"] for c in counts.values()),
        bars=counts.get("bars", {}).get("rows", 0), events=counts.get("events", {}).get("rows", 0),
        datasets=counts, seconds=round(time.perf_counter() - started, 3))
    log.info("export %s: %s (%.3f s)", symbol, result.describe(), result.seconds)
    return result


def day_pieces(start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    """[start, end) in pieces of about PIECE_SPAN (bounded memory) whose inner edges are UTC midnights, so that no
    date is split between two pieces."""
    edges = [start]
    midnight = start.replace(hour=0, minute=0, second=0, microsecond=0)
    while (nxt := midnight + PIECE_SPAN) < end:
        edges.append(nxt)
        midnight = nxt
    edges.append(end)
    return [(a, b) for a, b in zip(edges, edges[1:], strict=False) if b > a]


def _mismatch(exc: SeriesMismatch) -> EngineError:
    why = (" (a roll ingested since moved the adjusted series onto a new contract: the stored prices are on the old "
           "one's scale)" if exc.field == "anchor" else "")
    return EngineError(
        f"export: {exc.path} holds {exc.field}={exc.stored!r}, this export has {exc.field}={exc.given!r}{why}; a "
        "dataset holds one series",
        f"export into another directory (stage.export.dir=…), or delete {exc.path} to replace it with this series "
        "(then export its whole range again)")
