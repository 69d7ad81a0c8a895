"""Without the real DBN fixture folder the tests that need it skip locally, and fail with CI=true."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
A_DBN_TEST = "tests/test_dbn_source.py::test_esm4_nqm4"


def pytest_run(tmp_path: Path, ci: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["ENGINE_DBN_FIXTURES"] = str(tmp_path / "no-such-folder")
    if ci:
        env["CI"] = "true"
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs", A_DBN_TEST],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_missing_fixture_folder_skips_locally_with_a_reason(tmp_path):
    proc = pytest_run(tmp_path, ci=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 skipped" in proc.stdout and "set ENGINE_DBN_FIXTURES" in proc.stdout
    assert str(tmp_path / "no-such-folder") in proc.stdout


def test_missing_fixture_folder_fails_with_ci_true(tmp_path):
    proc = pytest_run(tmp_path, ci=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 error" in proc.stdout and "skipped" not in proc.stdout
    assert "CI=true requires them" in proc.stdout
