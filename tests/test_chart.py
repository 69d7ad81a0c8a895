"""Stage `chart`: a real PNG of the window's candles and triangles; long windows show their last session.

The end-to-end run (`stages=[registry,detect,chart]`) is tests/test_detect_stage.py::test_cli_detect_then_chart.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from PIL import Image
from test_detect_stage import (
    KNOWN_HIGHS,
    KNOWN_LOWS,
    MINUTE,
    T0,
    bars_from,
    insert_bars,
    make_ctx,
    mark_clean,
)

from engine.db.bars import BAR_READ_DTYPE
from engine.errors import EngineError
from engine.job_plugins import packaged_options
from engine.stages import chart, detect

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_chart_png_with_the_detected_triangles(db, tmp_path):
    assert "chart" in packaged_options("stage")
    insert_bars(db, bars_from(KNOWN_HIGHS, KNOWN_LOWS))
    end = T0 + len(KNOWN_HIGHS) * MINUTE
    mark_clean(db, T0, end)
    ctx = make_ctx(db, tmp_path, T0, end, n=2)
    detect.run(ctx)

    summary = chart.run(ctx)

    path = tmp_path / "chart_GLBX.MDP3_NQ.png"
    assert summary.path == str(path)
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (1600, 900)
    assert summary.events == {"BEAR": 2, "BULL": 2}
    assert summary.scope == "window" and summary.bars == len(KNOWN_HIGHS)


def test_chart_without_bars_is_a_user_error(db, tmp_path):
    with pytest.raises(EngineError, match="no bars"):
        chart.run(make_ctx(db, tmp_path, T0, T0 + timedelta(hours=1)))


def test_a_long_window_is_narrowed_to_its_last_session():
    def bars(minutes):
        out = np.zeros(len(minutes), BAR_READ_DTYPE)
        out["ts"] = np.asarray(minutes, dtype=np.int64) * 60_000_000_000
        return out

    day = list(range(0, 1380))  # one 23-hour session
    shown, scope = chart.chart_range(bars(day))
    assert scope == "window" and len(shown) == 1380
    # Two sessions 61 minutes apart (16:00 -> 17:00 Chicago), a 45-minute hole inside the last one.
    second = [1380 + 60 + m for m in range(0, 300)] + [1380 + 60 + 345 + m for m in range(200)]
    shown, scope = chart.chart_range(bars(day + second))
    assert scope == "last session" and shown["ts"][0] == second[0] * 60_000_000_000 and len(shown) == 500
    # No gap at all: at most one trading day of the newest bars.
    shown, _ = chart.chart_range(bars(range(5000)))
    assert len(shown) == chart.TRADING_DAY_BARS and shown["ts"][-1] == 4999 * 60_000_000_000
