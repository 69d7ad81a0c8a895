"""Sources land raw DBN files; the ingest stage decodes, validates and writes them the same way.

A source is a plugin (engine/plugins.py): a class plus a YAML in conf/source/ naming it with `_target_`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from engine.config import DataKind

if TYPE_CHECKING:
    from engine.config import EngineConfig
    from engine.context import StageContext


@dataclass
class Landing:
    paths: list[Path]
    retries: int = 0
    rate_limited: int = 0  # of the retries: HTTP 429 answers (rate limit exceeded), each honoured
    raw_files: list[dict] = field(default_factory=list)  # [{path, sha256, reused, ...}] for the run log
    # Beside the bars of `paths`, for continuous downloads: instrument definitions of the window (DBN, schema
    # definition), which name the contract of each instrument id, and the outright bars of the two contracts
    # of each roll session (ohlcv-1m), whose closes back-adjust the roll.
    definitions: list[Path] = field(default_factory=list)
    outrights: list[Path] = field(default_factory=list)
    # True when `paths` may hold bars outside the job's window that are not anomalies (whole landed days serving a
    # part of them): the ingest counts them as outside the window instead of quarantining them.
    trim: bool = False
    # Databento days bought with a data-quality flag (degraded, or not final yet), for the coverage:
    # {UTC day: {"condition", "last_modified_date", "provisional"}} (engine/sources/databento_conditions.py)
    day_conditions: dict = field(default_factory=dict)


@dataclass(kw_only=True)
class SourceParams:
    """Parameters every packaged source has (a user's source may declare the attributes itself)."""

    data_kind: DataKind = DataKind.market
    batch_size: int = 50_000


class Source(Protocol):
    data_kind: DataKind  # demo data never shares a database with market data
    batch_size: int  # bars per commit unit of the ingest
    # True: files that are not a request for exactly this window (a chunk reads its part of a longer file):
    # records outside the window are counted, not quarantined. False: a download for exactly the window, where
    # a record outside it is an anomaly (quarantined as ts_outside_window).
    local: bool

    def acquire(self, ctx: StageContext, progress) -> Landing:
        """Land the raw DBN files for the job's symbol and window; `progress` is a rich Progress."""
        ...

    def available_end(self, cfg: EngineConfig) -> datetime:
        """Where the data this source can deliver for the job's symbol ends (exclusive, UTC): the end of a
        `window=incremental` job (floored to the minute). Optional: a source without it cannot run incremental
        windows."""
        ...
