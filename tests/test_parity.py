"""Stage `parity`: planted differences between two sides (database or CSV), the CSV report, tolerance."""

from __future__ import annotations

import csv
from datetime import timedelta

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from test_detect_stage import MINUTE, SYMBOL, T0, iso, make_ctx

from engine.config import ParityConfig, ParitySideConfig, register_configs, to_typed
from engine.db.events import EVENT_DTYPE, EventKey, replace_events
from engine.db.schema import CLEAN_BARS, LEGACY_BARS
from engine.detectors import params_json
from engine.detectors.williams_fractals import WilliamsFractals
from engine.errors import EngineError
from engine.job_plugins import packaged_options
from engine.stages import parity

END = T0 + timedelta(days=1)
# (minute, direction): left and right agree on the first two, then differ.
LEFT = [(10, "BEAR"), (20, "BULL"), (30, "BEAR"), (40, "BULL")]
RIGHT = [(10, "BEAR"), (20, "BULL"), (30, "BULL"), (50, "BEAR")]
EXPECTED_DIFFERENCES = [
    ["ts", "direction", "side"],
    ["2025-12-01T00:30:00Z", "BEAR", "left"],
    ["2025-12-01T00:30:00Z", "BULL", "right"],
    ["2025-12-01T00:40:00Z", "BULL", "left"],
    ["2025-12-01T00:50:00Z", "BEAR", "right"],
]


def store(db, events: list[tuple[int, str]], logic_version: str, table: str = CLEAN_BARS, n: int = 5) -> None:
    arr = np.zeros(len(events), EVENT_DTYPE)
    for i, (minute, direction) in enumerate(events):
        ts = int((T0 + minute * MINUTE).timestamp()) * 10**9
        arr[i] = (ts, ts + n * 60 * 10**9, 100.0 + i, direction)
    key = EventKey(SYMBOL, table, logic_version, "williams_fractals", params_json(WilliamsFractals(n=n)))
    replace_events(db, key, T0 - timedelta(days=30), END + timedelta(days=30), arr, None, n=n)


def differences(run_dir) -> list[list[str]]:
    with (run_dir / parity.DIFFERENCES_CSV).open(newline="") as handle:
        return list(csv.reader(handle))


def side(**kwargs) -> ParitySideConfig:
    return ParitySideConfig(**kwargs)


def test_planted_differences_between_two_logic_versions(db, tmp_path):
    assert "parity" in packaged_options("stage")
    store(db, LEFT, "v-left")
    store(db, [*RIGHT, (24 * 60 + 5, "BEAR")], "v-right")  # the last one is after the window: ignored
    store(db, [(30, "BULL")], "v-right", table=LEGACY_BARS)  # another source table: ignored

    within = make_ctx(db, tmp_path / "ok", T0, END, parity=ParityConfig(right=side(logic_version="v-right"),
                                                                        tolerance=4),
                      logic_version="v-left")  # left defaults: clean table, this run's logic version
    summary = parity.run(within)
    assert (summary.matched, summary.only_left, summary.only_right) == (2, 2, 2)
    assert (summary.left_events, summary.right_events, summary.mismatches) == (4, 4, 4)
    assert summary.left == f"{CLEAN_BARS} @ v-left (n=5)" and summary.right == f"{CLEAN_BARS} @ v-right (n=5)"
    assert differences(within.run.dir) == EXPECTED_DIFFERENCES

    over = make_ctx(db, tmp_path / "over", T0, END, parity=ParityConfig(
        left=side(logic_version="v-left", source_table="clean"), right=side(logic_version="v-right"), tolerance=3))
    with pytest.raises(EngineError, match=r"4 mismatched events .* exceed parity.tolerance=3") as raised:
        parity.run(over)
    assert raised.value.exit_code == 2
    assert differences(over.run.dir) == EXPECTED_DIFFERENCES

    same = make_ctx(db, tmp_path / "same", T0, END, parity=ParityConfig(right=side(logic_version="v-left")),
                    logic_version="v-left")
    assert parity.run(same).mismatches == 0
    assert differences(same.run.dir) == [["ts", "direction", "side"]]


def test_csv_side_in_every_accepted_spelling(db, tmp_path):
    store(db, LEFT, "v1")
    export = tmp_path / "tradingview.csv"
    export.write_text(
        "\ufefftime_label,TS,Direction,price\n"  # BOM, extra columns, header case
        "a,2025-12-01T00:10:00Z,bear,1\n"  # ISO with Z, lower case
        "b,2025-12-01 01:20:00+01:00,Bull,2\n"  # offset -> 00:20 UTC
        "\n"
        f"c,{int((T0 + 30 * MINUTE).timestamp())},BEAR,3\n"  # epoch seconds
        f"d,{(T0 + 40 * MINUTE).timestamp():.3f},BULL,4\n"  # epoch seconds with decimals
        "e,2025-12-01T00:40:00,BULL,5\n"  # naive = UTC; a duplicate of the line before
        "f,2025-12-02T00:00:00Z,BEAR,6\n"  # at window.end: outside [start, end)
    )
    ctx = make_ctx(db, tmp_path / "run", T0, END, logic_version="v1",
                   parity=ParityConfig(right=side(csv=str(export))))
    summary = parity.run(ctx)
    assert (summary.matched, summary.only_left, summary.only_right) == (4, 0, 0)
    assert summary.right == f"csv {export}"

    # CSV on the left, database on the right works the same way round.
    flipped = make_ctx(db, tmp_path / "flipped", T0, END, parity=ParityConfig(
        left=side(csv=str(export)), right=side(logic_version="v1")))
    assert parity.run(flipped).matched == 4


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("when,direction\n2025-12-01T00:10:00Z,BEAR\n", "no column ts"),
        ("ts,direction\n2025-12-01T00:10:00Z,UP\n", "line 2: direction 'UP' is not BULL or BEAR"),
        ("ts,direction\n2025-12-01T00:10:00Z,BEAR\nyesterday,BULL\n", "line 3: ts 'yesterday' is neither"),
        ("ts,direction\n1764548400000,BEAR\n", "too large for epoch seconds"),
        ("ts,direction\n2025-12-01T00:10:00Z\n", "line 2: too few columns"),
    ],
)
def test_csv_errors_name_the_file_and_line(tmp_path, content, message):
    path = tmp_path / "events.csv"
    path.write_text(content)
    with pytest.raises(EngineError, match=message) as raised:
        parity.read_events_csv(path, "parity.right.csv")
    assert "parity.right.csv" in str(raised.value)


def test_parse_ts_and_format():
    ns = int(T0.timestamp()) * 10**9
    assert parity.parse_ts_ns("2025-12-01T00:00:00Z", "x") == ns
    assert parity.parse_ts_ns("2025-12-01", "x") == ns
    assert parity.parse_ts_ns(str(ns // 10**9), "x") == ns
    assert parity.parse_ts_ns("1764547200.5", "x") == ns + 500_000_000
    assert parity.format_ns(ns) == "2025-12-01T00:00:00Z"
    assert parity.format_ns(ns + 500_000_000) == "2025-12-01T00:00:00.5Z"


def test_right_side_is_required_and_sides_are_checked(db, tmp_path):
    with pytest.raises(EngineError) as raised:
        parity.run(make_ctx(db, tmp_path, T0, END))
    assert "parity.right.csv" in str(raised.value) and "parity.right.logic_version" in str(raised.value)
    with pytest.raises(EngineError, match="not a bars table"):
        parity.run(make_ctx(db, tmp_path, T0, END, parity=ParityConfig(right=side(source_table="bars"))))
    with pytest.raises(EngineError, match="both csv and"):
        parity.run(make_ctx(db, tmp_path, T0, END, parity=ParityConfig(
            right=side(csv="x.csv", logic_version="v1"))))
    with pytest.raises(EngineError, match="no such file"):
        parity.run(make_ctx(db, tmp_path, T0, END, parity=ParityConfig(right=side(csv=str(tmp_path / "no.csv")))))


def test_parity_config_composes_from_conf():
    from pathlib import Path

    register_configs()
    conf = Path(__file__).resolve().parents[1] / "engine" / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        typed = to_typed(compose("config", overrides=["parity.right.csv=/tmp/e.csv", "parity.tolerance=3"]))
    assert typed.parity.right.csv == "/tmp/e.csv" and typed.parity.tolerance == 3
    assert typed.parity.left == ParitySideConfig()


def test_cli_parity_exit_code_follows_tolerance(db, engine_cli, tmp_path):
    url = db.url.render_as_string(hide_password=False)
    store(db, LEFT, "v-left")
    store(db, RIGHT, "v-right")
    common = (f"db.url={url}", "stages=[registry,parity]", f"window.start={iso(T0)}", f"window.end={iso(END)}",
              "parity.left.logic_version=v-left", "parity.right.logic_version=v-right")
    failed = engine_cli(*common, "parity.tolerance=3")
    assert failed.returncode == 2, failed.output
    assert "exceed parity.tolerance=3" in failed.result["error"]
    assert differences(failed.run_dir) == EXPECTED_DIFFERENCES
    assert "only right" in failed.output
