"""`engine status` and `engine runs`: what the database a job would use holds, and its last runs.

Arguments are the views' options (`--json`, `--symbol`, ...; `<view>.format=json` is `--json`) and Hydra-style
overrides choosing the database (`db=postgres`, `db.url=...`), composed as a job composes them
(engine/settings.py, conf/local/default.yaml included). Bad options raise EngineError (exit 2, no traceback).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from sqlalchemy import Engine

from engine import secrets, settings
from engine.config import suggest
from engine.db import status_queries as q
from engine.db.connect import create_db_engine, masked_url, require_existing
from engine.errors import EngineError

VIEWS = ("status", "runs")
DEFAULT_PNG = Path("runs") / "status" / "coverage.png"
DEFAULT_LAST = 20
_PIPE_WIDTH = 200  # the tables' width on a pipe or file without COLUMNS
_FLAGS = {"status": ["--json", "--symbol", "--png", "--no-png", "--help"],
          "runs": ["--json", "--symbol", "--last", "--status", "--help"]}
_HELP = {
    "status": """usage: engine status [--json] [--symbol NQ ...] [--png PATH | --no-png] [db=postgres] [db.url=URL]

Per symbol: covered ranges and gaps (CME calendar: closed market time is no gap), bars, first/last bar, sessions
with missing minutes, last ingest and last detect, events per detector, abandoned runs; and a coverage heatmap PNG
(default runs/status/coverage.png).

  --json            JSON instead of tables (also status.format=json)
  --symbol S        only these symbols (repeat, or NQ,ES)
  --png PATH        write the heatmap there;  --no-png  write none
  key=value         the database as for a job: db=postgres, db.url=..., conf/local/default.yaml
""",
    "runs": """usage: engine runs [--json] [--last N] [--symbol NQ ...] [--status failed ...] [db=postgres] [db.url=URL]

The last N runs (default 20), newest first: id, status, symbol, stages, window, start, duration, bars, events,
chunks and run directory.

  --json            JSON instead of a table (also runs.format=json)
  --last N          how many runs (default 20)
  --symbol S        only runs of these symbols (repeat, or NQ,ES)
  --status S        only runs with these statuses (repeat, or failed,abandoned)
  key=value         the database as for a job: db=postgres, db.url=..., conf/local/default.yaml
""",
}


@dataclass
class Options:
    view: str
    json: bool = False
    symbols: list[str] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    last: int = DEFAULT_LAST
    png: Path | None = DEFAULT_PNG
    overrides: list[str] = field(default_factory=list)


def main(view: str, argv: list[str]) -> None:
    """Print the view; EngineError for anything the user can fix."""
    options = parse(view, secrets.take_secrets(list(argv)))
    if options is None:
        sys.stdout.write(_HELP[view])
        return
    url = settings.database_url(options.overrides)
    db = open_database(url)
    try:
        with db.connect() as conn:
            symbols = [_known(conn, s) for s in options.symbols] or None
            if view == "status":
                payload, tables = _status(conn, symbols, options, url)
            else:
                payload, tables = _runs(conn, symbols, options, url)
    finally:
        db.dispose()
    if options.json:
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
        return
    out = Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else _PIPE_WIDTH)
    for table in tables:
        out.print(table)


def parse(view: str, argv: list[str]) -> Options | None:
    """The options of `view` from its arguments; None for --help."""
    options = Options(view)
    args = list(argv)
    while args:
        arg = args.pop(0)
        name, eq, value = arg.partition("=")
        if arg in ("-h", "--help"):
            return None
        if not arg.startswith("-"):
            if name == f"{view}.format":
                options.json = _format(view, value)
            elif not eq:
                raise EngineError(f"engine {view}: {arg!r} is neither an option nor a key=value override",
                                  f"see `engine {view} --help`; the database is chosen with db=postgres or db.url=…")
            else:
                options.overrides.append(arg)
            continue
        if name in ("--json", "--no-png"):
            if eq:
                raise EngineError(f"{name} takes no value, not {value!r}", f"write {name} alone")
            options.json = options.json or name == "--json"
            options.png = None if name == "--no-png" else options.png
            continue
        if name not in _FLAGS[view]:
            raise EngineError(f"engine {view}: unknown option {name!r}{suggest(name, _FLAGS[view])}",
                              f"options of engine {view}: {', '.join(_FLAGS[view])}")
        if not eq:
            if not args or args[0].startswith("-"):
                raise EngineError(f"{name} needs a value", f"e.g. {name} {_EXAMPLES[name]}")
            value = args.pop(0)
        _set(options, name, value)
    return options


_EXAMPLES = {"--symbol": "NQ", "--last": "20", "--status": "failed", "--png": "coverage.png"}


def _set(options: Options, name: str, value: str) -> None:
    if name == "--symbol":
        options.symbols += [s for s in (p.strip() for p in value.split(",")) if s]
    elif name == "--status":
        for status in (p.strip() for p in value.split(",")):
            if status not in q.RUN_STATUSES:
                raise EngineError(f"--status {status}: not a run status{suggest(status, list(q.RUN_STATUSES))}",
                                  f"use one of {', '.join(q.RUN_STATUSES)} (repeat or comma-separate several)")
            options.statuses.append(status)
    elif name == "--last":
        if not value.isdigit() or int(value) < 1:
            raise EngineError(f"--last {value}: not a number of runs", "give a whole number >= 1, e.g. --last 20")
        options.last = int(value)
    elif name == "--png":
        if not value:
            raise EngineError("--png needs a file path", "e.g. --png coverage.png, or --no-png for none")
        options.png = Path(value)


def _format(view: str, value: str) -> bool:
    if value not in ("json", "table"):
        raise EngineError(f"{view}.format={value}: takes json or table", f"write {view}.format=json (or --json)")
    return value == "json"


def open_database(url: str) -> Engine:
    """The database at `url`, which must exist and be at this engine's migration head (a read changes nothing)."""
    db = create_db_engine(url)
    try:
        require_existing(db)
    except BaseException:
        db.dispose()
        raise
    return db


def _known(conn, given: str) -> str:
    """The stored symbol `given` names: itself (GLBX.MDP3:NQ) or its name without the dataset (NQ, nq)."""
    known = sorted(set(q.stored_symbols(conn)) | set(q.registered_symbols(conn)))
    name = given.upper()
    matches = [s for s in known if name in (s.upper(), s.rpartition(":")[2].upper())]
    if len(matches) != 1:
        names = [s.rpartition(":")[2] for s in known]
        why = f"names {len(matches)} symbols ({', '.join(matches)})" if matches else \
            f"is not in this database{suggest(name, names)}"
        raise EngineError(f"--symbol {given} {why}",
                          f"pick one of: {', '.join(known) or '(none yet)'}")
    return matches[0]


def _status(conn, symbols: list[str] | None, options: Options, url: str):
    from engine.heatmap import write_heatmap
    from engine.status import symbol_json, symbol_status
    from engine.status_tables import symbol_table

    states = [symbol_status(conn, s) for s in (symbols or q.stored_symbols(conn))]
    heatmap = None
    if options.png is not None and states:
        title = f"{masked_url(url)}: share of each session's expected minutes with a bar"
        try:
            heatmap = write_heatmap(options.png, {s.symbol: s.days for s in states}, title)
        except OSError as exc:
            raise EngineError(f"cannot write the heatmap {options.png}: {exc.strerror}",
                              "give --png a writable path, or --no-png") from None
    payload = {"database": masked_url(url), "generated_at": _now(), "heatmap": str(heatmap) if heatmap else None,
               "symbols": [symbol_json(s) for s in states]}
    tables = [symbol_table(s) for s in states] or [f"no clean ingest in {masked_url(url)} yet"]
    if heatmap is not None:
        tables.append(f"heatmap: {heatmap}")
    return payload, tables


def _runs(conn, symbols: list[str] | None, options: Options, url: str):
    from engine.status import recent_runs, run_json
    from engine.status_tables import runs_table

    runs = recent_runs(conn, symbols=symbols, statuses=options.statuses or None, last=options.last)
    payload = {"database": masked_url(url), "generated_at": _now(), "runs": [run_json(r) for r in runs]}
    title = f"last {len(runs)} run(s) in {masked_url(url)}" + (f", {', '.join(options.statuses)}"
                                                             if options.statuses else "")
    return payload, [runs_table(runs, title) if runs else f"no runs in {masked_url(url)} match"]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
