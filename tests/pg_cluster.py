"""A throwaway PostgreSQL cluster for tests that stop a server: never the shared one.

``initdb`` into a temporary directory, a free port on 127.0.0.1, ``pg_ctl start`` / ``stop -m immediate``
(a crash, as far as clients can tell). As root, the server runs as the ``postgres`` user (PostgreSQL refuses
to run as root), so its directory lives under /tmp where that user can write. Optionally the data directory
sits on a tmpfs of a given size (root only, the WAL beside it), for disk-full tests.

Use the ``pg_cluster`` fixture (a factory: ``pg_cluster(tmpfs_mb=None)`` returns a started `PgCluster`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
import sqlalchemy as sa

PG_BIN = Path(os.environ.get("ENGINE_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
IN_CI = os.environ.get("CI", "").lower() == "true"
RUN_AS = "postgres"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PgCluster:
    def __init__(self, base: Path, tmpfs_mb: int | None = None):
        self.base = base
        self.data = base / "data"
        self.port = _free_port()
        self.log = base / "server.log"
        self.tmpfs = None
        if tmpfs_mb is not None:
            self.data.mkdir()
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={tmpfs_mb}m,mode=0700", "tmpfs", str(self.data)],
                           check=True)
            self.tmpfs = self.data
        self._chown(base)
        # On a tmpfs only the data fills up: the WAL lives beside it, so a full disk is a clean ERROR (53100),
        # not a PANIC of the WAL writer.
        waldir = ["--waldir", str(base / "wal")] if tmpfs_mb is not None else []
        self._pg("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", *waldir)

    def _chown(self, path: Path) -> None:
        if os.geteuid() == 0:
            shutil.chown(path, RUN_AS, RUN_AS)
            for child in path.rglob("*"):
                shutil.chown(child, RUN_AS, RUN_AS)

    def _pg(self, tool: str, *args: str) -> subprocess.CompletedProcess:
        command = [str(PG_BIN / tool), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", RUN_AS, "--", *command]
        proc = subprocess.run(command, capture_output=True, text=True, cwd=self.base)
        if proc.returncode:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{tool} {' '.join(args)} failed: {proc.stdout}{proc.stderr}\n{log[-3000:]}")
        return proc

    def start(self) -> None:
        options = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.base} "
                   "-c fsync=off -c full_page_writes=off -c shared_buffers=16MB -c max_connections=30 "
                   "-c max_wal_size=64MB -c min_wal_size=32MB")
        self._pg("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.log), "-o", options)

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server; ``immediate`` ends every session at once, as a crash would."""
        self._pg("pg_ctl", "stop", "-w", "-t", "60", "-m", mode, "-D", str(self.data))

    @property
    def running(self) -> bool:
        command = [str(PG_BIN / "pg_ctl"), "status", "-D", str(self.data)]
        if os.geteuid() == 0:
            command = ["runuser", "-u", RUN_AS, "--", *command]
        return subprocess.run(command, capture_output=True).returncode == 0

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        admin = sa.create_engine(self.url(), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        return self.url(name)

    def remove(self) -> None:
        if self.running:
            self.stop()
        if self.tmpfs is not None:
            subprocess.run(["umount", str(self.tmpfs)], check=False)
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture
def pg_cluster():
    """Factory: ``pg_cluster(tmpfs_mb=None)`` -> a started throwaway `PgCluster`, removed at teardown."""
    if not (PG_BIN / "initdb").exists():
        message = f"PostgreSQL server binaries not found in {PG_BIN} (set ENGINE_TEST_PG_BIN)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    clusters: list[PgCluster] = []

    def make(tmpfs_mb: int | None = None) -> PgCluster:
        cluster = PgCluster(Path(tempfile.mkdtemp(prefix="engine-pg-")), tmpfs_mb)
        clusters.append(cluster)
        cluster.start()
        return cluster

    yield make
    for cluster in clusters:
        with contextlib.suppress(Exception):
            cluster.remove()
