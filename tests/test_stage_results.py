"""Typed stage results: a chunked run's result.json holds the merge of its chunks' results, field by field.

Before results were typed, the chunk merge added up every number of the chunks' summary dicts: a 3-chunk run
recorded n=15, the last ingest run id, the first chunk's window_end and 1 of 3 raw files.
"""

import dataclasses
import json

import pytest
from sql_rows import query

from engine.results import ChunkedResult, from_json
from engine.stages.detect import DetectResult
from engine.stages.ingest import IngestResult

THREE_DAYS = ["stages=[registry,ingest,detect]", "window.chunk=1d", "window.start=2025-12-08T00:00:00Z",
              "window.end=2025-12-11T00:00:00Z"]


def test_a_chunked_runs_result_merges_its_chunks_field_by_field(engine_cli, db_url):
    run = engine_cli(f"db.url={db_url}", *THREE_DAYS)
    assert run.returncode == 0, run.output
    stages = run.result["stages"]
    ingest, detect = stages["ingest"], stages["detect"]

    logs = query(db_url, "SELECT id, start_ts, end_ts, raw_files FROM clean_ingest_runs WHERE engine_run_id = :r "
                         "ORDER BY id", r=run.result["run_id"])
    assert ingest["ingest_run_ids"] == [log["id"] for log in logs] and len(logs) == 3
    assert [f["path"] for f in ingest["raw_files"]] == [json.loads(log["raw_files"])[0]["path"] for log in logs]
    assert len({f["path"] for f in ingest["raw_files"]}) == 3  # one synthetic file per chunk
    assert (ingest["window_start"], ingest["window_end"]) == ("2025-12-08T00:00Z", "2025-12-11T00:00Z")
    assert ingest["symbol"] == "GLBX.MDP3:NQ" and ingest["databento_symbol"] == "NQ.v.0"
    stored = query(db_url, "SELECT count(*) AS n FROM market_bars_ohlcv_1m_clean")[0]["n"]
    assert ingest["bars_received"] == ingest["bars_inserted"] == stored > 0
    assert (ingest["chunks"], ingest["chunks_done"], ingest["chunks_skipped"]) == (3, 3, 0)

    assert detect["n"] == 5 and detect["detector"] == "williams_fractals"
    assert json.loads(detect["detector_params"]) == {"n": 5, "swing_high": "BEAR", "swing_low": "BULL"}
    assert (detect["window_start"], detect["window_end"]) == ("2025-12-08T00:00Z", "2025-12-11T00:00Z")
    assert detect["warmup_bars"] == 0  # the first chunk starts at the edge of the stored history
    assert detect["confirm_bars"] == 0 and detect["lookahead_complete"] is False  # the last chunk has no look-ahead
    assert (detect["chunks_done"], detect["chunks_pending"]) == (2, 1)
    events = query(db_url, "SELECT count(*) AS n FROM triangle_events_v1")[0]["n"]
    assert sum(detect["events"].values()) == detect["events_written"] == events > 0
    assert detect["bars_in_window"] == stored

    # The closing table reads the same typed results.
    assert "3 done, 0 skipped (of 3)" in run.output and "2 done, 0 skipped, 1 pending (of 3)" in run.output


def ingest_result(start: str, end: str, run_id: int, **counts) -> IngestResult:
    return IngestResult(symbol="GLBX.MDP3:ES", databento_symbol="ES.v.0", window_start=start, window_end=end,
                        ingest_run_ids=[run_id], raw_files=[{"path": f"{run_id}.dbn"}], **counts)


def test_ingest_merge_adds_counts_lists_files_and_spans_the_windows():
    a = ingest_result("2024-01-01T00:00Z", "2024-01-02T00:00Z", 1, bars_received=10, bars_inserted=7,
                      skipped_by_reason={"off_tick": 1}, ignored_instruments={"ESM4": 2}, retries=1)
    b = ingest_result("2024-01-02T00:00Z", "2024-01-02T12:30:30Z", 2, bars_received=5, bars_inserted=5,
                      skipped_by_reason={"off_tick": 2, "ohlc_order": 1}, ignored_instruments={"ESU4": 3})
    merged = a.merge(b)
    assert (merged.bars_received, merged.bars_inserted, merged.retries) == (15, 12, 1)
    assert merged.skipped_by_reason == {"off_tick": 3, "ohlc_order": 1}
    assert merged.ignored_instruments == {"ESM4": 2, "ESU4": 3}
    assert merged.ingest_run_ids == [1, 2] and [f["path"] for f in merged.raw_files] == ["1.dbn", "2.dbn"]
    assert (merged.window_start, merged.window_end) == ("2024-01-01T00:00Z", "2024-01-02T12:30:30Z")
    with pytest.raises(ValueError, match="different symbol"):
        a.merge(IngestResult(symbol="GLBX.MDP3:NQ", databento_symbol="NQ.v.0"))


def detect_result(start: str, end: str, **fields) -> DetectResult:
    return DetectResult(symbol="GLBX.MDP3:ES", source_table="market_bars_ohlcv_1m_clean", logic_version="v1",
                        detector="williams_fractals", detector_params='{"n": 5}', n=5, window_start=start,
                        window_end=end, **fields)


def test_detect_merge_keeps_settings_and_takes_warmup_and_lookahead_from_the_ends():
    first = detect_result("2024-01-01T00:00Z", "2024-01-02T00:00Z", bars_in_window=100, warmup_bars=9,
                          confirm_bars=5, events={"BEAR": 2, "BULL": 1})
    last = detect_result("2024-01-02T00:00Z", "2024-01-03T00:00Z", bars_in_window=50, warmup_bars=9, confirm_bars=3,
                         events={"BULL": 4}, lookahead_complete=False)
    for merged in (first.merge(last), last.merge(first)):  # chunks need not arrive in time order
        assert merged.n == 5 and merged.bars_in_window == 150
        assert (merged.window_start, merged.window_end) == ("2024-01-01T00:00Z", "2024-01-03T00:00Z")
        assert (merged.warmup_bars, merged.confirm_bars) == (9, 3)
        assert merged.events == {"BEAR": 2, "BULL": 5}
        assert merged.lookahead_complete is False
    with pytest.raises(ValueError, match="different n"):
        first.merge(dataclasses.replace(last, n=7))


def test_results_read_back_from_result_json_as_the_same_types():
    chunked = ChunkedResult(chunks=3, chunks_done=2, chunks_skipped=1, waits_for_lookahead=True, chunks_pending=0)
    chunked.add(detect_result("2024-01-01T00:00Z", "2024-01-02T00:00Z", bars_in_window=7))
    chunked.add(detect_result("2024-01-02T00:00Z", "2024-01-03T00:00Z", bars_in_window=8))
    back = from_json(json.loads(json.dumps(chunked.as_json())))
    assert isinstance(back, ChunkedResult) and isinstance(back.merged, DetectResult)
    assert back.merged == chunked.merged and back.counts() == "2 done, 1 skipped, 0 pending (of 3)"
    skipped_only = ChunkedResult(chunks=2, chunks_skipped=2)
    assert from_json(skipped_only.as_json()).counts() == "0 done, 2 skipped (of 2)"
