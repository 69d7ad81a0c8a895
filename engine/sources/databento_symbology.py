"""Symbology up front: before anything is priced or bought, Databento's free `symbology.resolve` must map the job's
symbol on every UTC day of the window, else the job stops (exit 2) without a charge.

Strict on purpose: a symbol Databento does not know (`not_found`), or one mapped on only part of the window
(`partial`, or days without a mapping: e.g. a root the dataset does not have in those years, or a contract that
starts trading mid-window) is refused, naming the first and last mapped day so the window can be moved there.
Buying a window whose days have no instrument would land (and pay for) days without bars and report them as
missing coverage, which is the silent wrong answer this check exists to prevent.

The answer is kept (`Resolved`) and stored with the bars' landing (its sidecar, key `symbology`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from engine.errors import EngineError
from engine.sources.databento_client import historical, intervals_of, resolve
from engine.sources.databento_days import plan_days
from engine.sources.databento_request import RawRequest
from engine.sources.databento_retry import policy_of
from engine.sources.landing import read_sidecar, sidecar_path, write_json_atomic

_EPOCH = dt.date(1970, 1, 1)


@dataclass(frozen=True)
class Resolved:
    """Databento's symbology.resolve answer for the bars request `request`, checked to map every day."""

    request: RawRequest
    answer: dict
    intervals: list[tuple[int, int, int, str]]  # (instrument_id, start_day, end_day, symbol), epoch days

    def on(self, day: dt.date) -> list[tuple[int, int, int, str]]:
        """The mappings of one UTC day (clipped to it), for a landing of that day."""
        first = (day - _EPOCH).days
        return [(iid, first, first + 1, sym) for iid, a, b, sym in self.intervals if a <= first < b]

    def as_dict(self) -> dict:
        keys = ("result", "symbols", "stype_in", "stype_out", "start_date", "end_date", "partial", "not_found",
                "message", "status")
        return {**{k: self.answer[k] for k in keys if k in self.answer},
                "resolved_at": datetime.now(UTC).isoformat(timespec="seconds")}


def check_symbology(source, symbol, window, data_dir: Path, *, online: bool) -> Resolved | None:
    """Resolve the job's symbol over `window` (free) and refuse an unknown or partly unmapped one (EngineError).

    None when nothing is asked: offline (no key: nothing can be bought either), an instrument_id request (ids map
    to themselves), or bars already landed for the whole window (nothing to buy: a request-keyed landing of an
    earlier version for exactly this window, or day pieces covering it; each day's sidecar keeps its mappings)."""
    req = RawRequest(symbol.dataset, symbol.databento_symbol, symbol.schema, symbol.stype_in, window.start,
                     window.end)
    if not online or req.stype_in == "instrument_id" or req.landing_path(Path(data_dir)).is_file() \
            or not plan_days(Path(data_dir), req).missing:
        return None
    answer = resolve(historical(source.gateway), req, policy_of(source))
    intervals = intervals_of(answer, req)
    _refuse_unmapped(req, answer, intervals)
    return Resolved(req, answer, intervals)


def _refuse_unmapped(req: RawRequest, answer: dict, intervals: list[tuple[int, int, int, str]]) -> None:
    first_day = req.start.date()
    last_day = (req.end - dt.timedelta(microseconds=1)).date()
    span = f"{first_day} to {last_day} (UTC days of the window [{_iso(req.start)}, {_iso(req.end)}))"
    where = f"{req.symbol} ({req.stype_in}) in {req.dataset}"
    said = f"Databento's symbology.resolve answered {answer.get('message') or 'no message'!r}"
    nothing = "; nothing was priced or bought"
    mapped = sorted({(_EPOCH + dt.timedelta(days=d)) for _, a, b, sym in intervals if sym == req.symbol
                     for d in range(a, b)})
    in_window = [d for d in mapped if first_day <= d <= last_day]
    if req.symbol in (answer.get("not_found") or []) or not in_window:
        found = " (not_found)" if req.symbol in (answer.get("not_found") or []) else " (no instrument on any day)"
        raise EngineError(
            f"{where} is unknown to Databento from {span}: {said}{found}{nothing}",
            f"check the symbol (Databento asks for {req.symbol}: the registry's root, roll rule and rank) and "
            "source.dataset, and that the dataset has this product in those years "
            "(https://databento.com/docs/api-historical/basics/symbology); or move the window",
        )
    missing = [d for d in _days(first_day, last_day) if d not in set(in_window)]
    if missing:
        first, last = in_window[0], in_window[-1]
        gap = missing[0] if len(missing) == 1 else f"{missing[0]} to {missing[-1]}" if _contiguous(missing) else \
            f"{len(missing)} days, the first {missing[0]}"
        move = (f"window.start={first}" if first > first_day else "") + \
            (" and " if first > first_day and last < last_day else "") + \
            (f"window.end={last + dt.timedelta(days=1)}" if last < last_day else "")
        raise EngineError(
            f"{where} is mapped by Databento only from {first} to {last}, not on every day from {span}: "
            f"unmapped {gap}; {said} (partial){nothing}",
            f"move the window onto the mapped days ({move or 'without the unmapped days'}), or check the symbol "
            "and source.dataset",
        )


def store_symbology(landed: Path, resolved: Resolved | None) -> None:
    """Keep the mappings checked before buying in the landing's sidecar (`symbology`), unless it has them."""
    if resolved is None:
        return
    sidecar = read_sidecar(landed)
    if sidecar is None or "symbology" in sidecar:
        return
    write_json_atomic(sidecar_path(landed), {**sidecar, "symbology": resolved.as_dict()})


def _days(first: dt.date, last: dt.date) -> list[dt.date]:
    return [first + dt.timedelta(days=n) for n in range((last - first).days + 1)]


def _contiguous(days: list[dt.date]) -> bool:
    return (days[-1] - days[0]).days == len(days) - 1


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
