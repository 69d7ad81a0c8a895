"""No truncated input ever becomes a successful ingest; the paid path never pays twice and never hangs silently.

Local files are cut for real (at every byte, and exactly at zstd block boundaries); Databento faults are
served by the fake gateway to real `python -m engine` runs on SQLite and PostgreSQL, and each test then
runs the engine again the ordinary way to show what the next run does.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import pytest
import zstandard
from fake_databento import GET_RANGE, GET_RECORD_COUNT, Reply, ohlcv_dbn, zstd_frames
from sql_rows import query

from engine.errors import EngineError
from engine.sources.dbn import DbnBarFile, SymbolFilter, count_records

ESU4_NQU4 = "nt_ESU4_NQU4_20240701T2340-0010.ohlcv-1m.dbn.zst"
# A request-keyed landing of an earlier version, and where the same window lands by day (issue 14): its one day, and
# the run's body while it is checked (kept as <run>.rejected-<n> when it fails).
LANDING = Path("data/raw/GLBX.MDP3/ohlcv-1m/NQ.v.0/20251209T000000Z_20251210T000000Z.dbn.zst")
DAY_LANDING = Path("data/raw/GLBX.MDP3/ohlcv-1m/NQ.v.0/days/20251209.dbn.zst")
RUN = Path("data/raw/GLBX.MDP3/ohlcv-1m/NQ.v.0/days/run-20251209T000000Z_20251210T000000Z.dbn.zst")
DAY = ["window.start=2025-12-09T00:00:00Z", "window.end=2025-12-10T00:00:00Z"]
KEY = "db-TRUNCATIONTESTKEY000000"
RECORDS = 50


def ingest_rows(url: str) -> list[dict]:
    return query(url, "SELECT status, retries, error, bars_received, bars_inserted, bars_unchanged "
                      "FROM clean_ingest_runs ORDER BY id")


def raw_files(cwd: Path) -> list[str]:
    """What is under data/raw, by name (lock files only serialise concurrent fetches)."""
    return sorted(p.name for p in (cwd / "data" / "raw").rglob("*") if p.is_file() and not p.name.endswith(".lock"))


def block_ends(frame: bytes) -> list[int]:
    """Byte offsets at which the zstd blocks of one frame end (RFC 8878: 3-byte little-endian block headers)."""
    pos, ends = zstandard.frame_header_size(frame), []
    while True:
        header = int.from_bytes(frame[pos:pos + 3], "little")
        last, kind, size = header & 1, (header >> 1) & 3, header >> 3
        pos += 3 + (1 if kind == 1 else size)  # an RLE block stores one byte
        ends.append(pos)
        if last:
            return ends


# -------------------------------------------------------------------------------------------------- local files


def test_every_cut_of_a_real_file_is_refused_except_between_frames(dbn_fixtures, tmp_path):
    data = (dbn_fixtures / ESU4_NQU4).read_bytes()
    frame_ends = {sum(len(f) for f in zstd_frames(data)[: i + 1]) for i in range(len(zstd_frames(data)))}
    cut = tmp_path / "cut.dbn.zst"
    accepted = []
    for size in range(1, len(data)):
        cut.write_bytes(data[:size])
        try:
            bars = DbnBarFile([cut]).read(SymbolFilter("ES", "ES.v.0"))
        except EngineError as exc:
            assert str(cut) in str(exc), exc
            continue
        accepted.append((size, len(bars)))
    # Only a cut exactly between two frames is valid zstd; it holds fewer records (here none at all), which
    # the record count (Databento) or the no-bars rule (local files) catches.
    assert accepted and all(size in frame_ends and bars == 0 for size, bars in accepted), accepted


def test_head_700_of_a_real_file_ends_inside_a_frame(dbn_fixtures, tmp_path):
    cut = tmp_path / "head700.dbn.zst"
    cut.write_bytes((dbn_fixtures / ESU4_NQU4).read_bytes()[:700])
    with pytest.raises(EngineError, match="ends inside a zstd frame: the file is truncated; download it again"):
        DbnBarFile([cut]).read(SymbolFilter("ES", "ES.v.0"))


def test_a_cut_at_a_zstd_block_boundary_is_refused(tmp_path):
    body = ohlcv_dbn(records=20_000)  # one frame of several 128 KiB blocks
    (frame,) = zstd_frames(body)
    ends = block_ends(frame)[:-1]
    assert len(ends) >= 3
    cut = tmp_path / "cut.dbn.zst"
    for end in ends:
        cut.write_bytes(frame[:end])
        # What the old reader did: stop silently, as if the file ended there.
        zstandard.ZstdDecompressor().stream_reader(cut.open("rb"), read_across_frames=True).read()
        with pytest.raises(EngineError, match="ends inside a zstd frame"):
            count_records(cut)
        with pytest.raises(EngineError, match="ends inside a zstd frame"):
            DbnBarFile([cut]).read(SymbolFilter("NQ", "NQ.v.0"))
    cut.write_bytes(frame)
    assert count_records(cut)[1] == 20_000


@pytest.mark.slow
def test_a_cut_local_file_fails_the_ingest_and_the_complete_file_then_lands(engine_cli, db_url, dbn_fixtures, tmp_path):
    whole = (dbn_fixtures / ESU4_NQU4).read_bytes()
    target = tmp_path / "in" / ESU4_NQU4
    target.parent.mkdir()
    target.write_bytes(whole[:700])
    args = [f"db.url={db_url}", "source=dbn_file", f"source.paths=[{target}]", "symbol=ES", "stages=[ingest]",
            "window.start=2024-07-01T23:00:00Z", "window.end=2024-07-02T01:00:00Z"]

    cut = engine_cli(*args)

    assert cut.returncode == 2, cut.output
    assert f"{target} ends inside a zstd frame: the file is truncated; download it again" in cut.result["error"]
    (row,) = ingest_rows(db_url)
    assert row["status"] == "failed" and "ends inside a zstd frame" in row["error"]
    assert query(db_url, "SELECT count(*) AS n FROM market_bars_ohlcv_1m_clean")[0]["n"] == 0

    target.write_bytes(whole)
    again = engine_cli(*args)
    assert again.returncode == 0, again.output
    assert [r["status"] for r in ingest_rows(db_url)] == ["failed", "success"]
    assert query(db_url, "SELECT count(*) AS n FROM market_bars_ohlcv_1m_clean")[0]["n"] == 30


# -------------------------------------------------------------------------------------------------- Databento


@pytest.fixture
def fake(fake_databento):
    return fake_databento(KEY, records=RECORDS, subprocess=True)


def databento_args(fake, db_url: str) -> list[str]:
    return ["source=databento", f"source.gateway={fake.gateway}", f"db.url={db_url}", "stages=[ingest]", *DAY,
            "source.backoff_seconds=0.01", "source.connect_timeout_seconds=1", "source.read_timeout_seconds=1",
            "source.retry_budget_seconds=2.5", "source.definitions=false",
            "source.roll_outrights=false"]  # the bars file alone


FAULTS = {
    # fault: (replies, what the error says, files kept under data/raw, retries)
    "cut_at_frame": (
        [Reply.cut_at_frame(10), Reply.cut_at_frame(12)],
        "received 12 of 50 records (metadata.get_record_count)",
        [RUN.name + ".rejected-1", RUN.name + ".rejected-2"],
    ),
    "garbage": (
        [Reply.garbage(), Reply.garbage(), Reply.garbage()],
        "not a DBN file",
        [RUN.name + ".rejected-1", RUN.name + ".rejected-2"],
    ),
    "stall": ([Reply.stalled(5, after_bytes=100)] * 8, "source.retry_budget_seconds=2.5 is spent", []),
}


@pytest.mark.slow
@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_databento_fault_fails_the_run_and_the_next_run_buys_once(engine_cli, db_url, fake, tmp_path, fault):
    replies, said, kept = FAULTS[fault]
    fake.script(GET_RANGE, *replies)
    args = databento_args(fake, db_url)

    failed = engine_cli(*args)

    assert failed.returncode == 2, failed.output
    error = failed.result["error"]
    assert said in error, error
    if kept:
        assert str(RUN) in error, error  # data_dir as configured (relative)
    else:
        assert "raise source.retry_budget_seconds" in error  # what to change
        log = (failed.run_dir / "engine.log").read_text()
        assert "stalled: no data for 1 s (source.read_timeout_seconds); retry 1/5" in log
    for name in kept:
        assert str(RUN.parent / name) in error  # says where the kept bodies are
    assert raw_files(tmp_path) == kept
    bought = len(fake.seen(GET_RANGE))
    assert bought == (2 if fault != "stall" else bought) and bought >= 2
    (row,) = ingest_rows(db_url)
    assert row["status"] == "failed" and said in row["error"]
    assert row["retries"] == bought - 1 >= 1

    fake.clear(GET_RANGE)
    healed = engine_cli(*args)

    assert healed.returncode == 0, healed.output
    assert len(fake.seen(GET_RANGE)) == bought + 1, "bought again exactly once"
    assert raw_files(tmp_path) == sorted([*kept, DAY_LANDING.name, DAY_LANDING.name + ".json"])
    assert ingest_rows(db_url)[-1] | {"error": None} == {
        "status": "success", "retries": 0, "error": None, "bars_received": RECORDS, "bars_inserted": RECORDS,
        "bars_unchanged": 0,
    }

    if fault == "cut_at_frame":
        reused = engine_cli(*args)
        assert reused.returncode == 0, reused.output
        assert len(fake.seen(GET_RANGE)) == bought + 1, "a good landing is never downloaded again"
        assert ingest_rows(db_url)[-1]["bars_unchanged"] == RECORDS


@pytest.mark.slow
def test_a_landing_cut_at_a_frame_boundary_is_set_aside_and_bought_again_once(engine_cli, db_url, fake, tmp_path):
    args = databento_args(fake, db_url)
    # A request-keyed landing that the old code accepted and kept reusing: a body cut after a frame, its sidecar
    # written from the cut body (sha256, size and the decoded count), with no record-count check recorded.
    landing = tmp_path / LANDING
    landing.parent.mkdir(parents=True)
    start = dt.datetime(2025, 12, 9, tzinfo=dt.UTC)
    body = ohlcv_dbn(start=start, end=start + dt.timedelta(days=1), records=RECORDS, first_frame_records=10)
    landing.write_bytes(zstd_frames(body)[0])
    sidecar_path = landing.with_name(landing.name + ".json")
    request = {"dataset": "GLBX.MDP3", "symbol": "NQ.v.0", "schema": "ohlcv-1m", "stype_in": "continuous",
               "start": "2025-12-09T00:00:00+00:00", "end": "2025-12-10T00:00:00+00:00"}
    sidecar_path.write_text(json.dumps({"request": request, "file": landing.name, "cost_usd": 0.25, "records": 10,
                                        "sha256": hashlib.sha256(landing.read_bytes()).hexdigest(),
                                        "bytes": landing.stat().st_size}))

    refused = engine_cli(*args)

    assert refused.returncode == 2, refused.output
    error = refused.result["error"]
    assert f"{LANDING} is not a complete download: received 10 of 50 records" in error, error
    assert str(LANDING) + ".rejected-1" in error
    assert raw_files(tmp_path) == [LANDING.name + ".rejected-1", LANDING.name + ".rejected-1.json"]
    assert ingest_rows(db_url)[-1]["status"] == "failed"
    assert len(fake.seen(GET_RANGE)) == 0 and fake.seen()[-1].endpoint == GET_RECORD_COUNT

    healed = engine_cli(*args)

    assert healed.returncode == 0, healed.output
    assert len(fake.seen(GET_RANGE)) == 1, "bought again exactly once (by day)"
    assert (tmp_path / DAY_LANDING).is_file()
    assert ingest_rows(db_url)[-1]["bars_inserted"] == RECORDS
    assert query(db_url, "SELECT count(*) AS n FROM market_bars_ohlcv_1m_clean")[0]["n"] == RECORDS
