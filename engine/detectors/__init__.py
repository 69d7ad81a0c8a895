"""The detector interface: what the detect stage calls, and the checks it applies to a detector and its output.

A detector turns one symbol's bars (a structured array in time order with at least ``ts`` (int64, ns since the
epoch, UTC, bar open), ``open``, ``high``, ``low``, ``close`` (float64) and ``volume`` (int64)) into events: a
structured array with ``ts`` (int64, the pivot bar's ts, taken from the bars), ``direction`` ("BULL" or
"BEAR"), ``price`` (float64) and ``confirm_ts`` (int64, the ts of the bar that confirms it). The stage reads
``warmup_bars`` bars before the window and ``lookahead_bars`` bars after it, and keeps the events whose pivot
lies in the window.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from typing import Protocol

import numpy as np

from engine.errors import EngineError

# One event: pivot bar time, confirming bar time (ns since the epoch, UTC), price, BULL/BEAR.
EVENT_DTYPE = np.dtype([("ts", "i8"), ("confirm_ts", "i8"), ("price", "f8"), ("direction", "U4")])
DIRECTIONS = ("BEAR", "BULL")  # the order summaries list them in


class Detector(Protocol):
    warmup_bars: int  # bars needed before a pivot
    lookahead_bars: int  # bars after a pivot needed to confirm it

    def detect(self, bars: np.ndarray) -> np.ndarray: ...


def check_detector(name: str, detector: object) -> Detector:
    """`detector` if it has the Detector interface (non-negative integer bar counts, a detect method)."""
    if not callable(getattr(detector, "detect", None)):
        raise EngineError(f"detector {name!r} ({type(detector).__qualname__}) has no detect(bars) method",
                          "give the detector class a method detect(self, bars) returning its events")
    for attribute in ("warmup_bars", "lookahead_bars"):
        value = getattr(detector, attribute, None)
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
            raise EngineError(f"detector {name!r}: {attribute}={value!r} is not a number of bars",
                              f"make {type(detector).__qualname__}.{attribute} an integer >= 0")
    return detector  # type: ignore[return-value]


def detector_params(detector: object) -> dict:
    """The parameters a detector was created with: a dataclass's init fields, else its public attributes."""
    if dataclasses.is_dataclass(detector):
        items = {f.name: getattr(detector, f.name) for f in dataclasses.fields(detector) if f.init}
    else:
        items = {k: v for k, v in vars(detector).items() if not k.startswith("_")}
    return {k: v.value if isinstance(v, enum.Enum) else v for k, v in items.items()}


def params_json(detector: object) -> str:
    """detector_params as JSON with sorted keys: how events record them (triangle_events_v1.detector_params)."""
    return json.dumps(detector_params(detector), sort_keys=True, default=str)


def checked_events(name: str, events: object, bars: np.ndarray) -> np.ndarray:
    """A detector's output as EVENT_DTYPE ordered by (ts, direction), or an EngineError naming what is wrong."""
    fix = f"make detector {name!r} return a structured array with fields ts, direction, price, confirm_ts"
    if not isinstance(events, np.ndarray) or events.ndim != 1:
        shape = f" of shape {events.shape}" if isinstance(events, np.ndarray) else ""
        raise EngineError(f"detector {name!r} returned a {type(events).__name__}{shape}, not events", fix)
    missing = [f for f in EVENT_DTYPE.names if f not in (events.dtype.names or ())]
    if missing:
        raise EngineError(f"detector {name!r} returned events without the fields {', '.join(missing)}", fix)
    directions = events["direction"].astype(str)
    bad = ~np.isin(directions, DIRECTIONS)
    if bad.any():
        raise EngineError(f"detector {name!r} returned direction {str(directions[bad][0])!r}", "use BULL or BEAR")
    for field in ("ts", "confirm_ts"):
        if events[field].dtype.kind not in "iu":
            raise EngineError(f"detector {name!r} returned {field} of dtype {events[field].dtype}",
                              f"{field} is int64 ns since the epoch (a bar's ts)")
    out = np.empty(len(events), EVENT_DTYPE)
    for field in EVENT_DTYPE.names:
        out[field] = directions if field == "direction" else events[field]
    at = np.searchsorted(bars["ts"], out["ts"]).clip(max=max(len(bars) - 1, 0))
    if len(out) and (not len(bars) or (bars["ts"][at] != out["ts"]).any()):
        raise EngineError(f"detector {name!r} returned an event whose ts is not the ts of one of its bars", fix)
    if (out["confirm_ts"] < out["ts"]).any():
        raise EngineError(f"detector {name!r} returned an event confirmed before its pivot (confirm_ts < ts)", fix)
    out = out[np.lexsort((out["direction"], out["ts"]))]
    if len(out) > 1 and ((out["ts"][1:] == out["ts"][:-1]) & (out["direction"][1:] == out["direction"][:-1])).any():
        raise EngineError(f"detector {name!r} returned the same (ts, direction) twice", "return each event once")
    return out


__all__ = ["DIRECTIONS", "EVENT_DTYPE", "Detector", "check_detector", "checked_events", "detector_params",
           "params_json"]
