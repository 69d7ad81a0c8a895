"""Hive-partitioned Parquet datasets of one symbol's rows (bars, events), rewritten only where their content changed.

Layout: ``<root>/<dataset>/symbol=<symbol>/date=<YYYY-MM-DD>/part-0.parquet``. The symbol is percent-encoded as
pyarrow's hive partitioning writes it (``GLBX.MDP3:NQ`` -> ``symbol=GLBX.MDP3%3ANQ``: no ``:`` in a path, which
Windows and some tools refuse); DuckDB, polars and pyarrow decode it back to ``GLBX.MDP3:NQ``. ``date`` is the UTC
date of ``ts``: a pure function of the stored instant (no calendar, no exchange time zone), the date a user filtering
on UTC ``ts`` expects. A CME session (17:00–16:00 Chicago) therefore spans two dates: its evening hour(s), 22:00 or
23:00–24:00 UTC, lie in the date before its trade date.

* A partition holds every exported row of its date. Writing the rows of [start, end) replaces those of the
  partitions it touches; a partition only partly inside [start, end) keeps its rows outside it.
* Idempotent: each file's key-value metadata holds ``content_sha256``, a digest of its rows (see `content_sha256`,
  independent of the file bytes). A partition whose new rows have the same digest and compression is not touched.
* Atomic: a changed partition is written to ``.part-0.parquet.tmp-<pid>`` in its own directory, made durable and
  renamed over the old file (readers see the old file or the new one, never a part), per batch of COMMIT_BATCH
  partitions (one syncfs each on Linux, else an fsync per file; a worker does it while the next batch is written);
  the renames are made durable at the end.
* A partition of the range left with no rows is removed: the export mirrors the database, and a day whose bars
  were deleted must not stay exported.
* One series per dataset: the files of a symbol directory share the fields named by `series` (the adjustment, the
  detector...): a write whose series differs from the one already there is refused (`SeriesMismatch`), since a
  dataset mixing two would be read as one without a sign.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from engine.errors import NO_SPACE
from engine.sources.landing import sync_paths as _sync  # one syncfs, else an fsync per path

PART = "part-0.parquet"
TEMP_PREFIX = f".{PART}.tmp-"
LOCK_FILE = ".export.lock"
NS_PER_DAY = 86_400 * 1_000_000_000
COMPRESSIONS = ("zstd", "snappy", "gzip", "brotli", "lz4", "none")
_TIMESTAMP = pa.timestamp("ns", tz="UTC")
COMMIT_BATCH = 64  # partitions written to temp files before one sync makes them durable and they are renamed
_DATE_DIR = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")


class SeriesMismatch(Exception):
    """The rows to write belong to another series than the files already in the symbol directory."""

    def __init__(self, path: Path, field: str, stored: str | None, given: str | None):
        self.path, self.field, self.stored, self.given = path, field, stored, given
        super().__init__(f"{path} holds {field}={stored!r}, this export has {field}={given!r}")


class NoSpace(Exception):
    """A partition could not be written for lack of space (the old file, if any, is intact)."""

    def __init__(self, path: Path, reason: str):
        self.path, self.reason = path, reason
        super().__init__(f"cannot write {path}: {reason}")


@dataclass
class PartitionCounts:
    written: int = 0
    unchanged: int = 0
    removed: int = 0
    rows: int = 0  # rows of the ranges written


def symbol_dir_name(symbol: str) -> str:
    """`symbol=GLBX.MDP3%3ANQ`: percent-encoded as pyarrow's hive partitioning does (readers decode it)."""
    return f"symbol={quote(symbol, safe='')}"


def date_of_day(day: int) -> str:
    return datetime.fromtimestamp(day * 86_400, UTC).strftime("%Y-%m-%d")


def content_sha256(rows: np.ndarray) -> str:
    """The digest of a partition's rows: sha256 of the dtype's field names and the packed records (the numpy
    structured array the dataset's rows are, e.g. BAR_READ_DTYPE: ts int64 ns, open..close float64, volume int64,
    little-endian; `PartitionedDataset.rows_of` rebuilds it from a file). It depends on the rows only, not on the
    file's bytes or compression."""
    digest = hashlib.sha256(",".join(rows.dtype.names).encode() + b"\0")
    digest.update(np.ascontiguousarray(rows).tobytes())
    return digest.hexdigest()


@contextlib.contextmanager
def export_lock(root: Path) -> Iterator[None]:
    """One export at a time into `root` (an exclusive flock on root/.export.lock): the next waits."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK_FILE, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


class PartitionedDataset:
    """The partitions of one symbol in one dataset (`<root>/<name>/symbol=…`). Use under `export_lock(root)`.

    Rows are a numpy structured array of `dtype` with an int64 ns ``ts`` field, sorted by ts; `table` turns them into
    a file's Arrow table, `rows_of` a file's table back into rows (for a partition the range covers only in part).
    """

    def __init__(self, root: Path, name: str, symbol: str, dtype: np.dtype, *, compression: str,
                 series: Mapping[str, str | None], provenance: Mapping[str, str | None]):
        self.dir = root / name / symbol_dir_name(symbol)
        self.dtype = dtype
        self.compression = compression
        self.series = {k: _text(v) for k, v in series.items()}
        self.provenance = {**{k: _text(v) for k, v in provenance.items()}, **self.series, "symbol": symbol,
                           "dataset": name, "compression": compression}
        self.counts = PartitionCounts()
        self._dates = self._existing_dates()
        self._touched: set[Path] = set()  # folders whose entries changed since the last sync
        self._staged: list[tuple[Path, Path]] = []  # (temp file, partition) written, not yet renamed
        # A full batch is synced and renamed by a worker while the next one is written (one batch in flight).
        self._committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="export-commit")
        self._in_flight: Future | None = None

    # ---- set-up

    def _existing_dates(self) -> set[int]:
        """The partitions on disk, as days since the epoch."""
        if not self.dir.is_dir():
            return set()
        return {_day_of(m.group(1)) for entry in os.scandir(self.dir) if (m := _DATE_DIR.match(entry.name))}

    def remove_stale_temps(self) -> int:
        """Delete temp files left by an export that was killed (safe under the lock: no other export writes)."""
        removed = 0
        for day in self._dates:
            folder = self._path(day).parent
            for entry in os.scandir(folder):
                if entry.name.startswith(TEMP_PREFIX):
                    os.unlink(entry.path)
                    removed += 1
        return removed

    def check_series(self) -> None:
        """Refuse when the files already here belong to another series (every file is checked on its write, so
        one file speaks for all)."""
        for day in sorted(self._dates):
            path = self._path(day)
            stored = _metadata(path)
            if stored is None:
                continue
            for field, given in self.series.items():
                if stored.get(field) != given:
                    raise SeriesMismatch(self.dir, field, stored.get(field), given)
            return

    # ---- writing

    def write_range(self, rows: np.ndarray, start_ns: int, end_ns: int) -> None:
        """Make the partitions of [start_ns, end_ns) hold `rows` (sorted by ts, all inside the range) there."""
        if end_ns <= start_ns:
            return
        self.counts.rows += len(rows)
        days = (rows["ts"] // NS_PER_DAY) if len(rows) else np.empty(0, np.int64)
        first_day, last_day = start_ns // NS_PER_DAY, (end_ns - 1) // NS_PER_DAY
        with_rows = np.unique(days)
        stored = [day for day in self._dates if first_day <= day <= last_day]
        bounds = np.searchsorted(days, np.arange(first_day, last_day + 2)) if len(rows) else None
        for day in sorted({*with_rows.tolist(), *stored}):
            part = rows[bounds[day - first_day]:bounds[day - first_day + 1]] if bounds is not None else rows[:0]
            whole_day = start_ns <= day * NS_PER_DAY and (day + 1) * NS_PER_DAY <= end_ns
            self._write_day(day, part, None if whole_day else (start_ns, end_ns))

    def _write_day(self, day: int, rows: np.ndarray, keep_outside: tuple[int, int] | None) -> None:
        path = self._path(day)
        exists = day in self._dates
        if keep_outside is not None and exists:
            rows = self._merged(path, rows, *keep_outside)
        digest = content_sha256(rows)
        stored = _metadata(path) if exists else None
        if stored is not None and stored.get("content_sha256") == digest and \
                stored.get("compression") == self.compression:
            self.counts.unchanged += 1
            return
        if not len(rows):
            if exists:
                path.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    path.parent.rmdir()  # only when empty: a file someone else put there stays
                self._dates.discard(day)
                self._touched.add(self.dir)
                self.counts.removed += 1
            return
        meta = {**self.provenance, "date": path.parent.name.removeprefix("date="), "rows": str(len(rows)),
                "content_sha256": digest}
        table = self.table(rows).replace_schema_metadata(meta)
        if not exists:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._touched.add(self.dir)
        self._staged.append((_write_temp(table, path, self.compression), path))
        self._dates.add(day)
        self.counts.written += 1
        if len(self._staged) >= COMMIT_BATCH:
            self._wait_in_flight()
            staged, self._staged = self._staged, []
            self._in_flight = self._committer.submit(_commit, staged, self.dir)

    def _wait_in_flight(self) -> None:
        """The batch in flight committed (what it raised is raised here)."""
        if self._in_flight is not None:
            future, self._in_flight = self._in_flight, None
            self._touched.update(future.result())

    def _merged(self, path: Path, rows: np.ndarray, start_ns: int, end_ns: int) -> np.ndarray:
        """The stored rows of `path` outside [start_ns, end_ns) with `rows` (a partition the range covers in part)."""
        try:
            old = self.rows_of(pq.read_table(path))
        except (OSError, pa.ArrowInvalid):  # damaged: replaced by the range's rows (export the whole date to mend)
            return rows
        kept = old[(old["ts"] < start_ns) | (old["ts"] >= end_ns)]
        merged = np.concatenate([kept, rows.astype(self.dtype, copy=False)])
        keys = [merged["direction"]] if "direction" in self.dtype.names else []  # events: by (ts, direction)
        return merged[np.lexsort([*keys, merged["ts"]])]

    def finish(self) -> None:
        """Every written partition renamed into place, and the folders whose entries changed (renames, date folders
        made or removed) synced, so the export survives a crash."""
        self._wait_in_flight()
        staged, self._staged = self._staged, []
        self._touched.update(_commit(staged, self.dir))
        if self._touched:
            _sync([f for f in (*sorted(self._touched), self.dir.parent) if f.is_dir()], self.dir.parent)
        self._touched.clear()

    def close(self) -> None:
        """Wait for the batch in flight, remove the temp files not renamed (after a failure: their partitions keep
        their old files) and stop the worker."""
        with contextlib.suppress(Exception):
            self._wait_in_flight()
        for temp, _ in self._staged:
            temp.unlink(missing_ok=True)
        self._staged.clear()
        self._committer.shutdown()

    # ---- rows <-> Arrow

    def table(self, rows: np.ndarray) -> pa.Table:
        arrays, names = [], []
        for name in self.dtype.names:
            values = rows[name]
            if name == "confirm_ts" and (values < 0).any():  # -1: no confirmation time
                arrays.append(pa.array(values, _TIMESTAMP, mask=values < 0))
            elif name in ("ts", "confirm_ts"):
                arrays.append(pa.array(values, _TIMESTAMP))  # (mask=None would take a slow path)
            elif values.dtype.kind == "U":
                arrays.append(pa.array(values.tolist(), pa.string()))
            elif values.dtype.kind == "f" and np.isnan(values).any():  # a NULL price in the table: null here too
                arrays.append(pa.array(values, mask=np.isnan(values)))
            else:
                arrays.append(pa.array(values))
            names.append(name)
        return pa.Table.from_arrays(arrays, names=names)

    def rows_of(self, table: pa.Table) -> np.ndarray:
        out = np.empty(table.num_rows, self.dtype)
        for name in self.dtype.names:
            column = table.column(name)
            if pa.types.is_timestamp(column.type):
                column = column.cast(pa.int64()).fill_null(-1)
            out[name] = column.to_numpy(zero_copy_only=False)
        return out

    def _path(self, day: int) -> Path:
        return self.dir / f"date={date_of_day(day)}" / PART


def _text(value) -> str:
    """A metadata value: None as "" (key-value metadata holds strings only)."""
    return "" if value is None else str(value)


def _day_of(date: str) -> int:
    return int(datetime.strptime(date, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()) // 86_400


def _metadata(path: Path) -> dict[str, str] | None:
    """A file's key-value metadata (None when it is missing or unreadable: then it is rewritten)."""
    try:
        raw = pq.read_metadata(path).metadata or {}
    except (OSError, pa.ArrowInvalid):
        return None
    return {k.decode(): v.decode() for k, v in raw.items() if not k.startswith(b"ARROW:")}


def _commit(staged: list[tuple[Path, Path]], on: Path) -> set[Path]:
    """Make the staged temp files durable, then rename each over its partition (readers see the old file or the whole
    new one): one syncfs of the file system holding `on` where Linux has it (not an fsync per file), else an fsync
    per file. Returns the folders whose entries changed: `finish` makes the renames durable (a crash before it may
    undo some; their old files stay)."""
    if not staged:
        return set()
    try:
        _sync([temp for temp, _ in staged], on)
        for temp, path in staged:
            os.replace(temp, path)
    except BaseException as exc:
        for temp, _ in staged:
            temp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and _no_space(exc):
            raise NoSpace(staged[0][1], "no space left on the device (the file system is full)") from exc
        raise
    return {path.parent for _, path in staged}


def _write_temp(table: pa.Table, path: Path, compression: str) -> Path:
    """`table` written to a temp file beside `path` (removed again if the write fails)."""
    temp = path.with_name(f"{TEMP_PREFIX}{os.getpid()}")
    try:
        pq.write_table(table, temp, compression=compression)
    except BaseException as exc:
        temp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and _no_space(exc):
            raise NoSpace(path, "no space left on the device (the file system is full)") from exc
        raise
    return temp


def _no_space(exc: OSError) -> bool:
    """pyarrow reports a full disk as an OSError whose errno may be unset ("[errno 28] No space left ...")."""
    return exc.errno in NO_SPACE or any(f"errno {code}]" in str(exc) for code in NO_SPACE) or \
        "No space left" in str(exc)


