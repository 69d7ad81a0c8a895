"""Bars land by UTC day: a window is served from the day pieces already landed, and only the rest is bought.

    <data_dir>/raw/<dataset>/<schema>/<symbol>/days/20251201.dbn.zst        a whole UTC day
    <data_dir>/raw/<dataset>/<schema>/<symbol>/days/20251201.dbn.zst.json   its sidecar
    <data_dir>/raw/<dataset>/<schema>/<symbol>/days/20251202T000000Z_20251202T140000Z.dbn.zst
                                                                            part of a day (a window's edge)

A window's missing time (the window minus every landed piece) is bought as one `timeseries.get_range` per
contiguous run of missing time, checked as one body (complete zstd, whole records, `metadata.get_record_count`
of the run, dataset and schema), then split here into one DBN file per UTC day of the run, each with its own
metadata (start/end of the piece, the symbology mappings of that day). Billing is by bytes, so the pieces cost
what the run costs; minutes not asked for are never bought (a window's edge day lands as a part of the day and
a later window buys only its remainder). Pieces never overlap: they are bought under per-day lock stripes and
the missing time is worked out again once the locks are held.

Deciding what is missing reads only file names (one directory listing, no hashing). The pieces that serve a
window are checked before use (size and sha256 against the sidecar; a piece that fails is set aside and the run
stops, so the next run buys that piece again once), and the ingest decodes every record of them anyway.

Sidecar keys: request, file, sha256, bytes, records, records_checked, cost_usd (the piece's share of its run's
quote, by records), run (the request bought), origin ("stream" here; "batch:<job_id>" from batch jobs),
symbology ({symbol: [{start_date, end_date, symbol}]} of the piece's day), downloaded_at, client, retries.
Keys `condition` and `last_modified_date` are reserved for data-quality dates.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import databento
import databento_dbn
import numpy as np
import zstandard

from engine.errors import EngineError
from engine.sources.databento_request import RawRequest, _stamp
from engine.sources.databento_retry import BadBody
from engine.sources.dbn import _open_stream, _read_info, count_records
from engine.sources.landing import (
    exclusive,
    file_digest,
    fsync_dir,
    part_path,
    read_sidecar,
    replacing,
    set_aside,
    sidecar_path,
    sync_paths,
)

__all__ = ["DAYS_DIR", "DayPlan", "FetchResult", "day_landing_path", "day_pieces", "days_dir", "land_day_body",
           "landed_pieces", "locked_days", "plan_days", "split_run", "verify_body", "verify_landed_piece"]

DAYS_DIR = "days"
NS_PER_DAY = 86_400_000_000_000
_EPOCH = dt.date(1970, 1, 1)
_LOCK_STRIPES = 16  # lock files per days folder: `.lock-<n>` serialises landings of the days n, n+16, ...
_PART_OF_DAY = re.compile(r"^(\d{8}T\d{6}(?:\.\d{6})?Z)_(\d{8}T\d{6}(?:\.\d{6})?Z)\.dbn\.zst$")
_RECORD_HEADER_BYTES = 16
_CHUNK_RECORDS = 1 << 16


@dataclass
class FetchResult:
    path: Path
    sha256: str
    reused: bool
    retries: int
    cost_usd: float | None
    bytes: int
    records: int | None = None


# --------------------------------------------------------------------------------------------- layout


def days_dir(data_dir: Path, req: RawRequest) -> Path:
    """data_dir/raw/<dataset>/<schema>/<symbol>/days: where the day pieces of `req`'s symbol and schema land."""
    return req.landing_path(Path(data_dir)).parent / DAYS_DIR


def day_landing_path(data_dir: Path, piece: RawRequest) -> Path:
    """Where the piece `piece` (inside one UTC day) lands: days/YYYYMMDD.dbn.zst for a whole day, else
    days/<start>_<end>.dbn.zst (stamps as in RawRequest.landing_path)."""
    day = piece.start.date()
    midnight = datetime.combine(day, dt.time(), UTC)
    if piece.end > midnight + dt.timedelta(days=1):
        raise ValueError(f"{piece.describe()} is not inside one UTC day")
    whole = piece.start == midnight and piece.end == midnight + dt.timedelta(days=1)
    name = f"{day:%Y%m%d}.dbn.zst" if whole else f"{_stamp(piece.start)}_{_stamp(piece.end)}.dbn.zst"
    return days_dir(data_dir, piece) / name


def day_pieces(req: RawRequest) -> list[RawRequest]:
    """`req` cut at UTC midnights (each piece inside one UTC day), in order."""
    out, start = [], req.start
    while start < req.end:
        end = min(req.end, datetime.combine(start.date() + dt.timedelta(days=1), dt.time(), UTC))
        out.append(dataclasses.replace(req, start=start, end=end))
        start = end
    return out


def _ns(ts: datetime) -> int:
    return (ts - datetime(1970, 1, 1, tzinfo=UTC)) // dt.timedelta(microseconds=1) * 1000


def _from_ns(ns: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + dt.timedelta(microseconds=ns // 1000)


def _parse_stamp(text: str) -> int:
    fmt = "%Y%m%dT%H%M%S.%fZ" if "." in text else "%Y%m%dT%H%M%SZ"
    return _ns(datetime.strptime(text, fmt).replace(tzinfo=UTC))


def landed_pieces(folder: Path) -> list[tuple[int, int, str]]:
    """(start_ns, end_ns, file name) of every piece landed in the days folder `folder`, by start: one directory
    listing, names only (sidecars, .part, .lock and .rejected-<n> files are not pieces)."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    out = []
    epoch, from_iso = _EPOCH.toordinal(), dt.date.fromisoformat  # YYYYMMDD: ISO 8601 basic format
    for name in names:
        if not name.endswith(".dbn.zst"):
            continue
        if len(name) == 16 and name[:8].isdigit():  # a whole day, YYYYMMDD.dbn.zst
            try:
                start = (from_iso(name[:8]).toordinal() - epoch) * NS_PER_DAY
            except ValueError:  # not a date: not a piece
                continue
            out.append((start, start + NS_PER_DAY, name))
        elif match := _PART_OF_DAY.match(name):
            out.append((_parse_stamp(match[1]), _parse_stamp(match[2]), name))
    out.sort()
    return out


@dataclass(frozen=True)
class DayPlan:
    """How a window is served: the landed pieces that overlap it (in order) and the runs of time still missing
    (each one request to buy), with the day pieces each run will land as."""

    window: RawRequest
    folder: Path
    names: tuple[str, ...]  # of the landed pieces that overlap the window, in time order
    missing: tuple[RawRequest, ...]

    @property
    def landed(self) -> tuple[Path, ...]:
        """The landed pieces that overlap the window, in time order."""
        return tuple(self.folder / name for name in self.names)

    def missing_pieces(self, run: RawRequest) -> list[RawRequest]:
        return day_pieces(run)

    def missing_days(self) -> list[str]:
        """The UTC days (YYYY-MM-DD, with the time range for a part of a day) still to buy, in order."""
        out = []
        for run in self.missing:
            for piece in day_pieces(run):
                day = piece.start.date().isoformat()
                whole = piece.end - piece.start == dt.timedelta(days=1)
                out.append(day if whole else f"{day} {piece.start:%H:%M}-{_end_clock(piece)}")
        return out


def _end_clock(piece: RawRequest) -> str:
    return "24:00" if piece.end.date() > piece.start.date() else f"{piece.end:%H:%M}"


def plan_days(data_dir: Path, window: RawRequest) -> DayPlan:
    """What of `window` is landed and what must be bought (names only, see `landed_pieces`)."""
    lo, hi = _ns(window.start), _ns(window.end)
    folder = days_dir(data_dir, window)
    landed, missing, at = [], [], lo
    for start, end, name in landed_pieces(folder):
        if end <= lo or start >= hi:
            continue
        landed.append(name)
        if start > at:
            missing.append((at, start))
        at = max(at, end)
    if at < hi:
        missing.append((at, hi))
    runs = tuple(dataclasses.replace(window, start=_from_ns(a), end=_from_ns(b)) for a, b in missing)
    return DayPlan(window, folder, tuple(landed), runs)


@contextlib.contextmanager
def locked_days(folder: Path, runs: tuple[RawRequest, ...] | list[RawRequest]) -> Iterator[None]:
    """Hold the lock stripes of every UTC day the runs touch (taken in order: no deadlock between processes)."""
    folder.mkdir(parents=True, exist_ok=True)
    stripes = sorted({(piece.start.date() - _EPOCH).days % _LOCK_STRIPES for run in runs for piece in day_pieces(run)})
    with contextlib.ExitStack() as stack:
        for stripe in stripes:
            stack.enter_context(exclusive(folder / f".stripe-{stripe:02d}"))
        yield


# --------------------------------------------------------------------------------------------- checks


def verify_body(part: Path, req: RawRequest, expected: int | None) -> int:
    """Check the body in `part` is the complete DBN asked for; return its record count.

    Read through the same stream as ingest (engine.sources.dbn): every zstd frame finished, every record
    whole, `expected` records (when given). Complete DBN of the wrong dataset or schema raises EngineError straight
    away (buying it again would give the same answer); any other fault raises BadBody.

    Not `databento_dbn.DBNDecoder` (measured with databento-dbn 0.70 on 1,077,032 records: 0.29 s against
    0.16 s, fast enough): with compression=ZSTD it does not tell a file cut inside a zstd frame from a
    shorter one (at most a partial last record stays in its buffer); a record shorter than its rtype makes
    it panic (pyo3 PanicException, a BaseException, with a Rust backtrace on stderr) instead of raising;
    and it accepts records of another rtype (ohlcv-1s or MBO among ohlcv-1m bars). `count_records` refuses
    all three.
    """
    try:
        info, count = count_records(part)
    except EngineError as exc:
        raise BadBody(exc.problem.replace(str(part), "the body")) from None
    if (info.schema or "").lower() != req.schema.lower() or info.dataset != req.dataset:
        raise EngineError(
            f"Databento sent {info.dataset} {info.schema or 'mixed-schema'} data for {req.describe()}",
            "report this to support@databento.com; nothing was saved",
        )
    if expected is not None and count != expected:
        raise BadBody(f"received {count:,} of {expected:,} records (metadata.get_record_count)")
    return count


def verify_landed_piece(path: Path) -> FetchResult:
    """A landed piece checked before it serves a window: its size and sha256 against its sidecar. A piece that
    fails (or has no sidecar) is moved aside with its sidecar and EngineError raised: the next run buys it again."""
    recorded = read_sidecar(path) or {}
    problems = []
    size = path.stat().st_size
    sha256 = None
    if not recorded:
        problems.append("it has no readable sidecar")
    elif recorded.get("bytes") != size:
        problems.append(f"it has {size:,} bytes but {recorded.get('bytes')} were landed")
    else:
        sha256 = file_digest(path)[0]
        if sha256 != recorded.get("sha256"):
            problems.append(f"its sha256 {sha256[:12]}… differs from the {str(recorded.get('sha256'))[:12]}… landed")
    if problems:
        kept = set_aside(path, path)
        raise EngineError(
            f"the landed Databento day {path} is not as it was landed: {'; '.join(problems)}. "
            f"Moved it (and its sidecar) to {kept} for inspection",
            "run again to download that day once more"
            + (f" (Databento charges again, last time ${recorded['cost_usd']})" if "cost_usd" in recorded else ""),
        )
    return FetchResult(path=path, sha256=str(sha256), reused=True, retries=0, cost_usd=recorded.get("cost_usd"),
                       bytes=size, records=recorded.get("records"))


# --------------------------------------------------------------------------------------------- landing


def land_day_body(part: Path, day_req: RawRequest, *, expected_records: int | None,
                  sidecar_extra: dict, data_dir: Path | None = None) -> FetchResult:
    """Land the DBN body already on disk at `part` as the piece `day_req` (inside one UTC day).

    Checks it as a download is checked (`verify_body`: complete zstd, whole records, dataset and schema, and
    `expected_records` when given), writes the sidecar (request, file, sha256, bytes, records, records_checked,
    symbology of the day from the body's metadata, origin "stream", downloaded_at, client; `sidecar_extra` adds
    or overrides keys, e.g. origin "batch:<job_id>", cost_usd, condition, last_modified_date) and renames `part`
    atomically to `day_landing_path(data_dir, day_req)` (without `data_dir`: to that name in `part`'s folder, which
    must then be the days folder; `part` must be on the same file system). The caller holds `locked_days` for the
    day and knows it is missing. Raises BadBody (the body stays at `part`) or EngineError.
    """
    if data_dir is not None:
        final = day_landing_path(data_dir, day_req)
    elif part.parent.name == DAYS_DIR:
        final = part.parent / day_landing_path(Path(), day_req).name
    else:
        raise ValueError(f"{part} is not in a days folder: give data_dir")
    return _commit([_staged(part, final, day_req, expected_records, sidecar_extra)])[0]


@dataclass
class _Staged:
    """A checked piece waiting to be made durable and renamed into place."""

    part: Path
    final: Path
    sidecar: dict


def _staged(part: Path, final: Path, day_req: RawRequest, expected_records: int | None, extra: dict) -> _Staged:
    records = verify_body(part, day_req, expected_records)
    sha256, size = file_digest(part)
    return _Staged(part, final, {
        "request": day_req.as_dict(),
        "file": final.name,
        "sha256": sha256,
        "bytes": size,
        "records": records,
        "records_checked": "metadata.get_record_count" if expected_records is not None else None,
        "symbology": _day_symbology(part),
        "origin": "stream",
        "downloaded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "client": f"databento {databento.__version__}",
        **extra,
    })


def _commit(staged: list[_Staged]) -> list[FetchResult]:
    """Sidecars written, then every body and sidecar made durable at once (one syncfs where Linux has it), then each
    body renamed into place (after its sidecar: a data file never appears without one), then the folders synced."""
    folders = sorted({item.final.parent for item in staged})
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    for item in staged:
        with replacing(sidecar_path(item.final)) as tmp, open(tmp, "w") as f:
            json.dump(item.sidecar, f, indent=2, sort_keys=True)
            f.write("\n")
    sync_paths([*(item.part for item in staged), *(sidecar_path(item.final) for item in staged)], folders[0])
    for item in staged:
        os.replace(item.part, item.final)
    for folder in folders:
        fsync_dir(folder)
    return [FetchResult(path=item.final, sha256=item.sidecar["sha256"], reused=False, retries=0,
                        cost_usd=item.sidecar.get("cost_usd"), bytes=item.sidecar["bytes"],
                        records=item.sidecar["records"]) for item in staged]


def _day_symbology(path: Path) -> dict[str, list[dict[str, str]]]:
    """The symbology mappings in the metadata of the DBN file `path`, as JSON."""
    info = _read_info(path)
    out: dict[str, list[dict[str, str]]] = {}
    for iid, start, end, symbol in info.intervals:
        symbol_in, symbol_out = (str(iid), symbol) if info.stype_in == "instrument_id" else (symbol, str(iid))
        out.setdefault(symbol_in, []).append({"start_date": (_EPOCH + dt.timedelta(days=start)).isoformat(),
                                              "end_date": (_EPOCH + dt.timedelta(days=end)).isoformat(),
                                              "symbol": symbol_out})
    return out


def split_run(body: Path, run: RawRequest, *, expected_records: int, cost_usd: float | None, retries: int,
              data_dir: Path) -> list[FetchResult]:
    """Land the verified body of `run` (bought as one request) as one DBN file per UTC-day piece of `run`.

    Each piece gets the body's metadata with its own start/end and the mappings of its day, and the records whose
    ts_event falls in it (records are time-ordered; one before the run goes into the first piece, one after it or
    out of order into the current piece: kept and counted, the ingest quarantines what is outside its window).
    The pieces' record counts must add up to `expected_records`. Then each piece is checked and landed as by
    `land_day_body`, all of them made durable at once.
    """
    pieces = day_pieces(run)
    info = _read_info(body)
    starts = np.array([_ns(p.start) for p in pieces], dtype=np.int64)
    parts = [part_path(day_landing_path(data_dir, p)) for p in pieces]
    counts = [0] * len(pieces)
    for part in parts:
        part.unlink(missing_ok=True)  # left over from a crash: never trusted
    writers: dict[int, tuple] = {}
    compressor = zstandard.ZstdCompressor(level=3)  # one context for all the pieces
    current = 0
    stream = _open_stream(body)
    try:
        stream.read(info.metadata_length)
        first = stream.read(1)
        size = first[0] * 4 if first else 0
        data = first + stream.read(size * _CHUNK_RECORDS - 1) if first else b""
        while data:
            whole = len(data) // size
            recs = np.frombuffer(data, dtype=np.uint8, count=whole * size).reshape(whole, size)
            ts = recs[:, 8:16].copy().view("<u8").ravel().astype(np.int64)
            index = np.clip(np.searchsorted(starts, ts, side="right") - 1, 0, len(pieces) - 1)
            index = np.maximum.accumulate(np.maximum(index, current))
            bounds = np.flatnonzero(np.diff(index)) + 1
            for a, b in zip([0, *bounds.tolist()], [*bounds.tolist(), whole], strict=True):
                k = int(index[a])
                if k not in writers:  # pieces come in order: the one before is complete
                    for done in list(writers):
                        _close_piece(writers.pop(done))
                    writers[k] = _open_piece(parts[k], info, pieces[k], compressor)
                writers[k][1].write(recs[a:b].tobytes())
                counts[k] += b - a
            current = int(index[-1])
            data = stream.read(size * _CHUNK_RECORDS)
        for k in list(writers):
            _close_piece(writers.pop(k))
        for k in range(len(pieces)):  # days without records land too: they are known to be empty
            if not counts[k]:
                _close_piece(_open_piece(parts[k], info, pieces[k], compressor))
    except BaseException:
        for writer in writers.values():
            with contextlib.suppress(Exception):
                _close_piece(writer)
        for part in parts:
            part.unlink(missing_ok=True)
        raise
    finally:
        stream.close()
    if sum(counts) != expected_records:
        for part in parts:
            part.unlink(missing_ok=True)
        raise EngineError(f"splitting {run.describe()} into days gave {sum(counts):,} records, not the "
                          f"{expected_records:,} received; nothing was landed", "report this as a bug")
    total = sum(counts)
    extra = {"run": run.as_dict(), "run_records": total, "retries": retries}
    staged = []
    for k, piece in enumerate(pieces):
        share = None if cost_usd is None else (cost_usd * counts[k] / total if total else cost_usd / len(pieces))
        staged.append(_staged(parts[k], day_landing_path(data_dir, piece), piece, counts[k],
                              {**extra, "cost_usd": share}))
    return _commit(staged)


def _open_piece(part: Path, info, piece: RawRequest, compressor: zstandard.ZstdCompressor) -> tuple:
    """A zstd writer on `part`, the piece's metadata already written (one piece at a time per compressor)."""
    part.parent.mkdir(parents=True, exist_ok=True)
    raw = open(part, "wb")  # noqa: SIM115 -- closed by _close_piece
    writer = compressor.stream_writer(raw, closefd=False)
    writer.write(_piece_metadata(info, piece))
    return raw, writer


def _close_piece(writer: tuple) -> None:
    raw, zstd = writer
    zstd.close()
    raw.close()


def _piece_metadata(info, piece: RawRequest) -> bytes:
    """The body's metadata for one piece: its start/end, and the mappings of its UTC day."""
    day = (piece.start.date() - _EPOCH).days
    by_symbol: dict[str, list[_Interval]] = {}
    for iid, start, end, symbol in info.intervals:
        if start <= day < end:
            symbol_in, symbol_out = (str(iid), symbol) if info.stype_in == "instrument_id" else (symbol, str(iid))
            by_symbol.setdefault(symbol_in, []).append(
                _Interval(_EPOCH + dt.timedelta(days=day), _EPOCH + dt.timedelta(days=day + 1), symbol_out))
    meta = databento_dbn.Metadata(
        dataset=info.dataset, start=_ns(piece.start), end=_ns(piece.end),
        stype_in=None if info.stype_in is None else databento_dbn.SType(info.stype_in),
        stype_out=databento_dbn.SType(info.stype_out),
        schema=None if info.schema is None else databento_dbn.Schema(info.schema),
        symbols=list(info.symbols), mappings=[_Mapping(s, ivs) for s, ivs in by_symbol.items()],
        ts_out=info.ts_out, version=info.version,
    )
    return bytes(meta)


@dataclass
class _Interval:
    start_date: dt.date
    end_date: dt.date
    symbol: str


@dataclass
class _Mapping:
    raw_symbol: str
    intervals: list[_Interval]
