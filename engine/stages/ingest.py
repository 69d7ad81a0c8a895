"""Stage `ingest`: land raw DBN from the configured source, validate every bar, upsert the clean table.

received = inserted + updated + unchanged + skipped, exactly; skipped bars are in the quarantine table
with their reason. Every ingest leaves a clean_ingest_runs row, on failure too.

One commit unit = one decoded chunk of `source.batch_size` records: its good bars, its quarantine rows and the
row's counter increments commit (or roll back) in one transaction, so the row always describes exactly what is
committed, whatever stops the ingest. Records of a local file (or of a whole landed Databento day) outside the
window are counted, not received.

One contract per minute (engine/contracts.py, decided from the files' metadata before any bar is read): the
continuous symbol's records when an input maps it, else the contract the roll rule picks each session from the
outright bars (engine/rolls.py), or the one contract of an outright series. Other contracts' records of the root
are counted per contract in contracts_not_chosen (neither received nor quarantined); the series' rolls are written
to contract_rolls after the last batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from engine.background import in_background
from engine.console import progress_bars
from engine.context import StageContext
from engine.contracts import PRICE_SESSIONS, Selection, select_series, series_rolls
from engine.coverage import IngestCoverage
from engine.db.bar_times import any_bar_between
from engine.db.bars import CleanBarWriter, PreparedBatch, WriteCounts
from engine.db.connect import masked_url
from engine.db.ingest_runs import (
    add_batch_counts,
    claim_data_kind,
    finish_ingest_run,
    has_clean_bars,
    overlapping_ingests,
    start_ingest_run,
)
from engine.db.quarantine import write_quarantine
from engine.db.rolls import Roll, record_rolls
from engine.db.schema import clean_bars
from engine.db.types import datetime_to_ns
from engine.errors import EngineError
from engine.interrupts import is_interruption
from engine.provenance import redact
from engine.quality import QualitySummary, record_session_quality
from engine.results import StageResult, instant, same, total
from engine.rolls import (
    SeriesRuns,
)
from engine.sources.dbn import DbnBarFile
from engine.validate import REASONS, SeenTimestamps, ValidatedChunk, tick_raw, validate_chunk
from engine.windows import iso_minute

log = logging.getLogger(__name__)

# Key of the records-outside-the-window count in clean_ingest_runs.ignored_instruments (no symbol looks like it).
OUTSIDE_WINDOW_KEY = "(outside window)"
_UNCHECKED_ROOTS: set[str] = set()  # roots without a tick size already reported by this process


@dataclass
class IngestResult(StageResult):
    """What one ingest (or the chunks of a chunked one, merged) received and did with it."""

    symbol: str
    databento_symbol: str
    bars_received: int = 0
    bars_inserted: int = 0
    bars_updated: int = 0
    bars_unchanged: int = 0
    bars_skipped: int = 0
    skipped_by_reason: dict[str, int] = field(default_factory=dict)
    ignored_instruments: dict[str, int] = field(default_factory=dict)
    outside_window: int = 0
    batch_commits: int = 0
    retries: int = 0
    rate_limited: int = 0  # Databento HTTP 429 answers among the retries (rate limit exceeded, Retry-After honoured)
    raw_files: list[dict] = field(default_factory=list)
    duration_seconds: float = 0.0
    ingest_run_ids: list[int] = field(default_factory=list)  # one clean_ingest_runs row per ingest (per chunk)
    window_start: str = ""
    window_end: str = ""
    contracts_not_chosen: dict[str, int] = field(default_factory=dict)  # other contracts' bars, not received
    raw_symbol_unknown: int = 0  # accepted bars whose contract the inputs do not name (stored NULL)
    rolls: list[str] = field(default_factory=list)  # "2024-06-14T22:00Z ESM4 → ESU4" per roll recorded
    rolls_unadjusted: list[str] = field(default_factory=list)  # rolls without a common minute to adjust them
    # The session_quality rows this ingest recomputed (engine/quality.py), summarised: sessions, first_date,
    # last_date, sessions_with_missing, missing_minutes, bars_outside_session, longest_gap_minutes, longest_gap_date.
    session_quality: dict = field(default_factory=dict)

    def merge(self, later: IngestResult) -> IngestResult:
        """The two ingests together: counts added, files and run rows listed, the window spanning both."""
        return IngestResult(
            symbol=same("symbol", self.symbol, later.symbol),
            databento_symbol=same("databento_symbol", self.databento_symbol, later.databento_symbol),
            **{name: getattr(self, name) + getattr(later, name) for name in _SUMMED},
            skipped_by_reason=total(self.skipped_by_reason, later.skipped_by_reason),
            ignored_instruments=total(self.ignored_instruments, later.ignored_instruments),
            contracts_not_chosen=total(self.contracts_not_chosen, later.contracts_not_chosen),
            session_quality=_merge_quality(self.session_quality, later.session_quality),
            duration_seconds=round(self.duration_seconds + later.duration_seconds, 3),
            window_start=min(self.window_start, later.window_start, key=instant),
            window_end=max(self.window_end, later.window_end, key=instant),
        )

    def describe(self) -> str:
        text = (f"{self.bars_received:,} bars: {self.bars_inserted:,} new, {self.bars_updated:,} updated, "
                f"{self.bars_unchanged:,} unchanged, {self.bars_skipped:,} quarantined")
        if self.skipped_by_reason:
            text += " (" + ", ".join(f"{count:,} {reason}" for reason, count in self.skipped_by_reason.items()) + ")"
        return text

    def brief(self, stage: str) -> str:
        return (f"bars +{self.bars_inserted:,} ~{self.bars_updated:,} ={self.bars_unchanged:,} "
                f"skipped {self.bars_skipped:,}")

    def rows(self, stage: str) -> list[tuple[str, str]]:
        rows = [("bars", self.describe())]
        ignored = dict(self.ignored_instruments)
        if self.outside_window:
            ignored["outside the window"] = self.outside_window
        if ignored:
            rows.append(("ignored", ", ".join(f"{count:,} {what}" for what, count in ignored.items())))
        if self.contracts_not_chosen:
            rows.append(("not chosen", ", ".join(f"{count:,} {what}" for what, count in
                                                 self.contracts_not_chosen.items())))
        if self.rolls:
            rows.append(("rolls", "; ".join(self.rolls)))
        if self.rolls_unadjusted:
            rows.append(("unadjusted", ", ".join(self.rolls_unadjusted) + " (no common minute of both contracts)"))
        if self.raw_symbol_unknown:
            rows.append(("contract unknown", f"{self.raw_symbol_unknown:,} bars (raw_symbol NULL)"))
        if self.session_quality.get("sessions"):
            rows.append(("sessions", _describe_quality(self.session_quality)))
        if self.retries:
            limited = f" ({self.rate_limited:,} rate-limited, HTTP 429)" if self.rate_limited else ""
            rows.append(("retries", f"{self.retries:,}{limited}"))
        return rows


# Fields of IngestResult that two ingests' results add up (lists concatenate).
_SUMMED = ("bars_received", "bars_inserted", "bars_updated", "bars_unchanged", "bars_skipped", "outside_window",
           "batch_commits", "retries", "rate_limited",
           "raw_files", "ingest_run_ids", "raw_symbol_unknown", "rolls", "rolls_unadjusted")


def _quality_fields(summary: QualitySummary) -> dict:
    out = dataclasses.asdict(summary)
    return {k: v.isoformat() if isinstance(v, dt.date) else v for k, v in out.items()}


def _merge_quality(first: dict, later: dict) -> dict:
    """Two chunks' summaries: the date span of both, the longer gap; counts added (a session cut by a chunk boundary
    is recomputed by both chunks, so it counts twice: the session_quality table has each session once)."""
    if not first or not later:
        return first or later
    longest = later if later["longest_gap_minutes"] > first["longest_gap_minutes"] else first
    dates = [d for d in (first["first_date"], later["first_date"], first["last_date"], later["last_date"]) if d]
    return {**{k: first[k] + later[k] for k in ("sessions", "sessions_with_missing", "missing_minutes",
                                                  "bars_outside_session")},
            "longest_gap_minutes": longest["longest_gap_minutes"], "longest_gap_date": longest["longest_gap_date"],
            "first_date": min(dates) if dates else None, "last_date": max(dates) if dates else None}


def _describe_quality(q: dict) -> str:
    text = (f"{q['sessions']:,} ({q['first_date']} … {q['last_date']}): {q['sessions_with_missing']:,} with missing "
            f"minutes ({q['missing_minutes']:,} in all)")
    if q["longest_gap_minutes"]:
        text += f", longest gap {q['longest_gap_minutes']:,} min on {q['longest_gap_date']}"
    if q["bars_outside_session"]:
        text += f", {q['bars_outside_session']:,} bars outside any session"
    return text + " (table session_quality)"


class Ingest:
    """Stage `ingest` (see the module docstring)."""

    def run(self, ctx: StageContext) -> IngestResult:
        return run(ctx)

    def chunk_settings(self, ctx: StageContext) -> dict:
        return chunk_settings(ctx)


def run(ctx: StageContext) -> IngestResult:
    symbol = ctx.symbol
    source = ctx.source
    source_name = ctx.plugins.source.name
    _refuse_mixing(ctx)
    tick = _tick(ctx)
    coverage = IngestCoverage(ctx.window.start, ctx.window.end)  # loads the calendar before any bar is written
    ingest_id = start_ingest_run(
        ctx.db,
        symbol=symbol.internal_symbol,
        start_ts=ctx.window.start,
        end_ts=ctx.window.end,
        engine_run_id=ctx.run.id,
        source=source_name,
        databento_symbol=symbol.databento_symbol,
    )
    started = time.monotonic()
    tally = _Tally()
    try:  # from here on, whatever stops the ingest (a signal included) closes its row
        # Session quality reads the window's bars back from the table, unless this ingest's accepted bars are
        # exactly them: no other ingest of the symbol over the window is running (asked first: what finished before
        # is in the table), the window holds no bar yet, and none starts later (asked at the end).
        alone = not _overlapped(ctx, ingest_id, started_later=False) and not any_bar_between(
            ctx.db, clean_bars, symbol.internal_symbol, ctx.window.start, ctx.window.end)
        with progress_bars() as progress:
            try:
                landing = source.acquire(ctx, progress)
            except BaseException as exc:
                tally.retries, tally.rate_limited = _retries_of(exc), _retries_of(exc, "rate_limited")
                raise
            tally.retries, tally.raw_files = landing.retries, landing.raw_files
            tally.rate_limited = getattr(landing, "rate_limited", 0)  # a user's source's Landing may lack it
            bars = DbnBarFile(landing.paths)
            window = (datetime_to_ns(ctx.window.start), datetime_to_ns(ctx.window.end)) if _trims(source,
                                                                                                   landing) else None
            selection = select_series(ctx, bars, landing, window)
            accepted = _load(ctx, ingest_id, bars, tally, progress, tick, selection, window)
            rolls = series_rolls(ctx, selection, tally.runs, tally.priced, landing)
            with ctx.db.begin() as conn:
                record_rolls(conn, symbol.internal_symbol, ctx.window.start, ctx.window.end, rolls, ingest_id)
            tally.rolls = rolls
        coverage.record(ctx.db, ingest_id, symbol.internal_symbol, symbol.root, accepted, landing.paths,
                        getattr(landing, "day_conditions", None))
        known = accepted.timestamps() if alone and not _overlapped(ctx, ingest_id, started_later=True) else None
        quality = record_session_quality(ctx.db, symbol.internal_symbol, ctx.window.start, ctx.window.end, ingest_id,
                                         window_ts=known)
    except BaseException as exc:
        status = "interrupted" if is_interruption(exc) else "failed"
        _finish(ctx, ingest_id, tally, started, status, _error_text(exc))
        raise
    _finish(ctx, ingest_id, tally, started, "success", None)
    result = IngestResult(symbol=symbol.internal_symbol, databento_symbol=symbol.databento_symbol,
                          ingest_run_ids=[ingest_id], window_start=iso_minute(ctx.window.start),
                          window_end=iso_minute(ctx.window.end), session_quality=_quality_fields(quality),
                          **tally.summary(time.monotonic() - started))
    _log_contracts(ctx, result)
    rate = result.bars_received / result.duration_seconds if result.duration_seconds else 0.0
    ctx.log.info("ingest %s: %s, %.2f s (%s bars/s)", symbol.internal_symbol, result.describe(),
                 result.duration_seconds, f"{rate:,.0f}")
    return result


def _overlapped(ctx: StageContext, ingest_id: int, *, started_later: bool) -> bool:
    return overlapping_ingests(ctx.db, ingest_id, ctx.symbol.internal_symbol, ctx.window.start, ctx.window.end,
                               started_later=started_later)


def chunk_settings(ctx: StageContext) -> dict:
    """What makes two ingests of the same chunk the same work (for resuming chunked backfills)."""
    source = {"name": ctx.plugins.source.name, **ctx.plugins.source.params}  # as recorded by earlier versions
    settings = {"symbol": dataclasses.asdict(ctx.symbol), "source": source,
                "tick_size": ctx.cfg.registry.tick_sizes.get(ctx.symbol.root)}
    if ctx.cfg.roll_days_before_expiry:  # only when set, so chunks recorded before the setting existed still match
        settings["roll_days_before_expiry"] = ctx.cfg.roll_days_before_expiry
    return settings


def _trims(source, landing) -> bool:
    """Whether records of the landed files outside the window are other parts of the files (counted), not anomalies
    (quarantined as ts_outside_window): local files, and landings that say so (Databento's whole days)."""
    return source.local or getattr(landing, "trim", False)


def _load(ctx: StageContext, ingest_id: int, bars: DbnBarFile, tally: _Tally, progress, tick: int | None,
          selection: Selection, window: tuple[int, int] | None) -> SeenTimestamps:
    """Decode, validate and commit chunk by chunk; `tally` holds what is committed. Returns the accepted minutes.

    A worker thread decodes, validates and encodes the next chunks (at most two ahead, no database access) while
    this thread commits the current one; chunks commit in file order, and an error of the worker is raised here
    after the chunks before it are committed."""
    symbol, source = ctx.symbol, ctx.source
    start_ns, end_ns = datetime_to_ns(ctx.window.start), datetime_to_ns(ctx.window.end)
    writer = CleanBarWriter(ctx.db, symbol.internal_symbol, ingest_id, batch_size=source.batch_size)
    seen = SeenTimestamps()
    task = progress.add_task(f"ingest {symbol.internal_symbol}", total=None, unit="bars")
    tally.files = bars

    def prepared() -> Iterator[_Batch]:
        for chunk, via_continuous in bars.iter_labelled(selection.flt, source.batch_size, window):
            chosen, not_chosen, priced = selection.select(chunk, via_continuous)
            tally.not_chosen_read.update(not_chosen)
            if len(priced):
                tally.priced.append(priced)
            if not len(chosen):
                continue  # its not-chosen records are counted with the next batch (or when the row closes)
            checked = validate_chunk(chosen, start_ns, end_ns, seen, tick)
            tally.runs.add(checked.good["ts"], checked.good["instrument_id"], checked.good["raw_symbol"])
            unknown = int(np.count_nonzero(checked.good["raw_symbol"] == b""))
            yield _Batch(len(chosen), checked, writer.prepare(checked.good), tally.ignored(),
                         dict(tally.not_chosen_read), unknown)

    with contextlib.closing(in_background(prepared(), name="ingest-prepare")) as batches:
        for batch in batches:
            skipped = tally.skipped + Counter(batch.checked.reason_counts())
            record = functools.partial(_record_batch, ingest_id=ingest_id, symbol=symbol.internal_symbol,
                                       batch=batch, skipped=skipped, retries=tally.retries)
            tally.add(batch.received, writer.commit(batch.bars, also=record), skipped)
            tally.not_chosen, tally.raw_symbol_unknown = batch.not_chosen, tally.raw_symbol_unknown + batch.unknown
            progress.update(task, advance=batch.received)
    tally.read_all = True
    return seen


@dataclass(frozen=True)
class _Batch:
    """A decoded chunk, validated and ready to commit."""

    received: int  # records of the chunk
    checked: ValidatedChunk
    bars: PreparedBatch  # its good bars
    ignored: dict[str, int]  # the decoder's _Tally.ignored() right after this chunk
    not_chosen: dict[str, int]  # other contracts' records read so far (contracts_not_chosen)
    unknown: int  # its good bars without a raw symbol


def _record_batch(conn, counts: WriteCounts, *, ingest_id: int, symbol: str, batch: _Batch, skipped: Counter[str],
                  retries: int) -> None:
    """Inside a batch's transaction: its quarantine rows and its counts on the clean_ingest_runs row."""
    checked = batch.checked
    if len(checked.bad):
        write_quarantine(conn, ingest_id, symbol, checked.bad, checked.bad_reason)
    add_batch_counts(conn, ingest_id, received=batch.received, counts=counts, skipped=len(checked.bad),
                     skipped_by_reason=_by_reason(skipped), ignored_instruments=batch.ignored, retries=retries,
                     contracts_not_chosen=batch.not_chosen)


class _Tally:
    """What the committed batches hold (updated only after each commit), plus what the source reported."""

    def __init__(self):
        self.received = 0
        self.counts = WriteCounts()
        self.retries = 0
        self.rate_limited = 0
        self.skipped: Counter[str] = Counter()
        self.raw_files: list[dict] = []
        self.files: DbnBarFile | None = None
        self.read_all = False
        self.not_chosen: dict[str, int] = {}  # committed with the batches
        self.not_chosen_read: Counter[str] = Counter()  # read by the decoding thread
        self.raw_symbol_unknown = 0
        self.runs = SeriesRuns()
        self.priced: list[np.ndarray] = []  # records near the rolls, to price them
        self.rolls: list[Roll] = []

    def add(self, received: int, counts: WriteCounts, skipped: Counter[str]) -> None:
        self.received += received
        self.counts.add(counts)
        self.skipped = skipped

    def ignored(self) -> dict[str, int]:
        """Other instruments' records, plus the local files' records outside the window (OUTSIDE_WINDOW_KEY)."""
        if self.files is None:
            return {}
        out = dict(self.files.ignored)
        if self.files.outside_window:
            out[OUTSIDE_WINDOW_KEY] = self.files.outside_window
        return out

    def raw_file_entries(self) -> list[dict]:
        """The source's raw_files, each marked read_to_end false when reading stopped at the window's end."""
        stopped = {str(p) for p in self.files.stopped_early} if self.files is not None else set()
        return [{**entry, "read_to_end": False} if entry.get("path") in stopped else entry
                for entry in self.raw_files]

    def summary(self, seconds: float) -> dict:
        return {
            "bars_received": self.received,
            "bars_inserted": self.counts.inserted,
            "bars_updated": self.counts.updated,
            "bars_unchanged": self.counts.unchanged,
            "bars_skipped": sum(self.skipped.values()),
            "skipped_by_reason": _by_reason(self.skipped),
            "ignored_instruments": dict(self.files.ignored) if self.files is not None else {},
            "outside_window": self.files.outside_window if self.files is not None else 0,
            "batch_commits": self.counts.batch_commits,
            "retries": self.retries,
            "rate_limited": self.rate_limited,
            "raw_files": self.raw_file_entries(),
            "duration_seconds": round(seconds, 3),
            "contracts_not_chosen": dict(sorted(self.not_chosen_read.items())) if self.read_all else self.not_chosen,
            "raw_symbol_unknown": self.raw_symbol_unknown,
            "rolls": [f"{iso_minute(r.roll_ts)} {r.label}" for r in self.rolls],
            "rolls_unadjusted": [r.label for r in self.rolls if not r.adjustable],
        }


def _by_reason(skipped: Counter[str]) -> dict[str, int]:
    return {r: skipped[r] for r in REASONS if skipped[r]}


def _finish(ctx, ingest_id, tally: _Tally, started: float, status: str, error: str | None) -> None:
    """Close the row. The counters are never written here: each batch's transaction already holds them."""
    fields = {"status": status, "error": error, "duration_seconds": round(time.monotonic() - started, 3),
              "retries": tally.retries, "raw_files": tally.raw_file_entries()}
    if tally.read_all:
        fields["ignored_instruments"] = tally.ignored()
        fields["contracts_not_chosen"] = dict(sorted(tally.not_chosen_read.items()))
    if status == "success":
        finish_ingest_run(ctx.db, ingest_id, **fields)
        return
    try:
        finish_ingest_run(ctx.db, ingest_id, **fields)
    except Exception as exc:  # noqa: BLE001 - the original failure is what the caller must see
        log.warning("could not record ingest %s as %s: %s", ingest_id, status, exc)


def _retries_of(exc: BaseException, name: str = "retries") -> int:
    """Retries (or `name`: rate_limited, the 429s among them) a failed acquisition made, as the source's exception
    carries them."""
    retries = getattr(exc, name, 0)
    return retries if isinstance(retries, int) and not isinstance(retries, bool) and retries > 0 else 0


def _tick(ctx: StageContext) -> int | None:
    """The root's tick in 1e-9 units from registry.tick_sizes; None (said once per process) when it has none."""
    root = ctx.symbol.root
    tick = ctx.cfg.registry.tick_sizes.get(root)
    if tick is None:
        if root not in _UNCHECKED_ROOTS:
            _UNCHECKED_ROOTS.add(root)
            ctx.log.warning("no tick size for %s in registry.tick_sizes: prices are not checked against a tick "
                            "(add one with +registry.tick_sizes.%s=<tick>)", root, root)
        return None
    try:
        return tick_raw(tick)
    except ValueError:
        raise EngineError(
            f"registry.tick_sizes.{root}={tick!r} is not a tick size",
            f"set it to the minimum price increment of {root} in points, e.g. registry.tick_sizes.{root}=0.25",
        ) from None


def _error_text(exc: BaseException) -> str:
    return redact(str(exc) if isinstance(exc, EngineError) else f"{type(exc).__name__}: {exc}")


def _refuse_mixing(ctx: StageContext) -> None:
    """Demo bars never land in a database holding market bars, and the other way round.

    The first ingest records the database's kind (engine_database) before it writes a bar; later ingests of the
    other kind are refused, so an interrupted first ingest or two first ingests at once never wedge it.
    """
    kind = ctx.source.data_kind.value
    held = claim_data_kind(ctx.db, kind, ctx.run.id)
    if held["data_kind"] == kind:
        return
    database = masked_url(str(ctx.db.url))
    since = f"since run {held['engine_run_id']}" if held["engine_run_id"] is not None else "since an earlier version"
    empty = "" if has_clean_bars(ctx.db) else (
        "; it holds no bars yet: if that was a mistake, DELETE FROM engine_database and rerun")
    raise EngineError(
        f"refusing to ingest {kind} data from source={ctx.plugins.source.name}: the database {database} holds "
        f"{held['data_kind']} data ({since}, {held['recorded_at']:%Y-%m-%d %H:%M} UTC)",
        "give demo data its own database (the default db=sqlite does: data/demo.sqlite vs "
        f"data/market.sqlite), e.g. db.url=sqlite:///data/{kind}.sqlite{empty}",
    )


def _log_contracts(ctx: StageContext, result: IngestResult) -> None:
    """Say what the series left out and what it could not name or adjust."""
    if result.contracts_not_chosen:
        ctx.log.info("ingest %s: bars of other contracts not chosen (not received): %s", result.symbol,
                     ", ".join(f"{n:,} {c}" for c, n in result.contracts_not_chosen.items()))
    if result.raw_symbol_unknown:
        ctx.log.info("ingest %s: %s bars stored without raw_symbol: no outright file or instrument definition "
                     "names their instrument that day", result.symbol, f"{result.raw_symbol_unknown:,}")
    if result.rolls:
        ctx.log.info("ingest %s: rolls %s", result.symbol, "; ".join(result.rolls))
    if result.rolls_unadjusted:
        ctx.log.info("ingest %s: rolls without adjustment prices (no common minute of both contracts in the "
                     "%d sessions before the roll): %s", result.symbol, PRICE_SESSIONS,
                     ", ".join(result.rolls_unadjusted))
