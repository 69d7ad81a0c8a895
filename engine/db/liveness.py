"""Run liveness: prove `running` rows dead, mark them `abandoned` with what they had committed, never touch a live run.

engine/app.py makes three calls: ``live = liveness.start(db, **run_fields)`` inserts the run's engine_runs row (with
host, pid and process start) and, on PostgreSQL, holds the run's lock; ``live.reconcile()`` marks the rows of
provably dead runs (one log line); ``live.stop()`` releases the lock.

A run is provably dead when:
* PostgreSQL: its session advisory lock ``(NAMESPACE, run id)`` can be taken. Every live run holds it on a dedicated
  connection (not from the pool) and takes it in the transaction that inserts its row, so no run ever sees another's
  row `running` before its lock is held. The lock dies with the session: kill -9, a lost client, a stopped server.
* SQLite: its row names this host and its pid is gone, a zombie, or another process (another start time, or a boot
  id from before a reboot). Rows of other hosts are never touched.
* Rows written before migration 0009 (no host, no pid, no lock): on SQLite never touched. On PostgreSQL dead only
  when no session of another program is connected to the database: this version names every session
  ``futures-engine``, and an older engine process keeps its pooled session open while it lives (it cannot start a
  new run against a database migrated past its own head), so with no other program connected none of them lives.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, func, select, text, update
from sqlalchemy.pool import NullPool

from engine.db import runs
from engine.db.connect import APPLICATION_NAME
from engine.db.schema import clean_bars, clean_ingest_runs, engine_runs, stage_chunks

log = logging.getLogger("engine")

NAMESPACE = 0x656E6772  # first key of pg_advisory_lock(NAMESPACE, run id); any int4, the same in every process


@dataclass(frozen=True)
class Process:
    host: str
    pid: int
    start: str | None  # "<boot id>:<start time in clock ticks>" (Linux), None where /proc is missing

    @classmethod
    def current(cls) -> Process:
        return cls(socket.gethostname(), os.getpid(), process_start(os.getpid()))


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def process_start(pid: int) -> str | None:
    """'<boot id>:<field 22 of /proc/<pid>/stat>' for a live process; None when it is gone or a zombie."""
    boot = _boot_id()
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    if boot is None or fields[0] == "Z":
        return None
    return f"{boot}:{fields[19]}"


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _why_dead_here(pid: int, start: str | None) -> str | None:
    """Why the process (pid, start) of this host is gone, or None while it lives."""
    boot = _boot_id()
    if boot is None or start is None:  # no start time to compare: alive while the pid exists
        return None if _pid_exists(pid) else "is gone"
    if not start.startswith(f"{boot}:"):
        return "is gone (the host rebooted since)"
    now = process_start(pid)
    if now == start:
        return None
    return "is gone" if now is None else f"is gone (pid {pid} is now another process)"


@dataclass
class Reconciled:
    abandoned: list[str] = field(default_factory=list)  # one short description per run marked abandoned
    left: dict[int, str] = field(default_factory=dict)  # running rows that cannot be proven dead: id -> why

    def line(self) -> str | None:
        parts = []
        if self.abandoned:
            parts.append(f"marked {len(self.abandoned)} dead run(s) abandoned: " + "; ".join(self.abandoned))
        if self.left:
            ids = ", ".join(str(i) for i in self.left)
            parts.append("left running (liveness unknown): " + "; ".join(self.left.values())
                         + f"; if you know their processes are gone: UPDATE engine_runs SET status = 'abandoned' "
                         f"WHERE id IN ({ids})")
        return "reconcile: " + ". ".join(parts) if parts else None


class LiveRun:
    """A started run: its row id, and on PostgreSQL the dedicated connection holding its lock."""

    def __init__(self, engine: Engine, run_id: int, me: Process, lock_conn: Connection | None):
        self.engine, self.id, self.me, self._lock_conn = engine, run_id, me, lock_conn

    def reconcile(self) -> Reconciled:
        """Mark provably dead runs `abandoned` (engine_runs, clean_ingest_runs, stage_chunks); one log line."""
        query = select(engine_runs.c.id, engine_runs.c.host, engine_runs.c.pid, engine_runs.c.process_start,
                       engine_runs.c.started_at).where(engine_runs.c.status == "running", engine_runs.c.id != self.id)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(engine_runs.c.id)).all()
        done = Reconciled()
        old_rows_dead = None
        for row in rows:
            who = f"process {row.pid} on host {row.host}" if row.pid is not None else "a process of an older version"
            if self._lock_conn is not None:
                if row.pid is None:
                    if old_rows_dead is None:
                        old_rows_dead = self._no_other_program()
                    if not old_rows_dead:
                        done.left[row.id] = (f"run {row.id} (no pid: written before migration 0009; other programs "
                                             "are connected to the database)")
                        continue
                if not self._try_lock(row.id):
                    continue  # alive: it holds its lock
                try:
                    self._abandon(row, who, "is gone (holds no run lock)", done)
                finally:
                    self._unlock(row.id)
                continue
            if row.pid is None:
                done.left[row.id] = f"run {row.id} (no pid: written before migration 0009)"
            elif row.host != self.me.host:
                done.left[row.id] = f"run {row.id} of host {row.host}"
            elif (reason := _why_dead_here(row.pid, row.process_start)) is not None:
                self._abandon(row, who, reason, done)
        if (line := done.line()) is not None:
            log.warning("%s", line)
        return done

    def stop(self) -> None:
        """Release the run's lock (close its connection); safe to call twice."""
        if self._lock_conn is not None:
            conn, self._lock_conn = self._lock_conn, None
            engine = conn.engine
            with contextlib.suppress(Exception):  # a server that went away has released the lock already
                conn.close()
            engine.dispose()

    # ------------------------------------------------------------------------------------------------------------

    def _try_lock(self, run_id: int) -> bool:
        with self._lock_conn.begin():
            return bool(self._lock_conn.execute(text("SELECT pg_try_advisory_lock(:ns, :id)"),
                                                {"ns": NAMESPACE, "id": run_id}).scalar())

    def _unlock(self, run_id: int) -> None:
        with self._lock_conn.begin():
            self._lock_conn.execute(text("SELECT pg_advisory_unlock(:ns, :id)"), {"ns": NAMESPACE, "id": run_id})

    def _no_other_program(self) -> bool:
        """No session of this database other than engine sessions of this version (see the module docstring)."""
        with self._lock_conn.begin():
            others = self._lock_conn.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND backend_type = 'client backend' AND pid <> pg_backend_pid() "
                "AND application_name IS DISTINCT FROM :name"), {"name": APPLICATION_NAME}).scalar()
        return others == 0

    def _abandon(self, row, who: str, reason: str, done: Reconciled) -> None:
        now = datetime.now(UTC)
        started = f"{row.started_at:%Y-%m-%d %H:%M:%S} UTC"
        with self.engine.begin() as conn:
            ingests = conn.execute(
                select(clean_ingest_runs).where(clean_ingest_runs.c.engine_run_id == row.id,
                                                clean_ingest_runs.c.status == "running")
                .order_by(clean_ingest_runs.c.id)).mappings().all()
            committed = []
            for ingest in ingests:
                carried = conn.execute(select(func.count()).select_from(clean_bars)
                                       .where(clean_bars.c.ingest_run_id == ingest["id"])).scalar()
                bars = ingest["bars_inserted"] + ingest["bars_updated"] + ingest["bars_unchanged"]
                committed.append(f"ingest {ingest['id']} had committed {bars:,} bars in {ingest['batch_commits']} "
                                 f"batches ({carried:,} clean bars carry its id)")
            chunks_done = conn.execute(select(func.count()).select_from(stage_chunks).where(
                stage_chunks.c.engine_run_id == row.id, stage_chunks.c.status == "success")).scalar()
            what = "; ".join(committed) or "no ingest was running"
            if chunks_done:
                what += f"; {chunks_done} chunk(s) done"
            marked = conn.execute(update(engine_runs).where(engine_runs.c.id == row.id,
                                                            engine_runs.c.status == "running")
                                  .values(status="abandoned", finished_at=now,
                                          error=f"abandoned: {who} (started {started}) {reason}; found by run "
                                                f"{self.id}; {what}")).rowcount
            if not marked:  # it finished (or another run marked it) since we read it: touch nothing
                return
            for ingest, text_ in zip(ingests, committed, strict=True):
                conn.execute(update(clean_ingest_runs).where(clean_ingest_runs.c.id == ingest["id"],
                                                             clean_ingest_runs.c.status == "running")
                             .values(status="abandoned",
                                     error=f"abandoned: run {row.id}, {who} (started {started}) {reason}; "
                                           f"found by run {self.id}; {text_}"))
            conn.execute(update(stage_chunks).where(stage_chunks.c.engine_run_id == row.id,
                                                    stage_chunks.c.status == "running").values(status="abandoned"))
        done.abandoned.append(f"run {row.id}, {who} {reason} ({what})")


def start(engine: Engine, **fields) -> LiveRun:
    """Insert the run's `running` row with its host, pid and process start; on PostgreSQL hold its lock."""
    me = Process.current()
    fields.update(host=me.host, pid=me.pid, process_start=me.start)
    if engine.dialect.name != "postgresql":
        return LiveRun(engine, runs.start_run(engine, **fields), me, None)
    lock_engine = create_engine(engine.url, poolclass=NullPool,
                                connect_args={"options": "-c timezone=UTC", "application_name": APPLICATION_NAME})
    conn = lock_engine.connect()
    try:
        with conn.begin():
            run_id = runs.insert_run(conn, **fields)
            conn.execute(text("SELECT pg_advisory_lock(:ns, :id)"), {"ns": NAMESPACE, "id": run_id})
    except BaseException:
        conn.close()
        lock_engine.dispose()
        raise
    return LiveRun(engine, run_id, me, conn)
