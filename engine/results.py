"""Typed stage results: what a stage did, how the results of a chunked run add up, and how they read.

Every stage returns a `StageResult` (a dataclass). A stage that runs chunk by chunk returns results whose
`merge(later)` combines two chunks' results explicitly, field by field: counters add up, a window spans
both, a setting must agree, a list of files grows. `result.json` stores each as its fields plus its type, so
the sweep summary reads them back as the same typed objects.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Self

from hydra.utils import get_class

_TYPE_KEY = "result_type"


@dataclass
class StageResult:
    """Base of every stage's result. `rows()` are its lines in the closing table."""

    def merge(self, later: Self) -> Self:
        raise TypeError(f"{type(self).__name__} does not run in chunks (it defines no merge)")

    def describe(self) -> str:
        """The result in one line (a chunk's console line; the closing table's row by default)."""
        return ", ".join(f"{f.name} {getattr(self, f.name)}" for f in dataclasses.fields(self))

    def rows(self, stage: str) -> list[tuple[str, str]]:
        return [(stage, self.describe())]

    def brief(self, stage: str) -> str:
        """Its counts in a sweep summary's row ("" for none)."""
        return ""

    def as_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), _TYPE_KEY: f"{type(self).__module__}.{type(self).__qualname__}"}


@dataclass
class ChunkedResult(StageResult):
    """A chunked stage's totals: how its chunks went, and the merge of the results of the chunks it ran."""

    chunks: int
    chunks_done: int = 0
    chunks_skipped: int = 0
    chunks_pending: int = 0
    lookahead_complete: bool = True  # every chunk it ran had its look-ahead (stages with look-ahead only)
    merged: StageResult | None = None
    waits_for_lookahead: bool = False

    def add(self, result: StageResult) -> None:
        self.merged = result if self.merged is None else self.merged.merge(result)

    def counts(self) -> str:
        """`4 done, 2 skipped, 0 pending (of 6)`."""
        text = f"{self.chunks_done:,} done, {self.chunks_skipped:,} skipped"
        if self.waits_for_lookahead:
            text += f", {self.chunks_pending:,} pending"
        return f"{text} (of {self.chunks:,})"

    def rows(self, stage: str) -> list[tuple[str, str]]:
        return [(f"{stage} chunks", self.counts()), *(self.merged.rows(stage) if self.merged else [])]

    def brief(self, stage: str) -> str:
        text = f"{stage} chunks {self.chunks_done:,} done {self.chunks_skipped:,} skipped"
        if self.waits_for_lookahead:
            text += f" {self.chunks_pending:,} pending"
        merged = self.merged.brief(stage) if self.merged is not None else ""
        return f"{text}; {merged}" if merged else text

    def as_json(self) -> dict[str, Any]:
        out = self.merged.as_json() if self.merged is not None else {}
        out.update(chunks=self.chunks, chunks_done=self.chunks_done, chunks_skipped=self.chunks_skipped)
        if self.waits_for_lookahead:
            out.update(chunks_pending=self.chunks_pending, lookahead_complete=self.lookahead_complete)
        return out


def from_json(data: dict[str, Any]) -> StageResult | None:
    """A stage result read back from result.json (None when it names no type: files of older versions)."""
    path = data.get(_TYPE_KEY)
    result = None
    if path:
        cls = get_class(path)
        names = {f.name for f in dataclasses.fields(cls)}
        result = cls(**{key: value for key, value in data.items() if key in names})
    if "chunks" in data:
        chunked = ChunkedResult(chunks=data["chunks"], chunks_done=data.get("chunks_done", 0),
                                chunks_skipped=data.get("chunks_skipped", 0),
                                chunks_pending=data.get("chunks_pending", 0),
                                lookahead_complete=data.get("lookahead_complete", True),
                                waits_for_lookahead="chunks_pending" in data)
        chunked.merged = result
        return chunked
    return result


def total(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    """Counts by key added up (events by direction, bars by reason), in first-seen key order."""
    out = dict(a)
    for key, value in b.items():
        out[key] = out.get(key, 0) + value
    return out


def instant(iso: str) -> datetime:
    """An ISO-8601 time of a result (`2024-01-01T00:00Z`), for ordering windows."""
    return datetime.fromisoformat(iso)


def same(name: str, a: Any, b: Any) -> Any:
    """A setting two chunks of one run must share (symbol, table, logic version)."""
    if a != b:
        raise ValueError(f"cannot merge results with different {name}: {a!r} and {b!r}")
    return a

