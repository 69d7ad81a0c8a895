"""An exclusive lock on a lock file that holds across processes, and across machines sharing the folder (NFS).

It is a POSIX record lock on the whole file (`fcntl.lockf`, i.e. fcntl F_SETLKW), the kind NFS carries to the
server (NFSv4 in the protocol, NFSv3 through the NLM lock manager), so jobs on two nodes landing into one shared
`data_dir` wait for each other. BSD `flock` is not used: Linux sends it to an NFS server only by emulating it as
such a record lock (and not at all with the mount option `local_lock=flock`), and over SMB before Linux 5.5 it
stays on the client.

A record lock belongs to a process, not to an open file: two threads of one process would both get it, and
closing any descriptor of the file would drop it. So a thread lock per path serialises this process's threads
first, and the lock file is opened only here, while that thread lock is held.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path

_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


@contextlib.contextmanager
def exclusive_lock(lock_file: Path) -> Iterator[None]:
    """Hold the exclusive lock on `lock_file` (created if missing) for the block; wait for it if another thread,
    process or machine holds it."""
    with _thread_locks_guard:
        thread_lock = _thread_locks.setdefault(os.path.abspath(lock_file), threading.Lock())
    with thread_lock, open(lock_file, "a") as handle:
        fcntl.lockf(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(handle, fcntl.LOCK_UN)
