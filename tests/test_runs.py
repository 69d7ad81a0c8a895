"""Every job leaves a complete, linked record: run directory, provenance, run row; and no secrets anywhere."""

import hashlib
import json
import os
import socket
import subprocess
from pathlib import Path

import sqlalchemy as sa
from omegaconf import OmegaConf
from sql_rows import table_rows
from sqlalchemy.engine import make_url

from engine.provenance import REPO_ROOT, code_version, redact

PLANTED_KEY = "db-PLANTEDKEY0123456789abcdef"
PLANTED_PASSWORD = "Planted-Pw-9876"


def test_a_run_leaves_config_provenance_and_a_linked_row(engine_cli, db_url):
    run = engine_cli(f"db.url={db_url}", "symbol=ES", "stages=[registry]")
    assert run.returncode == 0, run.output
    run_dir = run.run_dir
    for name in (".hydra/config.yaml", ".hydra/overrides.yaml", "resolved_config.yaml", "provenance.json",
                 "result.json", "engine.log"):
        assert (run_dir / name).is_file(), name
    resolved_text = (run_dir / "resolved_config.yaml").read_text()
    assert "${" not in resolved_text
    assert OmegaConf.create(resolved_text).symbol == "ES"

    prov = json.loads((run_dir / "provenance.json").read_text())
    expected = code_version()
    assert prov["git_hash"] == expected.git_hash and prov["git_dirty"] == expected.git_dirty
    assert prov["logic_version"] == expected.logic_version
    assert prov["config_sha256"] == hashlib.sha256(resolved_text.encode()).hexdigest()
    assert prov["overrides"] == [f"db.url={db_url}", "symbol=ES", "stages=[registry]"]
    assert {"hydra-core", "databento", "sqlalchemy", "alembic"} <= set(prov["packages"])

    [row] = engine_run_rows(db_url)
    assert row["id"] == prov["run_id"] == run.result["run_id"]
    assert row["status"] == "success" and row["finished_at"] is not None
    assert row["run_dir"] == str(run_dir.resolve())
    assert row["config_sha256"] == prov["config_sha256"]
    assert json.loads(row["stages"]) == ["registry"] and row["symbol"] == "ES"
    assert json.loads(row["overrides"]) == prov["overrides"]
    assert row["logic_version"] == expected.logic_version
    # who ran it, for liveness (engine.db.liveness): this host, the engine's pid, its boot id and start time
    assert row["host"] == socket.gethostname() and row["pid"] != os.getpid()
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert row["process_start"].startswith(f"{boot_id}:") and row["process_start"].split(":")[1].isdigit()


def test_git_hash_is_the_short_head_and_dirty_flag_is_reported():
    head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    version = code_version()
    assert version.git_hash == head
    assert version.logic_version in (head, f"{head}-dirty")
    assert version.logic_version.endswith("-dirty") == version.git_dirty


def test_logic_version_falls_back_to_the_environment(monkeypatch):
    monkeypatch.setenv("GIT_DIR", "/nonexistent")
    monkeypatch.setenv("LOGIC_VERSION", "v2025.12-hotfix")
    version = code_version()
    assert version.git_hash is None and version.logic_version == "v2025.12-hotfix"


def test_a_failed_run_is_recorded_with_its_error_and_exits_non_zero(engine_cli, db_url):
    run = engine_cli(f"db.url={db_url}", "symbol=ZN")
    assert run.returncode == 2
    assert "unknown symbol 'GLBX.MDP3:ZN'" in run.output
    [row] = engine_run_rows(db_url)
    assert row["status"] == "failed" and "unknown symbol" in row["error"]
    assert run.result["status"] == "failed" and run.result["run_id"] == row["id"]


def test_secrets_appear_in_no_file_log_or_table(engine_cli, pg_url, tmp_path):
    url_with_password = make_url(pg_url).set(password=PLANTED_PASSWORD).render_as_string(hide_password=False)
    env = {"DATABENTO_API_KEY": PLANTED_KEY}
    ok = engine_cli("db=postgres", f"db.url={url_with_password}", env=env)
    assert ok.returncode == 0, ok.output
    failed = engine_cli(f"db.url={url_with_password}", "symbol=ZN", env=env)
    assert failed.returncode == 2
    sweep = engine_cli(f"db.url={url_with_password}", "symbol=ES,NQ", "-m", env=env)
    assert sweep.returncode == 0, sweep.output

    for run in (ok, failed, sweep):
        assert PLANTED_PASSWORD not in run.output and PLANTED_KEY not in run.output
    files = [p for p in (tmp_path / "runs").rglob("*") if p.is_file()]
    assert len(files) > 10
    for path in files:
        content = path.read_bytes()
        assert PLANTED_PASSWORD.encode() not in content, path
        assert PLANTED_KEY.encode() not in content, path
    assert f"- db.url={pg_url}\n" in (ok.run_dir / ".hydra" / "overrides.yaml").read_text()  # taken out, not masked

    engine = sa.create_engine(pg_url)
    with engine.connect() as conn:
        tables = sa.inspect(conn).get_table_names()
        assert "engine_runs" in tables
        for table in tables:
            for row in conn.execute(sa.text(f'SELECT * FROM "{table}"')):
                text = " ".join(str(v) for v in row)
                assert PLANTED_PASSWORD not in text and PLANTED_KEY not in text, table
    engine.dispose()


def test_redact_masks_url_passwords_and_secret_env(monkeypatch):
    monkeypatch.setenv("DATABENTO_API_KEY", PLANTED_KEY)
    text = f"postgresql+psycopg://u:{PLANTED_PASSWORD}@h/db key={PLANTED_KEY}"
    assert redact(text) == "postgresql+psycopg://u:***@h/db key=***"


def test_a_stopped_run_is_recorded_as_interrupted(db_url, tmp_path):
    import os
    import signal
    import sys
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", f"db.url={db_url}", "stages=[ingest]", "window.start=2019-01-01",
         "window.end=2025-01-01"],
        cwd=tmp_path, env={**os.environ}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if (query_runs := engine_run_rows(db_url)) and query_runs[0]["status"] == "running":
                break
        except sa.exc.SQLAlchemyError:
            pass  # not created yet
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    [row] = engine_run_rows(db_url)
    assert row["status"] == "interrupted" and row["finished_at"] is not None
    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        ingest = conn.execute(sa.text("SELECT status, error FROM clean_ingest_runs")).mappings().all()
    engine.dispose()
    assert [r["status"] for r in ingest] in ([], ["interrupted"])  # issue 9 item 7: interrupted in both tables


def engine_run_rows(url: str) -> list[dict]:
    return table_rows(url, "engine_runs")
