"""`python -m bench [--smoke] [--n N]`: every figure of issue 6 in one run, tables in runs/bench/<timestamp>/."""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime
from pathlib import Path

from rich.console import Console

from bench import report
from bench.figures import Bench

GROUPS = ("help", "compute", "futures", "read", "sqlite", "postgresql", "sweep", "incremental", "memory", "export",
          "landing")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true",
                        help="small N, one run per figure, targets not enforced (CI; well under a minute)")
    parser.add_argument("--n", type=int, default=None, help="bars per figure (default 1,000,000; smoke 20,000)")
    parser.add_argument("--mem-n", type=int, default=None,
                        help="bars of the peak-memory ingest (default 5,000,000, from 2010-06-06; smoke 100,000)")
    parser.add_argument("--reps", type=int, default=None, help="runs per engine figure, median reported (3)")
    parser.add_argument("--out", type=Path, default=Path("runs") / "bench",
                        help="parent of the timestamped run directory (default runs/bench)")
    parser.add_argument("--only", default=None, help=f"comma-separated figure groups: {', '.join(GROUPS)}")
    parser.add_argument("--keep-files", action="store_true",
                        help="keep the scratch SQLite and DBN files in the run directory (several GB at full size)")
    args = parser.parse_args(argv)
    smoke = args.smoke
    args.n = args.n or (20_000 if smoke else 1_000_000)
    args.mem_n = args.mem_n or (100_000 if smoke else 5_000_000)
    args.reps = args.reps or (1 if smoke else 3)
    if args.only:
        args.only = {g.strip() for g in args.only.split(",")}
        unknown = args.only - set(GROUPS)
        if unknown:
            parser.error(f"unknown groups {sorted(unknown)}; use {', '.join(GROUPS)}")
    return args


def new_run_dir(parent: Path) -> Path:
    stamp = datetime.now().strftime("%Y-%m-%dT%H-%M-%S")
    for k in range(100):
        path = parent / (stamp if k == 0 else f"{stamp}-{k}")
        try:
            path.mkdir(parents=True)
            return path.resolve()
        except FileExistsError:
            continue
    raise RuntimeError(f"cannot create a run directory under {parent}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 200)
    run_dir = new_run_dir(args.out)
    console.print(f"bench: {'smoke' if args.smoke else 'full'} run, N = {args.n:,}, run directory {run_dir}")
    started, started_at = time.perf_counter(), datetime.now().astimezone().isoformat(timespec="seconds")
    bench = Bench(n=args.n, mem_n=args.mem_n, smoke=args.smoke, reps=args.reps, slow_reps=1,
                  ref_slice=5_000 if args.smoke else 50_000, help_reps=3 if args.smoke else 5,
                  sweep_reps=1 if args.smoke else 3, run_dir=run_dir, only=args.only,
                  say=lambda text: console.print(f"[dim]{datetime.now():%H:%M:%S}[/] {text}"))

    def results() -> dict:
        return {
            "mode": "smoke" if args.smoke else "full",
            "n": args.n,
            "mem_n": args.mem_n,
            "reps": args.reps,
            "command": " ".join(["python -m bench", *argv]),
            "started": started_at,
            "seconds": time.perf_counter() - started,
            "run_dir": str(run_dir),
            "pg": {"admin_url": bench.pg.admin.url.render_as_string(hide_password=True),
                   "available": bench.pg.available, "error": bench.pg.error, "version": bench.pg.version},
            "machine": report.machine(bench.pg.version, bench.pg.settings),
            "rows": [report.as_dict(bench.rows[key]) for key in report.ROW_KEYS],
            "checks": [vars(c) for c in bench.checks],
            "notes": [*bench.notes, "1-minute load average when each figure group started (2 cores; the bench's own "
                      f"process accounts for about 1, the rest is other work): {', '.join(bench.loads)}",
                      *([] if not args.smoke else [
                "smoke run: N is far too small for the throughput targets to mean anything; PASS/MISS shown only "
                "for orientation"])],
        }

    try:
        bench.run()
    finally:
        bench.close(keep_files=args.keep_files)
        final = results()
        report.write(run_dir, final)
    report.print_table(final, console)
    console.print(f"results: {run_dir / 'bench_results.md'} and bench_results.json ({final['seconds']:.0f} s)")

    failed_checks = [c for c in bench.checks if not c.passed]
    errors = [r for r in bench.rows.values() if r.status == report.ERROR]
    in_ci = os.environ.get("CI", "").lower() == "true"
    if failed_checks or errors:
        console.print(f"[red]{len(failed_checks)} correctness checks failed, {len(errors)} figures errored[/]")
        return 1
    if args.smoke and in_ci and not bench.pg.available:
        console.print(f"[red]PostgreSQL is required in CI (CI=true) but unreachable: {bench.pg.error}[/]")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
