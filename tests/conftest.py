"""Shared test fixtures: real DBN files, scratch SQLite and PostgreSQL databases, a fake Databento API,
running the engine."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from fake_databento import FakeDatabento, make_cert

REPO = Path(__file__).resolve().parents[1]
SHARED_DBN = Path(os.environ.get("ENGINE_DBN_FIXTURES", REPO.parent / "shared" / "fixtures" / "dbn"))
PG_ADMIN_URL = os.environ.get("ENGINE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture(scope="session")
def dbn_fixtures() -> Path:
    """The folder of real Databento files (ENGINE_DBN_FIXTURES, default ../shared/fixtures/dbn): skips when it is
    absent, fails with CI=true."""
    if not SHARED_DBN.is_dir():
        message = f"real DBN fixtures not found at {SHARED_DBN} (set ENGINE_DBN_FIXTURES to the folder)"
        if IN_CI:
            pytest.fail(f"{message}; CI=true requires them")
        pytest.skip(message)
    return SHARED_DBN


# --------------------------------------------------------------------------------------------
# Databases: every database test runs on SQLite and on PostgreSQL, each test on its own scratch db


@pytest.fixture(scope="session")
def pg_admin():
    engine = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        engine.dispose()
        if IN_CI:
            pytest.fail(f"PostgreSQL is required in CI (CI=true) but unreachable at {PG_ADMIN_URL}: {exc}")
        pytest.skip(f"PostgreSQL unreachable at {PG_ADMIN_URL}")
    yield engine
    engine.dispose()


def _pg_url(admin_engine, name: str) -> str:
    return admin_engine.url.set(database=name).render_as_string(hide_password=False)


@pytest.fixture
def pg_url(pg_admin):
    name = f"engine_test_{uuid.uuid4().hex[:12]}"
    with pg_admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield _pg_url(pg_admin, name)
    with pg_admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'engine.sqlite'}"


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request) -> str:
    """A fresh, empty database URL: a SQLite file, then a scratch PostgreSQL database."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


def _migrated(url: str):
    from engine.db.connect import create_db_engine, upgrade

    engine = create_db_engine(url)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def db(db_url):
    """A migrated database engine."""
    yield from _migrated(db_url)


@pytest.fixture
def pg_db(pg_url):
    """A migrated scratch PostgreSQL database (for the PostgreSQL-only paths)."""
    yield from _migrated(pg_url)


# --------------------------------------------------------------------------------------------
# A local fake of Databento's historical API serving real DBN bytes (tests/fake_databento.py)


@pytest.fixture(scope="session")
def fake_cert(tmp_path_factory):
    """TLS certificate and key for the fake; None without openssl (the fake then falls back to plain HTTP)."""
    return make_cert(tmp_path_factory.mktemp("fake-databento-tls"))


@pytest.fixture
def fake_databento(fake_cert, monkeypatch):
    """Call as fake_databento(key, records=..., subprocess=...): a running FakeDatabento (stopped at teardown)
    that this process's Databento client talks to, with DATABENTO_API_KEY=key.

    Keyword options go to FakeDatabento. ``subprocess=True``: the engine will run in a child process, which
    reaches the fake only over TLS, so the test is skipped without openssl.
    """
    with contextlib.ExitStack() as servers:

        def start(key: str, *, subprocess: bool = False, **options) -> FakeDatabento:
            if subprocess and fake_cert is None:
                pytest.skip("openssl is needed to serve the fake API over TLS to a subprocess")
            monkeypatch.setenv("DATABENTO_API_KEY", key)
            server = servers.enter_context(FakeDatabento(cert=fake_cert, **options))
            server.install(monkeypatch)
            return server

        yield start


# --------------------------------------------------------------------------------------------
# Running the engine the way a person does: `python -m engine <overrides>` in a working folder


def _result_files(cwd: Path) -> set[Path]:
    return set((cwd / "runs").rglob("result.json"))


class EngineRun:
    def __init__(self, proc: subprocess.CompletedProcess, cwd: Path, new_results: set[Path]):
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.cwd = cwd
        self.run_dirs = sorted(p.parent for p in new_results)

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def run_dir(self) -> Path:
        """The run directory this command wrote (the newest, for a sweep)."""
        assert self.run_dirs, f"no new run directory under {self.cwd / 'runs'}\n{self.output}"
        return max(self.run_dirs, key=lambda p: p.stat().st_mtime)

    @property
    def result(self) -> dict:
        return json.loads((self.run_dir / "result.json").read_text())


@pytest.fixture
def engine_cli(tmp_path):
    """Call as engine_cli("symbol=ES", ...); runs in tmp_path (runs/ and data/ land there)."""

    def run(*overrides: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300):
        workdir = cwd or tmp_path
        full_env = {**os.environ, "COLUMNS": "160", **(env or {})}
        before = _result_files(workdir)
        proc = subprocess.run(
            [sys.executable, "-m", "engine", *overrides],
            cwd=workdir, env=full_env, capture_output=True, text=True, timeout=timeout,
        )
        return EngineRun(proc, workdir, _result_files(workdir) - before)

    return run
