"""The ingest's pipeline: a worker thread decodes and validates the next chunks while one commits. A failure on
either side, with the worker ahead, leaves exactly the committed batches and a row that describes them (real
`python -m engine` runs on SQLite and PostgreSQL)."""

from __future__ import annotations

import json

import numpy as np
import zstandard
from dbn_files import T0, bars, write_dbn
from test_bar_writer import drop_failing_trigger, install_failing_trigger
from test_ingest_integrity import ROW_COUNTS, assert_true_row, ingest_args, ingest_runs

from engine.bars import NS_PER_MINUTE
from engine.sources.dbn import DBN_OHLCV_DTYPE

N = 1_000  # bars in the window
BATCH = 100  # records read per chunk


def test_a_failed_commit_with_the_next_chunks_prepared_leaves_the_committed_batches(engine_cli, db, db_url,
                                                                                      tmp_path):
    """Every chunk reads 50 bars of the window and 50 records of the day before it (counted, not received): the
    row's count of those is the committed chunks' own, not what the worker has read ahead."""
    inside = bars(N)
    rows = np.empty(2 * N, dtype=inside.dtype)
    rows[0::2] = inside
    rows[1::2] = bars(N, start_ns=T0 - 1440 * NS_PER_MINUTE)
    path = write_dbn(tmp_path / "nq.dbn.zst", rows)
    args = ingest_args(db_url, path, T0, T0 + N * NS_PER_MINUTE, f"source.batch_size={BATCH}")
    install_failing_trigger(db, int(inside["ts"][160]))  # in chunk 4: chunks 1-3 commit, 5 and on are read ahead

    failed = engine_cli(*args)
    assert failed.returncode == 1, failed.output
    [row] = ingest_runs(db_url)
    assert row["status"] == "failed" and "boom" in row["error"]
    assert [row[k] for k in ROW_COUNTS] == [150, 150, 0, 0, 0] and row["batch_commits"] == 3
    assert json.loads(row["ignored_instruments"]) == {"(outside window)": 150}
    assert_true_row(db_url, row)

    drop_failing_trigger(db)
    again = engine_cli(*args)
    assert again.returncode == 0, again.output
    second = ingest_runs(db_url)[1]
    assert [second[k] for k in ROW_COUNTS] == [N, N - 150, 0, 150, 0] and second["batch_commits"] == 20
    assert json.loads(second["ignored_instruments"]) == {"(outside window)": N}
    assert_true_row(db_url, second)


def test_a_decoding_error_in_the_worker_is_raised_after_the_chunks_before_it_commit(engine_cli, db_url, tmp_path):
    """Record 450 is not an OHLCV-1m record: chunk 5 (records 400..499) fails to decode in the worker thread."""
    packed = write_dbn(tmp_path / "nq.dbn.zst", bars(N))
    with open(packed, "rb") as handle:
        data = bytearray(zstandard.ZstdDecompressor().stream_reader(handle, read_across_frames=True).read())
    start = 8 + int.from_bytes(data[4:8], "little")
    data[start + 450 * DBN_OHLCV_DTYPE.itemsize + DBN_OHLCV_DTYPE.fields["rtype"][1]] = 0x01  # an MBP-1 rtype
    path = tmp_path / "nq.dbn"
    path.write_bytes(bytes(data))
    args = ingest_args(db_url, path, T0, T0 + N * NS_PER_MINUTE, f"source.batch_size={BATCH}")

    failed = engine_cli(*args)
    assert failed.returncode == 2, failed.output
    [row] = ingest_runs(db_url)
    assert row["status"] == "failed" and "not a 1-minute OHLCV bar" in row["error"]
    assert [row[k] for k in ROW_COUNTS] == [400, 400, 0, 0, 0] and row["batch_commits"] == 4
    assert_true_row(db_url, row)
