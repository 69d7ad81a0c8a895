"""Progress of a download: the size of the growing file and how long it has not grown, from a thread."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

log = logging.getLogger(__name__)

#: How often the size of the growing file is reported to `on_bytes`.
PROGRESS_INTERVAL_SECONDS = 0.2
#: A download that has not grown for this long is shown as stalled.
STALL_REPORT_SECONDS = 1.0

T = TypeVar("T")


def notify(callback: Callable[[T], object] | None, value: T) -> None:
    """Tell a progress callback (`on_bytes`, `on_status`); a progress bar must never break a download."""
    if callback is None:
        return
    try:
        callback(value)
    except Exception:  # noqa: BLE001
        log.debug("progress callback failed", exc_info=True)


class ProgressPoller:
    """Reports the size of the file the client is writing, and how long it has not grown, from a thread."""

    def __init__(
        self,
        path: Path,
        on_bytes: Callable[[int], None] | None,
        on_stall: Callable[[float], None] | None = None,
        interval: float = PROGRESS_INTERVAL_SECONDS,
    ) -> None:
        self._path = path
        self._on_bytes = on_bytes
        self._on_stall = on_stall
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last = -1
        self._since = time.monotonic()
        self._shown = 0

    def __enter__(self) -> ProgressPoller:
        if self._on_bytes is not None or self._on_stall is not None:
            self._poll()
            self._thread = threading.Thread(target=self._run, name="databento-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._poll()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._poll()

    def _poll(self) -> None:
        try:
            size = self._path.stat().st_size
        except OSError:
            size = 0
        now = time.monotonic()
        if size != self._last:
            self._last, self._since = size, now
            notify(self._on_bytes, size)
            if self._shown and self._on_stall is not None:
                self._shown = 0
                self._on_stall(0.0)
            return
        stalled = int(now - self._since)
        if self._on_stall is not None and stalled >= STALL_REPORT_SECONDS and stalled != self._shown:
            self._shown = stalled
            self._on_stall(float(stalled))
