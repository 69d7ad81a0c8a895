"""It installs like a package: the wheel holds the configs and migrations, and an installed copy runs from an
empty directory (`engine`, `python -m engine`, `engine --help`, `engine-migrate`).

The wheel is built from a clean copy of the source tree and installed into a fresh virtual environment (no
system site-packages, no checkout on the path). Dependencies are pinned to this environment's versions, so pip
takes them from its cache.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from sql_rows import query

from engine.db.connect import head_revision

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "engine"
SKIP = shutil.ignore_patterns(".venv", ".git", "build", "dist", "runs", "data", "outputs", "multirun", "*.egg-info",
                              "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis", "local")

pytestmark = pytest.mark.slow


def run(cmd: list[str], cwd: Path, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    shutil.copytree(REPO, src, ignore=SKIP)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work / "dist"), str(src)], cwd=work)
    [built] = (work / "dist").glob("futures_engine-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> dict:
    """A fresh venv with the wheel installed; returns the environment to run its commands in."""
    work = tmp_path_factory.mktemp("venv")
    venv = work / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=work)
    freeze = run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"], cwd=work).stdout
    pins = work / "constraints.txt"
    pins.write_text("".join(line + "\n" for line in freeze.splitlines()
                            if line and not line.startswith(("-e", "futures-engine", "futures_engine"))))
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-c", str(pins), str(wheel)], cwd=work)
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"}}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", COLUMNS="160")
    return {"env": env, "bin": venv / "bin"}


def test_wheel_holds_every_config_and_migration(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {p.relative_to(REPO).as_posix() for p in (PACKAGE / "conf").rglob("*.yaml")}
    migrations = PACKAGE / "db" / "migrations"
    expected |= {p.relative_to(REPO).as_posix() for p in migrations.rglob("*")
                 if p.is_file() and p.suffix in {".py", ".mako"}}
    assert len(expected) > 25 and {"engine/conf/config.yaml", "engine/conf/job/daily_update.yaml",
                                   "engine/db/migrations/env.py"} <= expected
    assert not expected - names, f"missing from the wheel: {sorted(expected - names)}"
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "engine = engine.__main__:cli" in scripts and "engine-migrate = engine.db.migrate:main" in scripts


def test_installed_copy_is_the_one_imported(installed, tmp_path):
    proc = run([str(installed["bin"] / "python"), "-c", "import engine; print(engine.__file__)"], tmp_path,
               installed["env"])
    assert "site-packages" in proc.stdout and str(REPO) not in proc.stdout


@pytest.mark.parametrize("command", [["engine"], ["python", "-m", "engine"]], ids=["engine", "python -m engine"])
def test_demo_runs_from_an_empty_directory(installed, tmp_path, command):
    proc = run([str(installed["bin"] / command[0]), *command[1:]], tmp_path, installed["env"])
    assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr, proc.stderr
    assert list((tmp_path / "runs").rglob("result.json")), proc.stdout
    database = tmp_path / "data" / "demo.sqlite"
    with sqlite3.connect(database) as conn:
        [(events,)] = conn.execute("SELECT count(*) FROM triangle_events_v1").fetchall()
        [(revision,)] = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    assert events > 0 and revision == head_revision()


def test_installed_engine_on_postgresql(installed, tmp_path, pg_url):
    """The same installed copy against a PostgreSQL scratch database: migrations, then the demo job."""
    migrate = run([str(installed["bin"] / "engine-migrate"), "upgrade", "head", "--url", pg_url], tmp_path,
                  installed["env"])
    assert f"-> {head_revision()} (head)" in migrate.stdout
    proc = run([str(installed["bin"] / "engine"), "db=postgres", f"db.url={pg_url}"], tmp_path, installed["env"])
    assert "Traceback" not in proc.stderr, proc.stderr
    [(events,)] = [tuple(r.values()) for r in query(pg_url, "SELECT count(*) AS n FROM triangle_events_v1")]
    [run_row] = query(pg_url, "SELECT status FROM engine_runs")
    assert events > 0 and run_row["status"] == "success"
    current = run([str(installed["bin"] / "engine-migrate"), "current", "--url", pg_url], tmp_path, installed["env"])
    assert head_revision() in current.stdout


def test_help_of_the_installed_engine(installed, tmp_path):
    proc = run([str(installed["bin"] / "engine"), "--help"], tmp_path, installed["env"])
    assert "job: daily_update, multi_year_backfill, parity_check" in proc.stdout
    assert "_schema" not in proc.stdout and not list(tmp_path.iterdir())


def test_migrations_run_from_the_installed_package(installed, tmp_path):
    database = tmp_path / "fresh.sqlite"
    proc = run([str(installed["bin"] / "engine-migrate"), "upgrade", "head", "--url", f"sqlite:///{database}"],
               tmp_path, installed["env"])
    assert f"-> {head_revision()} (head)" in proc.stdout
    with sqlite3.connect(database) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(head_revision(),)]
    # The module form, backwards: one step down and the database says so.
    run([str(installed["bin"] / "python"), "-m", "engine.db.migrate", "downgrade", "-1", "--url",
         f"sqlite:///{database}"], tmp_path, installed["env"])
    with sqlite3.connect(database) as conn:
        [(revision,)] = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    assert revision != head_revision()


def test_alembic_cli_in_a_checkout(tmp_path):
    """`alembic -x db_url=<url> upgrade head` in a checkout ([tool.alembic] names the packaged scripts)."""
    database = tmp_path / "by_alembic.sqlite"
    run([sys.executable, "-m", "alembic", "-x", f"db_url=sqlite:///{database}", "upgrade", "head"], REPO)
    with sqlite3.connect(database) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(head_revision(),)]
