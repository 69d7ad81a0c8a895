"""One rich console for logs, progress bars and summary tables (stderr keeps stdout for --cfg).

While a chunked stage group runs (`chunk_lines_only()`), the console shows one line per chunk (log records
with `extra=CHUNK_LINE`) plus warnings and errors; every other record still goes to engine.log. Progress bars
share one live display (`progress_bars()`), so a stage's bar can sit under the pipeline's chunk bar.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

# Not a terminal (CI, a log file): wide enough that a chunk line fits on one line after rich's time and level.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 180)

CHUNK_LINE = {"chunk_line": True}
_state = {"chunk_lines_only": False, "progress": None, "users": 0}


class RichLogHandler(RichHandler):
    """Log records on the shared console, so they interleave cleanly with progress bars."""

    def __init__(self, **kwargs):
        super().__init__(console=console, show_path=False, **kwargs)

    def emit(self, record: logging.LogRecord) -> None:
        """A traceback goes to engine.log only: the console gets the message and where to find it. Inside
        `chunk_lines_only()`, records below WARNING show only when they are chunk lines."""
        if _state["chunk_lines_only"] and record.levelno < logging.WARNING and not getattr(record, "chunk_line",
                                                                                          False):
            return
        if record.exc_info:
            record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None, "args": None,
                                            "msg": f"{record.getMessage()} (traceback in engine.log)"})
        super().emit(record)


@contextlib.contextmanager
def chunk_lines_only() -> Iterator[None]:
    """Inside: the console shows chunk lines, warnings and errors only (engine.log keeps everything)."""
    before = _state["chunk_lines_only"]
    _state["chunk_lines_only"] = True
    try:
        yield
    finally:
        _state["chunk_lines_only"] = before


def showing_chunk_lines() -> bool:
    """Whether a chunked stage group is running (a stage can then tell per-chunk news from news)."""
    return _state["chunk_lines_only"]


class _Count(ProgressColumn):
    """`1,234 bars`, or `1,234/5,000 bars` when the total is known."""

    def render(self, task: Task) -> Text:
        unit = task.fields.get("unit", "")
        if task.total is None:
            return Text(f"{task.completed:,.0f} {unit}")
        return Text(f"{task.completed:,.0f}/{task.total:,.0f} {unit}")


class _Eta(TimeRemainingColumn):
    """The time left, only where the total is known."""

    def render(self, task: Task) -> Text:
        if task.total is None:
            return Text("")
        return Text.assemble("ETA ", super().render(task))


@contextlib.contextmanager
def progress_bars() -> Iterator[Progress]:
    """The shared live progress display (transient: it leaves nothing behind); nested uses share it."""
    if _state["progress"] is None:
        _state["progress"] = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), _Count(), TimeElapsedColumn(), _Eta(),
            console=console, transient=True)
        _state["progress"].start()
    progress: Progress = _state["progress"]
    _state["users"] += 1
    tasks = set(progress.task_ids)
    try:
        yield progress
    finally:
        for task in set(progress.task_ids) - tasks:  # this user's bars go when it is done
            progress.remove_task(task)
        _state["users"] -= 1
        if not _state["users"]:
            progress.stop()
            _state["progress"] = None
