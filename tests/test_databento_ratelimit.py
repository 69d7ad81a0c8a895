"""Issue 14 item 4: Databento's rate limits as a budget shared by the jobs of one machine.

Real processes go through the official client to the local fake gateway (real TLS socket), which answers HTTP 429
with Retry-After above a set rate per endpoint, counted over all its handler threads.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from fake_databento import GET_COST, GET_RANGE, GET_RECORD_COUNT, RESOLVE
from sql_rows import query

KEY = "db-RATELIMITTESTKEY0000000000"

# Each child process prices the same request `calls` times through the host budget in `directory`.
CHILD = textwrap.dedent("""
    import datetime as dt, sys, types
    from engine.sources import databento_ratelimit
    from engine.sources.databento_api import RawRequest, estimate_cost
    directory, rate, calls, gateway = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    source = types.SimpleNamespace(timeseries_requests_per_second=0, symbology_requests_per_second=0,
                                   metadata_requests_per_second=rate, batch_requests_per_second=0,
                                   batch_submissions_per_minute=0, rate_limit_burst=1, rate_limit_dir=directory)
    budget = databento_ratelimit.install(source, directory)
    req = RawRequest("GLBX.MDP3", "NQ.v.0", "ohlcv-1m", "continuous", dt.datetime(2025, 12, 9, tzinfo=dt.UTC),
                     dt.datetime(2025, 12, 10, tzinfo=dt.UTC))
    for _ in range(calls):
        estimate_cost(req, gateway, max_retries=30, backoff_seconds=0.1)
    print(budget.rate_limited)
""")


def _price_from_processes(fake, tmp_path: Path, processes: int, calls: int, client_rate: float) -> list[int]:
    """Start `processes` children at once; each returns how many 429s it was answered."""
    directory = tmp_path / f"buckets-{client_rate:g}"
    children = [subprocess.Popen([sys.executable, "-c", CHILD, str(directory), str(client_rate), str(calls),
                                  fake.gateway], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(processes)]
    outputs = [child.communicate(timeout=120) for child in children]
    assert [c.returncode for c in children] == [0] * processes, outputs
    return [int(out.strip()) for out, _ in outputs]


def _most_in_one_second(times: list[float]) -> int:
    times = sorted(times)
    return max((sum(1 for t in times[i:] if t - start < 1.0) for i, start in enumerate(times)), default=0)


def test_the_host_bucket_spaces_requests_across_processes(fake_databento, tmp_path):
    fake = fake_databento(KEY, subprocess=True, rate_limits={GET_COST: 10}, retry_after=0.2)
    processes, calls = 6, 5

    # Without a budget the six processes together exceed the gateway's 10 a second: it answers 429s.
    unthrottled = _price_from_processes(fake, tmp_path, processes, calls, client_rate=0)
    assert sum(unthrottled) == fake.rate_limited[GET_COST] > 0, "the control: the gateway does limit"
    assert len(fake.accepted_at[GET_COST]) == processes * calls

    fake.rate_limited[GET_COST] = 0
    fake.accepted_at[GET_COST].clear()
    started = time.monotonic()
    throttled = _price_from_processes(fake, tmp_path, processes, calls, client_rate=5)
    accepted = fake.accepted_at[GET_COST]
    assert throttled == [0] * processes and fake.rate_limited[GET_COST] == 0, "no 429 under a shared budget of 5/s"
    assert len(accepted) == processes * calls, "no request lost"
    # 5 a second leave the host 0.2 s apart; one more may share an arrival second through network jitter
    assert _most_in_one_second(accepted) <= 6
    assert max(accepted) - min(accepted) >= (processes * calls - 1) / 5 * 0.9
    assert time.monotonic() - started >= (processes * calls - 1) / 5 * 0.9


def test_a_stale_bucket_from_before_a_reboot_is_reset(tmp_path):
    from engine.sources.databento_ratelimit import HostBudget, Limits

    slept: list[float] = []
    budget = HostBudget(tmp_path, Limits(10, 10, 10), sleep=slept.append, clock=lambda: 100.0)
    (tmp_path / "metadata.bucket").write_bytes(__import__("struct").pack("<d", 1e9))  # far ahead of the clock
    assert budget.wait("metadata") == 0.0 and slept == []
    assert budget.wait("metadata") == pytest.approx(0.1) and slept == [pytest.approx(0.1)]
    assert budget.wait("timeseries") == 0.0, "each endpoint class has its own bucket"


def test_batch_submissions_have_their_own_per_minute_bucket(tmp_path):
    """Databento limits batch.submit_job per minute and the other batch calls per second: two buckets; a call of
    no class (None) is not throttled."""
    from engine.sources import databento_ratelimit

    source = __import__("types").SimpleNamespace(timeseries_requests_per_second=1, symbology_requests_per_second=1,
                                                 metadata_requests_per_second=1, batch_requests_per_second=0,
                                                 batch_submissions_per_minute=60, rate_limit_burst=1,
                                                 rate_limit_dir=str(tmp_path))
    with databento_ratelimit.installed(source, tmp_path) as budget:
        started = time.monotonic()
        for _ in range(3):
            databento_ratelimit.throttle(None)
            databento_ratelimit.throttle("batch")  # 0: not throttled
        assert time.monotonic() - started < 0.5
        databento_ratelimit.throttle(databento_ratelimit.BATCH_SUBMIT)
        databento_ratelimit.throttle(databento_ratelimit.BATCH_SUBMIT)
        assert time.monotonic() - started >= 0.9, "the second submission waits for its slot at 60 a minute"
        assert (tmp_path / __import__("socket").gethostname() / "batch_submit.bucket").is_file()
        assert databento_ratelimit.current() is budget
    assert databento_ratelimit.current() is None, "installed only for the block"


# ------------------------------------------------------------------------------------------------ the sweep

# 2 symbols x 8 weekdays = 16 jobs (the fake's bars are NQ-like prices, which ES's tick size also accepts)
DAYS = ("2025-12-08", "2025-12-09", "2025-12-10", "2025-12-11", "2025-12-12", "2025-12-15", "2025-12-16",
        "2025-12-17")
SYMBOLS = ("NQ", "ES")


def _window_group(tmp_path: Path) -> str:
    """One-day windows as a config group (window=d0..d7) in a search path, so a sweep can pair start and end."""
    folder = tmp_path / "site" / "window"
    folder.mkdir(parents=True)
    for n, day in enumerate(DAYS):
        end = f"2025-12-{int(day[-2:]) + 1:02d}"
        (folder / f"d{n}.yaml").write_text(f"defaults:\n  - /window_schema@_here_\nstart: {day}T00:00:00Z\n"
                                           f"end: {end}T00:00:00Z\n")
    return f"hydra.searchpath=[file://{tmp_path / 'site'}]"


def test_a_16_way_sweep_keeps_the_rate_limits_and_loses_no_request(engine_cli, db_url, fake_databento, tmp_path):
    # The gateway allows 4 metadata, 2 symbology and 2 download requests a second. The jobs' shared budget keeps
    # metadata at 2 a second and downloads at 1 (a margin for the arrival jitter of 16 processes on 2 cores);
    # symbology is not throttled, so the 16 jobs starting at once meet 429s, which are honoured and counted.
    fake = fake_databento(KEY, records=50, stride=29, subprocess=True, retry_after=0.5,
                          rate_limits={GET_COST: 4, GET_RECORD_COUNT: 4, RESOLVE: 2, GET_RANGE: 2})
    source = ["source=databento", f"source.gateway={fake.gateway}", "source.definitions=false",
              "source.metadata_requests_per_second=2", "source.timeseries_requests_per_second=1",
              "source.symbology_requests_per_second=0", "source.max_retries=60", f"db.url={db_url}"]
    seeded = engine_cli(f"db.url={db_url}", "stages=[registry]")
    assert seeded.returncode == 0, seeded.output
    sweep = engine_cli(*source, "stages=[ingest]", _window_group(tmp_path), f"symbol={','.join(SYMBOLS)}",
                       f"window={','.join(f'd{n}' for n in range(len(DAYS)))}", "hydra/launcher=joblib",
                       "hydra.launcher.n_jobs=16", "-m",
                       timeout=900)
    assert sweep.returncode == 0, sweep.output
    [sweep_dir] = {p.parent for p in (sweep.cwd / "runs" / "multirun").rglob("sweep_summary.json")}
    jobs = json.loads((sweep_dir / "sweep_summary.json").read_text())
    assert len(jobs) == 16 and {j["status"] for j in jobs} == {"success"}
    ingests = [json.loads(p.read_text())["stages"]["ingest"] for p in sweep_dir.rglob("result.json")]
    assert len(ingests) == 16
    assert all(i["bars_received"] == i["bars_inserted"] == 50 for i in ingests), "every job's day, exactly"
    stored = query(db_url, "SELECT symbol, count(*) AS n FROM market_bars_ohlcv_1m_clean GROUP BY symbol")
    assert {r["symbol"]: r["n"] for r in stored} == {f"GLBX.MDP3:{s}": 50 * len(DAYS) for s in SYMBOLS}
    assert len(fake.accepted_at[GET_RANGE]) == 16, "each day bought once"
    assert fake.rate_limited[GET_COST] == fake.rate_limited[GET_RECORD_COUNT] == fake.rate_limited[GET_RANGE] == 0
    assert fake.rate_limited[RESOLVE] > 0
    assert sum(i["rate_limited"] for i in ingests) == sum(fake.rate_limited.values()), "every 429 counted"
    assert all(i["retries"] >= i["rate_limited"] for i in ingests)
    rows = query(db_url, "SELECT sum(retries) AS n FROM clean_ingest_runs")
    assert rows[0]["n"] >= sum(fake.rate_limited.values())
