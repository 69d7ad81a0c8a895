"""Which contract each minute of a series comes from, and the rolls between them (the ingest's contract choice).

A series never splices contracts: the inputs' metadata decides the mode before any bar is read (`Selection`), the
ingest keeps only the chosen records of every chunk (`Selection.select`), and after its last batch the rolls of
the accepted bars are priced from the outright bars around them (`series_rolls`). The roll rules themselves (expiry
order, previous session's volume) are pure numpy in `engine.rolls`.
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass, field

import numpy as np

from engine.bars import NS_PER_MINUTE, PRICE_SCALE, RAW_BAR_DTYPE
from engine.context import StageContext
from engine.db.rolls import Roll, last_bar_before
from engine.db.types import datetime_to_ns, ns_to_datetime
from engine.errors import EngineError
from engine.rolls import (
    NONE,
    ContractCodes,
    SeriesRuns,
    Sessions,
    contract_expiry,
    expiry_sessions,
    roll_prices,
    schedule,
    session_volumes,
)
from engine.sources.dbn import DbnBarFile, InstrumentNames, SymbolFilter, read_definitions

__all__ = ["PRICE_SESSIONS", "Selection", "roll_price_bars", "select_series", "series_rolls"]

# What pricing a roll needs of a bar (a view of RAW_BAR_DTYPE rows: the same dtype whichever file they came from).
_PRICED_FIELDS = ("ts", "instrument_id", "close")


_DAY_NS = 86_400_000_000_000
_LOOKBACK_NS = 7 * _DAY_NS  # how far before the window the outright bars' volumes and the stored bars are read
PRICE_SESSIONS = 3  # the adjustment prices of a roll are searched this many sessions back from the roll


@dataclass
class Selection:
    """Which records make the series, decided from the files' metadata before any bar is read (module docstring):

    - ``continuous``: an input maps the continuous symbol: the series is exactly its records; outright records
      of the root are not chosen (they only name instruments and price the rolls);
    - ``outrights``: only outrights of the root: the series is built by the roll rule (``engine.rolls``), one
      contract per session;
    - ``outright``: the symbol is one contract (GLBX.MDP3:ESU4): exactly its records.
    """

    mode: str
    flt: SymbolFilter
    codes: ContractCodes  # the root's outright contracts in the inputs
    names: InstrumentNames  # (instrument_id, day) -> contract, from outright files and instrument definitions
    sessions: Sessions
    chosen: np.ndarray  # mode outrights: contract code per session, NONE appended for bars after the last one
    contract: bytes = b""  # mode outright
    spans: list[tuple[int, int]] = field(default_factory=list)  # where bars are kept to price the rolls

    def select(self, chunk: np.ndarray, via_continuous: np.ndarray) -> tuple[np.ndarray, dict[str, int], np.ndarray]:
        """(the chosen records, the others counted per contract, the records inside the price spans)."""
        if self.mode == "continuous":
            keep = via_continuous
            chunk["raw_symbol"][keep] = self.names.lookup(chunk["instrument_id"][keep], chunk["ts"][keep])
        elif self.mode == "outright":
            keep = ~via_continuous & (chunk["raw_symbol"] == self.contract)
        else:
            session = self.sessions.index(chunk["ts"])
            code = self.codes.codes(chunk["raw_symbol"])
            keep = (code >= 0) & (code == self.chosen[np.minimum(session, self.sessions.count)])
        in_span = np.zeros(len(chunk), dtype=bool)
        for lo, hi in self.spans:
            in_span |= (chunk["ts"] >= lo) & (chunk["ts"] < hi)
        priced = chunk[in_span][list(_PRICED_FIELDS)]
        if keep.all():
            return chunk, {}, priced
        return chunk[keep], self.count(chunk["raw_symbol"][~keep]), priced

    def count(self, raw: np.ndarray) -> dict[str, int]:
        """Records per contract (b"": the continuous symbol's, named so)."""
        code = self.codes.codes(raw)
        counts = np.bincount(code[code >= 0], minlength=len(self.codes))
        out = {self.codes.labels[i]: int(counts[i]) for i in np.flatnonzero(counts)}
        if (code < 0).any():
            names, n = np.unique(raw[code < 0], return_counts=True)
            for name, c in zip(names.tolist(), n.tolist(), strict=True):
                key = name.decode() or self.flt.continuous
                out[key] = out.get(key, 0) + c
        return out


def select_series(ctx: StageContext, bars: DbnBarFile, landing, window: tuple[int, int] | None) -> Selection:
    """Decide, from the inputs' metadata (and for rule v/c a first pass over the outright bars' volumes), which
    records make the window's series."""
    symbol = ctx.symbol
    flt = SymbolFilter(symbol.root, None if symbol.is_outright else symbol.continuous)
    start_ns, end_ns = datetime_to_ns(ctx.window.start), datetime_to_ns(ctx.window.end)
    sessions = Sessions(start_ns - 10 * _DAY_NS, end_ns + 10 * _DAY_NS)
    extra = DbnBarFile(landing.outrights).outright_names(flt) if landing.outrights else []
    intervals = bars.outright_names(flt) + extra
    names = InstrumentNames(intervals + read_definitions(landing.definitions))
    codes = ContractCodes([iv[3] for iv in intervals])
    none = np.full(sessions.count + 1, NONE, dtype=np.int64)
    if symbol.is_outright:
        return Selection("outright", flt, codes, names, sessions, none, contract=symbol.databento_symbol.encode())
    if any(info.maps(flt.continuous) for info in bars.files):
        return Selection("continuous", flt, codes, names, sessions, none, spans=_mapping_spans(bars, flt))
    if symbol.roll_rule not in ("c", "v"):
        raise EngineError(
            f"roll_rule={symbol.roll_rule} ({symbol.continuous}) cannot be built from the inputs: they hold outright "
            "OHLCV bars only, and rule n ranks contracts by open interest, which OHLCV bars do not carry",
            f"ingest a continuous file of {symbol.continuous} (Databento's own mapping), or choose a rule the bars "
            "can decide: roll_rule=v (previous session's volume) or roll_rule=c (expiry order)",
        )
    extended = None if window is None else (window[0] - _LOOKBACK_NS, window[1])
    volume = np.zeros((sessions.count, len(codes)))
    present = np.zeros((sessions.count, len(codes)), dtype=np.int64)
    for chunk, _ in bars.iter_labelled(flt, ctx.source.batch_size, extended):  # pass 1: volume per session
        vol, n = session_volumes(sessions.index(chunk["ts"]), codes.codes(chunk["raw_symbol"]), chunk["volume"],
                                 sessions.count, len(codes))
        volume += vol
        present += n
    has_bars = present.sum(axis=0) > 0
    first_session = np.argmax(present > 0, axis=0)
    expiry = np.array([_expiry_day(label, symbol.root, sessions, int(s))
                       for label, s in zip(codes.labels, first_session, strict=True)], dtype=np.int64)
    chosen, fallback = schedule(symbol.roll_rule, symbol.rank, volume, has_bars,
                                expiry_sessions(sessions, expiry), ctx.cfg.roll_days_before_expiry)
    rolls_at = np.flatnonzero((chosen[1:] != chosen[:-1]) & (chosen[1:] >= 0) & (chosen[:-1] >= 0)) + 1
    spans = [(int(sessions.opens[max(s - PRICE_SESSIONS, 0)]), int(sessions.closes[s])) for s in rolls_at]
    in_window = (sessions.closes > start_ns) & (sessions.opens < end_ns)
    fallback_sessions = int(np.count_nonzero(fallback & in_window & (chosen >= 0)))
    if symbol.roll_rule == "v" and fallback_sessions:
        ctx.log.info("ingest %s: rule v: %d session(s) without volume in the previous session (e.g. the first one of "
                     "the inputs) chose by expiry order instead", symbol.internal_symbol, fallback_sessions)
    return Selection("outrights", flt, codes, names, sessions, np.append(chosen, NONE), spans=spans)


def _expiry_day(label: str, root: str, sessions: Sessions, first_session: int) -> int:
    """A contract's expiry as a day number, its year decoded relative to the first session it has bars in."""
    on = sessions.trade_date(min(first_session, sessions.count - 1))
    expiry = contract_expiry(label, root, on)
    return (expiry - dt.date(1970, 1, 1)).days if expiry is not None else np.iinfo(np.int32).max


def _mapping_spans(bars: DbnBarFile, flt: SymbolFilter) -> list[tuple[int, int]]:
    """Around each day where a file's mapping of the continuous symbol changes instrument: the days whose bars
    can price that roll (a week before the new interval to two days into it)."""
    spans = []
    for info in bars.files:
        ivs = sorted((start, iid) for iid, start, _, sym in info.intervals if sym == flt.continuous)
        for (_, before), (start, iid) in itertools.pairwise(ivs):
            if iid != before:
                spans.append(((start - 7) * _DAY_NS, (start + 2) * _DAY_NS))
    return spans


def series_rolls(ctx: StageContext, selection: Selection, runs: SeriesRuns, priced_parts: list[np.ndarray],
                 landing) -> list[Roll]:
    """The rolls of the window's series, for contract_rolls (the ingest writes them after its last batch).

    A roll is where the instrument of the accepted bars changes, the latest stored bar of the week before the
    window included (so a roll at a chunk boundary is found). roll_ts: for rolls computed from outrights, the
    open of the incoming contract's first session (its first bar when that open is before the window); for
    continuous files, the first bar of the new instrument (Databento's mapping intervals are whole UTC days,
    the bars say when the series really changed). Prices: both contracts' closes at the latest common minute
    in the PRICE_SESSIONS sessions up to roll_ts, from the outright (and continuous) bars read."""
    if selection.mode == "outright":
        return []
    symbol, sessions = ctx.symbol, selection.sessions
    start_ns = datetime_to_ns(ctx.window.start)
    before = last_bar_before(ctx.db, symbol.internal_symbol, ns_to_datetime(start_ns - _LOOKBACK_NS),
                             ctx.window.start)
    prev = None if before is None else (datetime_to_ns(before[0]), before[1], (before[2] or "").encode())
    changes = runs.changes(prev)
    rolls: list[Roll] = []
    priced = roll_price_bars(ctx, selection, priced_parts, landing, changes)
    for first_ns, out_iid, out_raw, in_iid, in_raw in changes:
        roll_ns = first_ns
        if selection.mode == "outrights":
            open_ns = int(sessions.opens[min(int(sessions.index([first_ns])[0]), sessions.count - 1)])
            roll_ns = open_ns if start_ns <= open_ns <= first_ns else first_ns
        lo = int(sessions.opens[max(int(sessions.index([roll_ns])[0]) - PRICE_SESSIONS, 0)])
        price = roll_prices(priced["ts"], priced["instrument_id"], priced["close"], lo, roll_ns, out_iid, in_iid)
        out_name = out_raw or selection.names.lookup(np.array([out_iid]), np.array([roll_ns - NS_PER_MINUTE]))[0]
        in_name = in_raw or selection.names.lookup(np.array([in_iid]), np.array([roll_ns]))[0]
        rolls.append(Roll(
            symbol=symbol.internal_symbol, roll_ts=ns_to_datetime(roll_ns), outgoing_instrument_id=out_iid,
            incoming_instrument_id=in_iid, rule=symbol.rule,
            origin="computed" if selection.mode == "outrights" else "databento",
            outgoing_raw_symbol=out_name.decode() or None, incoming_raw_symbol=in_name.decode() or None,
            price_ts=None if price is None else ns_to_datetime(price[0]),
            outgoing_close=None if price is None else price[1] / PRICE_SCALE,
            incoming_close=None if price is None else price[2] / PRICE_SCALE,
        ))
    return rolls


def roll_price_bars(ctx: StageContext, selection: Selection, priced_parts: list[np.ndarray], landing, changes
                    ) -> np.ndarray:
    """The bars that can price the rolls: those read near them, plus landing.outrights' (continuous series)."""
    parts = list(priced_parts)
    if changes and landing.outrights and selection.mode == "continuous":
        lo = min(c[0] for c in changes) - 7 * _DAY_NS
        hi = max(c[0] for c in changes) + NS_PER_MINUTE
        flt = SymbolFilter(ctx.symbol.root, ctx.symbol.continuous, instrument_labels=True)
        for chunk, _ in DbnBarFile(landing.outrights).iter_labelled(flt, ctx.source.batch_size, (lo, hi)):
            parts.append(chunk[(chunk["ts"] >= lo) & (chunk["ts"] < hi)][list(_PRICED_FIELDS)])
    return np.concatenate(parts) if parts else np.zeros(0, dtype=RAW_BAR_DTYPE)
