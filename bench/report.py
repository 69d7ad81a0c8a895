"""Rows of the results table, formatting, the machine description, and the markdown / JSON / rich outputs."""

from __future__ import annotations

import json
import os
import platform
import sqlite3
import statistics
import subprocess
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

from rich.console import Console
from rich.table import Table

PASS, MISS, INFO, SKIP, ERROR, PENDING = "PASS", "MISS", "INFO", "SKIP", "ERROR", "not run"

# (key, figure, database): every row the table always has, in order.
ROWS: tuple[tuple[str, str, str], ...] = (
    ("ingest_empty_pg_copy", "ingest DBN → empty table, vs raw COPY", "PostgreSQL"),
    ("ingest_empty_pg_tosql", "ingest DBN → empty table, vs to_sql", "PostgreSQL"),
    ("ingest_bookkeeping_pg", "run bookkeeping (per-batch counters, liveness), {n} ingest", "PostgreSQL"),
    ("ingest_empty_sqlite", "ingest DBN → empty table, vs to_sql", "SQLite"),
    ("reingest_unchanged_pg", "re-ingest, unchanged bars", "PostgreSQL"),
    ("reingest_unchanged_sqlite", "re-ingest, unchanged bars", "SQLite"),
    ("reingest_changed_pg", "re-ingest, 1% of bars changed", "PostgreSQL"),
    ("reingest_changed_sqlite", "re-ingest, 1% of bars changed", "SQLite"),
    ("detect_compute", "triangle detection, compute only", "— (numpy)"),
    ("rolls_compute", "continuous series from 4 quarters of outright bars (rule v), compute only", "— (numpy)"),
    ("adjusted_read_sqlite", "read of a back-adjusted series (difference, 8 rolls), vs plain read", "SQLite"),
    ("read_bars_pg", "`read_bars` → pandas, vs a plain ADBC read of the same rows", "PostgreSQL"),
    ("read_bars_sqlite", "`read_bars` → pandas", "SQLite"),
    ("detect_stage_pg", "detect stage end to end", "PostgreSQL"),
    ("detect_rerun_pg", "detect stage end to end, rerun", "PostgreSQL"),
    ("detect_stage_sqlite", "detect stage end to end", "SQLite"),
    ("detect_rerun_sqlite", "detect stage end to end, rerun", "SQLite"),
    ("sweep_4_symbols", "4-symbol sweep (ingest+detect)", "SQLite, file per job"),
    ("incremental_update_sqlite", "4-symbol incremental update of one session, {years}-year database vs empty",
     "SQLite"),
    ("incremental_update_pg", "4-symbol incremental update of one session, {years}-year database vs empty",
     "PostgreSQL"),
    ("peak_rss_pg", "peak RSS, {mem_n} ingest", "PostgreSQL"),
    ("peak_rss_sqlite", "peak RSS, {mem_n} ingest", "SQLite"),
    ("help_time", "`python -m engine --help`", "—"),
    ("refusal_time", "bad input refused before any run (`detector.n=-1`, exit 2)", "SQLite"),
    ("plan_time", "dry run writing plan.md, 5-year weekly backfill (261 chunks), offline", "SQLite"),
    ("export_parquet", "Parquet export of bars by symbol and UTC date, vs pyarrow write_table per date",
     "— (Parquet files)"),
    # issue 14 item 1: bars landed by UTC day
    ("landing_reuse_lookup", "landing-reuse lookup, 10-year window of landed days", "— (files)"),
    ("landing_day_split", "1-month streamed download landed by day, vs one request as one file", "— (fake gateway)"),
)
ROW_KEYS = tuple(key for key, _, _ in ROWS)


@dataclass
class Row:
    key: str
    figure: str
    db: str
    engine: str = "—"
    baseline: str = "—"
    ratio: str = "—"
    target: str = "—"
    status: str = PENDING
    note: str = ""
    data: dict = field(default_factory=dict)


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


def median(values: list[float]) -> float:
    return statistics.median(values)


def fmt_seconds(seconds: float) -> str:
    if seconds >= 100:
        return f"{seconds:.0f} s"
    if seconds >= 10:
        return f"{seconds:.1f} s"
    if seconds >= 0.1:
        return f"{seconds:.2f} s"
    return f"{seconds * 1000:.1f} ms"


def fmt_count(n: float) -> str:
    if n >= 1e6:
        return f"{n / 1e6:.3g}M"
    if n >= 1e3:
        return f"{n / 1e3:.3g}k"
    return f"{n:.0f}"


def fmt_rate(n: int, seconds: float) -> str:
    return f"{fmt_count(n / seconds)} bars/s" if seconds > 0 else "∞ bars/s"


def fmt_timing(n: int, seconds: list[float]) -> str:
    """'2.10 s · 476k bars/s (×3)': median time, the rate it gives, how many runs."""
    m = median(seconds)
    return f"{fmt_seconds(m)} · {fmt_rate(n, m)} (×{len(seconds)})"


# ---------------------------------------------------------------------------------------------
# The machine


def _first(path: str, prefix: str) -> str | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(prefix):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, check=True,
                             cwd=Path(__file__).resolve().parents[1])
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def machine(pg_version: str | None, pg_settings: dict[str, str] | None = None) -> dict:
    mem_kb = _first("/proc/meminfo", "MemTotal")
    head = _git("rev-parse", "--short", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no")) if head else None
    return {
        "cpu": _first("/proc/cpuinfo", "model name") or platform.processor() or "unknown",
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gib": round(int(mem_kb.split()[0]) / 1024**2, 1) if mem_kb else None,
        "os": f"{platform.system()} {platform.release()}",
        "postgresql": pg_version or "unavailable",
        "postgresql_settings": pg_settings or {},
        "sqlite": sqlite3.sqlite_version,
        "python": platform.python_version(),
        "numpy": _version("numpy"),
        "pandas": _version("pandas"),
        "sqlalchemy": _version("sqlalchemy"),
        "psycopg": _version("psycopg"),
        "databento-dbn": _version("databento-dbn"),
        "git": f"{head}{'-dirty' if dirty else ''}" if head else "unknown",
    }


def machine_line(m: dict) -> str:
    settings = ", ".join(f"{k}={v}" for k, v in m.get("postgresql_settings", {}).items())
    pg = f"PostgreSQL {m['postgresql']}" + (f" ({settings})" if settings else "")
    return (f"{m['cpu']}, {m['cores']} cores ({m['cores_usable']} usable), {m['ram_gib']} GiB RAM, {m['os']}; "
            f"{pg}, SQLite {m['sqlite']}, Python {m['python']}, numpy {m['numpy']}, "
            f"pandas {m['pandas']}, SQLAlchemy {m['sqlalchemy']}, psycopg {m['psycopg']}; code {m['git']}")


# ---------------------------------------------------------------------------------------------
# Outputs

_COLUMNS = ("figure", "DB", "engine (median)", "baseline (median)", "ratio", "target", "result")


def _cells(row: Row) -> list[str]:
    return [row.figure, row.db, row.engine, row.baseline, row.ratio, row.target, row.status]


def markdown(results: dict) -> str:
    lines = [
        f"# Bench results ({results['mode']}, N = {results['n']:,} bars)",
        "",
        f"Run `{results['command']}` at {results['started']} in {results['seconds']:.0f} s; "
        f"run directory `{results['run_dir']}`.",
        "",
        "| " + " | ".join(_COLUMNS) + " |",
        "|" + "---|" * len(_COLUMNS),
    ]
    for row in results["rows"]:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in _cells(Row(**row))) + " |")
    lines += ["", "Notes:", ""]
    lines += [f"* **{row['figure']} ({row['db']})**: {row['note']}" for row in results["rows"] if row["note"]]
    lines += [f"* {note}" for note in results["notes"]]
    lines += ["", f"Machine: {machine_line(results['machine'])}", "",
              f"Correctness checks: {sum(c['passed'] for c in results['checks'])} passed, "
              f"{sum(not c['passed'] for c in results['checks'])} failed", ""]
    lines += [f"* {'ok' if c['passed'] else 'FAILED'} {c['name']}: {c['detail']}" for c in results["checks"]]
    return "\n".join(lines) + "\n"


def write(run_dir: Path, results: dict) -> None:
    (run_dir / "bench_results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (run_dir / "bench_results.md").write_text(markdown(results))


def print_table(results: dict, console: Console) -> None:
    table = Table(title=f"bench ({results['mode']}, N = {results['n']:,} bars)", title_justify="left")
    for column in _COLUMNS:
        table.add_column(column, overflow="fold")
    styles = {PASS: "green", MISS: "red", ERROR: "bold red", SKIP: "yellow"}
    for data in results["rows"]:
        row = Row(**data)
        cells = _cells(row)
        style = styles.get(row.status)
        cells[-1] = f"[{style}]{row.status}[/]" if style else row.status
        table.add_row(*cells)
    console.print(table)
    console.print(f"Machine: {machine_line(results['machine'])}")


def as_dict(row: Row) -> dict:
    return asdict(row)
