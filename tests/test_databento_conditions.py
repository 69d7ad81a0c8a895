"""Issue 14 item 3: Databento's data-quality dates decide what is bought. Full `python -m engine` runs against the
local fake gateway (its metadata.get_dataset_condition scripted per test), on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from fake_databento import GET_DATASET_CONDITION, GET_RANGE, SUBMIT_JOB
from sql_rows import query

from engine.sources.databento_client import DayCondition
from engine.sources.databento_conditions import decide, needs_rebuy, runs
from engine.sources.databento_request import RawRequest

KEY = "db-CONDITIONTESTKEY0123456789ab"
WINDOW = ["window.start=2025-12-09T00:00:00Z", "window.end=2025-12-12T00:00:00Z"]
D9, D10, D11 = dt.date(2025, 12, 9), dt.date(2025, 12, 10), dt.date(2025, 12, 11)
UTC = dt.UTC


def job_args(db_url: str, fake, *extra: str) -> list[str]:
    return [f"db.url={db_url}", "symbol=NQ", "stages=[ingest]", "source=databento", f"source.gateway={fake.gateway}",
            "source.backoff_seconds=0.01", "source.definitions=false", "source.roll_outrights=false",
            "source.batch_poll_seconds=0.05", *WINDOW, *extra]


def bought(fake) -> list[tuple[str, str]]:
    return [(s.params["start"][:10], s.params["end"][:10]) for s in fake.seen(GET_RANGE)]


def landing(tmp_path: Path, name: str) -> dict:
    path = tmp_path / "data" / "raw" / "GLBX.MDP3" / "ohlcv-1m" / "NQ.v.0" / "days" / name
    return json.loads(path.with_name(path.name + ".json").read_text())


def flagged(engine_cli, db_url: str) -> list[tuple[str, str, bool]]:
    """The Databento flags `engine status --json` shows for NQ."""
    shown = engine_cli("status", f"db.url={db_url}", "--json", "--no-png")
    assert shown.returncode == 0, shown.output
    [nq] = json.loads(shown.stdout)["symbols"]
    return [(d["day"], d["condition"], d["bought"]) for d in nq["flagged_days"]]


def test_decide_buys_available_and_degraded_flags_degraded_and_recent_days():
    req = RawRequest("GLBX.MDP3", "NQ.v.0", "ohlcv-1m", "continuous", dt.datetime(2025, 12, 9, tzinfo=UTC),
                     dt.datetime(2025, 12, 13, tzinfo=UTC))
    conditions = {D9: DayCondition(D9, "available", D10), D10: DayCondition(D10, "pending", None),
                  D11: DayCondition(D11, "degraded", dt.date(2025, 12, 20))}  # the 12th is not listed: missing
    plan = decide(req, conditions, now=dt.datetime(2025, 12, 13, 20, tzinfo=UTC))
    assert plan.buy == [D9, D11] and plan.skipped == {D10: "pending", dt.date(2025, 12, 12): "missing"}
    assert plan.flagged(D11) and not plan.flagged(D9)
    late = decide(req, {**conditions, dt.date(2025, 12, 12): DayCondition(dt.date(2025, 12, 12), "available", None)},
                  now=dt.datetime(2025, 12, 13, 20, tzinfo=UTC))
    assert late.flags[dt.date(2025, 12, 12)]["provisional"], "ends within the last 24 hours: not final yet"
    assert [(r.start.day, r.end.day) for r in runs(req, late.buy)] == [(9, 10), (11, 13)]
    assert needs_rebuy(plan.flags[D11], {"last_modified_date": "2025-12-21"})
    assert not needs_rebuy(plan.flags[D11], plan.flags[D11])
    assert not needs_rebuy(plan.flags[D9], {"last_modified_date": "2026-01-01"}), "available days stay"


@pytest.mark.parametrize("absent", ["pending", "missing"])
def test_days_without_data_are_not_bought_and_degraded_days_are_flagged_then_rebought_once(
        engine_cli, db_url, fake_databento, tmp_path, absent):
    fake = fake_databento(KEY, records=1440, subprocess=True)  # each streamed piece: a full day of bars
    fake.batch.conditions = {D10: (absent, None if absent == "missing" else "2025-12-11"),
                             D11: ("degraded", "2025-12-20")}
    first = engine_cli(*job_args(db_url, fake, "source.mode=stream"))
    assert first.returncode == 0, first.output
    assert bought(fake) == [("2025-12-09", "2025-12-10"), ("2025-12-11", "2025-12-12")]
    assert f"2025-12-10 ({absent})" in " ".join(first.output.replace("│", " ").split())
    raw_files = first.result["stages"]["ingest"]["raw_files"]
    assert {"day": "2025-12-10", "condition": absent, "bought": False} in raw_files
    assert query(db_url, "SELECT count(*) AS n FROM market_bars_ohlcv_1m_clean")[0]["n"] == 2 * 1440
    covered = query(db_url, "SELECT start_ts, end_ts FROM clean_coverage ORDER BY start_ts")
    ten = (dt.datetime(2025, 12, 10, tzinfo=UTC), dt.datetime(2025, 12, 11, tzinfo=UTC))
    assert covered and not [r for r in covered if _utc(r["start_ts"]) < ten[1] and _utc(r["end_ts"]) > ten[0]]
    flags = query(db_url, "SELECT day, condition, last_modified_date, provisional, bought "
                          "FROM clean_coverage_conditions ORDER BY day")
    assert [(str(r["day"]), r["condition"], bool(r["bought"])) for r in flags] == [
        ("2025-12-10", absent, False), ("2025-12-11", "degraded", True)]
    assert str(flags[1]["last_modified_date"]) == "2025-12-20"
    sidecar = landing(tmp_path, "20251211.dbn.zst")
    assert (sidecar["condition"], sidecar["last_modified_date"]) == ("degraded", "2025-12-20")
    assert flagged(engine_cli, db_url) == [("2025-12-10", absent, False), ("2025-12-11", "degraded", True)]
    shown = " ".join(engine_cli("status", f"db.url={db_url}", "--no-png").stdout.replace("│", " ").split())
    assert f"Databento flags not bought 1 day: 2025-12-10 ({absent}) degraded 1 day: 2025-12-11" in shown, shown
    assert landing(tmp_path, "20251209.dbn.zst")["condition"] == "available"

    same = engine_cli(*job_args(db_url, fake, "source.mode=stream"))
    assert same.returncode == 0, same.output
    assert len(bought(fake)) == 2, "nothing moved: nothing bought again"

    fake.batch.conditions[D11] = ("available", "2025-12-27")  # Databento regenerated the degraded day
    moved = engine_cli(*job_args(db_url, fake, "source.mode=stream"))
    assert moved.returncode == 0, moved.output
    assert bought(fake)[2:] == [("2025-12-11", "2025-12-12")], "bought again once"
    assert flagged(engine_cli, db_url) == [("2025-12-10", absent, False)], "the regenerated day is cleared"
    again = engine_cli(*job_args(db_url, fake, "source.mode=stream"))
    assert again.returncode == 0, again.output
    assert len(bought(fake)) == 3, "bought again once only"
    assert len(fake.seen(GET_DATASET_CONDITION)) == 4, "asked every run: the day without data may have come"


def test_degraded_days_of_a_batch_job_are_flagged_in_their_day_sidecars(engine_cli, db_url, fake_databento, tmp_path):
    fake = fake_databento(KEY, records=3000, subprocess=True)
    fake.batch.conditions = {D10: ("degraded", "2025-12-20")}
    run = engine_cli(*job_args(db_url, fake, "source.mode=batch"))
    assert run.returncode == 0, run.output
    assert fake.batch.submitted() == 1 and not fake.seen(GET_RANGE)
    assert landing(tmp_path, "20251210.dbn.zst")["condition"] == "degraded"
    assert landing(tmp_path, "20251209.dbn.zst")["condition"] == "available"
    fake.batch.conditions = {D10: ("available", "2025-12-28")}
    again = engine_cli(*job_args(db_url, fake, "source.mode=batch"))
    assert again.returncode == 0, again.output
    assert fake.batch.submitted() == 2
    second = fake.seen(SUBMIT_JOB)[1].params
    assert (second["start"][:10], second["end"][:10]) == ("2025-12-10", "2025-12-11"), "only that day again"


def test_the_last_24_hours_are_bought_flagged_provisional_and_rebought_when_final(
        engine_cli, db_url, fake_databento, tmp_path):
    fake = fake_databento(KEY, records=60, subprocess=True)
    now = dt.datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start, end = now - dt.timedelta(hours=3), now - dt.timedelta(hours=2)
    fake.batch.conditions = {start.date(): ("available", now.date().isoformat())}
    args = [*job_args(db_url, fake, "source.mode=stream")[:-2], f"window.start={start:%Y-%m-%dT%H:%M:%SZ}",
            f"window.end={end:%Y-%m-%dT%H:%M:%SZ}"]
    first = engine_cli(*args)
    assert first.returncode == 0, first.output
    assert len(bought(fake)) == 1
    name = f"{start:%Y%m%dT%H%M%SZ}_{end:%Y%m%dT%H%M%SZ}.dbn.zst"  # a part of the day
    assert landing(tmp_path, name)["provisional"] is True
    assert flagged(engine_cli, db_url) == [(start.date().isoformat(), "available", True)], "shown as provisional"
    fake.batch.conditions = {start.date(): ("available", (now.date() + dt.timedelta(days=1)).isoformat())}
    again = engine_cli(*args)
    assert again.returncode == 0, again.output
    assert len(bought(fake)) == 2, "regenerated since: bought again once"


def test_a_window_without_any_day_of_data_buys_nothing_and_says_so(engine_cli, db_url, fake_databento):
    fake = fake_databento(KEY, records=1440, subprocess=True)
    fake.batch.conditions = {day: ("pending", None) for day in (D9, D10, D11)}
    run = engine_cli(*job_args(db_url, fake))
    assert run.returncode == 2, run.output
    text = " ".join(run.output.replace("│", " ").split())
    assert "no data yet" in text and "2025-12-10 pending" in text and "Traceback" not in run.output
    assert not fake.seen(GET_RANGE) and not fake.seen(SUBMIT_JOB)


def _utc(value) -> dt.datetime:
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)
