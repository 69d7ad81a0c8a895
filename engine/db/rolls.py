"""SQL of contract_rolls: the rolls of each symbol's series, as ingest found them (typed rows, idempotent writes)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime

from sqlalchemy import Connection, Engine, delete, insert, select

from engine.db.schema import clean_bars, contract_rolls
from engine.db.typed_rows import symbol_rows

__all__ = ["Roll", "last_bar_before", "record_rolls", "rolls_of"]


@dataclass(frozen=True)
class Roll:
    """One roll of a series: from `roll_ts` on, its bars come from the incoming contract."""

    symbol: str  # GLBX.MDP3:ES
    roll_ts: datetime  # first minute of the incoming contract in the series (UTC)
    outgoing_instrument_id: int
    incoming_instrument_id: int
    rule: str  # e.g. v.0, c.0
    origin: str  # databento (the file's symbology mappings) | computed (by the engine from outright bars)
    outgoing_raw_symbol: str | None = None
    incoming_raw_symbol: str | None = None
    price_ts: datetime | None = None  # the common minute whose closes adjust this roll; None: not adjustable
    outgoing_close: float | None = None
    incoming_close: float | None = None

    @property
    def adjustable(self) -> bool:
        return self.price_ts is not None and bool(self.outgoing_close) and bool(self.incoming_close)

    @property
    def label(self) -> str:
        """'ESM4 → ESU4' (instrument ids where the contract is not known)."""
        out = self.outgoing_raw_symbol or f"id {self.outgoing_instrument_id}"
        inc = self.incoming_raw_symbol or f"id {self.incoming_instrument_id}"
        return f"{out} → {inc}"


def record_rolls(conn: Connection, symbol: str, start: datetime, end: datetime, rolls: Sequence[Roll],
                 ingest_run_id: int | None) -> None:
    """Make the symbol's rolls in [start, end) exactly `rolls` (in the caller's transaction): rerunning an ingest
    rewrites the same rows, a rule change replaces the old rolls of the window."""
    for roll in rolls:
        if roll.symbol != symbol or not start <= roll.roll_ts < end:
            raise ValueError(f"roll {roll} is not a roll of {symbol} in [{start}, {end})")
    c = contract_rolls.c
    conn.execute(delete(contract_rolls).where(c.symbol == symbol, c.roll_ts >= start, c.roll_ts < end))
    if rolls:
        conn.execute(insert(contract_rolls), [{**asdict(r), "ingest_run_id": ingest_run_id} for r in rolls])


def rolls_of(engine: Engine | Connection, symbol: str, start: datetime | None = None, end: datetime | None = None
             ) -> list[Roll]:
    """The symbol's rolls with start <= roll_ts < end (None = unbounded), in time order."""
    return symbol_rows(engine, contract_rolls, Roll, symbol, "roll_ts", start, end)


def last_bar_before(engine: Engine | Connection, symbol: str, since: datetime, before: datetime
                    ) -> tuple[datetime, int, str | None] | None:
    """(ts, instrument_id, raw_symbol) of the symbol's latest clean bar in [since, before), or None."""
    c = clean_bars.c
    query = (select(c.ts, c.instrument_id, c.raw_symbol).where(c.symbol == symbol, c.ts >= since, c.ts < before)
             .order_by(c.ts.desc()).limit(1))
    if isinstance(engine, Connection):
        row = engine.execute(query).first()
    else:
        with engine.connect() as conn:
            row = conn.execute(query).first()
    return None if row is None or row.instrument_id is None else (row.ts, int(row.instrument_id), row.raw_symbol)
