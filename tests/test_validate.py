"""engine.validate: vectorised bar validation, first-failing-reason semantics, duplicates across chunks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.bars import NS_PER_MINUTE, PRICE_SCALE, RAW_BAR_DTYPE
from engine.validate import (
    REASONS,
    UNDEF_PRICE,
    SeenTimestamps,
    prices_representable,
    tick_raw,
    to_prices,
    validate_chunk,
)

T0 = 1_710_028_800 * 1_000_000_000  # 2024-03-10 00:00 UTC
START, END = T0, T0 + 10 * NS_PER_MINUTE
TICK = 250_000_000  # 0.25 in fixed point
I64_MAX = 2**63 - 1


def bar(ts=T0, o=5000, h=5001, lo=4999, c=5000.5, volume=10, instrument_id=1, raw=False):
    """One RAW_BAR_DTYPE row; prices in points unless raw=True."""
    row = np.zeros(1, dtype=RAW_BAR_DTYPE)
    row["ts"] = ts
    for name, value in zip(("open", "high", "low", "close"), (o, h, lo, c), strict=True):
        row[name] = value if raw else round(value * PRICE_SCALE)
    row["volume"] = volume
    row["instrument_id"] = instrument_id
    return row


def rows(*bars):
    return np.concatenate(bars)


def reasons_of(result):
    return result.bad_reason.tolist()


# ------------------------------------------------------------------------------------------------
# Each rule, and the order between rules


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        (bar(o=UNDEF_PRICE, h=UNDEF_PRICE, lo=4999 * PRICE_SCALE, c=5000 * PRICE_SCALE, raw=True), "undef_price"),
        (bar(c=UNDEF_PRICE, o=5000 * PRICE_SCALE, h=5001 * PRICE_SCALE, lo=4999 * PRICE_SCALE, raw=True),
         "undef_price"),
        (bar(lo=0), "non_positive_price"),
        (bar(o=-1, lo=-2, c=-1, h=1), "non_positive_price"),
        (bar(o=2**53 + 1, h=2**53 + 1, lo=2**53 + 1, c=2**53 + 1, raw=True), "price_not_representable"),
        (bar(h=4999.5), "ohlc_inconsistent"),  # high below open
        (bar(lo=5000.25), "ohlc_inconsistent"),  # low above open
        (bar(o=5000, c=5000, h=5000, lo=5000.25), "ohlc_inconsistent"),  # low above high
        (bar(volume=2**64 - 5), "negative_volume"),  # -5 written unsigned
        (bar(volume=2**63), "negative_volume"),
        (bar(ts=T0 + 1), "ts_not_on_minute"),
        (bar(ts=T0 - NS_PER_MINUTE), "ts_outside_window"),
        (bar(ts=END), "ts_outside_window"),  # the window's end is exclusive
    ],
)
def test_each_rule_rejects_with_its_reason(row, reason):
    result = validate_chunk(row, START, END, SeenTimestamps())
    assert len(result.good) == 0
    assert reasons_of(result) == [reason]
    assert REASONS[int(result.bad_code[0])] == reason


def test_boundary_values_pass():
    chunk = rows(
        bar(ts=START),  # window start is inclusive
        bar(ts=END - NS_PER_MINUTE, volume=I64_MAX),  # largest non-negative volume
        bar(ts=START + NS_PER_MINUTE, o=5000, h=5000, lo=5000, c=5000, volume=0),  # flat bar, no volume
        bar(ts=START + 2 * NS_PER_MINUTE, o=1, h=1, lo=1, c=1, raw=True),  # smallest positive price
    )
    result = validate_chunk(chunk, START, END, SeenTimestamps())
    assert len(result.bad) == 0
    assert len(result.good) == 4


def test_first_failing_reason_wins():
    chunk = rows(
        # undef and non-positive and outside the window: undef first
        bar(ts=END, o=UNDEF_PRICE, h=UNDEF_PRICE, lo=-5, c=-5, raw=True),
        # non-positive and inconsistent and negative volume
        bar(lo=-1, h=-2, volume=2**64 - 1),
        # inconsistent and not on the minute and outside the window
        bar(ts=END + 7, h=1),
        # negative volume and not on the minute
        bar(ts=T0 + 3, volume=2**63 + 1),
        # not on the minute and outside the window
        bar(ts=T0 - 17),
    )
    result = validate_chunk(chunk, START, END, SeenTimestamps())
    assert reasons_of(result) == [
        "undef_price", "non_positive_price", "ohlc_inconsistent", "negative_volume", "ts_not_on_minute",
    ]


def test_good_rows_are_sorted_and_bad_rows_keep_input_order():
    chunk = rows(bar(ts=T0 + 5 * NS_PER_MINUTE), bar(ts=T0 + 7, instrument_id=7), bar(ts=T0),
                 bar(ts=T0 + 3, instrument_id=3), bar(ts=T0 + 2 * NS_PER_MINUTE))
    result = validate_chunk(chunk, START, END, SeenTimestamps())
    assert result.good["ts"].tolist() == [T0, T0 + 2 * NS_PER_MINUTE, T0 + 5 * NS_PER_MINUTE]
    assert result.bad["instrument_id"].tolist() == [7, 3]
    assert result.good.dtype == RAW_BAR_DTYPE and result.bad.dtype == RAW_BAR_DTYPE


def test_empty_chunk():
    result = validate_chunk(np.zeros(0, dtype=RAW_BAR_DTYPE), START, END, SeenTimestamps())
    assert len(result.good) == len(result.bad) == len(result.bad_reason) == 0
    assert result.reason_counts() == {}


def test_wrong_dtype_is_refused():
    with pytest.raises(TypeError):
        validate_chunk(np.zeros(3, dtype=[("ts", "i8")]), START, END, SeenTimestamps())


# ------------------------------------------------------------------------------------------------
# Duplicates


def test_duplicates_within_a_chunk_first_one_wins():
    chunk = rows(bar(instrument_id=1), bar(instrument_id=2, volume=99), bar(ts=T0 + NS_PER_MINUTE),
                 bar(instrument_id=3))
    result = validate_chunk(chunk, START, END, SeenTimestamps())
    assert result.good["instrument_id"].tolist() == [1, 1]
    assert result.good["ts"].tolist() == [T0, T0 + NS_PER_MINUTE]
    assert result.bad["instrument_id"].tolist() == [2, 3]
    assert reasons_of(result) == ["duplicate_ts", "duplicate_ts"]
    assert result.reason_counts() == {"duplicate_ts": 2}


def test_duplicates_across_chunks_first_chunk_wins():
    seen = SeenTimestamps()
    first = validate_chunk(rows(bar(ts=T0), bar(ts=T0 + NS_PER_MINUTE)), START, END, seen)
    second = validate_chunk(rows(bar(ts=T0 + NS_PER_MINUTE, instrument_id=2), bar(ts=T0 + 2 * NS_PER_MINUTE)),
                            START, END, seen)
    assert len(first.good) == 2
    assert second.good["ts"].tolist() == [T0 + 2 * NS_PER_MINUTE]
    assert reasons_of(second) == ["duplicate_ts"] and second.bad["instrument_id"].tolist() == [2]
    assert len(seen) == 3


def test_without_state_only_in_chunk_duplicates_are_found():
    one = validate_chunk(bar(), START, END, None)
    two = validate_chunk(bar(), START, END, None)
    assert len(one.good) == len(two.good) == 1


def test_a_rejected_row_does_not_claim_its_ts():
    seen = SeenTimestamps()
    # Bad row first (non-positive), then a good row at the same ts: the good row is kept.
    result = validate_chunk(rows(bar(lo=-1, instrument_id=1), bar(instrument_id=2)), START, END, seen)
    assert result.good["instrument_id"].tolist() == [2]
    assert reasons_of(result) == ["non_positive_price"]
    # A later bad row at a claimed ts keeps its own reason, not duplicate_ts.
    later = validate_chunk(rows(bar(h=1, instrument_id=3), bar(instrument_id=4)), START, END, seen)
    assert reasons_of(later) == ["ohlc_inconsistent", "duplicate_ts"]
    assert later.bad["instrument_id"].tolist() == [3, 4]


def test_a_rejected_row_in_an_earlier_chunk_does_not_claim_its_ts():
    seen = SeenTimestamps()
    validate_chunk(bar(volume=2**64 - 1), START, END, seen)
    result = validate_chunk(bar(), START, END, seen)
    assert len(result.good) == 1


def test_duplicates_found_across_many_unordered_chunks():
    """More chunks than SeenTimestamps keeps separate blocks, arriving in shuffled order."""
    rng = np.random.default_rng(7)
    minutes = rng.permutation(600)
    start, end = T0, T0 + 600 * NS_PER_MINUTE
    seen = SeenTimestamps()
    goods = []
    for part in np.array_split(minutes, 60):
        chunk = np.concatenate([bar(ts=T0 + int(m) * NS_PER_MINUTE) for m in part])
        goods.append(validate_chunk(chunk, start, end, seen).good)
    assert sum(len(g) for g in goods) == 600
    replay = np.concatenate([bar(ts=T0 + int(m) * NS_PER_MINUTE) for m in rng.permutation(600)[:50]])
    result = validate_chunk(replay, start, end, seen)
    assert len(result.good) == 0 and set(reasons_of(result)) == {"duplicate_ts"}


# ------------------------------------------------------------------------------------------------
# Prices


def test_to_prices_round_trips_typical_prices():
    rng = np.random.default_rng(1)
    raw = rng.integers(1, 200_000 * 4, 100_000) * TICK  # up to 200k points on a 0.25 tick
    raw = np.concatenate([raw, rng.integers(1, 10**13, 100_000)])  # arbitrary 1e-9 resolution prices
    prices = to_prices(raw)
    assert prices.dtype == np.float64
    assert np.array_equal(np.rint(prices * 1e9).astype(np.int64), raw)
    assert prices_representable(raw).all()
    assert to_prices(np.array([5000 * PRICE_SCALE + TICK]))[0] == 5000.25


def test_unrepresentable_prices_are_detected_without_overflow_warnings():
    raw = np.array([2**53 + 1, I64_MAX - 1, UNDEF_PRICE, -(2**63)], dtype=np.int64)
    with np.errstate(all="raise"):
        assert prices_representable(raw).tolist() == [False, False, False, False]
    assert prices_representable(np.array([2**53], dtype=np.int64)).tolist() == [True]


# ------------------------------------------------------------------------------------------------
# Property: the partition and the first failing reason, against a row-by-row reference


def reference_reasons(bars: list[tuple], start: int, end: int) -> list[str | None]:
    """Plain-Python reading of the rules, row by row in file order; None = good."""
    claimed: set[int] = set()
    out = []
    for ts, _iid, o, h, lo, c, volume in bars:
        prices = (o, h, lo, c)
        if UNDEF_PRICE in prices:
            reason = "undef_price"
        elif min(prices) <= 0:
            reason = "non_positive_price"
        elif any(round(float(p) / 1e9 * 1e9) != p for p in prices):
            reason = "price_not_representable"
        elif h < max(o, c) or lo > min(o, c) or lo > h:
            reason = "ohlc_inconsistent"
        elif volume > I64_MAX:
            reason = "negative_volume"
        elif ts % NS_PER_MINUTE:
            reason = "ts_not_on_minute"
        elif not start <= ts < end:
            reason = "ts_outside_window"
        elif ts in claimed:
            reason = "duplicate_ts"
        else:
            claimed.add(ts)
            reason = None
        out.append(reason)
    return out


SPECIAL_PRICES = [UNDEF_PRICE, 0, -TICK, 2**53 + 1, I64_MAX - 1, 2**62 + 3]
normal_price = st.integers(19_990, 20_010).map(lambda k: k * TICK)
any_price = st.one_of(normal_price, normal_price, normal_price, st.sampled_from(SPECIAL_PRICES))


@st.composite
def raw_bar(draw):
    minute = draw(st.integers(-2, 12))
    offset = draw(st.sampled_from([0, 0, 0, 0, 0, 1, -1, NS_PER_MINUTE // 2]))
    o, c = draw(any_price), draw(any_price)
    if draw(st.integers(0, 3)):  # mostly consistent bars, sometimes anything
        h = max(o, c) + draw(st.integers(0, 2)) * TICK
        lo = min(o, c) - draw(st.integers(0, 2)) * TICK
    else:
        h, lo = draw(any_price), draw(any_price)
    volume = draw(st.one_of(st.integers(0, 10**6), st.sampled_from([I64_MAX, 2**63, 2**64 - 1])))
    clip = lambda v: max(min(v, I64_MAX), -(2**63))  # noqa: E731
    return (T0 + minute * NS_PER_MINUTE + offset, 0, clip(o), clip(h), clip(lo), clip(c), volume, b"")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(raw_bar(), max_size=60), st.lists(st.integers(0, 60), max_size=5))
def test_property_partition_and_first_reason(bars, cuts):
    data = np.array(bars, dtype=RAW_BAR_DTYPE) if bars else np.zeros(0, dtype=RAW_BAR_DTYPE)
    data["instrument_id"] = np.arange(len(data))  # row identity
    expected = reference_reasons([tuple(int(v) for v in row[:7]) for row in data.tolist()], START, END)

    seen = SeenTimestamps()
    bounds = [0, *sorted(min(c, len(data)) for c in cuts), len(data)]
    got: dict[int, str | None] = {}
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        chunk = data[lo:hi]
        result = validate_chunk(chunk, START, END, seen)
        # Partition: every input row is in exactly one of good/bad, unchanged.
        assert len(result.good) + len(result.bad) == len(chunk)
        together = np.sort(np.concatenate([result.good, result.bad]), order="instrument_id")
        assert together.tobytes() == np.sort(chunk, order="instrument_id").tobytes()
        assert np.all(np.diff(result.good["ts"]) > 0)  # sorted, unique
        assert np.all(np.diff(result.bad["instrument_id"].astype(np.int64)) > 0)  # input order
        assert len(result.bad_reason) == len(result.bad)
        for row_id in result.good["instrument_id"].tolist():
            got[row_id] = None
        for row_id, reason in zip(result.bad["instrument_id"].tolist(), result.bad_reason.tolist(), strict=True):
            got[row_id] = reason
    assert [got[i] for i in range(len(data))] == expected


# ------------------------------------------------------------------------------------------------
# Tick size


@pytest.mark.parametrize("field", ["open", "high", "low", "close"])
def test_a_price_off_the_tick_is_rejected(field):
    good = bar(o=5000, h=5001, lo=4999, c=5000.5)
    flipped = good.copy()
    flipped[field] ^= 1  # a flipped low bit: 1e-9 off the tick
    if field == "high":
        flipped["high"] = good["high"] + 1
    result = validate_chunk(rows(good, flipped), START, END, None, tick_raw(0.25))
    assert reasons_of(result) == ["off_tick"]
    assert result.good.tobytes() == good.tobytes()


def test_tick_check_order_and_its_absence():
    off = bar(c=5000.3)  # 0.3 is off the 0.25 tick but on the 0.1 tick
    outside = bar(ts=END, c=5000.3)
    assert reasons_of(validate_chunk(rows(off, outside), START, END, None, tick_raw(0.25))) == [
        "off_tick", "ts_outside_window"]  # an earlier rule wins
    assert len(validate_chunk(off, START, END, None, tick_raw(0.1)).good) == 1
    assert len(validate_chunk(off, START, END, None, None).good) == 1  # no tick: not checked
    assert REASONS.index("off_tick") == REASONS.index("duplicate_ts") - 1


def test_tick_raw():
    assert [tick_raw(t) for t in (0.25, 0.1, 1.0, 0.01, 1 / 64, 0.005)] == [
        250_000_000, 100_000_000, 1_000_000_000, 10_000_000, 15_625_000, 5_000_000]
    for bad in (0, -0.25, 1e-10, 0.0000000015):
        with pytest.raises(ValueError):
            tick_raw(bad)
