"""Williams Fractals swing highs / lows: hand-made tie cases, vectorised == reference, cut invariance."""

from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_array_equal

import engine.detectors.williams_fractals as wf
from engine.detectors.williams_fractals import (
    MAX_LEFT_TIES,
    reference_swing_highs,
    reference_swing_lows,
    swing_highs,
    swing_lows,
    warmup_bars,
)

TICK = 0.25

# A pivot "5" among lower "1" ticks. (name, ticks, n, expected pivot indexes)
CASES = [
    ("plain n=2", [1, 1, 5, 1, 1], 2, [2]),
    ("left tie 1", [1, 1, 5, 5, 1, 1], 2, [3]),
    ("left tie 2", [1, 1, 5, 5, 5, 1, 1], 2, [4]),
    ("left tie 3", [1, 1, 5, 5, 5, 5, 1, 1], 2, [5]),
    ("left tie 4", [1, 1, 5, 5, 5, 5, 5, 1, 1], 2, [6]),
    ("left ties 5 then lower: k would have to be 5", [1, 1, 5, 5, 5, 5, 5, 5, 1, 1], 2, []),
    ("plateau of 7", [1, 1, 1] + [5] * 7 + [1, 1, 1], 3, []),
    ("left tie 4, n=3", [1, 1, 1, 5, 5, 5, 5, 5, 1, 1, 1], 3, [7]),
    ("tie bars may be lower: k=2 skips an equal bar", [1, 1, 5, 1, 5, 1, 1], 2, [4]),
    ("k=3 needed", [1, 1, 1, 5, 1, 1, 5, 1, 1, 1], 3, [6]),
    ("right-side tie, no rescue", [1, 1, 5, 1, 5], 2, []),
    ("right-side tie at distance n", [1, 1, 1, 5, 1, 1, 5], 3, []),
    ("higher bar among the left ties blocks", [1, 1, 1, 6, 5, 5, 1, 1], 2, [3]),
    ("higher bar just outside the k=0 window is fine", [6, 1, 1, 5, 1, 1], 2, [3]),
    ("too little history", [1, 5, 1, 1], 2, []),
    ("too little history for the tie", [1, 5, 5, 1, 1], 2, []),
    ("k=4 with exactly enough history", [1, 1, 5, 5, 5, 5, 5, 1, 1], 2, [6]),
    ("k=4 one bar short of history", [1, 5, 5, 5, 5, 5, 1, 1], 2, []),
    ("too little future", [1, 1, 5, 1], 2, []),
    ("last bar", [1, 1, 5], 2, []),
    ("plain n=5", [1] * 5 + [5] + [1] * 5, 5, [5]),
    ("n=5 one history bar short", [1] * 4 + [5] + [1] * 5, 5, []),
    ("n=5 one future bar short", [1] * 5 + [5] + [1] * 4, 5, []),
    ("n=5 left tie 4", [1] * 5 + [5] * 5 + [1] * 5, 5, [9]),
    ("n=5 left ties 5", [1] * 5 + [5] * 6 + [1] * 5, 5, []),
    ("n=5 right tie at distance 5", [1] * 5 + [5] + [1] * 4 + [5] + [2] * 5, 5, []),
    ("n=13", [1] * 13 + [5] + [1] * 13, 13, [13]),
    ("n=13 left tie 2", [1] * 13 + [5, 5, 5] + [1] * 13, 13, [15]),
    ("n=13 a higher bar 13 bars back", [6] + [1] * 12 + [5] + [1] * 13, 13, []),
    ("two pivots", [1, 1, 5, 1, 1, 5, 1, 1], 2, [2, 5]),
    ("empty", [], 2, []),
]

SIDES = {
    # side: (vectorised, reference, price of a tick count; lows mirror highs so the same cases apply)
    "high": (swing_highs, reference_swing_highs, lambda t: 100.0 + TICK * np.asarray(t, dtype=float)),
    "low": (swing_lows, reference_swing_lows, lambda t: 100.0 - TICK * np.asarray(t, dtype=float)),
}


def _mask(size: int, pivots: list[int]) -> np.ndarray:
    mask = np.zeros(size, dtype=bool)
    mask[pivots] = True
    return mask


def _random_walk(size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    high = 5000.0 + TICK * np.cumsum(rng.integers(-2, 3, size))
    low = high - TICK * rng.integers(0, 4, size)
    return high, low


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("impl", ["vectorised", "reference"])
@pytest.mark.parametrize(("name", "ticks", "n", "pivots"), CASES, ids=[c[0] for c in CASES])
def test_hand_made_cases(side, impl, name, ticks, n, pivots):
    vectorised, reference, price = SIDES[side]
    detect = vectorised if impl == "vectorised" else reference
    got = detect(price(ticks), n)
    assert got.dtype == np.bool_
    assert_array_equal(got, _mask(len(ticks), pivots))


def test_lows_are_not_highs():
    # Same series: a peak is a swing high only, a trough a swing low only.
    x = 100.0 + TICK * np.array([1, 1, 5, 1, 1, 0, 1, 1])
    assert_array_equal(swing_highs(x, 2), _mask(8, [2]))
    assert_array_equal(swing_lows(x, 2), _mask(8, [5]))


def test_one_bar_can_be_both_swing_high_and_low():
    high = np.array([101.0, 101.0, 110.0, 101.0, 101.0])
    low = np.array([99.0, 99.0, 90.0, 99.0, 99.0])
    assert swing_highs(high, 2)[2]
    assert swing_lows(low, 2)[2]


def test_warmup_bars_is_enough_and_needed():
    assert warmup_bars(5) == 5 + MAX_LEFT_TIES == 9
    x = 100.0 + TICK * np.array([1, 1, 5, 5, 5, 5, 5, 1, 1])  # pivot at 6 needs k=4, i.e. bars 0..6
    n, p = 2, 6
    assert swing_highs(x, n)[p]
    assert swing_highs(x[p - warmup_bars(n) :], n)[warmup_bars(n)]
    assert not swing_highs(x[p - warmup_bars(n) + 1 :], n)[warmup_bars(n) - 1]


@pytest.mark.parametrize("bad", [1, 0, -3, 2.5, 5.0, True, "5", None])
@pytest.mark.parametrize("detect", [swing_highs, swing_lows, reference_swing_highs, reference_swing_lows])
def test_bad_n_raises(detect, bad):
    with pytest.raises(ValueError, match=r"detector\.n must be an integer >= 2"):
        detect(np.arange(20.0), bad)


def test_numpy_integer_n_is_accepted():
    x = 100.0 + TICK * np.array([1, 1, 5, 1, 1])
    assert_array_equal(swing_highs(x, np.int64(2)), _mask(5, [2]))


def test_rejects_2d_input():
    with pytest.raises(ValueError, match="1-D"):
        swing_highs(np.zeros((3, 10)), 2)


few_ticks = st.lists(st.integers(0, 3), max_size=200)  # 4 price levels: ties everywhere


@settings(max_examples=300, deadline=None)
@given(few_ticks, st.integers(2, 8), st.integers(1, 256))
def test_vectorised_matches_reference(ticks, n, chunk):
    x = 100.0 + TICK * np.asarray(ticks, dtype=float)
    with mock.patch.object(wf, "_CHUNK", chunk):  # small chunks exercise the chunk seams
        assert_array_equal(swing_highs(x, n), reference_swing_highs(x, n))
        assert_array_equal(swing_lows(x, n), reference_swing_lows(x, n))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from([100.0, 100.25, 100.5, np.nan]), max_size=120), st.integers(2, 5))
def test_nan_behaves_like_reference(values, n):
    x = np.asarray(values, dtype=float)
    got_high, got_low = swing_highs(x, n), swing_lows(x, n)
    assert_array_equal(got_high, reference_swing_highs(x, n))
    assert_array_equal(got_low, reference_swing_lows(x, n))
    assert not (got_high | got_low)[np.isnan(x)].any()


@settings(max_examples=200, deadline=None)
@given(st.data(), few_ticks, st.integers(2, 8))
def test_cut_with_warmup_does_not_change_pivots(data, ticks, n):
    x = 100.0 + TICK * np.asarray(ticks, dtype=float)
    size = len(x)
    s = data.draw(st.integers(0, size), label="s")
    e = data.draw(st.integers(s, size), label="e")
    a, b = max(0, s - warmup_bars(n)), min(size, e + n)
    for detect in (swing_highs, swing_lows):
        assert_array_equal(detect(x[a:b], n)[s - a : e - a], detect(x, n)[s:e])


@pytest.mark.parametrize("n", [2, 5, 13])
def test_random_walk_across_chunks_matches_reference(n):
    high, low = _random_walk(20_000, seed=n)
    want_high, want_low = reference_swing_highs(high, n), reference_swing_lows(low, n)
    assert want_high.sum() > 100 and want_low.sum() > 100
    for chunk in (wf._CHUNK, 997):
        with mock.patch.object(wf, "_CHUNK", chunk):
            assert_array_equal(swing_highs(high, n), want_high)
            assert_array_equal(swing_lows(low, n), want_low)
