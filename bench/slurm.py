"""The `slurm` group: the 4-symbol sweep on the Slurm launcher beside basic and joblib (same data, interleaved runs),
the per-job overhead of going through Slurm, and the jobs' memory peak from Slurm's accounting (sacct MaxRSS)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.data import iso
from bench.report import fmt_seconds
from bench.report import median as med

LAUNCHERS = {
    "basic": [],
    "joblib": ["hydra/launcher=joblib"],
    "slurm": ["hydra/launcher=slurm", "hydra.launcher.timeout_min=30"],
}
OVERHEAD_JOBS = 4


def cluster_problem() -> str | None:
    """Why no Slurm cluster runs jobs here, or None when `srun true` answers."""
    if shutil.which("srun") is None:
        return "Slurm is not installed (start a local cluster: scripts/slurm-local start)"
    try:
        probe = subprocess.run(["srun", "--quiet", "--time=1", "true"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "`srun true` did not answer within 30 s (scripts/slurm-local start)"
    return None if probe.returncode == 0 else f"`srun true` failed: {probe.stderr.strip()[:200]}"


def max_rss_mib(sweep_dir: Path) -> float:
    """The largest MaxRSS (MiB) of the steps of the sweep's job array, from sacct."""
    [array_id] = {p.name.split("_")[0] for p in (sweep_dir / ".submitit").iterdir() if p.name[0].isdigit()}
    listing = subprocess.run(["sacct", "--noheader", "--parsable2", "--jobs", array_id, "--format=MaxRSS"],
                             capture_output=True, text=True, check=True).stdout
    units = {"K": 1 / 1024, "M": 1.0, "G": 1024.0}
    values = [float(v[:-1]) * units[v[-1]] if v[-1] in units else float(v) / 2**20
              for v in listing.split() if v]
    return max(values)


def fig_slurm(bench, env: dict[str, str], skipped: type[Exception]) -> None:
    if (problem := cluster_problem()) is not None:
        raise skipped(problem)
    row = bench.rows["sweep_4_symbols_slurm"]
    from bench.figures import SWEEP_SYMBOLS

    start, end = bench.file.start, bench.file.end
    times: dict[str, list[float]] = {name: [] for name in LAUNCHERS}
    first_counts, peaks = None, []

    def sweep(name: str, folder: Path, *extra: str) -> float:
        folder.mkdir(parents=True)
        cmd = [sys.executable, "-m", "engine", "-m", f"symbol={','.join(SWEEP_SYMBOLS)}", *LAUNCHERS[name],
               "db.url=sqlite:///${data_dir}/${symbol}.sqlite", f"data_dir='{folder / 'data'}'",
               f"hydra.sweep.dir='{folder / 'multirun'}'", *extra]
        started = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=folder, timeout=1800, env=env)
        seconds = time.perf_counter() - started
        (folder / "output.txt").write_text(proc.stdout + proc.stderr)
        bench.check(f"slurm group: {name} sweep in {folder.name} exits 0", proc.returncode == 0,
                    f"exit {proc.returncode}; output in {folder / 'output.txt'}")
        return seconds

    window = [f"window.start={iso(start)}", f"window.end={iso(end)}"]
    for k in range(bench.sweep_reps):
        for name in LAUNCHERS:
            folder = bench.run_dir / "slurm" / f"{name}_{k}"
            times[name].append(sweep(name, folder, "stages=[ingest,detect]", *window))
            got = bench._sweep_counts(folder / "multirun", f"slurm group {name} #{k + 1}")
            first_counts = first_counts or got
            bench.check(f"slurm group {name} #{k + 1}: same counts as the first sweep", got == first_counts,
                        json.dumps(got))
            if name == "slurm":
                peaks.append(max_rss_mib(folder / "multirun"))
    # Overhead: the same 4 tiny jobs one after the other, in-process (basic) and as Slurm array tasks one at a time.
    tiny = {}
    for name, extra in (("basic", []), ("slurm", ["hydra.launcher.array_parallelism=1"])):
        folder = bench.run_dir / "slurm" / f"overhead_{name}"
        tiny[name] = sweep(name, folder, "stages=[registry]", *extra)
    per_job = (tiny["slurm"] - tiny["basic"]) / OVERHEAD_JOBS

    basic, joblib, slurm = (med(times[name]) for name in LAUNCHERS)
    row.engine = f"slurm {fmt_seconds(slurm)} (×{len(times['slurm'])})"
    row.baseline = f"basic {fmt_seconds(basic)} (×{len(times['basic'])})"
    row.ratio, row.target = f"{basic / slurm:.2f}× speed", "≥ 1.5× basic"
    total = sum(c[0] for c in first_counts.values())
    row.note = (f"the sweep group's command on `hydra/launcher=slurm` (scripts/slurm-local: one node, "
                f"cpus_per_task=1, so one job per core), interleaved with basic and joblib on the same data "
                f"({total:,} bars in all); joblib {fmt_seconds(joblib)} ({basic / joblib:.2f}×); per-job overhead of "
                f"Slurm {fmt_seconds(per_job)} ({OVERHEAD_JOBS} `stages=[registry]` jobs one at a time: Slurm "
                f"{fmt_seconds(tiny['slurm'])} vs basic {fmt_seconds(tiny['basic'])}: submission, scheduling, "
                f"a fresh Python per job, submitit's polling); job memory peak (sacct MaxRSS) "
                f"{max(peaks):.0f} MiB")
    row.data = {"seconds": times, "ratio": basic / slurm, "joblib_ratio": basic / joblib,
                "overhead_seconds": tiny, "overhead_per_job_seconds": per_job, "max_rss_mib": peaks,
                "jobs": first_counts}
    bench.judge("sweep_4_symbols_slurm", basic / slurm >= 1.5, info=bench.smoke)
