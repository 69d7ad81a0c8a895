"""engine.sources.databento_api against a real local server that behaves like Databento's historical API.

The real `databento.Historical` client does the HTTP (TLS, basic auth, streaming to the .part file);
only the server is fake (tests/fake_databento.py). Backoff `sleep` is injected and recorded; only the stall
tests wait for real (read timeouts of 1-1.5 s).
"""

from __future__ import annotations

import datetime as dt
import email.utils
import hashlib
import json
import logging
import threading
import time
from dataclasses import replace
from pathlib import Path

import databento
import pytest
import requests
from fake_databento import GET_COST, GET_RANGE, GET_RECORD_COUNT, FakeDatabento, Reply, ohlcv_dbn

from engine.errors import EngineError
from engine.sources.databento_api import FetchResult, RawRequest, Timeouts, estimate_cost, fetch_raw

KEY = "db-TESTKEY7f3c9a1e5b2d4c6e8a0b"
UTC = dt.UTC
REQ = RawRequest(
    dataset="GLBX.MDP3",
    symbol="NQ.v.0",
    schema="ohlcv-1m",
    stype_in="continuous",
    start=dt.datetime(2025, 11, 30, 23, 0, tzinfo=UTC),
    end=dt.datetime(2025, 12, 2, 5, 0, tzinfo=UTC),
)


@pytest.fixture
def fake(fake_databento):
    return fake_databento(KEY)


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def fetch(fake: FakeDatabento, data_dir: Path, **kwargs) -> tuple[FetchResult, Sleeps]:
    sleeps = kwargs.pop("sleep", None)
    if sleeps is None:
        sleeps = Sleeps()
    kwargs.setdefault("max_cost_usd", 1.0)
    result = fetch_raw(kwargs.pop("req", REQ), data_dir, gateway=fake.gateway, sleep=sleeps, **kwargs)
    return result, sleeps


def landed_files(data_dir: Path) -> list[str]:
    """Everything under data_dir except lock files (which only serialise concurrent fetches)."""
    return sorted(p.name for p in data_dir.rglob("*") if p.is_file() and not p.name.endswith(".lock"))


def assert_complete(result: FetchResult, records: int = 60) -> None:
    store = databento.DBNStore.from_file(result.path)
    assert store.schema == "ohlcv-1m"
    assert store.dataset == "GLBX.MDP3"
    assert store.symbology["symbols"] == ["NQ.v.0"]
    bars = list(store)
    assert len(bars) == records
    assert bars[0].ts_event == int(REQ.start.timestamp()) * 1_000_000_000
    assert result.sha256 == hashlib.sha256(result.path.read_bytes()).hexdigest()
    assert result.bytes == result.path.stat().st_size
    assert not result.path.with_name(result.path.name + ".part").exists()


# --------------------------------------------------------------------------------------------- happy path


def test_landing_path():
    assert REQ.landing_path(Path("/d")) == Path(
        "/d/raw/GLBX.MDP3/ohlcv-1m/NQ.v.0/20251130T230000Z_20251202T050000Z.dbn.zst"
    )


def test_window_must_be_timezone_aware_and_non_empty():
    with pytest.raises(EngineError, match="timezone"):
        RawRequest("GLBX.MDP3", "NQ.v.0", "ohlcv-1m", "continuous", dt.datetime(2025, 1, 1), REQ.end)
    with pytest.raises(EngineError, match="not after"):
        RawRequest("GLBX.MDP3", "NQ.v.0", "ohlcv-1m", "continuous", REQ.end, REQ.start)


def test_download_sends_the_request_verifies_and_lands_with_sidecar(fake, tmp_path):
    progress: list[int] = []
    result, sleeps = fetch(fake, tmp_path, on_bytes=progress.append)

    assert result.path == REQ.landing_path(tmp_path)
    assert (result.reused, result.retries, result.cost_usd) == (False, 0, 0.25)
    assert_complete(result)
    assert progress and progress[-1] == result.bytes
    assert sleeps == []

    assert [s.endpoint for s in fake.seen()] == [GET_COST, GET_RECORD_COUNT, GET_RANGE]
    for seen in fake.seen():
        assert seen.method == "POST" and seen.auth_user == KEY
        assert seen.params["dataset"] == "GLBX.MDP3"
        assert seen.params["symbols"] == "NQ.v.0"
        assert seen.params["schema"] == "ohlcv-1m"
        assert seen.params["stype_in"] == "continuous"
        assert dt.datetime.fromisoformat(seen.params["start"]) == REQ.start
        assert dt.datetime.fromisoformat(seen.params["end"]) == REQ.end
    assert fake.seen(GET_RANGE)[0].params["compression"] == "zstd"

    sidecar = json.loads(result.path.with_name(result.path.name + ".json").read_text())
    assert sidecar["sha256"] == result.sha256
    assert sidecar["bytes"] == result.bytes
    assert sidecar["records"] == 60
    assert sidecar["cost_usd"] == 0.25
    assert sidecar["request"]["symbol"] == "NQ.v.0" and sidecar["request"]["stype_in"] == "continuous"
    assert dt.datetime.fromisoformat(sidecar["downloaded_at"]).tzinfo is not None
    assert landed_files(tmp_path) == [result.path.name, result.path.name + ".json"]


def test_complete_file_is_reused_without_any_http_call(fake, tmp_path, monkeypatch):
    first, _ = fetch(fake, tmp_path)
    mtime = first.path.stat().st_mtime_ns
    before = len(fake.seen())
    monkeypatch.delenv("DATABENTO_API_KEY")  # reuse needs no key either
    progress: list[int] = []

    again, _ = fetch(fake, tmp_path, on_bytes=progress.append)

    assert len(fake.seen()) == before  # not even get_cost
    assert again.reused is True and again.retries == 0
    assert (again.path, again.sha256, again.bytes, again.cost_usd) == (
        first.path,
        first.sha256,
        first.bytes,
        first.cost_usd,
    )
    assert again.path.stat().st_mtime_ns == mtime
    assert progress == [first.bytes]


def test_a_file_changed_on_disk_is_set_aside_and_bought_again_once(fake, tmp_path):
    first, _ = fetch(fake, tmp_path)
    before = len(fake.seen())
    first.path.write_bytes(first.path.read_bytes()[:-1] + b"\0")

    with pytest.raises(EngineError, match="not a complete download") as err:
        fetch(fake, tmp_path)
    kept = first.path.with_name(first.path.name + ".rejected-1")
    assert "sha256" in str(err.value) and str(kept) in str(err.value)
    assert "run again" in err.value.fix and "$0.25" in err.value.fix
    assert len(fake.seen()) == before  # refusing costs nothing
    assert landed_files(tmp_path) == sorted([kept.name, kept.name + ".json"])

    again, _ = fetch(fake, tmp_path)
    assert again.reused is False and again.sha256 == first.sha256
    assert len(fake.seen(GET_RANGE)) == 2  # bought again exactly once
    assert fetch(fake, tmp_path)[0].reused is True


def test_stale_part_from_a_crash_is_never_reused(fake, tmp_path):
    final = REQ.landing_path(tmp_path)
    final.parent.mkdir(parents=True)
    stale = ohlcv_dbn(start=REQ.start, records=7, seed=99)  # even a decodable .part is not trusted
    final.with_name(final.name + ".part").write_bytes(stale)

    result, _ = fetch(fake, tmp_path)

    assert result.reused is False
    assert [s.endpoint for s in fake.seen()] == [GET_COST, GET_RECORD_COUNT, GET_RANGE]
    assert_complete(result)  # 60 records, not the 7 stale ones
    assert result.path.read_bytes() != stale


def test_concurrent_fetches_of_the_same_request_download_once(fake, tmp_path):
    fake.script(GET_RANGE, Reply(delay=0.3))  # hold the first download open
    results: list[FetchResult] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(fetch(fake, tmp_path)[0])
        except BaseException as exc:  # surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)

    assert errors == []
    assert len(fake.seen(GET_RANGE)) == 1
    assert sorted(r.reused for r in results) == [False, True]
    assert results[0].sha256 == results[1].sha256


# --------------------------------------------------------------------------------------------- cost guard


def test_cost_guard_refuses_above_the_limit_and_downloads_nothing(fake, tmp_path):
    fake.script(GET_COST, Reply.cost(12.34))

    with pytest.raises(EngineError) as err:
        fetch(fake, tmp_path, max_cost_usd=5.0)

    message = str(err.value)
    assert "$12.34" in message and "$5.00" in message
    assert "source.max_cost_usd=12.34" in err.value.fix
    assert [s.endpoint for s in fake.seen()] == [GET_COST]
    assert landed_files(tmp_path) == []


def test_estimate_cost_is_a_free_dry_run(fake):
    fake.script(GET_COST, Reply.error(429, retry_after=3), Reply.cost(3.5))
    sleeps = Sleeps()
    assert estimate_cost(REQ, gateway=fake.gateway, sleep=sleeps) == 3.5
    assert sleeps == [3.0]
    assert [s.endpoint for s in fake.seen()] == [GET_COST, GET_COST]


def test_estimate_cost_maps_errors(fake):
    fake.script(GET_COST, Reply.error(402, "account has no payment method"))
    with pytest.raises(EngineError, match="billing"):
        estimate_cost(REQ, gateway=fake.gateway, sleep=Sleeps())


# --------------------------------------------------------------------------------------------- retries


def test_429_then_success_honours_retry_after(fake, tmp_path):
    fake.script(GET_RANGE, Reply.error(429, "too many requests", retry_after=2))

    result, sleeps = fetch(fake, tmp_path, backoff_seconds=0.5)

    assert result.retries == 1
    assert sleeps == [2.0]  # the server's Retry-After, not our 0.5 s backoff
    assert len(fake.seen(GET_RANGE)) == 2
    assert_complete(result)


def test_503_then_success_backs_off(fake, tmp_path):
    fake.script(GET_RANGE, Reply.error(503, "service unavailable"))

    result, sleeps = fetch(fake, tmp_path, backoff_seconds=0.75)

    assert result.retries == 1
    assert sleeps == [0.75]
    assert_complete(result)


def test_retries_on_get_cost_are_counted_too(fake, tmp_path):
    fake.script(GET_COST, Reply.error(500))
    result, sleeps = fetch(fake, tmp_path)
    assert result.retries == 1 and sleeps == [1.0]
    assert [s.endpoint for s in fake.seen()] == [GET_COST, GET_COST, GET_RECORD_COUNT, GET_RANGE]


def test_broken_stream_then_success(fake, tmp_path):
    fake.script(GET_RANGE, Reply.broken())  # full Content-Length, half the body, hang up
    part = REQ.landing_path(tmp_path).with_name(REQ.landing_path(tmp_path).name + ".part")
    part_during_backoff: list[bool] = []
    sleeps = Sleeps()

    def sleep(seconds: float) -> None:
        part_during_backoff.append(part.exists())
        sleeps(seconds)

    result, _ = fetch(fake, tmp_path, sleep=sleep)

    assert result.retries == 1 and sleeps == [1.0]
    assert part_during_backoff == [False]  # the partial file was removed before waiting
    assert_complete(result)
    assert landed_files(tmp_path) == [result.path.name, result.path.name + ".json"]


def test_body_that_silently_ends_early_is_caught_by_verification(fake, tmp_path):
    # No Content-Length and the connection simply closes: the client sees a normal end of body and
    # even opens the file fine (the first zstd blocks decode) -- only the unfinished frame gives it away.
    fake.records = 5000
    fake.script(GET_RANGE, Reply.truncated_silently())

    result, sleeps = fetch(fake, tmp_path)

    assert result.retries == 1
    assert_complete(result, records=5000)


def test_stream_cut_between_zstd_frames_is_caught_by_verification(fake, tmp_path):
    # Two zstd frames; the cut lands inside the second frame's only block, so everything that can be
    # decompressed is whole records: the client is happy, only the unfinished frame gives it away.
    body = ohlcv_dbn(start=REQ.start, records=2010, first_frame_records=10)
    fake.records = 2010
    fake.script(GET_RANGE, Reply(body=body, fault="truncate_silently"), Reply(body=body))

    result, _ = fetch(fake, tmp_path)

    assert result.retries == 1
    assert_complete(result, records=2010)
    assert result.path.read_bytes() == body


def test_body_cut_mid_record_is_caught_by_verification(fake, tmp_path):
    # Plain (uncompressed) DBN cut inside a record: the metadata reads fine, the last record is partial.
    body = ohlcv_dbn(start=REQ.start, records=60, compress=False)
    fake.script(GET_RANGE, Reply(body=body, fault="truncate_silently"), Reply(body=body))

    result, _ = fetch(fake, tmp_path)

    assert result.retries == 1
    assert_complete(result)
    assert result.path.read_bytes() == body


def test_connection_dropped_before_answer_is_retried(fake, tmp_path):
    fake.script(GET_RANGE, Reply.dropped())
    result, _ = fetch(fake, tmp_path)
    assert result.retries == 1
    assert_complete(result)


def test_exhausted_retries_name_the_last_failure(fake, tmp_path):
    fake.script(
        GET_RANGE, Reply.error(503), Reply.error(502), Reply.broken(), Reply.error(504, "upstream timed out")
    )

    with pytest.raises(EngineError) as err:
        fetch(
            fake,
            tmp_path,
            max_retries=3,
            backoff_seconds=1.0,
            max_backoff_seconds=3.0,
            sleep=(sleeps := Sleeps()),
        )

    message = str(err.value)
    assert "3 retries" in message
    assert "504" in message and "timed out" in message  # the last failure, not the first
    assert sleeps == [1.0, 2.0, 3.0]  # exponential, capped
    assert len(fake.seen(GET_RANGE)) == 4
    assert landed_files(tmp_path) == []


@pytest.mark.parametrize(
    ("served", "named"), [({"schema": "ohlcv-1h"}, "ohlcv-1h"), ({"dataset": "XNAS.ITCH"}, "XNAS.ITCH")]
)
def test_complete_but_wrong_data_is_not_paid_for_again(fake, tmp_path, served, named):
    fake.script(GET_RANGE, Reply(body=ohlcv_dbn(start=REQ.start, **served)))

    with pytest.raises(EngineError, match=named):
        fetch(fake, tmp_path)

    assert len(fake.seen(GET_RANGE)) == 1
    assert landed_files(tmp_path) == []


# --------------------------------------------------------------------------------------------- fatal errors


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (401, "DATABENTO_API_KEY"),
        (403, "DATABENTO_API_KEY"),
        (402, "billing"),
        (404, "dataset GLBX.MDP4 not found"),
        (422, "symbol NQ.v.9 did not resolve"),
    ],
)
def test_client_errors_fail_fast(fake, tmp_path, status, expected):
    message = {404: "dataset GLBX.MDP4 not found", 422: "symbol NQ.v.9 did not resolve"}.get(status, "")
    fake.script(GET_COST, Reply.error(status, message))

    with pytest.raises(EngineError) as err:
        fetch(fake, tmp_path)

    assert expected in str(err.value)
    assert str(status) in str(err.value)
    assert len(fake.seen()) == 1
    assert landed_files(tmp_path) == []


def test_client_error_on_download_fails_fast_after_cost(fake, tmp_path):
    fake.script(GET_RANGE, Reply.error(422, "end is after the available range"))
    with pytest.raises(EngineError, match="end is after the available range") as err:
        fetch(fake, tmp_path)
    assert "window" in err.value.fix
    assert len(fake.seen(GET_RANGE)) == 1
    assert landed_files(tmp_path) == []


@pytest.mark.parametrize("value", [None, "", "   "])
def test_missing_key_says_to_export_it(fake, tmp_path, monkeypatch, value):
    if value is None:
        monkeypatch.delenv("DATABENTO_API_KEY")
    else:
        monkeypatch.setenv("DATABENTO_API_KEY", value)
    with pytest.raises(EngineError) as err:
        fetch(fake, tmp_path)
    assert "export DATABENTO_API_KEY" in str(err.value)
    assert fake.seen() == []
    with pytest.raises(EngineError, match="DATABENTO_API_KEY"):
        estimate_cost(REQ, gateway=fake.gateway)


def test_api_key_is_never_written_or_logged(fake, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    fake.script(GET_RANGE, Reply.error(503), Reply.broken())
    result, _ = fetch(fake, tmp_path)
    assert result.retries == 2
    assert fake.seen(GET_RANGE)[0].auth_user == KEY  # it was sent -- as basic auth only

    fake.script(GET_COST, Reply.error(401, "invalid key"))
    with pytest.raises(EngineError) as err:
        fetch(fake, tmp_path / "other")

    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name.endswith(".json") for p in written)
    for path in written:
        assert KEY.encode() not in path.read_bytes(), path
    assert KEY not in caplog.text
    assert KEY not in str(err.value)


# --------------------------------------------------------------------------------------------- truncation (item 3)


def test_record_count_is_asked_with_the_request_form_fields(fake, tmp_path):
    fetch(fake, tmp_path)
    (cost,), (count,) = fake.seen(GET_COST), fake.seen(GET_RECORD_COUNT)
    assert count.method == "POST" and count.path == "/v0/metadata.get_record_count" and count.auth_user == KEY
    for name in ("dataset", "symbols", "schema", "stype_in", "start", "end"):
        assert count.params[name] == cost.params[name], name


def test_body_cut_at_a_frame_boundary_is_bought_again_once(fake, tmp_path):
    # Valid zstd, a clean transfer with a true Content-Length: only the record count shows 50 are missing.
    fake.script(GET_RANGE, Reply.cut_at_frame(10))

    result, _ = fetch(fake, tmp_path)

    assert result.retries == 1 and len(fake.seen(GET_RANGE)) == 2
    assert_complete(result)
    kept = result.path.with_name(result.path.name + ".rejected-1")
    assert databento.DBNStore.from_file(kept).to_ndarray().size == 10  # the cut body, kept for inspection


def test_a_second_cut_body_stops_without_buying_a_third_time(fake, tmp_path):
    fake.script(GET_RANGE, Reply.cut_at_frame(10), Reply.cut_at_frame(12))

    with pytest.raises(EngineError) as err:
        fetch(fake, tmp_path)

    final = REQ.landing_path(tmp_path)
    message = str(err.value)
    assert "received 12 of 60 records" in message and "2 times" in message
    assert str(final) + ".rejected-1" in message and str(final) + ".rejected-2" in message
    assert len(fake.seen(GET_RANGE)) == 2
    assert err.value.retries == 1
    assert landed_files(tmp_path) == [final.name + ".rejected-1", final.name + ".rejected-2"]


def test_a_200_body_of_garbage_is_bought_at_most_twice_and_kept(fake, tmp_path):
    garbage = Reply.garbage()
    fake.script(GET_RANGE, garbage, garbage, garbage)

    with pytest.raises(EngineError, match="not the DBN asked for") as err:
        fetch(fake, tmp_path)

    assert len(fake.seen(GET_RANGE)) == 2, "never a third bill"
    final = REQ.landing_path(tmp_path)
    for n in (1, 2):
        assert final.with_name(f"{final.name}.rejected-{n}").read_bytes() == garbage.body
    assert "not a DBN file" in str(err.value) and err.value.retries == 1


def _land_a_cut_file(fake, tmp_path, *, checked: bool) -> Path:
    """A landing as the old code accepted it: a frame-boundary cut whose sidecar matches the cut file."""
    first, _ = fetch(fake, tmp_path)
    cut = ohlcv_dbn(start=REQ.start, end=REQ.end, records=60, first_frame_records=10)
    from fake_databento import zstd_frames

    first.path.write_bytes(zstd_frames(cut)[0])
    sidecar_path = first.path.with_name(first.path.name + ".json")
    sidecar = json.loads(sidecar_path.read_text())
    sidecar.update(sha256=hashlib.sha256(first.path.read_bytes()).hexdigest(), bytes=first.path.stat().st_size)
    if checked:
        sidecar["records"] = 60
    else:
        sidecar["records"] = 10
        sidecar.pop("records_checked")
    sidecar_path.write_text(json.dumps(sidecar))
    return first.path


def test_reuse_recounts_the_records_of_a_landing(fake, tmp_path):
    final = _land_a_cut_file(fake, tmp_path, checked=True)
    before = len(fake.seen())

    with pytest.raises(EngineError, match="received 10 of 60 records") as err:
        fetch(fake, tmp_path)

    assert len(fake.seen()) == before, "checked without any HTTP call"
    assert str(final) in str(err.value) and not final.exists()
    assert landed_files(tmp_path) == [final.name + ".rejected-1", final.name + ".rejected-1.json"]
    again, _ = fetch(fake, tmp_path)
    assert again.reused is False and len(fake.seen(GET_RANGE)) == 2
    assert_complete(again)


def test_a_landing_from_before_record_counts_is_checked_once_against_databento(fake, tmp_path):
    final = _land_a_cut_file(fake, tmp_path, checked=False)

    with pytest.raises(EngineError, match=r"received 10 of 60 records \(metadata.get_record_count\)"):
        fetch(fake, tmp_path)
    assert [s.endpoint for s in fake.seen()][-1] == GET_RECORD_COUNT and not final.exists()

    good, _ = fetch(fake, tmp_path)  # bought again; now strip its check mark as an old sidecar would lack it
    sidecar_path = good.path.with_name(good.path.name + ".json")
    sidecar = json.loads(sidecar_path.read_text())
    del sidecar["records_checked"]
    sidecar_path.write_text(json.dumps(sidecar))
    requests_before = len(fake.seen())
    assert fetch(fake, tmp_path)[0].reused is True
    assert [s.endpoint for s in fake.seen()[requests_before:]] == [GET_RECORD_COUNT]
    assert json.loads(sidecar_path.read_text())["records_checked"] == "metadata.get_record_count"
    assert fetch(fake, tmp_path)[0].reused is True
    assert len(fake.seen()) == requests_before + 1, "checked once, then reused without HTTP"


# --------------------------------------------------------------------------------------------- stalls (item 9)


def test_a_stall_mid_body_shows_counts_as_a_retry_and_recovers(fake, tmp_path):
    fake.records = 2000
    fake.script(GET_RANGE, Reply.stalled(4, after_bytes=200), Reply.stalled(4, after_bytes=200))
    statuses: list[str] = []

    result, sleeps = fetch(
        fake, tmp_path, timeouts=Timeouts(read_seconds=1.5), on_status=statuses.append, backoff_seconds=0.01
    )

    assert result.retries == 2 and len(fake.seen(GET_RANGE)) == 3
    assert_complete(result, records=2000)
    assert "stalled 1 s" in statuses  # first attempt, before the read timeout
    assert "stalled 1 s, retry 1/5" in statuses  # the second attempt stalls too
    assert any(s.startswith("stalled: no data for 1.5 s (source.read_timeout_seconds), retry 2/5") for s in statuses)
    assert statuses[-1] == ""  # cleared once the download went through


def test_a_gateway_that_never_answers_is_ended_by_the_retry_budget(fake, tmp_path):
    fake.script(GET_RANGE, *[Reply.stalled(5)] * 10)  # accepts, then sends nothing at all
    started = time.monotonic()

    with pytest.raises(EngineError) as err:
        fetch(fake, tmp_path, timeouts=Timeouts(read_seconds=1.0, retry_budget_seconds=2.5),
              backoff_seconds=0.01, sleep=time.sleep)

    took = time.monotonic() - started
    assert took < 4.5, took
    assert "source.retry_budget_seconds=2.5 is spent" in str(err.value)
    assert "source.retry_budget_seconds" in err.value.fix
    assert err.value.retries == len(fake.seen(GET_RANGE)) - 1 >= 1
    assert landed_files(tmp_path) == []


def test_a_gateway_that_does_not_accept_connections_fails_on_the_connect_timeout(fake, tmp_path):
    import socket

    with socket.socket() as listener:  # backlog 0 and one connection parked in it: later SYNs are dropped
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        parked = socket.create_connection(listener.getsockname())
        gateway = f"https://127.0.0.1:{listener.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(EngineError) as err:
            fetch_raw(REQ, tmp_path, max_cost_usd=1.0, gateway=gateway, max_retries=1, sleep=Sleeps(),
                      timeouts=Timeouts(connect_seconds=0.3))
        parked.close()
    assert time.monotonic() - started < 3  # not the 60 s read timeout the client would use for connecting
    assert "gave up after 1 retries" in str(err.value) and "metadata.get_cost" in str(err.value)
    assert "within 0.3 s (source.connect_timeout_seconds)" in str(err.value)


def test_the_probe_names_the_connect_timeout(tmp_path):
    import socket

    from engine.sources.databento_client import probe_connect

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        parked = socket.create_connection(listener.getsockname())
        started = time.monotonic()
        with pytest.raises(requests.exceptions.ConnectTimeout, match="source.connect_timeout_seconds"):
            probe_connect(f"https://127.0.0.1:{listener.getsockname()[1]}", 0.3)
        assert time.monotonic() - started < 2
        parked.close()


def test_an_error_after_retries_carries_the_retry_count(fake, tmp_path):
    fake.script(GET_RANGE, Reply.error(503), Reply.broken(), Reply.error(401, "key revoked"))
    with pytest.raises(EngineError, match="key revoked") as err:
        fetch(fake, tmp_path)
    assert err.value.retries == 2


def test_exhausted_retries_carry_the_retry_count(fake, tmp_path):
    fake.script(GET_RANGE, *[Reply.error(503)] * 4)
    with pytest.raises(EngineError, match="gave up after 3 retries") as err:
        fetch(fake, tmp_path, max_retries=3)
    assert err.value.retries == 3


def test_client_timeout_is_set_per_instance_not_on_the_class(fake, tmp_path):
    from databento.common.http import BentoHttpAPI

    fetch(fake, tmp_path, timeouts=Timeouts(read_seconds=7.0))
    assert BentoHttpAPI.TIMEOUT == 100


@pytest.mark.parametrize("key", ["connect_timeout_seconds", "read_timeout_seconds", "retry_budget_seconds"])
def test_timeouts_must_be_positive(engine_cli, key):
    run = engine_cli("source=databento", f"source.{key}=0", "dry_run=true")
    assert run.returncode == 2, run.output
    assert f"source.{key}=0.0 is not a positive number of seconds" in run.result["error"]


# --------------------------------------------------------------------------------------------- retry policy


class Clock:
    """A monotonic clock that moves only when the policy sleeps: budgets checked without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps = Sleeps()

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps(seconds)
        self.now += seconds


def test_retry_after_is_capped(fake, tmp_path):
    fake.script(GET_RANGE, Reply.error(429, retry_after=86_400))
    result, sleeps = fetch(fake, tmp_path, timeouts=Timeouts(retry_budget_seconds=10_000))
    assert result.retries == 1 and sleeps == [900.0]  # RETRY_AFTER_CAP_SECONDS, not a day
    assert_complete(result)


def test_retry_after_as_an_http_date_is_honoured(fake, tmp_path):
    when = email.utils.format_datetime(dt.datetime.now(UTC) + dt.timedelta(seconds=30), usegmt=True)
    fake.script(GET_COST, replace(Reply.error(503), headers={"Retry-After": when}))
    result, sleeps = fetch(fake, tmp_path)
    assert result.retries == 1 and len(sleeps) == 1 and 25 <= sleeps[0] <= 30


def test_a_retry_after_beyond_the_budget_gives_up_without_waiting(fake, tmp_path):
    fake.script(GET_COST, Reply.error(429, "slow down", retry_after=30))
    with pytest.raises(EngineError) as err:
        fetch(fake, tmp_path, timeouts=Timeouts(retry_budget_seconds=20))
    assert "gave up after 0 retries" in str(err.value) and "retry_budget_seconds=20 is spent" in str(err.value)
    assert "Last failure: HTTP 429 http_429; slow down" in str(err.value)
    assert not hasattr(err.value, "retries") or err.value.retries == 0
    assert len(fake.seen()) == 1


def test_the_budget_counts_every_attempt_and_wait_of_one_call_on_the_given_clock(fake, tmp_path):
    fake.script(GET_RANGE, *[Reply.error(503)] * 5)
    clock = Clock()
    with pytest.raises(EngineError, match="gave up after 2 retries and 3.0 s") as err:
        fetch(fake, tmp_path, timeouts=Timeouts(retry_budget_seconds=6.5), sleep=clock.sleep, clock=clock)
    assert clock.sleeps == [1.0, 2.0]  # 3 s spent; the next 4 s backoff would end past 6.5 s
    assert err.value.retries == 2 and len(fake.seen(GET_RANGE)) == 3


def test_each_call_has_its_own_budget_and_retries_add_up(fake, tmp_path):
    fake.script(GET_COST, Reply.error(503), Reply.error(503))
    fake.script(GET_RANGE, Reply.error(503), Reply.error(503))
    clock = Clock()
    result, _ = fetch(fake, tmp_path, timeouts=Timeouts(retry_budget_seconds=3.5), sleep=clock.sleep, clock=clock)
    assert result.retries == 4 and clock.sleeps == [1.0, 2.0, 1.0, 2.0]
    assert_complete(result)


def test_status_names_the_retry_and_clears_on_success(fake, tmp_path):
    fake.script(GET_RECORD_COUNT, Reply.error(502, "bad gateway"))
    statuses: list[str] = []
    result, _ = fetch(fake, tmp_path, on_status=statuses.append)
    assert result.retries == 1
    assert "HTTP 502 http_502; bad gateway (request fake-2), retry 1/5" in statuses
    assert statuses[-1] == ""


@pytest.mark.parametrize(("offset", "value"), [(0, 13), (1, 0x20)], ids=["length-52", "rtype-ohlcv-1s"])
def test_a_damaged_record_is_a_bad_body_not_a_crash(fake, tmp_path, offset, value):
    # databento_dbn's decoder panics (a BaseException, with a Rust backtrace) on a record shorter than its
    # rtype and accepts an ohlcv-1s record among ohlcv-1m bars: the reasons verification frames the records
    # itself (engine.sources.dbn.count_records).
    body = bytearray(ohlcv_dbn(start=REQ.start, records=60, compress=False))
    body[len(body) - 56 * 50 + offset] = value  # the 11th record
    fake.script(GET_RANGE, Reply(body=bytes(body)))
    result, _ = fetch(fake, tmp_path)
    assert result.retries == 1 and len(fake.seen(GET_RANGE)) == 2
    assert_complete(result)
    kept = result.path.with_name(result.path.name + ".rejected-1")
    assert kept.read_bytes() == bytes(body)
