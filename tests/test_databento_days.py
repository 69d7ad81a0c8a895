"""Bars land by UTC day and only what is missing is bought (engine/sources/databento_days.py, issue 14 item 1).

Against the local fake of Databento's API (tests/fake_databento.py: real TLS, real DBN bytes, the official client
unmodified), which records every request: the landing in process, and full `python -m engine` runs on SQLite and
PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import pytest
from fake_databento import GET_COST, GET_RANGE, GET_RECORD_COUNT, _parse_ts
from sql_rows import query

from engine.errors import EngineError
from engine.sources.databento_api import RawRequest, fetch_days, fetch_raw
from engine.sources.databento_days import (
    DAYS_DIR,
    day_landing_path,
    days_dir,
    land_day_body,
    landed_pieces,
    plan_days,
)
from engine.sources.dbn import _read_info, count_records

KEY = "db-DAYSTESTKEY0123456789abcdef"
UTC = dt.UTC
EVERY = 30  # the fake serves one bar every 30 minutes of every window asked
MONTH = (dt.datetime(2026, 2, 1, tzinfo=UTC), dt.datetime(2026, 3, 1, tzinfo=UTC))  # four weeks
WEEK = (dt.datetime(2026, 2, 8, tzinfo=UTC), dt.datetime(2026, 2, 15, tzinfo=UTC))
DAY_BARS = 24 * 60 // EVERY


def bars(start: dt.datetime, end: dt.datetime, symbol: str = "NQ.v.0") -> RawRequest:
    return RawRequest("GLBX.MDP3", symbol, "ohlcv-1m", "continuous", start, end)


@pytest.fixture
def fake(fake_databento):
    return fake_databento(KEY, every_minutes=EVERY)


def fetch(fake, data_dir: Path, req: RawRequest, **kwargs):
    kwargs.setdefault("max_cost_usd", 10.0)
    return fetch_days(req, data_dir, gateway=fake.gateway, sleep=lambda s: None, **kwargs)


def bought(fake) -> list[tuple[dt.datetime, dt.datetime]]:
    """The [start, end) of every timeseries.get_range the fake received."""
    return [(dt.datetime.fromtimestamp(_parse_ts(s.params["start"]) / 1e9, UTC),
             dt.datetime.fromtimestamp(_parse_ts(s.params["end"]) / 1e9, UTC)) for s in fake.seen(GET_RANGE)]


def days_of(spans) -> float:
    return sum((b - a).total_seconds() for a, b in spans) / 86_400


def test_a_week_then_the_month_around_it_buys_three_weeks_not_four(fake, tmp_path):
    week = fetch(fake, tmp_path, bars(*WEEK))
    assert bought(fake) == [WEEK] and [r.reused for r in week] == [False] * 7
    month = fetch(fake, tmp_path, bars(*MONTH))

    assert bought(fake)[1:] == [(MONTH[0], WEEK[0]), (WEEK[1], MONTH[1])]  # one request per run of missing days
    assert days_of(bought(fake)) == 28 and days_of(bought(fake)[1:]) == 21
    assert len(fake.seen(GET_COST)) == len(fake.seen(GET_RECORD_COUNT)) == 3
    assert len(month) == 28 and sum(r.reused for r in month) == 7
    assert [r.path.name for r in month] == [f"202602{d:02d}.dbn.zst" for d in range(1, 29)]
    assert sum(count_records(r.path)[1] for r in month) == 28 * DAY_BARS
    before = len(fake.seen())
    again = fetch(fake, tmp_path, bars(*MONTH))
    assert len(fake.seen()) == before, "a landed month is served without any HTTP call"
    assert all(r.reused for r in again) and [r.sha256 for r in again] == [r.sha256 for r in month]


def test_each_day_is_a_landing_with_its_own_metadata_and_sidecar(fake, tmp_path):
    [day] = fetch(fake, tmp_path, bars(dt.datetime(2026, 2, 2, tzinfo=UTC), dt.datetime(2026, 2, 3, tzinfo=UTC)))
    assert day.path == tmp_path / "raw/GLBX.MDP3/ohlcv-1m/NQ.v.0" / DAYS_DIR / "20260202.dbn.zst"
    info, count = count_records(day.path)
    assert (info.start_ns, info.end_ns, count) == (_parse_ts("2026-02-02T00:00:00+00:00"),
                                                   _parse_ts("2026-02-03T00:00:00+00:00"), DAY_BARS)
    assert info.maps("NQ.v.0") and {iv[1:3] for iv in info.intervals} == {(20486, 20487)}  # that day only
    sidecar = json.loads(day.path.with_name(day.path.name + ".json").read_text())
    assert sidecar["request"]["start"] == "2026-02-02T00:00:00+00:00" and sidecar["records"] == DAY_BARS
    assert sidecar["records_checked"] == "metadata.get_record_count" and sidecar["origin"] == "stream"
    assert sidecar["symbology"] == {"NQ.v.0": [{"start_date": "2026-02-02", "end_date": "2026-02-03",
                                                "symbol": str(info.intervals[0][0])}]}
    assert sidecar["sha256"] == day.sha256 and sidecar["bytes"] == day.path.stat().st_size
    assert sidecar["cost_usd"] == pytest.approx(0.25)


def test_a_run_is_split_into_days_whose_counts_and_costs_add_up(fake, tmp_path):
    start = dt.datetime(2026, 2, 2, 13, 0, tzinfo=UTC)
    end = dt.datetime(2026, 2, 5, 7, 30, tzinfo=UTC)
    pieces = fetch(fake, tmp_path, bars(start, end))
    assert [p.path.name for p in pieces] == ["20260202T130000Z_20260203T000000Z.dbn.zst", "20260203.dbn.zst",
                                             "20260204.dbn.zst", "20260205T000000Z_20260205T073000Z.dbn.zst"]
    counts = [count_records(p.path)[1] for p in pieces]
    assert counts == [22, DAY_BARS, DAY_BARS, 15] and len(fake.seen(GET_RANGE)) == 1
    assert sum(p.cost_usd for p in pieces) == pytest.approx(0.25)
    infos = [_read_info(p.path) for p in pieces]
    assert infos[0].start_ns == _parse_ts(start.isoformat()) and infos[-1].end_ns == _parse_ts(end.isoformat())


def test_the_edges_buy_only_the_minutes_not_landed(fake, tmp_path):
    fetch(fake, tmp_path, bars(dt.datetime(2026, 2, 2, 13, tzinfo=UTC), dt.datetime(2026, 2, 3, 6, tzinfo=UTC)))
    served = fetch(fake, tmp_path, bars(dt.datetime(2026, 2, 2, tzinfo=UTC), dt.datetime(2026, 2, 4, tzinfo=UTC)))
    assert bought(fake)[1:] == [(dt.datetime(2026, 2, 2, tzinfo=UTC), dt.datetime(2026, 2, 2, 13, tzinfo=UTC)),
                                (dt.datetime(2026, 2, 3, 6, tzinfo=UTC), dt.datetime(2026, 2, 4, tzinfo=UTC))]
    assert sum(count_records(p.path)[1] for p in served) == 2 * DAY_BARS
    assert len(served) == 4 and sum(p.reused for p in served) == 2


def test_the_cost_guard_prices_only_the_missing_days_and_names_them(fake, tmp_path):
    fetch(fake, tmp_path, bars(*WEEK))
    fake.cost_usd = 3.0
    with pytest.raises(EngineError) as err:
        fetch(fake, tmp_path, bars(*MONTH), max_cost_usd=5.0)
    assert "$6.00" in err.value.problem and "21 missing days" in err.value.problem
    assert "2026-02-01" in err.value.problem and "2026-02-08" not in err.value.problem
    assert len(bought(fake)) == 1 and [dict(s.params)["start"][:10] for s in fake.seen(GET_COST)][1:] == [
        "2026-02-01", "2026-02-15"]


def test_a_changed_day_is_set_aside_and_bought_again_once(fake, tmp_path):
    fetch(fake, tmp_path, bars(*WEEK))
    damaged = days_dir(tmp_path, bars(*WEEK)) / "20260210.dbn.zst"
    damaged.write_bytes(damaged.read_bytes()[:-3] + b"xyz")
    with pytest.raises(EngineError, match="20260210.dbn.zst is not as it was landed"):
        fetch(fake, tmp_path, bars(*WEEK))
    assert damaged.with_name("20260210.dbn.zst.rejected-1").is_file() and not damaged.exists()
    again = fetch(fake, tmp_path, bars(*WEEK))
    assert bought(fake)[1:] == [(dt.datetime(2026, 2, 10, tzinfo=UTC), dt.datetime(2026, 2, 11, tzinfo=UTC))]
    assert [r.reused for r in again] == [True, True, False, True, True, True, True]


def test_land_day_body_lands_a_body_already_on_disk(fake, tmp_path):
    # What a batch job's day file goes through: the same checks, a sidecar, an atomic rename.
    day = bars(dt.datetime(2026, 2, 2, tzinfo=UTC), dt.datetime(2026, 2, 3, tzinfo=UTC))
    donor = fetch_raw(day, tmp_path / "donor", max_cost_usd=1.0, gateway=fake.gateway)
    final = day_landing_path(tmp_path, day)
    final.parent.mkdir(parents=True)
    part = final.with_name(final.name + ".part")
    part.write_bytes(donor.path.read_bytes())
    result = land_day_body(part, day, expected_records=DAY_BARS, sidecar_extra={"origin": "batch:GLBX-1"})
    assert result.path == final and not part.exists() and result.records == DAY_BARS
    sidecar = json.loads(final.with_name(final.name + ".json").read_text())
    assert sidecar["origin"] == "batch:GLBX-1" and sidecar["sha256"] == donor.sha256
    assert plan_days(tmp_path, day).missing == ()
    part.write_bytes(donor.path.read_bytes()[: donor.bytes // 2])
    with pytest.raises(Exception, match="the body"):
        land_day_body(part, day, expected_records=DAY_BARS, sidecar_extra={})


def test_the_missing_days_of_ten_landed_years_are_found_from_names_alone(tmp_path):
    folder = days_dir(tmp_path, bars(*MONTH))
    folder.mkdir(parents=True)
    first = dt.date(2016, 1, 1)
    for n in range(3653):
        (folder / f"{first + dt.timedelta(days=n):%Y%m%d}.dbn.zst").touch()
    (folder / "20200101.dbn.zst").unlink()
    window = bars(dt.datetime(2016, 1, 1, tzinfo=UTC), dt.datetime(2026, 1, 1, tzinfo=UTC))
    started = time.perf_counter()
    plan = plan_days(tmp_path, window)
    assert time.perf_counter() - started < 0.5
    assert plan.missing_days() == ["2020-01-01"] and len(plan.landed) == 3652
    assert len(landed_pieces(folder)) == 3652


# --------------------------------------------------------------------------------------------- end to end


@pytest.fixture
def served(fake_databento):
    return fake_databento(KEY, every_minutes=EVERY, subprocess=True)


def job(fake, db_url, start, end) -> list[str]:
    return [f"db.url={db_url}", "stages=[ingest]", "source=databento", f"source.gateway={fake.gateway}",
            "source.backoff_seconds=0.01", "source.definitions=false", "source.roll_outrights=false", "symbol=NQ",
            f"window.start={start:%Y-%m-%dT%H:%M:%SZ}", f"window.end={end:%Y-%m-%dT%H:%M:%SZ}"]


def test_a_week_then_the_month_end_to_end(engine_cli, db_url, served):
    week = engine_cli(*job(served, db_url, *WEEK))
    assert week.returncode == 0, week.output
    assert week.result["stages"]["ingest"]["bars_inserted"] == 7 * DAY_BARS
    month = engine_cli(*job(served, db_url, *MONTH))
    assert month.returncode == 0, month.output
    summary = month.result["stages"]["ingest"]
    assert bought(served) == [WEEK, (MONTH[0], WEEK[0]), (WEEK[1], MONTH[1])]
    assert days_of(bought(served)[1:]) == 21
    assert (summary["bars_inserted"], summary["bars_unchanged"], summary["bars_skipped"]) == (
        21 * DAY_BARS, 7 * DAY_BARS, 0)
    [raw] = summary["raw_files"]
    assert (raw["days"], raw["days_bought"], raw["reused"]) == (28, 21, False)
    [count] = query(db_url, "SELECT count(*) AS n FROM market_bars_ohlcv_1m_clean")
    assert count["n"] == 28 * DAY_BARS
    # A window inside landed days: served from them, the days' bars outside it counted, not quarantined.
    before = len(served.seen())
    inner = engine_cli(*job(served, db_url, dt.datetime(2026, 2, 3, 12, tzinfo=UTC),
                            dt.datetime(2026, 2, 4, 12, tzinfo=UTC)))
    assert inner.returncode == 0, inner.output
    assert len(served.seen()) == before
    summary = inner.result["stages"]["ingest"]
    assert (summary["bars_received"], summary["bars_skipped"], summary["outside_window"]) == (
        DAY_BARS, 0, DAY_BARS)


def test_a_request_keyed_landing_of_an_earlier_version_is_reused_without_http(engine_cli, db_url, served, tmp_path):
    legacy = bars(*WEEK)
    fetch_raw(legacy, tmp_path / "data", max_cost_usd=1.0, gateway=served.gateway)  # the layout before days
    before = len(served.seen())
    run = engine_cli(*job(served, db_url, *WEEK))
    assert run.returncode == 0, run.output
    assert len(served.seen()) == before, "reused as it is: no HTTP call"
    summary = run.result["stages"]["ingest"]
    assert summary["bars_inserted"] == 7 * DAY_BARS and summary["raw_files"][0]["reused"] is True
    assert not days_dir(tmp_path / "data", legacy).exists()


def test_dry_run_prices_and_lists_only_the_missing_days(engine_cli, db_url, served, tmp_path):
    assert engine_cli(*job(served, db_url, *WEEK)).returncode == 0
    costs = len(served.seen(GET_COST))
    run = engine_cli("dry_run=true", "hydra.run.dir=plans/days", *job(served, db_url, *MONTH))
    assert run.returncode == 0, run.output
    plan = json.loads((tmp_path / "plans/days/result.json").read_text())["plan"]
    rows = plan["raw_files"]
    assert [(r["chunk"], r["landed"]) for r in rows] == [
        (["2026-02-01T00:00:00Z", "2026-02-08T00:00:00Z"], False),
        (["2026-02-15T00:00:00Z", "2026-03-01T00:00:00Z"], False)]
    assert rows[0]["days"] == [f"2026-02-{d:02d}" for d in range(1, 8)] and len(rows[1]["days"]) == 14
    assert len(served.seen(GET_COST)) == costs + 2 and len(served.seen(GET_RANGE)) == 1


def test_the_jobs_cost_guard_names_the_missing_days_before_anything_is_bought(fake, tmp_path):
    from types import SimpleNamespace

    from rich.progress import Progress

    from engine.sources.databento import DatabentoSource
    from engine.sources.databento_api import acquire
    from engine.symbols import ResolvedSymbol
    from engine.windows import Window

    fetch(fake, tmp_path, bars(*WEEK))
    nq = ResolvedSymbol("GLBX.MDP3:NQ", "GLBX.MDP3", "NQ", "v", 0, "ohlcv-1m", "continuous", {})
    source = DatabentoSource(gateway=fake.gateway, backoff_seconds=0.01, max_cost_usd=0.4, definitions=False,
                             roll_outrights=False)
    ctx = SimpleNamespace(symbol=nq, source=source, window=Window(*MONTH), cfg=SimpleNamespace(data_dir=tmp_path))
    with pytest.raises(EngineError) as refused, Progress(disable=True) as progress:
        acquire(ctx, progress)  # two runs of missing days at $0.25 each: $0.50
    assert "$0.50" in refused.value.problem and "21 missing days (2026-02-01, 2026-02-02" in refused.value.problem
    assert len(bought(fake)) == 1
    source.max_cost_usd = 0.5
    with Progress(disable=True) as progress:
        landing = acquire(ctx, progress)
    assert len(landing.paths) == 28 and landing.trim and landing.raw_files[0]["days_bought"] == 21
    assert landing.raw_files[0]["cost_usd"] == pytest.approx(0.75)  # the week's $0.25 and the two runs'
