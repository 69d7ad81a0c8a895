"""Every check of a job before it runs, in one place: real and dry runs call `check` alike, before any
database or file is opened for writing, so a refused job never leaves half a run.

Each check raises EngineError naming the key or input and the fix (exit 2). The checks only read: a file's
header, a directory listing, the environment.
"""

from __future__ import annotations

import csv
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from engine import incremental
from engine.config import EngineConfig, normalize_symbol
from engine.errors import EngineError
from engine.job_plugins import JobPlugins
from engine.windows import Window, parse_utc, parse_window

# First day of each dataset's history (Databento's dataset start dates); a window before it has no data.
DATASET_START = {
    "GLBX.MDP3": datetime(2010, 6, 6, tzinfo=UTC),
    "XNAS.ITCH": datetime(2018, 5, 1, tzinfo=UTC),
}
ROLL_RULES = {"c": "calendar", "n": "open interest", "v": "volume"}
SQLITE_HEADER = b"SQLite format 3\x00"


def check(cfg: EngineConfig, plugins: JobPlugins, now: datetime | None = None) -> Window | None:
    """All checks of a typed config and its created plugins; the parsed window (None for window=incremental: it is
    resolved once the database is open, engine/incremental.py)."""
    stages = list(cfg.stages)
    _ranges(cfg, plugins.source.obj)
    if incremental.is_incremental(cfg):
        _dataset_start(cfg, incremental.check_config(cfg, plugins.source.obj), "window.since")
        window = None
    else:
        window = _window(cfg, now or datetime.now(UTC))
    if "ingest" in stages and hasattr(plugins.source.obj, "check"):
        plugins.source.obj.check()  # e.g. the files exist, the key has the right shape
    if "parity" in stages:
        for side in ("left", "right"):
            path = getattr(cfg.parity, side).csv
            if path is not None:
                check_events_csv(Path(path).expanduser(), f"parity.{side}.csv")
    _database(cfg.db.url)
    if window is None and cfg.window.since is None and _new_sqlite_file(cfg.db.url):
        raise incremental.missing_since(normalize_symbol(cfg.symbol, cfg.registry.defaults.dataset))
    return window


def _new_sqlite_file(url: str) -> bool:
    """A SQLite db.url whose file does not exist yet (the run would create it)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return False
    return parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:") and not Path(
        parsed.database).exists()


def _at_least(key: str, value, low, what: str) -> None:
    if value is not None and not value >= low:
        raise EngineError(f"{key}={value} is below {low}: {what}", f"set {key} to {low} or more")


def _ranges(cfg: EngineConfig, source) -> None:
    _at_least("source.batch_size", source.batch_size, 1, "each batch of rows is one transaction")
    for key, low, what in (("max_cost_usd", 0, "the most a download may cost"),
                           ("max_retries", 0, "retries of a failed call"),
                           ("backoff_seconds", 0, "the wait before a retry"),
                           ("timeseries_requests_per_second", 0, "Databento's rate limit (0: not throttled)"),
                           ("symbology_requests_per_second", 0, "Databento's rate limit (0: not throttled)"),
                           ("metadata_requests_per_second", 0, "Databento's rate limit (0: not throttled)"),
                           ("batch_requests_per_second", 0, "Databento's rate limit (0: not throttled)"),
                           ("batch_submissions_per_minute", 0, "Databento's rate limit (0: not throttled)"),
                           ("rate_limit_burst", 1, "requests at once on top of the rate")):
        if hasattr(source, key):
            _at_least(f"source.{key}", getattr(source, key), low, what)
    for key in ("connect_timeout_seconds", "read_timeout_seconds", "retry_budget_seconds"):
        if hasattr(source, key) and not getattr(source, key) > 0:
            raise EngineError(f"source.{key}={getattr(source, key)} is not a positive number of seconds",
                              f"set source.{key} to a number of seconds above 0")
    for key, rule, rank in (("", cfg.roll_rule, cfg.rank),
                            ("registry.defaults.", cfg.registry.defaults.roll_rule, cfg.registry.defaults.rank)):
        if rule is not None and rule not in ROLL_RULES:
            raise EngineError(f"{key}roll_rule={rule!r} is not a roll rule",
                              f"use {key}roll_rule=" + " or ".join(f"{k} ({v})" for k, v in ROLL_RULES.items()))
        _at_least(f"{key}rank", rank, 0, "0 is the front month, 1 the next")
    _at_least("roll_days_before_expiry", cfg.roll_days_before_expiry, 0, "0 rolls at expiry")
    _at_least("window.max_chunks", cfg.window.max_chunks, 1, "the longest chunk plan accepted")


def _window(cfg: EngineConfig, now: datetime) -> Window:
    for key in ("start", "end"):
        if getattr(cfg.window, key) is None:
            raise EngineError(f"window.{key} is null: a fixed window is [window.start, window.end)",
                              f"set window.{key}=<ISO-8601 UTC time>, or use window=incremental to bring the "
                              "database up to date")
    for key in ("start", "end", "warmup_start"):
        value = getattr(cfg.window, key)
        if value is None:
            continue
        try:
            instant = parse_utc(value, f"window.{key}")
            instant + timedelta(weeks=520)  # room for warm-up, look-ahead and chunk edges
            instant - timedelta(weeks=520)
        except OverflowError:
            raise EngineError(f"window.{key}={value!r} is outside the dates the engine can compute with",
                              f"set window.{key} to a date within the dataset's history, e.g. 2024-01-02") from None
    window = parse_window(cfg.window)
    _dataset_start(cfg, window.start, "window.start")
    latest = (now + timedelta(minutes=1)).replace(second=0, microsecond=0)
    if window.end > latest:
        raise EngineError(
            f"window.end={window.end:%Y-%m-%dT%H:%M:%SZ} is in the future (the latest possible end now is "
            f"{latest:%Y-%m-%dT%H:%M}Z)",
            f"set window.end to {latest:%Y-%m-%dT%H:%M}Z or earlier; bars exist only for minutes that have begun")
    check_chunk_count(window, cfg.window.max_chunks, cfg.window.chunk)
    return window


def _dataset_start(cfg: EngineConfig, start: datetime | None, key: str) -> None:
    dataset = normalize_symbol(cfg.symbol, cfg.registry.defaults.dataset).partition(":")[0]
    first = DATASET_START.get(dataset)
    if first is not None and start is not None and start < first:
        raise EngineError(f"{key}={start:%Y-%m-%dT%H:%M:%SZ} is before {dataset}'s history, which "
                          f"starts {first:%Y-%m-%d}", f"set {key} to {first:%Y-%m-%d} or later")


def check_chunk_count(window: Window, limit: int, chunk: str | None) -> None:
    count = window.chunk_count()  # counted, never listed: a 1min plan over years has millions
    if count > limit:
        raise EngineError(
            f"window.chunk={chunk} cuts the window into {count:,} chunks, more than window.max_chunks={limit:,}",
            f"use a longer window.chunk (e.g. 1d or 1w), or confirm the plan with window.max_chunks={count}")


def check_events_csv(path: Path, key: str) -> None:
    """A CSV of events: an existing text file whose header names ts and direction."""
    if not path.is_file():
        raise EngineError(f"{key}: no such file {str(path)!r}", f"set {key} to an existing CSV file of events")
    data = path.read_bytes()
    try:
        if b"\x00" in data[:65536]:
            raise UnicodeDecodeError("utf-8", data[:1], 0, 1, "NUL byte")
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise EngineError(f"{key} {str(path)!r} is not a text CSV file (not UTF-8: a binary or spreadsheet file?)",
                          "export the events as CSV (UTF-8) with the columns ts,direction") from None
    header = next(csv.reader(text.splitlines()[:1]), [])
    missing = [c for c in ("ts", "direction") if c not in {name.strip().lower() for name in header}]
    if missing:
        raise EngineError(f"{key} {str(path)!r}: no column {' or '.join(missing)} in the header {header}",
                          "the first line must name the columns, with at least: ts,direction")


def _database(url: str) -> None:
    """A SQLite file must be a SQLite database in a writable place; a server is checked when it is opened."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return  # create_db_engine names the bad URL
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return
    path = Path(parsed.database)
    if path.is_dir():
        raise EngineError(f"db.url names {str(path)!r}, which is a directory",
                          "point db.url at a SQLite file, e.g. db.url=sqlite:///data/market.sqlite")
    if path.exists():
        with open(path, "rb") as handle:
            header = handle.read(16)
        if header and header != SQLITE_HEADER:
            raise EngineError(f"db.url names {str(path)!r}, which is not a SQLite database (its header is not "
                              "'SQLite format 3')", "point db.url at a SQLite database file, or at a new file name")
        if not os.access(path, os.R_OK | os.W_OK):
            raise EngineError(f"the SQLite database {str(path)!r} cannot be written by this user",
                              f"check the file permissions of {path} (or its file system is mounted read-only)")
    directory = next(p for p in [path.parent, *path.parent.parents] if p.exists())
    if not os.access(directory, os.W_OK | os.X_OK):
        raise EngineError(f"the SQLite database's directory {str(directory)!r} is not writable (SQLite writes its "
                          "journal and lock files beside the database)",
                          f"check the permissions of {directory} (or its file system is mounted read-only), or "
                          "point db.url at a writable place")
