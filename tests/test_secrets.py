"""No secret leaves the process: a planted database password and Databento key appear in no byte any command
form writes or prints, nor in the database, while every run really connects with password authentication."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from fake_databento import GET_RANGE
from pg_cluster import pg_cluster  # noqa: F401 - the fixture
from sql_rows import query

from engine.provenance import redact
from engine.secrets import split_password

PASSWORD = "Zq7-planted-PW-4xK"
KEY = "db-PLANTEDSECRETKEY0123456789abc"  # the shape of a real key
DAY = ["window.start=2025-12-09T00:00:00Z", "window.end=2025-12-10T00:00:00Z", "stages=[registry,ingest]"]
LAUNCHERS = {
    "basic": [],
    "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    "submitit_local": ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"],
}


@pytest.fixture
def password_db(pg_cluster, monkeypatch, tmp_path):  # noqa: F811
    """A throwaway server where user `ingest` must give PASSWORD (scram-sha-256); its URL without the password."""
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.delenv("PGPASSFILE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "empty-home"))  # no ~/.pgpass of the machine's
    cluster = pg_cluster()
    (cluster.data / "pg_hba.conf").write_text(
        "local all all trust\n"
        "host all postgres 127.0.0.1/32 trust\n"
        "host all all 127.0.0.1/32 scram-sha-256\n"
    )
    admin = sa.create_engine(cluster.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text("SET password_encryption = 'scram-sha-256'"))
        conn.execute(sa.text(f"CREATE ROLE ingest LOGIN PASSWORD '{PASSWORD}'"))
        conn.execute(sa.text("CREATE DATABASE market OWNER ingest"))
        conn.execute(sa.text("CREATE DATABASE paid OWNER ingest"))  # market data, kept apart from demo data
        conn.execute(sa.text("SELECT pg_reload_conf()"))
    admin.dispose()
    url = f"postgresql+psycopg://ingest@127.0.0.1:{cluster.port}/market"
    with pytest.raises(psycopg.OperationalError, match="password"):  # the server really asks for it
        psycopg.connect(f"host=127.0.0.1 port={cluster.port} dbname=market user=ingest").close()
    return cluster, url


def with_password(url: str) -> str:
    return url.replace("ingest@", f"ingest:{PASSWORD}@")


def dump(cluster, database: str) -> str:
    return cluster._pg("pg_dump", "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres", database).stdout


def assert_nothing_written(tree: Path, cluster, planted: set[Path]) -> None:
    files = [p for p in tree.rglob("*") if p.is_file() and p not in planted]
    assert any(".submitit" in p.parts and p.suffix == ".pkl" for p in files)  # the pickles are among them
    for path in files:
        content = path.read_bytes()
        assert PASSWORD.encode() not in content, path
        assert KEY.encode() not in content, path
    for name in ("market", "paid"):
        database = dump(cluster, name)
        assert PASSWORD not in database and KEY not in database
    assert "engine_runs" in dump(cluster, "market")


@pytest.mark.slow
@pytest.mark.parametrize("where", ["override", "env", "yaml"])
def test_a_planted_password_and_key_leave_no_trace(engine_cli, password_db, fake_databento, tmp_path, where):
    cluster, url = password_db
    env = {"DATABENTO_API_KEY": KEY}
    planted = set()
    args = ["db=postgres"]
    if where == "override":
        args.append(f"db.url={with_password(url)}")
    elif where == "env":
        env["ENGINE_PG_URL"] = with_password(url)
    else:  # the machine-local YAML file of the working directory
        local = tmp_path / "conf" / "local" / "default.yaml"
        local.parent.mkdir(parents=True)
        local.write_text(f"db:\n  url: {with_password(url)}\n")
        planted.add(local)

    def engine(*more: str, command_args: list[str] = args, run_env: dict = env, cwd: Path | None = None):
        run = engine_cli(*command_args, *more, env=run_env, cwd=cwd)
        for secret in (PASSWORD, KEY):
            assert secret not in run.output, run.output
        return run

    single = engine(*DAY)
    assert single.returncode == 0, single.output
    assert single.result["status"] == "success" and single.result["stages"]["ingest"]["bars_inserted"] > 1000
    if where == "override":  # once, a run that sends the key to (a local fake of) Databento's API
        fake = fake_databento(KEY, records=50, stride=29, subprocess=True)
        paid_url = with_password(url.replace("/market", "/paid"))
        paid = engine(*DAY, "source=databento", f"source.gateway={fake.gateway}",
                      command_args=["db=postgres", f"db.url={paid_url}"])
        assert paid.returncode == 0, paid.output
        assert paid.result["stages"]["ingest"]["bars_inserted"] == 50 and fake.seen(GET_RANGE)
    failing = engine(*DAY, "symbol=ZN")
    assert failing.returncode == 2 and "unknown symbol" in failing.output
    dry = engine(*DAY, "dry_run=true")
    assert dry.returncode == 0 and "at head" in dry.output, dry.output

    for shown in (["--cfg", "job"], ["--cfg", "hydra"], ["--cfg", "all"], ["--cfg", "job", "--resolve"],
                  ["--info", "config"]):
        printed = engine(*DAY, *shown)
        assert printed.returncode == 0, printed.output
    resolved = engine(*DAY, "--cfg", "job", "--resolve").stdout
    assert f"ingest:***@127.0.0.1:{cluster.port}" in resolved or f"ingest@127.0.0.1:{cluster.port}" in resolved
    refused = engine(*DAY, "--no-such-flag")
    assert refused.returncode == 2 and "unrecognized arguments" in refused.output

    for launcher, options in LAUNCHERS.items():
        sweep = engine(*DAY, "symbol=ES,NQ", "-m", *options)
        assert sweep.returncode == 0, (launcher, sweep.output)
        jobs = [json.loads((d / "result.json").read_text()) for d in sweep.run_dirs]
        assert sorted(j["status"] for j in jobs) == ["success", "success"], launcher

    # Reruns, from a folder without conf/local/: the saved URL holds no password; it comes from PGPASSWORD, then
    # from ~/.pgpass.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    saved = (single.run_dir / "resolved_config.yaml").read_text()
    assert f"url: {url}\n" in saved
    by_env = engine(f"rerun={single.run_dir}", command_args=[], run_env={"DATABENTO_API_KEY": KEY,
                                                                         "PGPASSWORD": PASSWORD}, cwd=elsewhere)
    assert by_env.returncode == 0, by_env.output
    home = tmp_path / "home"
    home.mkdir()
    pgpass = home / ".pgpass"
    pgpass.write_text(f"127.0.0.1:{cluster.port}:market:ingest:{PASSWORD}\n")
    pgpass.chmod(0o600)
    planted.add(pgpass)
    by_pgpass = engine(f"rerun={single.run_dir}", command_args=[], run_env={"DATABENTO_API_KEY": KEY,
                                                                            "HOME": str(home)}, cwd=elsewhere)
    assert by_pgpass.returncode == 0, by_pgpass.output
    # A run saved by an older version, its password masked as ***
    older = tmp_path / "runs" / "older"
    shutil.copytree(single.run_dir, older)
    (older / "resolved_config.yaml").write_text(saved.replace("ingest@", "ingest:***@"))
    masked = engine(f"rerun={older}", command_args=[], run_env={"DATABENTO_API_KEY": KEY, "PGPASSWORD": PASSWORD},
                    cwd=elsewhere)
    assert masked.returncode == 0, masked.output
    for rerun in (by_env, by_pgpass, masked):
        assert rerun.result["status"] == "success" and rerun.result["rerun_of"] == single.result["run_id"]

    assert_nothing_written(tmp_path, cluster, planted)
    admin_url = f"postgresql+psycopg://postgres@127.0.0.1:{cluster.port}/market"
    statuses = query(admin_url, "SELECT status, count(*) AS n FROM engine_runs GROUP BY status ORDER BY status")
    # single, 3 x 2 sweep jobs, 3 reruns; the unknown symbol
    assert statuses == [{"status": "failed", "n": 1}, {"status": "success", "n": 10}]


def test_passwords_are_split_off_every_url_form():
    assert split_password("db.url=postgresql+psycopg://ingest:p%40ss@h:5432/m") == (
        "db.url=postgresql+psycopg://ingest@h:5432/m", {"p@ss"})
    assert split_password(r"db.url=postgresql\://ingest\:pw1@h/m,postgresql://u@h2/m") == (
        r"db.url=postgresql\://ingest@h/m,postgresql://u@h2/m", {"pw1"})
    assert split_password("hydra.searchpath=[file://conf] window.start=2025-12-09T00:00:00Z") == (
        "hydra.searchpath=[file://conf] window.start=2025-12-09T00:00:00Z", set())


def test_a_common_password_masks_only_itself(monkeypatch):
    monkeypatch.setenv("PGPASSWORD", "postgres")
    assert redact("url: postgresql+psycopg://postgres@h/db pw=postgres") == (
        "url: postgresql+psycopg://postgres@h/db pw=***")


def test_two_different_passwords_on_one_command_line_are_refused(engine_cli, tmp_path):
    run = engine_cli("db.url=postgresql://u:first1@h/a,postgresql://u:second2@h/b", "-m")
    assert run.returncode == 2 and "2 different database passwords" in run.output and "Fix:" in run.output
    assert "first1" not in run.output and "second2" not in run.output
    assert not (tmp_path / "runs").exists()


def test_a_url_without_a_password_is_left_alone():
    text = "db.url=postgresql://127.0.0.1:5432/market?application_name=a@b"
    assert split_password(text) == (text, set())
