"""The command line's contract, as a catalogue of bad inputs run through the real CLI (`python -m engine`).

Every case: exit 2, the key or input named, `Fix:` present, no traceback on the console, and nothing changed:
the database's rows (SQLite and PostgreSQL) and the files under data/ and runs/ are compared before and after.
A refusal by Hydra or the override check (kind "startup") leaves runs/ as it was; a refusal by the pre-run
checks (kind "job") may leave exactly the run's record: one new run directory holding Hydra's .hydra/ files,
engine.log and result.json (status failed, exit code 2), never resolved_config.yaml or provenance.json.
The cases run in parallel threads once per module; each test asserts its own case.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa
from sql_rows import all_tables

pytestmark = pytest.mark.slow

PG = "{pg}"  # replaced by the module's scratch PostgreSQL URL
ALLOWED_RECORD = {".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "engine.log", "result.json"}


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]
    names: tuple[str, ...]  # each must appear in the output (whitespace-normalised)
    kind: str = "job"  # "startup": refused before a job starts; "job": by the pre-run checks
    env: tuple[tuple[str, str], ...] = ()
    local_yaml: str | None = None  # conf/local/default.yaml of the working folder
    absent: tuple[str, ...] = field(default=())  # must not appear in the output


def c(id, *args, names, kind="job", env=(), local_yaml=None, absent=()):
    return Case(id, tuple(args), tuple(names), kind, tuple(env), local_yaml, tuple(absent))


DBN = ("source=dbn_file", "stages=[ingest]")
DB = ("source=databento", "stages=[ingest]")
KEY = (("DATABENTO_API_KEY", ""),)
PARITY = ("stages=[parity]",)
LONG = ("window.start=2011-01-03", "window.end=2025-12-01", "window.chunk=1h")

CASES = [
    # --- refused while Hydra composes (the list first)
    c("n-abc", "detector.n=abc", names=["detector.n", "abc", "whole number"], kind="startup"),
    c("n-float", "detector.n=2.5", names=["detector.n", "2.5", "whole number"], kind="startup"),
    c("db-oracle", "db=oracle", names=["db=oracle", "db=sqlite", "db=postgres"], kind="startup",
      absent=["_schema"]),
    c("source-unknown", "source=nope", names=["source=nope", "source=dbn_file"], kind="startup", absent=["_schema"]),
    c("window-unknown", "window=nope", names=["window=nope", "window=demo"], kind="startup", absent=["_schema"]),
    c("launcher-unknown", "hydra/launcher=nope", names=["hydra/launcher=nope", "hydra/launcher=joblib"],
      kind="startup"),
    c("stages-bare", "stages=ingest", names=["stages=ingest", "stages=[ingest]"], kind="startup"),
    c("stage-group", "stage=ingest", names=["stage=", "stages=[registry,ingest]"], kind="startup"),
    c("sweep-without-m", "symbol=ES,YM", names=["symbol=ES,YM", "-m"], kind="startup"),
    c("override-syntax", "detector.n=[", names=["detector.n=[", "cannot parse"], kind="startup"),
    c("misspelt-override", "windw.start=2024-01-01", names=["windw.start", "window.start"], kind="startup"),
    c("bool-bad", "policy.allow_legacy=maybe", names=["policy.allow_legacy", "true or false"], kind="startup"),
    c("force-bad", "force=perhaps", names=["force", "true or false"], kind="startup"),
    c("enum-bad", "detector.swing_high=UP", names=["detector.swing_high", "BULL", "BEAR"], kind="startup"),
    c("batch-type", "source.batch_size=x", names=["source.batch_size", "whole number"], kind="startup"),
    c("rank-type", "rank=abc", names=["rank", "abc"], kind="startup"),
    c("local-yaml-syntax", names=["conf/local/default.yaml", "line 3"], kind="startup",
      local_yaml="db:\n  url: [oops\n"),
    c("local-yaml-key", names=["db.ulr", "conf/local/default.yaml", "db.url"], kind="startup",
      local_yaml="db:\n  ulr: sqlite:///x.sqlite\n"),
    c("local-yaml-top-key", names=["detectr", "conf/local/default.yaml", "detector"], kind="startup",
      local_yaml="detectr:\n  n: 3\n"),
    c("local-yaml-type", names=["detector.n", "conf/local/default.yaml", "abc"], kind="startup",
      local_yaml="detector:\n  n: abc\n"),
    c("run-dir-readonly", "hydra.run.dir={ro}/run", names=["{ro}/run", "Read-only file system", "hydra.run.dir"],
      kind="startup"),
    c("run-dir-full", "hydra.run.dir={full}/run", names=["{full}/run", "No space left on device"],
      kind="startup"),
    c("pg-n-abc", "db=postgres", f"db.url={PG}", "detector.n=abc", names=["detector.n"], kind="startup"),
    # --- refused by the pre-run checks (engine/preflight.py)
    c("n-negative", "detector.n=-1", names=["detector.n=-1", "2…1440"]),
    c("n-negative-dry", "detector.n=-1", "dry_run=true", names=["detector.n=-1", "2…1440"]),
    c("n-one", "detector.n=1", names=["detector.n=1"]),
    c("n-huge", "detector.n=100000", names=["detector.n=100000", "1440"]),
    c("batch-zero", "source.batch_size=0", names=["source.batch_size=0"]),
    c("batch-zero-dry", "source.batch_size=0", "dry_run=true", names=["source.batch_size=0"]),
    c("cost-negative", *DB, "source.max_cost_usd=-1", names=["source.max_cost_usd=-1"], env=KEY),
    c("retries-negative", *DB, "source.max_retries=-1", names=["source.max_retries=-1"], env=KEY),
    c("backoff-negative", *DB, "source.backoff_seconds=-1", names=["source.backoff_seconds=-1.0"], env=KEY),
    c("connect-timeout-zero", *DB, "source.connect_timeout_seconds=0",
      names=["source.connect_timeout_seconds=0.0"], env=KEY),
    c("read-timeout-negative-dry", *DB, "source.read_timeout_seconds=-5", "dry_run=true",
      names=["source.read_timeout_seconds=-5.0"], env=KEY),
    c("rank-negative", "rank=-1", names=["rank=-1"]),
    c("roll-rule", "roll_rule=x", names=["roll_rule='x'", "roll_rule=c"]),
    c("roll-rule-dry", "roll_rule=x", "dry_run=true", names=["roll_rule='x'", "roll_rule=c"]),
    c("registry-roll-rule", "registry.defaults.roll_rule=q", names=["registry.defaults.roll_rule='q'"]),
    c("start-1800", "window.start=1800-01-01", names=["window.start=1800-01-01", "2010-06-06"]),
    c("start-1800-dry", "window.start=1800-01-01", "dry_run=true", names=["window.start=1800-01-01", "2010-06-06"]),
    c("start-before-history", "window.start=2009-01-01", names=["window.start=2009-01-01", "GLBX.MDP3"]),
    c("start-overflow", "window.start=0001-01-01T00:00:00+01:00", names=["window.start", "0001-01-01"]),
    c("end-overflow", "window.end=9999-12-31T23:59:59-01:00", names=["window.end", "9999-12-31"]),
    c("end-future", "window.end=2099-01-01", names=["window.end=2099-01-01", "in the future"]),
    c("end-future-dry", "window.end=2099-01-01", "dry_run=true", names=["window.end=2099-01-01", "in the future"]),
    c("start-unparseable", "window.start=yesterday", names=["window.start", "yesterday"]),
    c("window-reversed", "window.start=2025-12-10", "window.end=2025-12-08", names=["window.end", "window.start"]),
    c("stages-duplicate", "stages=[ingest,ingest]", names=["stages=[ingest,ingest]", "more than once"]),
    c("stages-duplicate-dry", "stages=[ingest,ingest]", "dry_run=true",
      names=["stages=[ingest,ingest]", "more than once"]),
    c("stages-repeated-apart", "stages=[registry,detect,registry]", names=["registry", "more than once"]),
    c("stage-unknown", "stages=[ingst]", names=["ingst", "ingest"]),
    c("stages-empty", "stages=[]", names=["stages is empty"]),
    c("chunks-too-many", *LONG, names=["window.chunk=1h", "window.max_chunks"]),
    c("chunks-too-many-dry", *LONG, "dry_run=true", names=["window.chunk=1h", "window.max_chunks"]),
    c("chunks-over-confirmed", "window.chunk=1h", "window.max_chunks=100", names=["window.max_chunks=100", "121"]),
    c("max-chunks-zero", "window.max_chunks=0", names=["window.max_chunks=0"]),
    c("dbn-directory", *DBN, "source.paths=[{empty}]", names=["{empty}", "directory"]),
    c("dbn-directory-dry", *DBN, "source.paths=[{empty}]", "dry_run=true", names=["{empty}", "directory"]),
    c("dbn-missing-dry", *DBN, "source.paths=[nowhere.dbn.zst]", "dry_run=true", names=["nowhere.dbn.zst"]),
    c("dbn-glob-nothing", *DBN, "source.paths=[nowhere/*.dbn]", names=["nowhere/*.dbn"]),
    c("sqlite-text-file", "db.url=sqlite:///{notes}", names=["{notes}", "not a SQLite database"]),
    c("sqlite-text-file-dry", "db.url=sqlite:///{notes}", "dry_run=true", names=["{notes}", "not a SQLite database"]),
    c("sqlite-directory", "db.url=sqlite:///{empty}", names=["{empty}", "directory"]),
    c("sqlite-readonly-dir", "db.url=sqlite:///{ro}/market.sqlite", names=["{ro}", "permissions"],
      absent=["createdb", "server"]),
    c("parity-binary", *PARITY, "parity.right.csv={binary}", names=["parity.right.csv", "{binary}", "not a text"]),
    c("parity-binary-dry", *PARITY, "parity.right.csv={binary}", "dry_run=true",
      names=["parity.right.csv", "{binary}", "not a text"]),
    c("parity-no-columns", *PARITY, "parity.right.csv={nocols}", names=["parity.right.csv", "direction"]),
    c("parity-missing", *PARITY, "parity.left.csv=nowhere.csv", names=["parity.left.csv", "nowhere.csv"]),
    c("databento-key-placeholder", *DB, names=["DATABENTO_API_KEY", "db-"], env=(("DATABENTO_API_KEY",
                                                                                   "YOUR_API_KEY"),)),
    c("databento-key-space-dry", *DB, "dry_run=true", names=["DATABENTO_API_KEY"],
      env=(("DATABENTO_API_KEY", "db-abc def"),)),
    c("symbol-bad", "symbol=N.Q", names=["symbol='N.Q'"]),
    c("pg-n-negative", "db=postgres", f"db.url={PG}", "detector.n=-1", names=["detector.n=-1"]),
    c("pg-batch-zero", "db=postgres", f"db.url={PG}", "source.batch_size=0", names=["source.batch_size=0"]),
    c("pg-end-future", "db=postgres", f"db.url={PG}", "window.end=2099-01-01", names=["window.end=2099-01-01"]),
    c("pg-duplicate-dry", "db=postgres", f"db.url={PG}", "stages=[ingest,ingest]", "dry_run=true",
      names=["more than once"]),
    c("pg-rank-negative", "db=postgres", f"db.url={PG}", "rank=-1", names=["rank=-1"]),
]
# dry_run=true refuses with exactly the message of the real run
DRY_PAIRS = [(c_.id.removesuffix("-dry"), c_.id) for c_ in CASES if c_.id.endswith("-dry")
             and any(o.id == c_.id.removesuffix("-dry") for o in CASES)]


# --------------------------------------------------------------------------------------------- the workspace


def _run(args, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "COLUMNS": "160", **(env or {})})


def _files(root: Path) -> dict[str, str]:
    """Every file under data/ and runs/: its sha256 (SQLite files by their rows, below; their -wal/-shm skipped)."""
    out = {}
    for top in ("data", "runs"):
        for path in sorted((root / top).rglob("*")):
            if path.is_file() and not path.name.endswith(("-wal", "-shm", ".sqlite", ".lock")):
                out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _sqlite_rows(root: Path) -> dict[str, list]:
    rows = {}
    for path in sorted((root / "data").glob("*.sqlite")):
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            for (table,) in con.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name"):
                rows[f"{path.name}:{table}"] = sorted(map(repr, con.execute(f'SELECT * FROM "{table}"')))
        finally:
            con.close()
    return rows




def _mount(where: Path, options: str) -> None:
    where.mkdir(parents=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True,
                          text=True)
    if proc.returncode:
        pytest.fail(f"cannot mount a tmpfs here ({proc.stderr.strip()}): the read-only and full-disk cases need root")


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, pg_admin):
    """Run every case once, in parallel, each in its own copy of a prepared working folder."""
    base = tmp_path_factory.mktemp("contract")
    pg_name = f"engine_test_{uuid.uuid4().hex[:12]}"
    with pg_admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{pg_name}"'))
    pg = pg_admin.url.set(database=pg_name).render_as_string(hide_password=False)
    mounts = [base / "ro", base / "full"]
    try:
        _mount(mounts[0], "ro,size=1m")
        _mount(mounts[1], "size=64k")
        subprocess.run(["dd", "if=/dev/zero", f"of={mounts[1] / 'fill'}", "bs=4k", "count=64"], capture_output=True)
        template = base / "template"
        template.mkdir()
        for args in (["stages=[registry,ingest]"], ["db=postgres", f"db.url={pg}", "stages=[registry,ingest]"]):
            prep = _run(args, template)
            assert prep.returncode == 0, prep.stdout + prep.stderr
        (template / "empty").mkdir()
        (template / "notes.txt").write_text("not a database\n" * 10)
        (template / "binary.csv").write_bytes(bytes(range(256)) * 8)
        (template / "nocols.csv").write_text("time,side\n2025-12-08T00:00:00Z,BULL\n")
        places = {"ro": str(mounts[0]), "full": str(mounts[1]), "pg": pg,
                  **{name: str(template / file) for name, file in
                     (("empty", "empty"), ("notes", "notes.txt"), ("binary", "binary.csv"), ("nocols", "nocols.csv"))}}
        pg_before = all_tables(pg)

        def one(case: Case) -> dict:
            cwd = base / case.id
            shutil.copytree(template, cwd, symlinks=True)
            here = {**places, **{k: v.replace(str(template), str(cwd)) for k, v in places.items()}}
            if case.local_yaml is not None:
                (cwd / "conf" / "local").mkdir(parents=True)
                (cwd / "conf" / "local" / "default.yaml").write_text(case.local_yaml)
            before = (_files(cwd), _sqlite_rows(cwd))
            proc = _run([a.format(**here) for a in case.args], cwd, dict(case.env))
            return {"proc": proc, "cwd": cwd, "before": before, "after": (_files(cwd), _sqlite_rows(cwd)),
                    "names": [n.format(**here) for n in case.names]}

        with ThreadPoolExecutor(max_workers=3) as pool:
            results = dict(zip([k.id for k in CASES], pool.map(one, CASES), strict=True))
        results["_pg"] = (pg_before, all_tables(pg))
        yield results
    finally:
        for where in mounts:
            subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)
        with pg_admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)'))


def _flat(text: str) -> str:
    return " ".join(text.replace("│", " ").split())


@pytest.mark.parametrize("case", CASES, ids=[k.id for k in CASES])
def test_bad_input_exits_2_naming_it_with_a_fix_and_changes_nothing(outcomes, case):
    got = outcomes[case.id]
    proc = got["proc"]
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert "Traceback" not in output
    flat = _flat(output)
    assert "ERROR" in flat and "Fix:" in flat, output
    for name in got["names"]:
        assert _flat(name) in flat, f"{name!r} not in:\n{output}"
    for word in case.absent:
        assert word not in flat, output
    files_before, rows_before = got["before"]
    files_after, rows_after = got["after"]
    assert rows_after == rows_before  # no row of data/*.sqlite changed
    new = sorted(set(files_after) - set(files_before))
    assert {f: files_after[f] for f in files_before} == files_before  # nothing existing changed or vanished
    if case.kind == "startup":
        assert new == [], new
        return
    run_dirs = {str(Path(f).parent).removesuffix("/.hydra") for f in new}
    assert len(run_dirs) == 1, new
    (run_dir,) = run_dirs
    assert {f.removeprefix(f"{run_dir}/") for f in new} == ALLOWED_RECORD
    result = json.loads((got["cwd"] / run_dir / "result.json").read_text())
    assert (result["status"], result["exit_code"], result["run_id"]) == ("failed", 2, None)
    assert "Fix:" in result["error"]
    for name in got["names"]:
        assert _flat(name) in _flat(result["error"]), result["error"]


def test_postgresql_rows_unchanged_by_every_case(outcomes):
    before, after = outcomes["_pg"]
    assert before["engine_runs"] and before["market_bars_ohlcv_1m_clean"]  # the prepared database has rows
    assert after == before


# Messages that name the current minute ("the last minute that has begun (2026-12-02T07:25Z)"): the real and the
# dry case run seconds apart and may fall on either side of a minute.
_CURRENT_MINUTE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\dZ")


@pytest.mark.parametrize(("real", "dry"), DRY_PAIRS, ids=[d for _r, d in DRY_PAIRS])
def test_a_dry_run_refuses_with_the_message_of_the_real_run(outcomes, real, dry):
    def error(case_id):
        got = outcomes[case_id]
        (path,) = [p for p in got["after"][0] if p.endswith("result.json") and p not in got["before"][0]]
        message = json.loads((got["cwd"] / path).read_text())["error"].replace(str(got["cwd"]), "<case folder>")
        return _CURRENT_MINUTE.sub("<now>", message)

    assert error(dry) == error(real)


def test_an_internal_failure_exits_1_with_the_traceback_only_in_engine_log(engine_cli, tmp_path):
    """A database stamped with a revision this code does not know: Alembic fails, which no user input caused."""
    con = sqlite3.connect(tmp_path / "odd.sqlite")
    con.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
    con.execute("INSERT INTO alembic_version VALUES ('ffffffffffff')")
    con.commit()
    con.close()
    run = engine_cli(f"db.url=sqlite:///{tmp_path / 'odd.sqlite'}", "stages=[registry]")
    assert run.returncode == 1, run.output
    assert "Traceback" not in run.output
    assert "traceback in engine.log" in _flat(run.output)
    assert run.result["exit_code"] == 1 and "ffffffffffff" in run.result["error"]
    log = (run.run_dir / "engine.log").read_text()
    assert "Traceback (most recent call last)" in log and "CommandError" in log
