"""Output a person can read (issue 10 item 7): one console line per chunk and one totals table, ISO chunk labels,
never "None" or a Python dict, whole run directories and each failed job's error in the sweep summary,
progress bars with a total and an ETA where the total is known."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from rich.progress import ProgressColumn

from engine.console import progress_bars

CHUNKED = ["stages=[registry,ingest,detect]", "window.chunk=1d"]  # the demo week: 6 chunks
CHUNKS = 6
CHUNK_LINE = re.compile(r"(ingest|detect) chunk (\d+)/6 \[\d{4}-\d\d-\d\dT\d\d:\d\dZ, \d{4}-\d\d-\d\dT\d\d:\d\dZ\) "
                        r"(done|skipped|left pending)")
# Lines that are not chunk lines: the run's header lines, the registry table, the totals table, the one pending
# chunk's wrapped warning, Hydra's search-path warning.
OTHER_LINES = 35


def assert_readable(text: str) -> None:
    assert "None" not in text
    assert "{'" not in text and "['" not in text  # no Python dict or list reprs
    assert "Traceback" not in text


@pytest.mark.slow
def test_a_chunked_run_prints_one_line_per_chunk_then_one_totals_table(engine_cli):
    first = engine_cli(*CHUNKED)
    assert first.returncode == 0, first.output
    lines = first.output.splitlines()
    chunk_lines = [m.groups() for m in map(CHUNK_LINE.search, lines) if m]
    assert sorted((stage, int(k)) for stage, k, _ in chunk_lines) == sorted(
        (stage, k) for stage in ("ingest", "detect") for k in range(1, CHUNKS + 1))
    assert len(lines) <= 2 * CHUNKS + OTHER_LINES, first.output
    assert "[2025-12-08T00:00Z, 2025-12-09T00:00Z) done: 1,376 bars: 1,376 new" in first.output
    assert "bars_received" not in first.output  # no per-chunk ingest table
    assert "clean ingests cover" not in first.output  # a chunk's details go to engine.log only...
    log = (first.run_dir / "engine.log").read_text()
    assert log.count("clean ingests cover") == CHUNKS and "ingest chunk 6/6 [2025-12-12T00:00Z" in log
    assert_readable(first.output)
    assert_readable(log)
    totals = " ".join(first.output.split())
    assert "ingest chunks │ 6 done, 0 skipped (of 6)" in totals
    assert "detect chunks │ 5 done, 0 skipped, 1 pending (of 6)" in totals  # the data ends in its look-ahead

    again = engine_cli(*CHUNKED)
    assert again.returncode == 0, again.output
    assert len(again.output.splitlines()) <= 2 * CHUNKS + OTHER_LINES, again.output
    assert [m.group(3) for m in map(CHUNK_LINE.search, again.output.splitlines()) if m].count("skipped") == 11
    totals = " ".join(again.output.split())
    assert "ingest chunks │ 0 done, 6 skipped (of 6)" in totals
    assert "detect chunks │ 0 done, 5 skipped, 1 pending (of 6)" in totals
    assert_readable(again.output)


@pytest.mark.slow
def test_a_job_failing_before_its_run_row_and_a_dry_run_never_say_none(engine_cli):
    early = engine_cli("window.start=soon")
    assert early.returncode == 2, early.output
    assert "job: failed (before a run was recorded)" in early.output
    assert "None" not in early.output
    dry = engine_cli("dry_run=true", "window.chunk=1d")
    assert dry.returncode == 0, dry.output
    assert "dry run: success" in dry.output
    assert "run None" not in dry.output and "symbol None" not in dry.output


@pytest.mark.slow
def test_a_sweep_summary_names_each_failed_job_error_and_whole_run_directories(engine_cli, tmp_path):
    sweep = engine_cli("-m", "symbol=NQ,ZN", "stages=[registry,ingest]")
    assert sweep.returncode == 1, sweep.output
    [summary_md] = (tmp_path / "runs").rglob("sweep_summary.md")
    text = summary_md.read_text()
    run_dirs = sorted(sweep.run_dirs)
    assert len(run_dirs) == 2
    table = sweep.output[sweep.output.rindex("sweep /"):]  # the sweep table, printed last
    for run_dir in run_dirs:
        assert Path(run_dir).is_absolute()
        assert f"| {run_dir} |" in text
        assert str(run_dir) in table  # whole, on one line: never folded or cut
    assert "2 jobs, 1 failed" in text
    failed = text[text.index("## job 1 (ZN): failed"):]
    assert "unknown symbol 'GLBX.MDP3:ZN'" in failed and "Fix: pick one of those" in failed
    assert "None" not in text


def _rendered(progress) -> list[str]:
    task = progress.tasks[-1]
    return [str(column.render(task)) for column in progress.columns if isinstance(column, ProgressColumn)]


def test_progress_bars_show_a_total_and_an_eta_only_where_the_total_is_known():
    with progress_bars() as outer:
        chunks = outer.add_task("ingest, detect", total=10, unit="chunks")
        outer.advance(chunks, 3)
        shown = _rendered(outer)
        assert "3/10 chunks" in shown and any(text.startswith("ETA ") for text in shown)
        with progress_bars() as inner:  # a stage's bar under the pipeline's: one shared live display
            assert inner is outer
            bars = inner.add_task("ingest GLBX.MDP3:NQ", total=None, unit="bars")
            inner.advance(bars, 1234)
            shown = _rendered(inner)
            assert "1,234 bars" in shown and not any(text.startswith("ETA") for text in shown)
        assert [task.id for task in outer.tasks] == [chunks]  # the stage's bar went with it
