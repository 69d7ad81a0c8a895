"""Source `databento`: the job's window from Databento's historical API (engine/sources/databento_api.py)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar

from engine.errors import EngineError
from engine.sources import Landing, SourceParams

# Databento API keys: `db-` and letters or digits (32 in the keys Databento issues; looser here).
DATABENTO_KEY = re.compile(r"db-[A-Za-z0-9]{20,40}")


@dataclass(kw_only=True)
class DatabentoSource(SourceParams):
    """Downloads (or reuses) raw DBN from Databento, behind a cost guard and retries. The key is read only from
    the DATABENTO_API_KEY environment variable."""

    max_cost_usd: float = 5.0
    max_retries: int = 5
    backoff_seconds: float = 1.0
    connect_timeout_seconds: float = 10.0
    read_timeout_seconds: float = 60.0
    retry_budget_seconds: float = 600.0
    gateway: str | None = None
    # Databento's published historical rate limits (requests per second, per endpoint class), kept by a token
    # bucket shared by every job of the machine (engine/sources/databento_ratelimit.py); 0 = not throttled.
    timeseries_requests_per_second: float = 100.0
    symbology_requests_per_second: float = 100.0
    metadata_requests_per_second: float = 20.0
    batch_requests_per_second: float = 20.0  # batch.list_jobs, job details, file lists and downloads
    batch_submissions_per_minute: float = 20.0  # batch.submit_job
    rate_limit_burst: int = 1
    rate_limit_dir: str | None = None  # null: <data_dir>/ratelimit
    # Continuous downloads only, each landed once beside the bars and priced by the same cost guard:
    # the window's instrument definitions (without them raw_symbol stays NULL on the clean bars, and the
    # ingest says so), and the outgoing and incoming contracts' bars of each roll session (without them a
    # back-adjusted series cannot adjust Databento's rolls, and the ingest says which).
    definitions: bool = True
    roll_outrights: bool = True
    # Big pulls (engine/sources/databento_batch.py): auto = a batch job when Databento bills more than
    # batch_threshold_bytes for the bars (metadata.get_billable_size, free), else streamed; stream | batch: always.
    mode: str = "auto"
    batch_threshold_bytes: int = 5_000_000_000
    batch_poll_seconds: float = 30.0
    local: ClassVar[bool] = False

    def check(self) -> None:
        """Before the run: a key that is set looks like a Databento key (an unset one fails when it is needed)."""
        from engine.sources.databento_batch import MODES

        if self.mode not in MODES:
            raise EngineError(f"source.mode={self.mode!r} is not one of {', '.join(MODES)}",
                              "set source.mode=auto (batch above source.batch_threshold_bytes), stream or batch")
        if self.batch_poll_seconds <= 0 or self.batch_threshold_bytes < 0:
            raise EngineError(
                f"source.batch_poll_seconds={self.batch_poll_seconds} / source.batch_threshold_bytes="
                f"{self.batch_threshold_bytes} must be positive", "e.g. source.batch_poll_seconds=30")
        key = os.environ.get("DATABENTO_API_KEY", "").strip()
        if key and not DATABENTO_KEY.fullmatch(key):
            shown = f"{len(key)} characters" + ("" if key.startswith("db-") else ", not starting db-")
            raise EngineError(
                f"DATABENTO_API_KEY is not a Databento API key ({shown})",
                "export DATABENTO_API_KEY=db-… exactly as https://databento.com/portal/keys shows it "
                "(no quotes, spaces or line breaks)")

    def acquire(self, ctx, progress) -> Landing:
        from engine.sources.databento_api import acquire

        return acquire(ctx, progress)

    def available_end(self, cfg) -> datetime:
        """The end of the job's dataset and schema as Databento has it (metadata.get_dataset_range, free)."""
        from engine.config import normalize_symbol
        from engine.sources.databento_api import available_end

        dataset = normalize_symbol(cfg.symbol, cfg.registry.defaults.dataset).partition(":")[0]
        return available_end(self, dataset, cfg.registry.defaults.schema)
