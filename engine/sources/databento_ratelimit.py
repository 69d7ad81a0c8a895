"""Databento's request rate limits as a budget shared by every job of one machine.

Each endpoint class (timeseries, symbology, metadata: Databento limits them separately) has a token bucket kept in
a small file, `<dir>/<host>/<class>.bucket`, that every process of the host updates under an exclusive `fcntl`
lock. The bucket is stored as its theoretical arrival time (GCRA, the cell-rate form of a token bucket): a request
reserves the next free slot under the lock, releases it and sleeps until its slot, so `rate` requests a second
(after a burst of `burst`) leave the machine whatever number of jobs share it. The clock is CLOCK_MONOTONIC,
which all processes of one host share; the host name in the path keeps machines that share a data_dir (NFS)
each to their own file, since their clocks differ.

A 429 is still possible (other machines or programs behind the same IP or key): the retry policy honours its
Retry-After and counts it here, on the budget of the running job, with every other retry of the job's calls
(pricing and symbology included, which no landing counts).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import EngineError

#: The endpoint classes Databento limits separately, as named by the client's API objects (`batch`: list jobs,
#: job details, file lists and downloads).
CLASSES = ("timeseries", "symbology", "metadata", "batch")
#: batch.submit_job, limited per minute apart from the other batch calls (throttled by databento_client.submit_job).
BATCH_SUBMIT = "batch_submit"
_STATE = struct.Struct("<d")
#: A bucket reserved further ahead than this was written before the host rebooted and is reset.
_STALE_SECONDS = 3600.0


@dataclass(frozen=True)
class Limits:
    """Requests per second (and the burst allowed on top) of each endpoint class; 0 = unlimited."""

    timeseries: float
    symbology: float
    metadata: float
    batch: float = 20.0
    batch_submit: float = 20.0 / 60.0
    burst: int = 1

    def of(self, endpoint_class: str) -> float:
        return getattr(self, endpoint_class)


@dataclass
class HostBudget:
    """The host's buckets under `directory` (one file per endpoint class), and the 429s this process saw."""

    directory: Path
    limits: Limits
    sleep: Callable[[float], object] = time.sleep
    clock: Callable[[], float] = time.monotonic
    retries: int = 0  # retries of every Databento call since this budget was installed
    rate_limited: int = 0  # of them: after an HTTP 429 answer
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def wait(self, endpoint_class: str) -> float:
        """Block until a request of `endpoint_class` may leave the host; the seconds waited."""
        rate = self.limits.of(endpoint_class)
        if rate <= 0:
            return 0.0
        interval = 1.0 / rate
        tolerance = interval * (max(1, self.limits.burst) - 1)
        path = self.directory / f"{endpoint_class}.bucket"
        with self._lock, _locked(_made(path)) as fd:
            now = self.clock()
            stored = os.pread(fd, _STATE.size, 0)
            arrival = max(now, _STATE.unpack(stored)[0] if len(stored) == _STATE.size else now)
            if arrival - now > _STALE_SECONDS:  # written before a reboot (the monotonic clock restarted)
                arrival = now
            slot = max(now, arrival - tolerance)
            os.pwrite(fd, _STATE.pack(arrival + interval), 0)
        delay = slot - now
        if delay > 0:
            self.sleep(delay)
        return max(0.0, delay)

    def count_retry(self, http_status: int | None) -> None:
        with self._lock:
            self.retries += 1
            self.rate_limited += http_status == 429


@contextlib.contextmanager
def _locked(path: Path):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)  # releases the lock


_current: HostBudget | None = None


def install(source, data_dir: Path) -> HostBudget:
    """The host budget of `source`'s limits (source.rate_limit_dir, else data_dir/ratelimit), used by every
    Databento call this process makes from now on; its 429 count starts at 0."""
    global _current
    limits = Limits(source.timeseries_requests_per_second, source.symbology_requests_per_second,
                    source.metadata_requests_per_second, source.batch_requests_per_second,
                    source.batch_submissions_per_minute / 60.0, source.rate_limit_burst)
    base = Path(source.rate_limit_dir) if source.rate_limit_dir else Path(data_dir) / "ratelimit"
    return use(base / socket.gethostname(), limits)


def use(directory: Path, limits: Limits) -> HostBudget:
    """Draw on the buckets under `directory` from now on (also a child process continuing its run's budget)."""
    global _current
    _current = HostBudget(directory, limits)
    return _current


def _made(bucket: Path) -> Path:
    """`bucket`, its folder made on the first call that needs it (a run that calls nothing, e.g. an offline dry
    run, writes nothing)."""
    try:
        bucket.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EngineError(f"cannot create the rate-limit directory {bucket.parent}: {exc.strerror}",
                          "set source.rate_limit_dir to a writable local folder (or fix data_dir)") from None
    return bucket


@contextlib.contextmanager
def installed(source, data_dir: Path):
    """`install` for the calls inside the block (one job's acquisition); the previous budget afterwards."""
    global _current
    previous = _current
    try:
        yield install(source, data_dir)
    finally:
        _current = previous


def current() -> HostBudget | None:
    """The budget installed in this process (None: calls are not throttled, e.g. fetch_raw used on its own)."""
    return _current


def throttle(endpoint_class: str | None) -> None:
    """Wait for the installed budget's slot of `endpoint_class` (None: a class without a bucket, not throttled)."""
    if _current is not None and endpoint_class is not None:
        _current.wait(endpoint_class)


def count_retry(http_status: int | None) -> None:
    """A retry of any Databento call (after `http_status`, None for a transport failure), on the job's budget."""
    if _current is not None:
        _current.count_retry(http_status)
