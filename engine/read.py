"""The read API: `read_bars` and `read_events` (``from engine import read_bars, read_events``).

Both read the database a job would use (``db=None``: ``engine.settings.database_url()``: db.url of the working
directory's conf/local/default.yaml, else the default source's SQLite file), or a URL, or a SQLAlchemy Engine; a
database holding demo data is named in a warning. Times are UTC:
``start``/``end`` take an ISO string, a date (midnight UTC), a datetime or pandas Timestamp (naive = UTC) or a
numpy datetime64; ``end`` is exclusive. Every refusal is an EngineError naming the argument and the fix.

* `read_bars` honours the clean-only contract of the detect stage (engine/coverage.py): under
  ``policy="clean_only"`` every open-market minute of [start, end) must lie in the coverage of a successful
  clean ingest (closed market time is no gap), else it refuses and names the missing ranges.
  ``policy="allow_gaps"`` reads the clean table as it is, holes and all; ``policy="allow_legacy"`` reads the
  legacy table (which has no coverage). The bars come from engine/db/bars_read.py (no Python object per bar) and
  go through engine/adjust.py for ``adjust="difference"|"ratio"``.
* `read_events` returns the rows of triangle_events_v1 (all logic versions and detectors unless told: a logic
  version is the git hash of the code that detected them, so "the current one" would hide every event stored
  before the last commit; the ``logic_version`` and ``detector`` columns tell them apart).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta

import numpy as np
import sqlalchemy as sa

from engine.config import Adjustment, SymbolDefaults, normalize_symbol
from engine.db.bars_read import BAR_READ_DTYPE
from engine.db.schema import CLEAN_BARS, LEGACY_BARS
from engine.db.types import ns_to_datetime
from engine.errors import EngineError
from engine.windows import iso_minute, parse_utc

__all__ = ["BARS_NUMPY_DTYPE", "EVENTS_NUMPY_DTYPE", "OUTPUTS", "POLICIES", "read_bars", "read_events"]

OUTPUTS = ("pandas", "polars", "pyarrow", "numpy")
# policy -> (bars table read, whether clean coverage is required)
POLICIES = {"clean_only": (CLEAN_BARS, True), "allow_gaps": (CLEAN_BARS, False), "allow_legacy": (LEGACY_BARS, False)}
PRICE_COLUMNS = ("open", "high", "low", "close", "volume")
# as_="numpy": BAR_READ_DTYPE with ts as datetime64[ns] (UTC: numpy has no time zones), the same bytes.
BARS_NUMPY_DTYPE = np.dtype([("ts", "M8[ns]"), *((name, BAR_READ_DTYPE[name]) for name in PRICE_COLUMNS)])
# as_="numpy" for events: NaT for a missing confirm_ts, NaN for a missing price, -1 for a missing run_id or n.
EVENTS_NUMPY_DTYPE = np.dtype([("ts", "M8[ns]"), ("direction", "U4"), ("price", "f8"), ("confirm_ts", "M8[ns]"),
                               ("detector", "O"), ("detector_params", "O"), ("logic_version", "O"),
                               ("adjustment", "O"), ("source_table", "O"), ("run_id", "i8"), ("n", "i8")])
_MAX_LISTED = 10


def read_bars(symbol: str, start, end, *, db=None, adjust: str = "none", policy: str = "clean_only",
              as_: str = "pandas"):
    """The 1-minute bars of `symbol` (``NQ`` or ``GLBX.MDP3:NQ``) with start <= ts < end, in time order.

    Columns open, high, low, close (float) and volume (int): ``pandas`` a DataFrame on a UTC DatetimeIndex named
    ts; ``polars`` a DataFrame and ``pyarrow`` a Table with ts (ns, UTC) as the first column; ``numpy`` a
    structured array of BARS_NUMPY_DTYPE (ts datetime64[ns] in UTC). Which contract a bar of a continuous series
    came from is not a column: the rolls are in contract_rolls (engine.db.rolls.rolls_of).
    ``adjust``: none | difference | ratio (engine/adjust.py); a roll that cannot be adjusted keeps its raw jump
    and is named in a warning. ``policy``: clean_only | allow_gaps | allow_legacy (see the module).
    """
    kind = _output(as_)
    how = _adjustment(adjust, "adjust")
    if policy not in POLICIES:
        raise EngineError(f"policy={policy!r} is not a read policy",
                          "use policy='clean_only' (the default), 'allow_gaps' or 'allow_legacy'")
    table, clean_only = POLICIES[policy]
    stored = _symbol(symbol)
    lo, hi = _range(start, end)
    from engine.adjust import read_adjusted, roll_note, why_unadjusted
    from engine.coverage import uncovered_ranges

    with _database(db) as engine:
        if clean_only:
            _require_coverage(uncovered_ranges(engine, stored, lo, hi), stored, lo, hi)
        view = read_adjusted(engine, table, stored, lo, hi, how)
    if view.unadjusted_rolls:
        notes = "; ".join(f"{roll_note(r)}: {why_unadjusted(r, how)}" for r in view.unadjusted_rolls)
        warnings.warn(f"read_bars {stored} adjust={how.value}: {len(view.unadjusted_rolls)} roll(s) could not be "
                      f"adjusted, their raw jump stays in the series ({notes})", stacklevel=2)
    bars = view.bars.view(BARS_NUMPY_DTYPE)
    if kind == "numpy":
        return bars
    if kind == "pandas":
        import pandas as pd

        index = pd.DatetimeIndex(bars["ts"], name="ts").tz_localize(UTC)
        frame = pd.DataFrame({name: bars[name] for name in PRICE_COLUMNS}, index=index)
        frame.attrs.update(symbol=stored, adjustment=how.value, anchor=view.anchor, source_table=table)
        return frame
    import pyarrow as pa

    arrow = pa.table({"ts": pa.array(view.bars["ts"], pa.timestamp("ns", tz="UTC")),
                      **{name: bars[name] for name in PRICE_COLUMNS}})
    return arrow if kind == "pyarrow" else _polars(arrow)


def read_events(symbol: str, start, end, *, detector: str | None = None, logic_version: str | None = None,
                db=None, adjust: str | None = "none", policy: str = "clean_only", as_: str = "pandas"):
    """The triangle_events_v1 rows of `symbol` with start <= ts < end, ordered by ts and direction.

    Columns ts, direction (BULL | BEAR), price, confirm_ts (the bar that confirmed the pivot; missing for events
    stored without one), detector, detector_params (JSON), logic_version, adjustment, source_table, run_id, n.
    Filters: ``detector`` (e.g. williams_fractals) and ``logic_version`` (None: all), ``adjust`` (the series the
    events were detected on; None: all), ``policy``: clean_only (events detected on the clean table) or
    allow_legacy (also those detected on the legacy table). ``pandas``/``polars``/``pyarrow``: a table with
    ts and confirm_ts as UTC times (ns); ``numpy``: a structured array of EVENTS_NUMPY_DTYPE.
    No coverage check: an event stored is an event detected on covered bars (detect enforces it); a range never
    detected simply holds no rows.
    """
    kind = _output(as_)
    adjustment = None if adjust is None else _adjustment(adjust, "adjust").value
    tables = {"clean_only": (CLEAN_BARS,), "allow_legacy": (CLEAN_BARS, LEGACY_BARS)}.get(policy)
    if tables is None:
        raise EngineError(f"policy={policy!r} is not an events policy",
                          "use policy='clean_only' (events detected on the clean table, the default) or "
                          "'allow_legacy' (also those detected on the legacy table)")
    stored = _symbol(symbol)
    lo, hi = _range(start, end)
    from engine.db.events import STORED_EVENT_COLUMNS, stored_events

    with _database(db) as engine:
        rows = stored_events(engine, stored, lo, hi, source_tables=tables, detector=detector,
                             logic_version=logic_version, adjustment=adjustment)
        if not rows:
            _require_known(engine, stored, detector=detector, logic_version=logic_version)
    columns = dict(zip(STORED_EVENT_COLUMNS, zip(*rows, strict=True), strict=True)) if rows else {
        name: () for name in STORED_EVENT_COLUMNS}
    if kind == "numpy":
        out = np.empty(len(rows), EVENTS_NUMPY_DTYPE)
        for name, values in columns.items():
            if name in ("ts", "confirm_ts"):
                out[name] = np.array([np.iinfo(np.int64).min if v is None else v for v in values], np.int64)
            elif name in ("run_id", "n"):
                out[name] = [-1 if v is None else v for v in values]
            elif name == "price":
                out[name] = [np.nan if v is None else v for v in values]
            else:
                out[name] = values
        return out
    import pyarrow as pa

    types = {"ts": pa.timestamp("ns", tz="UTC"), "confirm_ts": pa.timestamp("ns", tz="UTC"), "price": pa.float64(),
             "run_id": pa.int64(), "n": pa.int64()}
    arrow = pa.table({name: pa.array(list(values), types.get(name, pa.string())) for name, values in columns.items()})
    if kind == "pyarrow":
        return arrow
    if kind == "polars":
        return _polars(arrow)
    import pandas as pd

    return arrow.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)


# ---------------------------------------------------------------------------------------------
# Arguments


def _output(as_: str) -> str:
    if as_ not in OUTPUTS:
        raise EngineError(f"as_={as_!r} is not an output kind", f"use as_= one of {', '.join(map(repr, OUTPUTS))}")
    return as_


def _adjustment(value, key: str) -> Adjustment:
    try:
        return Adjustment(value)
    except ValueError:
        raise EngineError(f"{key}={value!r} is not an adjustment",
                          f"use {key}= one of {', '.join(repr(a.value) for a in Adjustment)}") from None


def _symbol(symbol) -> str:
    if not isinstance(symbol, str):
        raise EngineError(f"symbol={symbol!r} is not a symbol", "pass a root such as 'NQ' or 'GLBX.MDP3:NQ'")
    # Dataset names are upper-case too (normalize_symbol keeps a dataset as written).
    return normalize_symbol(symbol.upper(), SymbolDefaults().dataset)


def _range(start, end) -> tuple[datetime, datetime]:
    lo, hi = _instant(start, "start"), _instant(end, "end")
    if hi <= lo:
        raise EngineError(f"end={iso_minute(hi)} is not after start={iso_minute(lo)} (end is exclusive)",
                          "pass an end later than start, e.g. start='2024-01-02', end='2024-01-03' for one day")
    return lo, hi


def _instant(value, key: str) -> datetime:
    """A UTC datetime from a str, date, datetime, pandas Timestamp or numpy datetime64 (naive = UTC)."""
    if isinstance(value, str):
        return parse_utc(value, key)
    if isinstance(value, np.datetime64):
        if np.isnat(value):
            raise EngineError(f"{key}=NaT is not a time", f"pass {key} as a date or time, e.g. '2024-01-02'")
        return ns_to_datetime(int(value.astype("M8[ns]").astype(np.int64)), ceil=True)
    if isinstance(value, datetime):
        if value != value:  # pandas NaT
            raise EngineError(f"{key}=NaT is not a time", f"pass {key} as a date or time, e.g. '2024-01-02'")
        t = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        instant = datetime(t.year, t.month, t.day, t.hour, t.minute, t.second, t.microsecond, tzinfo=UTC)
        # A pandas Timestamp's nanoseconds: bars lie on whole seconds, so rounding up keeps [start, end) exact.
        return instant + timedelta(microseconds=1) if getattr(value, "nanosecond", 0) else instant
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    raise EngineError(f"{key}={value!r} is not a date or time",
                      f"pass {key} as an ISO string ('2024-01-02T14:30Z'), a date, a datetime or a pandas Timestamp")


def _require_coverage(gaps, symbol: str, start: datetime, end: datetime) -> None:
    if not gaps:
        return
    listed = ", ".join(f"{iso_minute(a)} → {iso_minute(b)}" for a, b in gaps[:_MAX_LISTED])
    if len(gaps) > _MAX_LISTED:
        listed += f", … and {len(gaps) - _MAX_LISTED} more"
    root = symbol.partition(":")[2]
    raise EngineError(
        f"read_bars {symbol} [{iso_minute(start)}, {iso_minute(end)}): open-market time that no successful clean "
        f"ingest covers (policy='clean_only'). Uncovered: {listed}",
        f"ingest it (python -m engine stages=[registry,ingest] symbol={root} window.start={iso_minute(gaps[0][0])} "
        f"window.end={iso_minute(gaps[-1][1])}), or pass policy='allow_gaps' to read the clean bars there are "
        "(holes included), or policy='allow_legacy' for the legacy table (not recommended)")


def _require_known(engine: sa.Engine, symbol: str, **filters: str | None) -> None:
    """An empty read filtered by a detector or logic version that none of the symbol's events has is a typo, not
    "no events": refuse it, naming the stored ones."""
    from engine.db.events import stored_event_values

    for key, value in filters.items():
        if value is None:
            continue
        known = stored_event_values(engine, symbol, key)
        if value not in known:
            raise EngineError(f"{key}={value!r}: no event of {symbol} has it",
                              f"use one of {', '.join(map(repr, known))}, or {key}=None for all" if known else
                              f"detect first (stages=[detect]); {symbol} has no events at all")


# ---------------------------------------------------------------------------------------------
# The database


@contextmanager
def _database(db) -> Iterator[sa.Engine]:
    """The engine to read: `db` itself, or one made for a URL (config's when None) and disposed afterwards. The
    schema must be the engine's (at migration head): a read never migrates."""
    from engine.db.connect import create_db_engine, masked_url, require_existing
    from engine.db.ingest_runs import recorded_data_kind

    if isinstance(db, sa.Engine):
        engine, owned = db, False
    elif db is None or isinstance(db, str):
        if db is None:
            from engine.settings import database_url

            db = database_url()
        engine, owned = create_db_engine(db), True
    else:
        raise EngineError(f"db={db!r} is not a database",
                          "pass db=None (the engine's configured database), a URL such as "
                          "'sqlite:///data/market.sqlite', or a SQLAlchemy Engine")
    try:
        require_existing(engine)
        if recorded_data_kind(engine) == "demo":
            where = masked_url(engine.url.render_as_string(hide_password=False))
            warnings.warn(f"{where} holds demo data (synthetic bars of source=synthetic), not market data",
                          stacklevel=4)
        yield engine
    finally:
        if owned:
            engine.dispose()


def _polars(arrow):
    try:
        import polars as pl
    except ImportError:
        raise EngineError("as_='polars' needs polars, which is not installed",
                          "pip install 'futures-engine[polars]' (or polars), or use as_='pyarrow'") from None
    return pl.from_arrow(arrow)
