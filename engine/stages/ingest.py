"""Stage `ingest`: land raw DBN from the configured source, validate every bar, upsert the clean table.

received = inserted + updated + unchanged + skipped, exactly; skipped bars are in the quarantine table
with their reason. Every ingest leaves a clean_ingest_runs row, on failure too (counts so far).
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter

from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from engine.console import console
from engine.context import StageContext
from engine.coverage import IngestCoverage
from engine.db.bars import CleanBarWriter, write_quarantine
from engine.db.connect import masked_url
from engine.db.ingest_runs import claim_data_kind, finish_ingest_run, has_clean_bars, start_ingest_run
from engine.db.types import datetime_to_ns
from engine.errors import EngineError
from engine.interrupts import is_interruption
from engine.provenance import redact
from engine.sources import acquire
from engine.sources.dbn import DbnBarFile, SymbolFilter
from engine.validate import REASONS, SeenTimestamps, validate_chunk


def run(ctx: StageContext) -> dict:
    symbol = ctx.symbol
    source = ctx.cfg.source
    _refuse_mixing(ctx)
    start_ns, end_ns = datetime_to_ns(ctx.window.start), datetime_to_ns(ctx.window.end)
    coverage = IngestCoverage(ctx.window.start, ctx.window.end)  # loads the calendar before any bar is written
    ingest_id = start_ingest_run(
        ctx.db,
        symbol=symbol.internal_symbol,
        start_ts=ctx.window.start,
        end_ts=ctx.window.end,
        engine_run_id=ctx.run.id,
        source=source.name,
        databento_symbol=symbol.continuous,
    )
    started = time.monotonic()
    tally = _Tally()
    writer = CleanBarWriter(ctx.db, symbol.internal_symbol, ingest_id, batch_size=source.batch_size)
    try:
        with _progress() as progress:
            landing = acquire(source.name, ctx, progress)
            tally.retries, tally.raw_files = landing.retries, landing.raw_files
            bars = DbnBarFile(landing.paths)
            seen = SeenTimestamps()
            task = progress.add_task(f"ingest {symbol.internal_symbol}", total=None, unit="bars")
            for chunk in bars.iter_chunks(SymbolFilter(symbol.root, symbol.continuous), source.batch_size):
                tally.received += len(chunk)
                checked = validate_chunk(chunk, start_ns, end_ns, seen)
                writer.write(checked.good)
                if len(checked.bad):
                    write_quarantine(ctx.db, ingest_id, symbol.internal_symbol, checked.bad, checked.bad_reason)
                    tally.skipped.update(str(r) for r in checked.bad_reason)
                progress.update(task, advance=len(chunk))
            tally.ignored = dict(bars.ignored)
        counts = writer.flush()
        coverage.record(ctx.db, ingest_id, symbol.internal_symbol, symbol.root, seen, landing.paths)
    except BaseException as exc:
        counts = writer.committed
        tally.retries = getattr(exc, "retries", tally.retries)  # retries made before acquisition failed
        status = "interrupted" if is_interruption(exc) else "failed"
        _finish(ctx, ingest_id, tally, counts, started, status, _error_text(exc))
        raise
    _finish(ctx, ingest_id, tally, counts, started, "success", None)
    summary = tally.summary(counts, time.monotonic() - started)
    summary.update(ingest_run_id=ingest_id, databento_symbol=symbol.continuous)
    _print_summary(symbol.internal_symbol, summary)
    return summary


def chunk_settings(ctx: StageContext) -> dict:
    """What makes two ingests of the same chunk the same work (for resuming chunked backfills)."""
    return {"symbol": dataclasses.asdict(ctx.symbol), "source": dataclasses.asdict(ctx.cfg.source)}


class _Tally:
    def __init__(self):
        self.received = 0
        self.retries = 0
        self.skipped: Counter[str] = Counter()
        self.ignored: dict[str, int] = {}
        self.raw_files: list[dict] = []

    def summary(self, counts, seconds: float) -> dict:
        return {
            "bars_received": self.received,
            "bars_inserted": counts.inserted,
            "bars_updated": counts.updated,
            "bars_unchanged": counts.unchanged,
            "bars_skipped": sum(self.skipped.values()),
            "skipped_by_reason": {r: self.skipped[r] for r in REASONS if self.skipped[r]},
            "ignored_instruments": self.ignored,
            "batch_commits": counts.batch_commits,
            "retries": self.retries,
            "raw_files": self.raw_files,
            "duration_seconds": round(seconds, 3),
        }


def _finish(ctx, ingest_id, tally, counts, started, status, error) -> None:
    fields = tally.summary(counts, time.monotonic() - started)
    finish_ingest_run(ctx.db, ingest_id, status=status, error=error, **fields)


def _error_text(exc: BaseException) -> str:
    return redact(str(exc) if isinstance(exc, EngineError) else f"{type(exc).__name__}: {exc}")


def _refuse_mixing(ctx: StageContext) -> None:
    """Demo bars never land in a database holding market bars, and the other way round.

    The first ingest records the database's kind (engine_database) before it writes a bar; later ingests of the
    other kind are refused, so an interrupted first ingest or two first ingests at once never wedge it.
    """
    kind = ctx.cfg.source.data_kind.value
    held = claim_data_kind(ctx.db, kind, ctx.run.id)
    if held["data_kind"] == kind:
        return
    database = masked_url(str(ctx.db.url))
    since = f"since run {held['engine_run_id']}" if held["engine_run_id"] is not None else "since an earlier version"
    empty = "" if has_clean_bars(ctx.db) else (
        "; it holds no bars yet: if that was a mistake, DELETE FROM engine_database and rerun")
    raise EngineError(
        f"refusing to ingest {kind} data from source={ctx.cfg.source.name}: the database {database} holds "
        f"{held['data_kind']} data ({since}, {held['recorded_at']:%Y-%m-%d %H:%M} UTC)",
        "give demo data its own database (the default db=sqlite does: data/demo.sqlite vs "
        f"data/market.sqlite), e.g. db.url=sqlite:///data/{kind}.sqlite{empty}",
    )


def _progress() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,.0f} {task.fields[unit]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def _print_summary(symbol: str, summary: dict) -> None:
    table = Table(title=f"ingest {symbol}", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("count", justify="right")
    for key in ("bars_received", "bars_inserted", "bars_updated", "bars_unchanged", "bars_skipped",
                "batch_commits", "retries"):
        table.add_row(key, f"{summary[key]:,}")
    for reason, count in summary["skipped_by_reason"].items():
        table.add_row(f"  skipped: {reason}", f"{count:,}")
    for other, count in summary["ignored_instruments"].items():
        table.add_row(f"  ignored (other instrument): {other}", f"{count:,}")
    rate = summary["bars_received"] / summary["duration_seconds"] if summary["duration_seconds"] else 0
    table.add_row("seconds", f"{summary['duration_seconds']:.2f} ({rate:,.0f} bars/s)")
    console.print(table)

