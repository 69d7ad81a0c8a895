"""Connections for SQLite (embedded default) and PostgreSQL, and the upgrade to migration head."""

from __future__ import annotations

import functools
import logging
import os
import sqlite3
from contextlib import nullcontext
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError

from engine import interrupts
from engine.errors import EngineError, error_chain
from engine.file_lock import exclusive_lock

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Any constant works; it only has to be the same in every engine process.
MIGRATION_LOCK_KEY = 0x656E67696E65
# PostgreSQL application_name of every engine session (engine.db.liveness tells them from other programs' sessions).
APPLICATION_NAME = "futures-engine"


def masked_url(url: str) -> str:
    """The URL as it may appear in logs, files and tables: the password replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable database URL>"


def create_db_engine(url: str, echo: bool = False) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise EngineError(
            f"db.url {masked_url(url)!r} is not a database URL",
            "use a SQLAlchemy URL, e.g. db.url=sqlite:///data/market.sqlite or "
            "db.url=postgresql+psycopg://user@host:5432/dbname",
        ) from None
    if parsed.get_backend_name() == "sqlite":
        return _interruptible(_sqlite_engine(parsed, echo))
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        try:
            return _interruptible(create_engine(
                parsed, echo=echo, pool_pre_ping=True,
                connect_args={"options": "-c timezone=UTC", "application_name": APPLICATION_NAME},
            ))
        except NoSuchModuleError:
            raise EngineError(
                f"db.url driver {parsed.drivername!r} is not installed",
                "use postgresql+psycopg:// (psycopg 3 is installed with the engine)",
            ) from None
    raise EngineError(
        f"db.url backend {parsed.get_backend_name()!r} is not supported",
        "use sqlite:///<file> or postgresql+psycopg://<user>@<host>/<db>",
    )


def _sqlite_engine(url, echo: bool) -> Engine:
    database = url.database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, echo=echo, connect_args={"timeout": 60})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        # Let SQLAlchemy, not the sqlite3 module, decide where transactions begin.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        # Take the write lock up front: parallel jobs queue on busy_timeout instead of deadlocking.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _interruptible(engine: Engine) -> Engine:
    """Let a signal cancel this engine's statements instead of raising inside the driver (engine.interrupts):
    connections the main thread holds are reported, every transaction starts at a safe point, and a statement
    cancelled because of a signal is raised as `Interrupted`."""
    event.listen(engine, "checkout", lambda dbapi_conn, record, _proxy: interrupts.connection_in_use(dbapi_conn,
                                                                                                     record))
    event.listen(engine, "checkin", lambda _dbapi_conn, record: interrupts.connection_released(record))
    event.listen(engine, "begin", lambda _conn: interrupts.check())
    event.listen(engine, "handle_error", lambda ctx: interrupts.as_interrupted(ctx.original_exception))
    return engine


# PostgreSQL SQLSTATEs of a session ended by the server: admin_shutdown (pg_terminate_backend, pg_ctl stop),
# crash_shutdown, cannot_connect_now (starting up / shutting down); class 08 is "connection exception".
_SERVER_GONE = {"57P01", "57P02", "57P03"}
_DISK_FULL = "53100"


def lost_server(exc: BaseException) -> str | None:
    """Why the PostgreSQL server went away, when `exc` (or what it wraps) says it did; else None. The server's
    own word (e.g. "terminating connection due to administrator command") beats the driver's ("the connection
    is lost", raised by the rollback that followed)."""
    import psycopg

    reasons = []
    for err in error_chain(exc):
        if isinstance(err, psycopg.OperationalError):
            state = err.sqlstate
            if state is None or state.startswith("08") or state in _SERVER_GONE:
                reasons.append((state is None, _first_line(err)))
        elif isinstance(err, DBAPIError) and err.connection_invalidated and err.orig is not None:
            reasons.append((True, _first_line(err.orig)))
    return min(reasons)[1] if reasons else None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def storage_full(exc: BaseException, url: str) -> EngineError | None:
    """A user error for a full database (SQLite: its file's file system; PostgreSQL: the server's disk)."""
    for err in error_chain(exc):
        if isinstance(err, sqlite3.OperationalError) and "database or disk is full" in str(err):
            database = make_url(url).database or ""
            return EngineError(f"the SQLite database {database} is full ({err})",
                               f"free space on {mount_point(database)} or point db.url elsewhere")
        if getattr(err, "sqlstate", None) == _DISK_FULL:
            return EngineError(f"the PostgreSQL server at {masked_url(url)} is out of disk space: {_first_line(err)}",
                               "free space on the server's data volume (or ask its administrator), then run "
                               "again: committed batches are kept")
    return None


def mount_point(path: str | os.PathLike) -> str:
    """The mount point of the file system holding `path` (which may not exist yet)."""
    current = Path(os.path.abspath(path))
    while not current.exists():
        current = current.parent
    while not os.path.ismount(current):
        current = current.parent
    return str(current)


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision` under a cross-process lock; a cheap no-op when already there."""
    if revision == "head" and reachable_revision(engine) == head_revision():
        return
    _locked(engine, lambda cfg: command.upgrade(cfg, revision))


def downgrade(engine: Engine, revision: str = "base") -> None:
    _locked(engine, lambda cfg: command.downgrade(cfg, revision))


def _locked(engine: Engine, alembic_command) -> None:
    """Run an Alembic command so that two processes starting at once never migrate twice."""
    cfg = alembic_config()
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            cfg.attributes["connection"] = conn
            alembic_command(cfg)
        return
    database = engine.url.database
    in_file = database and database != ":memory:"
    with exclusive_lock(Path(f"{database}.migrate.lock")) if in_file else nullcontext(), engine.connect() as conn:
        cfg.attributes["connection"] = conn
        alembic_command(cfg)
        conn.commit()


def require_existing(engine: Engine) -> None:
    """For a reader (read_bars, `engine status`, `engine runs`): the database must exist and be at this engine's
    migration head. A read never creates or migrates a database; EngineError naming the fix otherwise."""
    where = masked_url(engine.url.render_as_string(hide_password=False))
    file = engine.url.database if engine.dialect.name == "sqlite" else None
    if file not in (None, "", ":memory:") and not Path(file).is_file():
        beside = sorted(str(p) for p in Path(file).parent.glob("*.sqlite"))
        raise EngineError(
            f"no database at {file} (no SQLite database at that path" +
            (f"; beside it: {', '.join(beside)})" if beside else ")"),
            "run a job first (python -m engine), or point db.url (read_bars: db=) at the file the ingest wrote, e.g. "
            f"db='sqlite:///{beside[0] if beside else 'data/market.sqlite'}'")
    revision = reachable_revision(engine)
    if revision is None:
        raise EngineError(f"db: {where} holds no engine tables",
                          "point db.url at the database the engine ingests into, or run a job first")
    if revision != _cached_head():
        raise EngineError(f"the database at {where} is at migration {revision}, this engine's is {_cached_head()}",
                          f"run `engine-migrate upgrade head --url {where}` (or any job, which migrates first)")


@functools.cache
def _cached_head() -> str:
    """The migration head (Alembic reads every migration script to find it: once per process is enough)."""
    return head_revision()


def reachable_revision(engine: Engine) -> str | None:
    """The schema revision (None: an empty database); EngineError naming the fix when it cannot be opened."""
    try:
        return current_revision(engine)
    except OperationalError as exc:
        reason = str(exc.orig).strip()
        if engine.dialect.name == "sqlite":
            fix = f"check db.url and the file permissions of {engine.url.database} and its directory"
        elif "password" in reason:
            fix = ("give the password in PGPASSWORD or ~/.pgpass (host:port:database:user:password), or type it "
                   "into db.url= (it is moved out of the URL before anything is written)")
        else:
            fix = "check db.url, that the server is running and that the database exists (PostgreSQL: createdb <name>)"
        raise EngineError(f"cannot open the database {masked_url(str(engine.url))}: {reason}", fix) from None
