"""Every tie rule of the Williams-fractal definition, through the detect stage, on SQLite and PostgreSQL."""

from __future__ import annotations

import numpy as np
import pytest
from test_detect_stage import MINUTE, T0, bars_from, event_rows, insert_bars, make_ctx, mark_clean

from engine.detectors.williams_fractals import reference_swing_highs, reference_swing_lows
from engine.stages import detect

RISE = [1.0, 2.0, 3.0, 4.0, 5.0]
FALL = [5.0, 4.0, 3.0, 2.0, 1.0]
# name: (highs, index of the one swing high expected there, or None for "no event at the marked bar")
CASES = {
    "no_tie": (RISE + [10] + FALL, 5),
    "left_tie_1": (RISE + [10, 10] + FALL, 6),
    "left_tie_2": (RISE + [10, 10, 10] + FALL, 7),
    "left_tie_3": (RISE + [10, 9, 10, 10] + FALL, 8),
    "left_tie_4": (RISE + [10, 10, 10, 10, 10] + FALL, 9),  # a plateau of 5: pivot + 4 equal bars
    "plateau_of_6": (RISE + [10] * 6 + FALL, None),
    "plateau_of_8": (RISE + [10] * 8 + FALL, None),
    "right_side_tie": (RISE + [10, 4, 3, 10.0, 2, 1, 0.5, 0.25], None),
    "too_little_history": ([3.0, 4.0, 10.0] + FALL, None),
    "too_little_future": (RISE + [10, 4, 3, 2], None),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("side", ["high", "low"])
def test_tie_rules_through_the_stage(db, tmp_path, case, side):
    shape, expected = CASES[case]
    values = np.asarray(shape, dtype=float)
    if side == "high":
        highs, lows = values, values - 0.5 - 0.001 * np.arange(len(values))  # lows never pivot on ties
        reference, direction = reference_swing_highs(highs, 5), "BEAR"
    else:
        highs, lows = 100 - values + 0.5 + 0.001 * np.arange(len(values)), 100 - values
        reference, direction = reference_swing_lows(lows, 5), "BULL"
    insert_bars(db, bars_from(highs, lows))
    end = T0 + MINUTE * len(values)
    mark_clean(db, T0, end)
    detect.run(make_ctx(db, tmp_path, T0, end))
    found = sorted(int((row[1] - T0) / MINUTE) for row in event_rows(db) if row[2] == direction)
    assert found == [int(i) for i in np.flatnonzero(reference)], "stage and the plain-loop rule disagree"
    if expected is None:
        marked = len(RISE) if case != "too_little_history" else 2
        assert marked not in found
    else:
        assert expected in found
