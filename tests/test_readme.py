"""The README's two set-up commands are the ones CI runs and the ones that work; its Extending example runs."""

import os
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from sql_rows import query

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
CI = (REPO / ".ci" / "run").read_text()
TEST_COMMAND = "pip install -e '.[test,ray]' && pytest"  # the ray extra: CI runs the Ray sweep tests too
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


def extending_section() -> str:
    return README.split("\n## Extending\n", 1)[1].split("\n## ", 1)[0]


def test_readme_out_of_tree_detector_example_runs_verbatim(db_url, tmp_path):
    """The module and YAML blocks (each names its path in its first line) written as they stand, then the command
    run by a shell in that folder, with the test's database appended."""
    section = extending_section()
    files = re.findall(r"```(?:python|yaml)\n(# (\S+)\n.*?)```", section, re.S)
    assert {path for _, path in files} == {"my_detectors/breakout.py", "conf/detector/breakout.yaml"}
    for text, path in files:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    [command] = [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S) if "detector=" in block]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "COLUMNS": "160"}
    run = subprocess.run(f"{command} db.url={db_url}", shell=True, cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr

    def instant(value) -> datetime:
        return value if isinstance(value, datetime) else datetime.fromisoformat(value)

    bars = query(db_url, "SELECT ts, high FROM market_bars_ohlcv_1m_clean ORDER BY ts")
    high = [bar["high"] for bar in bars]
    expected = [(instant(bars[i]["ts"]), high[i]) for i in range(30, len(bars) - 1) if high[i] > max(high[i - 30:i])]
    events = query(db_url, "SELECT ts, direction, price, detector_params FROM triangle_events_v1 "
                           "WHERE detector = 'breakout' ORDER BY ts")
    assert len(expected) > 50
    assert [(instant(e["ts"]), e["price"]) for e in events] == expected
    assert {(e["direction"], e["detector_params"]) for e in events} == {("BULL", '{"n": 30}')}
