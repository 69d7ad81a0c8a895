"""One Databento time-series request and the path its data lands at."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from engine.errors import EngineError

_SAFE_PATH_CHARS = re.compile(r"[^A-Za-z0-9._+\-=^]")


@dataclass(frozen=True)
class RawRequest:
    """One Databento time-series request: `symbol` in `dataset`/`schema` over [start, end) UTC."""

    dataset: str  # "GLBX.MDP3"
    symbol: str  # continuous symbol, e.g. "NQ.v.0"; several joined by commas ("42005804,42140878")
    schema: str  # "ohlcv-1m" (or "definition")
    stype_in: str  # "continuous" (or "instrument_id", "raw_symbol")
    start: datetime  # tz-aware UTC, inclusive
    end: datetime  # tz-aware UTC, exclusive

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            value = getattr(self, name)
            if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
                raise EngineError(
                    f"Databento request {name}={value!r} is not a timezone-aware datetime",
                    "give window times with a timezone, e.g. 2025-11-30T23:00:00Z",
                )
            object.__setattr__(self, name, value.astimezone(UTC))
        if self.end <= self.start:
            raise EngineError(
                f"Databento request window is empty: end {self.end.isoformat()} is not after "
                f"start {self.start.isoformat()}",
                "make the window end later than its start",
            )
        for name in ("dataset", "symbol", "schema", "stype_in"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise EngineError(f"Databento request {name}={value!r} is empty", f"set a {name}")

    def landing_path(self, data_dir: Path) -> Path:
        """data_dir/raw/GLBX.MDP3/ohlcv-1m/NQ.v.0/20251130T230000Z_20251202T050000Z.dbn.zst"""
        name = f"{_stamp(self.start)}_{_stamp(self.end)}.dbn.zst"
        return Path(data_dir) / "raw" / _safe(self.dataset) / _safe(self.schema) / _safe(self.symbol) / name

    def as_dict(self) -> dict[str, str]:
        return {
            "dataset": self.dataset,
            "symbol": self.symbol,
            "schema": self.schema,
            "stype_in": self.stype_in,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
        }

    def client_params(self) -> dict:
        """The request as keyword arguments of the Databento client's metadata.get_cost / timeseries.get_range."""
        return {
            "dataset": self.dataset,
            "symbols": self.symbols,
            "schema": self.schema,
            "stype_in": self.stype_in,
            "start": self.start,
            "end": self.end,
        }

    @property
    def symbols(self) -> list[str]:
        return [part.strip() for part in self.symbol.split(",")]

    def describe(self) -> str:
        return (
            f"{self.dataset} {self.symbol} ({self.stype_in}) {self.schema} "
            f"[{self.start.isoformat()}, {self.end.isoformat()})"
        )


def _stamp(ts: datetime) -> str:
    return ts.strftime("%Y%m%dT%H%M%S.%fZ" if ts.microsecond else "%Y%m%dT%H%M%SZ")


def _safe(part: str) -> str:
    cleaned = _SAFE_PATH_CHARS.sub("_", part.strip())
    return "_" + cleaned if cleaned in {".", ".."} else cleaned
