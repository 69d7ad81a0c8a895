"""One rich console for logs, progress bars and summary tables (stderr keeps stdout for --cfg)."""

import sys

from rich.console import Console
from rich.logging import RichHandler

console = Console(stderr=True, width=None if sys.stderr.isatty() else 140)


class RichLogHandler(RichHandler):
    """Log records on the shared console, so they interleave cleanly with progress bars."""

    def __init__(self, **kwargs):
        super().__init__(console=console, show_path=False, **kwargs)
