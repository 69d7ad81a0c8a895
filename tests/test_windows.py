"""Chunk lengths and chunk edges (issue 10 items 2 and 7): min/h/d/w/mo, `1m` refused as ambiguous, weekly
chunks on the Globex trading week (Sunday 17:00 Chicago), edges that depend only on the chunk length."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.config import WindowConfig
from engine.errors import EngineError
from engine.windows import ChunkLength, Window, parse_chunk, parse_window

CHICAGO = ZoneInfo("America/Chicago")


def window(start: str, end: str, chunk: str | None) -> Window:
    return parse_window(WindowConfig(start=start, end=end, chunk=chunk))


def edges(w: Window) -> list[datetime]:
    return [p.start for p in w.chunks()] + [w.end]


@pytest.mark.parametrize(("text", "number", "unit"), [
    ("1min", 1, "min"), ("15min", 15, "min"), ("1h", 1, "h"), ("12H", 12, "h"), ("1d", 1, "d"), ("7d", 7, "d"),
    ("1w", 1, "w"), ("2w", 2, "w"), ("1mo", 1, "mo"), ("3MO", 3, "mo"), (" 1 w ", 1, "w")])
def test_accepted_chunk_lengths(text, number, unit):
    assert parse_chunk(text) == ChunkLength(number, unit)


@pytest.mark.parametrize("text", ["1m", "5m", "1M", "30m"])
def test_m_is_refused_as_ambiguous(text):
    with pytest.raises(EngineError) as err:
        parse_chunk(text)
    number = text[:-1]
    assert err.value.problem.startswith(f"window.chunk={text} is ambiguous")
    assert err.value.fix == f"did you mean {number}min or {number}mo?"


@pytest.mark.parametrize("text", ["abc", "0d", "1y", "1.5h", "-1d", "", "d", "10", "1 week", "1s", "99999999w"])
def test_other_garbage_is_refused_naming_the_key_and_the_units(text):
    with pytest.raises(EngineError) as err:
        parse_chunk(text)
    assert err.value.problem.startswith("window.chunk=")
    assert err.value.fix and ("min, h, d, w or mo" in err.value.fix or "100 years" in err.value.fix)


def test_cli_refuses_1m_with_exit_2_and_writes_nothing(engine_cli, tmp_path):
    run = engine_cli("window.chunk=1m")
    assert run.returncode == 2, run.output
    text = " ".join(run.output.split())
    assert "window.chunk=1m is ambiguous" in text and "Fix: did you mean 1min or 1mo?" in text
    assert "Traceback" not in run.output
    assert not (tmp_path / "data").exists()  # refused before any database was opened


def test_weekly_chunks_start_sunday_17_00_chicago_across_dst():
    # DST starts Sunday 2024-03-10 02:00 Chicago: that week opens at 22:00 UTC, the week before at 23:00 UTC.
    w = window("2024-03-01", "2024-03-20", "1w")
    assert edges(w) == [datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 3, 3, 23, tzinfo=UTC),
                        datetime(2024, 3, 10, 22, tzinfo=UTC), datetime(2024, 3, 17, 22, tzinfo=UTC),
                        datetime(2024, 3, 20, tzinfo=UTC)]
    assert [p.label for p in w.chunks()][:2] == ["[2024-03-01T00:00Z, 2024-03-03T23:00Z)",
                                                 "[2024-03-03T23:00Z, 2024-03-10T22:00Z)"]


def test_monthly_days_and_hours_edges():
    assert edges(window("2024-01-15", "2024-04-02", "1mo"))[1:-1] == [
        datetime(2024, m, 1, tzinfo=UTC) for m in (2, 3, 4)]
    assert edges(window("2024-01-15", "2024-12-31", "3mo"))[1:-1] == [  # quarters
        datetime(2024, m, 1, tzinfo=UTC) for m in (4, 7, 10)]
    assert edges(window("2024-01-01T05:00Z", "2024-01-03", "1d"))[1:-1] == [datetime(2024, 1, 2, tzinfo=UTC)]
    assert edges(window("2024-01-01T05:10Z", "2024-01-01T06:00Z", "15min"))[1:-1] == [
        datetime(2024, 1, 1, 5, m, tzinfo=UTC) for m in (15, 30, 45)]
    one = window("2024-01-01", "2024-01-02", None)
    assert one.chunks() == [one] and one.chunk_count() == 1


def test_warmup_start_stays_on_the_first_chunk_only():
    w = parse_window(WindowConfig(start="2024-01-02", end="2024-01-05", chunk="1d", warmup_start="2024-01-01"))
    assert [p.warmup_start for p in w.chunks()] == [datetime(2024, 1, 1, tzinfo=UTC), None, None]


# ---------------------------------------------------------------------------------------------- properties

APPROX_MINUTES = {"min": 1, "h": 60, "d": 1440, "w": 10080, "mo": 43200}
SPAN_START = datetime(2010, 6, 6, tzinfo=UTC)
SPAN_MINUTES = 20 * 366 * 1440


@st.composite
def chunk_lengths(draw) -> ChunkLength:
    unit = draw(st.sampled_from(list(APPROX_MINUTES)))
    return ChunkLength(draw(st.integers(1, {"min": 90, "h": 30, "d": 10, "w": 4, "mo": 12}[unit])), unit)


@st.composite
def windows(draw, chunk: ChunkLength) -> Window:
    """A window of up to ~60 chunks anywhere in 2010-2030, to the minute."""
    length = draw(st.integers(1, 60 * chunk.number * APPROX_MINUTES[chunk.unit]))
    start = SPAN_START + timedelta(minutes=draw(st.integers(0, SPAN_MINUTES)))
    return Window(start, start + timedelta(minutes=length), chunk=chunk)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_property_chunks_tile_the_window_without_empty_chunks(data):
    chunk = data.draw(chunk_lengths())
    w = data.draw(windows(chunk))
    pieces = w.chunks()
    assert len(pieces) == w.chunk_count()
    assert pieces[0].start == w.start and pieces[-1].end == w.end
    assert all(a.end == b.start for a, b in zip(pieces, pieces[1:], strict=False))
    assert all(p.start < p.end for p in pieces)
    for p in pieces:  # every piece lies in one chunk: edge(k) <= start < end <= edge(k + 1)
        k = chunk.index(p.start)
        assert chunk.edge(k) <= p.start and p.end <= chunk.edge(k + 1)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_property_overlapping_windows_cut_identically(data):
    chunk = data.draw(chunk_lengths())
    a = data.draw(windows(chunk))
    shift = timedelta(minutes=data.draw(st.integers(-60, 60)) * chunk.number * APPROX_MINUTES[chunk.unit] // 7)
    b = Window(a.start + shift, a.end + shift + timedelta(minutes=data.draw(st.integers(0, 10_000))), chunk=chunk)
    lo, hi = max(a.start, b.start), min(a.end, b.end)
    inner_a = [e for e in edges(a) if lo < e < hi]
    inner_b = [e for e in edges(b) if lo < e < hi]
    assert inner_a == inner_b


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_property_edges_sit_where_the_unit_says(data):
    chunk = data.draw(chunk_lengths())
    w = data.draw(windows(chunk))
    for edge in edges(w)[1:-1]:
        if chunk.unit == "w":
            local = edge.astimezone(CHICAGO)
            assert (local.weekday(), local.hour, local.minute) == (6, 17, 0)  # Sunday 17:00 Chicago
            assert edge.hour in (22, 23)
        elif chunk.unit == "mo":
            assert (edge.day, edge.hour, edge.minute) == (1, 0, 0)
            assert ((edge.year - 1970) * 12 + edge.month - 1) % chunk.number == 0
        else:
            step = {"min": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1)}[chunk.unit]
            assert (edge - datetime(1970, 1, 1, tzinfo=UTC)) % (chunk.number * step) == timedelta(0)
