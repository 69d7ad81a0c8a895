"""`engine status` and `engine runs` as rich tables."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from engine.status import Run, SymbolStatus

_LISTED_SESSIONS = 5
_LISTED_GAPS = 20
_STATUS_COLOURS = {"success": "green", "running": "cyan", "failed": "red", "interrupted": "yellow",
                   "abandoned": "magenta"}


def minute(value: datetime | None) -> str:
    if value is None:
        return "-"
    return f"{value:%Y-%m-%dT%H:%M:%SZ}" if value.second else f"{value:%Y-%m-%dT%H:%MZ}"


def started(value: datetime) -> str:
    return f"{value:%Y-%m-%d}\n{value:%H:%M:%S}"


def status_word(status: str) -> str:
    return f"[{_STATUS_COLOURS.get(status, 'white')}]{status}[/]"


def symbol_table(s: SymbolStatus) -> Table:
    table = Table(title=f"[bold]{s.symbol}[/]", title_justify="left", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    b = s.bars
    table.add_row("bars", f"{b.bars:,}" + (f" (first {minute(b.first_bar)}, last {minute(b.last_bar)})"
                                          if b.bars else ""))
    table.add_row("covered", "\n".join(f"{minute(a)} → {minute(z)}" for a, z in s.covered) or "nothing")
    gaps = [f"[{minute(g.start)}, {minute(g.end)}) {g.trading_minutes:,} trading minutes" for g in s.gaps]
    if len(gaps) > _LISTED_GAPS:
        gaps = gaps[:_LISTED_GAPS] + [f"… and {len(gaps) - _LISTED_GAPS} more (--json lists all)"]
    table.add_row("gaps", "[red]" + "\n".join(gaps) + "[/]" if gaps else "none")
    table.add_row("sessions", _sessions_text(s))
    table.add_row("Databento flags", _flags_text(s))
    ingest = s.last_ingest
    table.add_row("last ingest", "none" if ingest is None else (
        f"ingest {ingest.id} (run {ingest.engine_run_id}) {status_word(ingest.status)} at {minute(ingest.run_at)}, "
        f"window {minute(ingest.start_ts)} → {minute(ingest.end_ts)}, {ingest.bars_inserted:,} new, "
        f"{ingest.bars_updated:,} updated, {ingest.bars_unchanged:,} unchanged, logic {ingest.logic_version}"))
    detect = s.last_detect
    table.add_row("last detect", "none" if detect is None else (
        f"run {detect.row.id} {status_word(detect.row.status)} at {minute(detect.row.started_at)}, "
        f"window {minute(detect.row.window_start)} → {minute(detect.row.window_end)}, "
        f"{detect.counts.events:,} events, logic {detect.row.logic_version}"))
    table.add_row("events", "\n".join(
        f"{g.detector} {escape(g.detector_params)} adjust {g.adjustment}, logic {g.logic_version}: {g.events:,} "
        f"({minute(g.first_event)} → {minute(g.last_event)})" for g in s.events) or "none")
    table.add_row("abandoned runs", "\n".join(
        f"[magenta]run {r.id}[/] started {minute(r.started_at)}: {escape((r.error or '').splitlines()[0][:160])}"
        for r in s.abandoned) or "none")
    return table


def _sessions_text(s: SymbolStatus) -> str:
    n = s.sessions
    text = (f"{n.with_quality:,} with quality rows, {n.with_missing_minutes:,} with missing minutes "
            f"({n.missing_minutes:,} in all)")
    worst = sorted(s.missing_sessions, key=lambda d: (-d.missing_minutes, d.trade_date))[:_LISTED_SESSIONS]
    if worst:
        text += "; most: " + ", ".join(f"{d.trade_date} {d.missing_minutes:,} of {d.expected_minutes:,} "
                                       f"(longest {d.longest_gap_minutes:,})" for d in worst)
    if n.without_quality:
        text += f"\n[yellow]{n.without_quality:,} covered sessions without a quality row[/] (ingested before " \
                "session quality: ingest them again to compute it)"
    return text


def _flags_text(s: SymbolStatus) -> str:
    """The days Databento flags, worst first: not bought (no data yet), degraded, provisional."""
    if not s.flagged:
        return "none"
    groups = (("[red]not bought[/]", [d for d in s.flagged if not d.bought]),
              ("[yellow]degraded[/]", [d for d in s.flagged if d.bought and d.condition == "degraded"]),
              ("[yellow]provisional[/]", [d for d in s.flagged if d.bought and d.condition != "degraded"
                                          and d.provisional]))
    lines = []
    for label, days in groups:
        if days:
            listed = ", ".join(f"{d.day} ({d.condition})" if not d.bought else str(d.day)
                               for d in days[:_LISTED_GAPS])
            more = f", … and {len(days) - _LISTED_GAPS} more (--json lists all)" if len(days) > _LISTED_GAPS else ""
            lines.append(f"{label} {len(days):,} day{'s' * (len(days) != 1)}: {listed}{more}")
    return "\n".join(lines) + "\n(an ingest of these days buys them once Databento has them, or has them anew)"


def runs_table(runs: list[Run], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for name, justify in (("id", "right"), ("status", "left"), ("symbol", "left"), ("stages", "left"),
                          ("window", "left"), ("started", "left"), ("seconds", "right"), ("bars", "right"),
                          ("events", "right"), ("chunks", "right"), ("run directory", "left")):
        table.add_column(name, justify=justify, overflow="fold", no_wrap=name not in ("stages", "run directory"))
    for run in runs:
        r, c = run.row, run.counts
        window = "-" if r.window_start is None else f"{minute(r.window_start)} →\n{minute(r.window_end)}"
        bars = c.bars_inserted + c.bars_updated + c.bars_unchanged
        table.add_row(str(r.id), status_word(r.status), r.symbol or "-", ", ".join(r.stages), window,
                      started(r.started_at), "-" if run.duration_seconds is None else f"{run.duration_seconds:.1f}",
                      f"{bars:,}", f"{c.events:,}", f"{c.chunks_done}/{c.chunks}" if c.chunks else "-",
                      escape(_here(r.run_dir)))
    return table


def _here(path: str) -> str:
    """A run directory relative to the working directory when it lies under it (runs/...), else as recorded."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path
