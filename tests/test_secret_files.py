"""Each file is masked once, by whoever writes it: a sweep job cleans only its own Hydra files, a refused
password never reaches a file, and a file that cannot be masked does not survive holding the secret."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from engine.provenance import RedactingFilter

PASSWORD = "Dummy-Pw-4711"  # the test server trusts 127.0.0.1: libpq is never asked for it


def local_yaml(tmp_path: Path, url: str) -> Path:
    """The working directory's machine-local conf/local/default.yaml, setting db.url."""
    local = tmp_path / "conf" / "local" / "default.yaml"
    local.parent.mkdir(parents=True)
    local.write_text(f"db:\n  url: {url}\n")
    return local


def stamp(path: Path) -> tuple:
    status = path.stat()
    return status.st_ino, status.st_mtime_ns, path.read_bytes()


@pytest.mark.parametrize("launcher", [[], ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]],
                         ids=["basic", "joblib"])
def test_a_sweep_job_rewrites_no_file_but_its_own(engine_cli, pg_url, tmp_path, launcher):
    local = local_yaml(tmp_path, pg_url.replace("postgres@", f"postgres:{PASSWORD}@", 1))
    sweep_dir = tmp_path / "runs" / "sweep"
    sweep_dir.mkdir(parents=True)
    notes = sweep_dir / "notes.md"  # a user's file in the sweep folder, with text that masking would change
    notes.write_text("staging: postgresql://me:notes-pw-99@db.example/market\n")
    before = stamp(notes)

    run = engine_cli("db=postgres", "symbol=ES,NQ", "stages=[registry]", "-m", f"hydra.sweep.dir={sweep_dir}",
                     *launcher)
    assert run.returncode == 0, run.output
    assert stamp(notes) == before
    assert len(run.run_dirs) == 2
    for job in run.run_dirs:
        saved = (job / ".hydra" / "config.yaml").read_text()
        assert "postgres:***@127.0.0.1" in saved and PASSWORD not in saved
        finished = (job / "result.json").stat().st_mtime_ns
        for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):  # not touched once their job had finished
            assert (job / ".hydra" / name).stat().st_mtime_ns <= finished, (job, name)
    for path in tmp_path.rglob("*"):
        if path.is_file() and path != local:
            assert PASSWORD.encode() not in path.read_bytes(), path


@pytest.mark.parametrize("sweep", [[], ["symbol=ES,NQ", "-m"]], ids=["run", "sweep"])
def test_two_passwords_in_a_yaml_url_stop_before_hydra_saves_anything(engine_cli, tmp_path, sweep):
    local = local_yaml(tmp_path, "postgresql://u:first-pw1@h/a,postgresql://u:second-pw2@h/b")
    run = engine_cli("db=postgres", *sweep)
    assert run.returncode == 2, run.output
    assert "2 different database passwords" in run.output and "Fix:" in run.output
    for path in tmp_path.rglob("*"):
        if path.is_file() and path != local:
            content = path.read_bytes()
            assert b"first-pw1" not in content and b"second-pw2" not in content, path


def test_a_file_that_cannot_be_masked_is_removed_and_the_error_raised(tmp_path):
    saved = tmp_path / "config.yaml"
    saved.write_text("db:\n  url: postgresql://u:a-secret-pw@h/db\n" + "# padding\n" * 2000)
    script = (  # the masked text no longer fits under RLIMIT_FSIZE: a real EFBIG from the write
        "import resource, signal, sys\n"
        "from pathlib import Path\n"
        "from engine.secrets import mask_file\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        "try:\n"
        "    mask_file(Path(sys.argv[1]))\n"
        "except OSError as exc:\n"
        "    print('raised', exc.errno)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(saved)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("raised"), proc.stdout + proc.stderr
    assert not saved.exists()


def test_a_logged_traceback_is_masked_as_it_is_written():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("test_secret_files")
    logger.addHandler(handler)
    try:
        raise RuntimeError(f"cannot reach postgresql://u:{PASSWORD}@h/db")
    except RuntimeError as exc:
        logger.error("run failed", exc_info=exc, stack_info=True)
    finally:
        logger.removeHandler(handler)
    written = stream.getvalue()
    assert "Traceback" in written and "RuntimeError: cannot reach postgresql://u:***@h/db" in written
    assert PASSWORD not in written
