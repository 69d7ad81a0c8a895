"""One rich console for logs, progress bars and summary tables (stderr keeps stdout for --cfg)."""

import logging
import sys

from rich.console import Console
from rich.logging import RichHandler

console = Console(stderr=True, width=None if sys.stderr.isatty() else 140)


class RichLogHandler(RichHandler):
    """Log records on the shared console, so they interleave cleanly with progress bars."""

    def __init__(self, **kwargs):
        super().__init__(console=console, show_path=False, **kwargs)

    def emit(self, record: logging.LogRecord) -> None:
        """A traceback goes to engine.log only: the console gets the message and where to find it."""
        if record.exc_info:
            record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None, "args": None,
                                            "msg": f"{record.getMessage()} (traceback in engine.log)"})
        super().emit(record)
