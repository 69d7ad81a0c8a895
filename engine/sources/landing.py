"""Landing utilities shared by the sources: digests, atomic writes, sidecars, locks and set-aside files.

A landed file `<name>` may have beside it `<name>.json` (its sidecar), `<name>.part` (a download in progress,
never trusted), `<name>.lock` (serialises concurrent landings) and `<name>.rejected-<n>` (a body that failed
its checks, kept for inspection).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:  # POSIX only; without it concurrent landings of the same file are simply not serialised
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)


def file_digest(path: Path) -> tuple[str, int]:
    """The sha256 (hex) and size in bytes of the file at `path`."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (best effort: not every platform can open a directory)."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; renamed over `path` when the block ends, removed if it raises."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write `payload` as sorted, indented JSON, fsynced, through a rename: readers see old or new, never half."""
    with replacing(path) as tmp, open(tmp, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def part_path(path: Path) -> Path:
    return path.with_name(path.name + ".part")


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def read_sidecar(path: Path) -> dict[str, Any] | None:
    """The sidecar of the landed file `path`, or None when there is none or it is unreadable."""
    try:
        recorded = json.loads(sidecar_path(path).read_text())
    except (OSError, ValueError):
        return None
    return recorded if isinstance(recorded, dict) else None


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Serialise landings of `path` across processes (e.g. parallel multirun jobs) with `<path>.lock`."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    with open(lock_path(path), "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def set_aside(path: Path, final: Path) -> Path:
    """Move `path` (and, when it is the landing, its sidecar) to `<final>.rejected-<n>`; return the new path."""
    n = 1
    while (target := final.with_name(f"{final.name}.rejected-{n}")).exists():
        n += 1
    os.replace(path, target)
    sidecar = sidecar_path(final)
    if path == final and sidecar.exists():
        os.replace(sidecar, sidecar_path(target))
    log.warning("kept the rejected body as %s", target)
    return target


def sync_paths(paths: list[Path], on: Path) -> None:
    """`paths` (files or folders) durable on disk: one syncfs of the file system holding `on`, else an fsync each."""
    if _SYNCFS is not None:
        fd = os.open(on, os.O_RDONLY)
        try:
            if _SYNCFS(fd) != 0:
                code = ctypes.get_errno()
                raise OSError(code, os.strerror(code), str(on))
        finally:
            os.close(fd)
        return
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _load_syncfs():
    """Linux's syncfs(2) from the C library (None elsewhere)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes, function.restype = [ctypes.c_int], ctypes.c_int
    return function


_SYNCFS = _load_syncfs()
