"""raw_symbol reaches market_bars_ohlcv_1m_clean: stored per bar (NULL for b""), mixed lengths in one batch, a
change of contract alone counts as updated, reruns as unchanged (SQLite and PostgreSQL, direct and staged COPY)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
import sqlalchemy as sa
from test_bar_writer import copy_paths

from engine.bars import NS_PER_MINUTE, RAW_BAR_DTYPE
from engine.db import pgcopy
from engine.db.bars import CleanBarWriter, WriteCounts
from engine.db.bars_postgres import pg_encode, raw_symbol_groups
from engine.db.schema import clean_bars, clean_ingest_runs

T0 = 1_719_792_000 * 1_000_000_000  # 2024-07-01 00:00:00 UTC
TICK = 250_000_000
SYMBOL = "GLBX.MDP3:ES"
MIXED = [b"ESU4", b"RTYU4", b"", b"ESU4", b"", b"RTYU4", b"ESZ4"]


def bars(n: int, raw_symbol: bytes | list[bytes] = b"ESU4") -> np.ndarray:
    out = np.zeros(n, dtype=RAW_BAR_DTYPE)
    out["ts"] = T0 + np.arange(n, dtype=np.int64) * NS_PER_MINUTE
    out["instrument_id"] = 5002
    out["open"] = out["close"] = (22_000 + np.arange(n) % 17) * TICK
    out["high"] = out["open"] + TICK
    out["low"] = out["open"] - TICK
    out["volume"] = 10 + np.arange(n)
    if isinstance(raw_symbol, list):
        out["raw_symbol"] = np.resize(np.array(raw_symbol, dtype="S16"), n)
    else:
        out["raw_symbol"] = raw_symbol
    return out


def new_run(engine) -> int:
    now = datetime.now(UTC)
    with engine.begin() as conn:
        return int(conn.execute(sa.insert(clean_ingest_runs).values(
            symbol=SYMBOL, start_ts=now, end_ts=now, bars_received=0, bars_inserted=0, bars_updated=0,
            bars_skipped=0, batch_commits=0, retries=0, run_at=now, status="running",
        )).inserted_primary_key[0])


def write(engine, data: np.ndarray, batch_size: int = 1_000) -> tuple[WriteCounts, int]:
    run = new_run(engine)
    writer = CleanBarWriter(engine, SYMBOL, run, batch_size=batch_size)
    writer.write(data)
    return writer.flush(), run


def stored(engine) -> dict[int, tuple[str | None, int]]:
    """{ts_ns: (raw_symbol, ingest_run_id)}"""
    c = clean_bars.c
    with engine.connect() as conn:
        rows = conn.execute(sa.select(c.ts, c.raw_symbol, c.ingest_run_id).where(c.symbol == SYMBOL)).all()
    return {int(r.ts.timestamp()) * 1_000_000_000: (r.raw_symbol, r.ingest_run_id) for r in rows}


def expected(data: np.ndarray) -> dict[int, str | None]:
    return {int(t): (s.decode() or None) for t, s in zip(data["ts"], data["raw_symbol"], strict=True)}


def test_raw_symbol_is_stored_per_bar_and_null_for_unknown(db):
    data = np.concatenate([bars(5, b"ESU4"), bars(5, b"")])
    data["ts"][5:] += 5 * NS_PER_MINUTE
    counts, run = write(db, data)
    assert counts == WriteCounts(inserted=10, batch_commits=1)
    rows = stored(db)
    assert {ts: sym for ts, (sym, _) in rows.items()} == expected(data)
    assert [sym for _, (sym, _) in sorted(rows.items())] == ["ESU4"] * 5 + [None] * 5
    with db.connect() as conn:  # NULL, not an empty string
        nulls = conn.execute(sa.select(sa.func.count()).where(clean_bars.c.raw_symbol.is_(None))).scalar_one()
    assert nulls == 5


def test_a_batch_of_mixed_raw_symbol_lengths_is_stored_exactly(db):
    data = bars(700, MIXED)
    counts, _ = write(db, data, batch_size=300)
    assert counts == WriteCounts(inserted=700, batch_commits=3)
    assert {ts: sym for ts, (sym, _) in stored(db).items()} == expected(data)
    again, _ = write(db, data, batch_size=300)
    assert again == WriteCounts(unchanged=700, batch_commits=3)


@pytest.mark.parametrize(("before", "after"), [(b"", b"ESU4"), (b"ESU4", b"ESZ4"), (b"ESU4", b""),
                                               (b"ESU4", b"RTYU4")])
def test_a_change_of_raw_symbol_alone_is_an_update(db, before, after):
    data = bars(200, before)
    _, first = write(db, data, batch_size=64)
    changed = data.copy()
    target = np.array([3, 77, 150])
    changed["raw_symbol"][target] = after
    counts, second = write(db, changed, batch_size=64)
    assert counts == WriteCounts(updated=3, unchanged=197, batch_commits=4)
    assert counts.inserted + counts.updated + counts.unchanged == len(changed)
    rows = stored(db)
    assert {ts: sym for ts, (sym, _) in rows.items()} == expected(changed)
    changed_ts = set(changed["ts"][target].tolist())
    assert {ts for ts, (_, run) in rows.items() if run == second} == changed_ts
    assert {run for ts, (_, run) in rows.items() if ts not in changed_ts} == {first}
    rerun, _ = write(db, changed, batch_size=64)
    assert rerun == WriteCounts(unchanged=200, batch_commits=4)


def test_a_stored_empty_string_is_not_taken_for_null(db):
    """Only the writer's own NULL equals b"": a row someone stored as '' is rewritten (to NULL)."""
    data = bars(4, b"")
    write(db, data)
    with db.begin() as conn:
        conn.execute(sa.update(clean_bars).where(clean_bars.c.ts == clean_bars.c.ts).values(raw_symbol=""))
        conn.execute(sa.update(clean_bars).where(clean_bars.c.volume == 11).values(raw_symbol=None))
    counts, _ = write(db, data)
    assert counts == WriteCounts(updated=3, unchanged=1, batch_commits=1)
    assert {sym for sym, _ in stored(db).values()} == {None}


def test_a_mixed_batch_takes_one_layout_per_length():
    data = bars(len(MIXED), MIXED)
    groups = raw_symbol_groups(data["raw_symbol"])
    assert [(length, rows.tolist()) for length, rows in groups] == [(0, [2, 4]), (4, [0, 3, 6]), (5, [1, 5])]
    assert raw_symbol_groups(bars(3, b"ESU4")["raw_symbol"]) == [(4, None)]
    # The stream is every row once, each group with its own length word; NULL has length -1 and no bytes.
    stream = pg_encode(data, None, None)
    base = 2 + 7 * 4 + 7 * 8
    assert len(stream) == len(pgcopy.HEADER) + len(pgcopy.TRAILER) + len(MIXED) * (base + 4) + 3 * 4 + 2 * 5
    assert stream.count(b"\xff\xff\xff\xff") == 2  # the two NULLs' length words
    assert stream.count(b"\x00\x00\x00\x05RTYU4") == 2 and stream.count(b"\x00\x00\x00\x04ES") == 3


def test_postgres_direct_and_staged_copy_both_carry_raw_symbol(pg_db, monkeypatch):
    calls = copy_paths(monkeypatch)

    data = bars(600, MIXED)
    counts, _ = write(pg_db, data[:300], batch_size=150)
    assert counts == WriteCounts(inserted=300, batch_commits=2)
    assert calls == ["_pg_copy_direct"] * 2
    calls.clear()
    changed = data.copy()
    changed["raw_symbol"][100:200] = b"ESH5"  # stored rows: updated through the staging table
    counts, _ = write(pg_db, changed, batch_size=300)  # batch 1 staged (rows stored), batch 2 direct (empty range)
    assert calls == ["_pg_copy_staged", "_pg_copy_direct"]
    assert counts == WriteCounts(inserted=300, updated=100, unchanged=200, batch_commits=2)
    assert {ts: sym for ts, (sym, _) in stored(pg_db).items()} == expected(changed)
    calls.clear()
    rerun, _ = write(pg_db, changed, batch_size=600)
    assert calls == ["_pg_copy_staged"] and rerun == WriteCounts(unchanged=600, batch_commits=1)
