"""Benchmark harness for the engine (issue 6): `python -m bench` (full, 1M bars) or `python -m bench --smoke`.

Every figure is measured in one run, next to its baseline, on this machine; results land in
runs/bench/<timestamp>/bench_results.md and bench_results.json.
"""
