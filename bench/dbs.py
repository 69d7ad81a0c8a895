"""Scratch databases for the bench: PostgreSQL databases it creates and drops, SQLite files in its run directory."""

from __future__ import annotations

import json
import logging
import os
import uuid
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa

from engine.config import DbConfig, EngineConfig, PolicyConfig, WindowConfig
from engine.context import RunRecord, StageContext
from engine.db import runs
from engine.db.connect import create_db_engine, upgrade
from engine.job_plugins import load_plugins, packaged_node
from engine.provenance import CodeVersion
from engine.windows import Window

DEFAULT_PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
LOGIC_VERSION = "bench"
# Server settings that move the figures; printed with the machine description.
SETTINGS = ("shared_buffers", "synchronous_commit", "autovacuum", "max_wal_size", "checkpoint_timeout")
log = logging.getLogger("bench.engine")


def pg_admin_url() -> str:
    return os.environ.get("ENGINE_BENCH_PG_URL") or DEFAULT_PG_ADMIN_URL


class PgScratch:
    """CREATE DATABASE bench_<random>_<suffix> on demand; drop_all() removes every one of them."""

    def __init__(self, admin_url: str):
        self.admin_url = admin_url
        self.admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        self.tag = uuid.uuid4().hex[:8]
        self.created: list[str] = []
        self.error: str | None = None
        self.version: str | None = None
        self.settings: dict[str, str] = {}
        try:
            with self.admin.connect() as conn:
                self.version = conn.exec_driver_sql("SHOW server_version").scalar_one()
                for name in SETTINGS:
                    self.settings[name] = conn.exec_driver_sql(f"SHOW {name}").scalar_one()
        except sa.exc.OperationalError as exc:
            self.error = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)

    @property
    def available(self) -> bool:
        return self.error is None

    def create(self, suffix: str) -> str:
        name = f"bench_{self.tag}_{suffix}"
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return self.admin.url.set(database=name).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        with self.admin.connect() as conn:
            for name in self.created:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.created.clear()
        self.admin.dispose()


def open_db(url: str) -> sa.Engine:
    """The engine's own connection setup, migrated to head."""
    db = create_db_engine(url)
    upgrade(db)
    return db


def sqlite_url(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        stale.unlink(missing_ok=True)
    return f"sqlite:///{path}"


def autocommit(db: sa.Engine, *statements: str) -> None:
    """TRUNCATE / CHECKPOINT / VACUUM outside a transaction (PostgreSQL)."""
    with db.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)


def make_ctx(db: sa.Engine, run_dir: Path, start: datetime, end: datetime, *, stages: list[str], source: dict
             ) -> StageContext:
    """A stage context as engine/app.py builds it: typed config, a real engine_runs row, the run directory."""
    cfg = EngineConfig(
        db=DbConfig(url=db.url.render_as_string(hide_password=False)),
        source=source,
        window=WindowConfig(start=f"{start:%Y-%m-%dT%H:%M:%SZ}", end=f"{end:%Y-%m-%dT%H:%M:%SZ}"),
        policy=PolicyConfig(name="clean_only", allow_legacy=False),
        detector=packaged_node("detector", "williams_fractals"),
        stages=list(stages),
    )
    plugins = load_plugins(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    run_id = runs.start_run(
        db, symbol=cfg.symbol, stages=json.dumps(list(stages)), run_dir=str(run_dir), git_hash=None, git_dirty=None,
        logic_version=LOGIC_VERSION, config_sha256="0" * 64, overrides="[]",
        data_kind=plugins.source.obj.data_kind.value,
    )
    return StageContext(cfg=cfg, window=Window(start=start, end=end), db=db,
                        run=RunRecord(run_id, run_dir, CodeVersion(None, None, LOGIC_VERSION)), log=log,
                        plugins=plugins)


def finish(ctx: StageContext, status: str = "success") -> None:
    runs.finish_run(ctx.db, ctx.run.id, status)
