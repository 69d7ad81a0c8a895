"""The job's window: UTC instants parsed from the config, and its cut into chunks.

Chunk edges depend only on the chunk length, never on the window, so two runs over overlapping windows
(a rerun, a longer backfill) cut the same chunks where they overlap:

- `<n>min`, `<n>h`, `<n>d`: whole multiples of the length since 1970-01-01 00:00 UTC (`1d` and every `<n>h`
  dividing 24 edge at UTC midnight; `7d` edges on Thursdays, the epoch's weekday: use `1w` for trading weeks);
- `<n>w`: the Globex trading week, Sunday 17:00 America/Chicago (22:00 UTC in summer, 23:00 UTC in winter),
  every n-th such Sunday counted from 1970-01-04;
- `<n>mo`: calendar months, the first of the month 00:00 UTC, every n-th counted from January 1970 (`3mo`:
  quarters, `12mo`: years).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from engine.config import WindowConfig
from engine.errors import EngineError

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
CHICAGO = ZoneInfo("America/Chicago")
WEEK_OPEN = time(17, 0)  # Globex opens the trading week Sunday 17:00 Chicago
FIRST_SUNDAY = date(1970, 1, 4)

_FIXED = {"min": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1)}
_UNITS = "min, h, d, w or mo"
_LONGEST = timedelta(days=100 * 366)  # a chunk longer than a century is a typo, not a plan
_CHUNK = re.compile(r"(\d+)\s*([a-z]+)")


@dataclass(frozen=True)
class ChunkLength:
    """`number` × `unit` (min, h, d, w, mo), with the edges described in the module docstring."""

    number: int
    unit: str

    def __str__(self) -> str:
        return f"{self.number}{self.unit}"

    def edge(self, k: int) -> datetime:
        """The start of chunk `k` (chunk 0 starts at the unit's origin; negative k before it)."""
        if self.unit in _FIXED:
            return EPOCH + k * self.number * _FIXED[self.unit]
        if self.unit == "w":
            sunday = FIRST_SUNDAY + timedelta(weeks=k * self.number)
            return datetime.combine(sunday, WEEK_OPEN, tzinfo=CHICAGO).astimezone(UTC)
        year, month = divmod(k * self.number, 12)
        return datetime(1970 + year, month + 1, 1, tzinfo=UTC)

    def index(self, t: datetime) -> int:
        """The number k of the chunk holding instant `t`: edge(k) <= t < edge(k + 1)."""
        if self.unit in _FIXED:
            return (t - EPOCH) // (self.number * _FIXED[self.unit])
        if self.unit == "mo":
            return ((t.year - 1970) * 12 + t.month - 1) // self.number
        k = (t.astimezone(CHICAGO).date() - FIRST_SUNDAY).days // (7 * self.number)
        while self.edge(k) > t:  # the Sunday before 17:00 still belongs to the week before
            k -= 1
        while self.edge(k + 1) <= t:
            k += 1
        return k


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime
    warmup_start: datetime | None = None
    chunk: ChunkLength | None = None
    # window=incremental: the window continues the stored history, so detection also re-evaluates the pivots among
    # the last look-ahead bars before `start`, whose confirming bars this window brings (engine/stages/detect.py).
    reopen_tail: bool = False

    @property
    def empty(self) -> bool:
        """Nothing to do: an incremental window whose source has nothing after the stored coverage."""
        return self.end <= self.start

    def chunk_count(self) -> int:
        """How many chunks `chunks()` gives, without building them."""
        if self.chunk is None:
            return 1
        return self.chunk.index(self.end - timedelta(microseconds=1)) - self.chunk.index(self.start) + 1

    def chunks(self) -> list[Window]:
        """The window cut at the chunk length's edges; the first piece keeps warmup_start and reopen_tail."""
        if self.chunk is None:
            return [self]
        first = self.chunk.index(self.start)
        pieces = []
        for k in range(first, first + self.chunk_count()):
            lo, hi = max(self.start, self.chunk.edge(k)), min(self.end, self.chunk.edge(k + 1))
            pieces.append(Window(lo, hi, self.warmup_start if k == first else None,
                                 reopen_tail=self.reopen_tail and k == first))
        return pieces

    @property
    def label(self) -> str:
        """`[2024-01-01T00:00Z, 2024-01-04T00:00Z)`: the window in ISO-8601 UTC, end exclusive."""
        return f"[{iso_minute(self.start)}, {iso_minute(self.end)})"


def iso_minute(t: datetime) -> str:
    """ISO-8601 UTC to the minute (to the second or microsecond when the instant has them)."""
    t = t.astimezone(UTC)
    spec = "microseconds" if t.microsecond else "seconds" if t.second else "minutes"
    return t.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


def parse_chunk(text: str | None) -> ChunkLength | None:
    """`window.chunk`: a whole number and a unit min/h/d/w/mo; `m` is refused (minutes or months?)."""
    if text is None:
        return None
    value = str(text).strip().lower()
    match = _CHUNK.fullmatch(value)
    if match and match.group(2) == "m":
        raise EngineError(f"window.chunk={text} is ambiguous (minutes or months)",
                          f"did you mean {match.group(1)}min or {match.group(1)}mo?")
    if not match or match.group(2) not in (*_FIXED, "w", "mo") or int(match.group(1)) == 0:
        raise EngineError(
            f"window.chunk={text!r} is not a chunk length",
            f"write a whole number and a unit {_UNITS}, e.g. window.chunk=1d, 1w or 1mo (null: one chunk)",
        )
    chunk = ChunkLength(int(match.group(1)), match.group(2))
    longest = {"w": timedelta(weeks=1), "mo": timedelta(days=31)}.get(chunk.unit) or _FIXED.get(chunk.unit)
    if chunk.number > _LONGEST // longest:
        raise EngineError(f"window.chunk={text} is longer than a century",
                          "pick a chunk length of at most 100 years, e.g. window.chunk=1w or 1mo")
    return chunk


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
