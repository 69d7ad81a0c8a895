"""The README's two set-up commands are the ones CI runs and the ones that work."""

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
CI = (REPO / ".ci" / "run").read_text()
TEST_COMMAND = "pip install -e '.[test]' && pytest"
RUN_COMMAND = "pip install . && engine"


def code_blocks() -> list[str]:
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", README, re.S)]


def test_readme_gives_the_two_setup_commands():
    blocks = code_blocks()
    assert RUN_COMMAND in blocks
    assert TEST_COMMAND in blocks


def test_ci_runs_the_readme_test_command_verbatim():
    last_command = [line for line in CI.splitlines() if line.strip() and not line.startswith("#")][-1]
    assert last_command.strip() == TEST_COMMAND


def test_alembic_command_line_from_readme_works(tmp_path):
    url = f"sqlite:///{tmp_path / 'cli.sqlite'}"
    alembic = [sys.executable, "-m", "alembic", "-x", f"db_url={url}"]
    up = subprocess.run([*alembic, "upgrade", "head"], cwd=REPO, capture_output=True, text=True)
    assert up.returncode == 0, up.stderr
    current = subprocess.run([*alembic, "current"], cwd=REPO, capture_output=True, text=True)
    assert "(head)" in current.stdout
    down = subprocess.run([*alembic, "downgrade", "base"], cwd=REPO, capture_output=True, text=True)
    assert down.returncode == 0, down.stderr
