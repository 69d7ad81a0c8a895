"""`python -m bench --smoke --only landing` (issue 14 item 1): the landing group runs end to end, measures both
figures and its correctness checks (every day found landed, every bar landed both ways with one get_range) pass."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_landing_bench_measures_both_figures(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    if not env.get("ENGINE_BENCH_PG_URL") and env.get("ENGINE_TEST_PG_URL"):
        env["ENGINE_BENCH_PG_URL"] = env["ENGINE_TEST_PG_URL"]
    proc = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--only", "landing", "--out", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]
    [run_dir] = [p for p in tmp_path.iterdir() if p.is_dir()]
    results = json.loads((run_dir / "bench_results.json").read_text())
    rows = {row["key"]: row for row in results["rows"]}
    for key in ("landing_reuse_lookup", "landing_day_split"):
        assert rows[key]["status"] == "INFO" and rows[key]["engine"] != "—", rows[key]
    lookup, split = rows["landing_reuse_lookup"]["data"], rows["landing_day_split"]["data"]
    assert lookup["landed"] == lookup["days"] == 3653 and lookup["missing"] == 0
    assert split["days_records"] == split["one_records"] == 7 * 1440 and split["day_files"] == 7
    assert split["ratio"] > 0 and lookup["ms"] > 0
    checks = {c["name"]: c["passed"] for c in results["checks"]}
    assert checks == {"landing lookup: every day landed, none missing": True,
                      "landing split: every bar landed both ways, one get_range each": True}, checks
    assert "landing-reuse lookup, 10-year window of landed days" in (run_dir / "bench_results.md").read_text()
