"""The job's window: UTC instants parsed from the config, and its cut into chunks."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from engine.config import WindowConfig
from engine.errors import EngineError


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime
    warmup_start: datetime | None = None
    chunk: timedelta | None = None

    def chunks(self) -> list[Window]:
        """The window cut at whole multiples of `chunk` since the Unix epoch (so reruns cut alike)."""
        if self.chunk is None:
            return [self]
        step = self.chunk
        epoch = datetime(1970, 1, 1, tzinfo=UTC)
        edge = epoch + ((self.start - epoch) // step + 1) * step
        pieces, lo = [], self.start
        while lo < self.end:
            hi = min(edge, self.end)
            pieces.append(Window(lo, hi, self.warmup_start if lo == self.start else None))
            lo, edge = hi, edge + step
        return pieces


_CHUNK_UNITS = {"m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}


def parse_chunk(text: str | None) -> timedelta | None:
    if text is None:
        return None
    value = str(text).strip().lower()
    number, unit = value[:-1], value[-1:]
    if unit not in _CHUNK_UNITS or not number.isdigit() or int(number) == 0:
        raise EngineError(
            f"window.chunk={text!r} is not a chunk length",
            "write a whole number and a unit m/h/d/w, e.g. window.chunk=1d or window.chunk=1w (null: one chunk)",
        )
    step = int(number) * _CHUNK_UNITS[unit]
    if step % timedelta(minutes=1):
        raise EngineError(f"window.chunk={text!r} is not whole minutes", "use minutes, hours, days or weeks")
    return step


def parse_utc(value: str, key: str) -> datetime:
    """ISO-8601 instant; a bare date means midnight UTC; a naive time is taken as UTC."""
    text = str(value).strip()
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        raise EngineError(
            f"{key}={text!r} is not a date or time",
            f"write it as ISO-8601 in UTC, e.g. {key}=2025-11-30T23:00:00Z or {key}=2025-12-01",
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def parse_window(window: WindowConfig) -> Window:
    start = parse_utc(window.start, "window.start")
    end = parse_utc(window.end, "window.end")
    if end <= start:
        raise EngineError(
            f"window.end ({end:%Y-%m-%dT%H:%M:%SZ}) is not after window.start ({start:%Y-%m-%dT%H:%M:%SZ})",
            "the window is [start, end) in UTC: make window.end later than window.start",
        )
    warmup = None
    if window.warmup_start is not None:
        warmup = parse_utc(window.warmup_start, "window.warmup_start")
        if warmup > start:
            raise EngineError(
                "window.warmup_start is after window.start",
                "set window.warmup_start at or before window.start, or drop it to use the detector's default",
            )
    return Window(start, end, warmup, parse_chunk(window.chunk))
