"""A small, typed, lazy and chunked façade over Databento DBN files of 1-minute OHLCV bars.

Style follows databento-python's ``DBNStore``: the metadata header of every file is decoded eagerly (so a
wrong file fails before any work starts), records are streamed lazily in fixed-size chunks straight from
the (zstd-decompressed) byte stream with ``numpy.frombuffer`` -- the same path as
``DBNStore.to_ndarray(count=...)`` -- so memory does not grow with the file size and there is no
per-record Python code on the hot path.

Records are attributed to symbols through the file's metadata symbology: a record maps through the mapping
interval (date-granular, ``start_date`` inclusive, ``end_date`` exclusive, UTC dates) that contains the UTC
date of its ``ts_event``.
"""

from __future__ import annotations

import collections
import datetime as dt
import glob
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, ClassVar

import databento_dbn
import numpy as np
import zstandard
from omegaconf import MISSING

from engine.bars import NS_PER_MINUTE, RAW_BAR_DTYPE
from engine.errors import EngineError
from engine.sources import Landing, SourceParams
from engine.sources.landing import file_digest

__all__ = ["DBN_OHLCV_DTYPE", "DbnBarFile", "DbnFileInfo", "InstrumentNames", "SymbolFilter", "count_records",
           "expand_paths", "read_definitions"]

OHLCV_1M = "ohlcv-1m"
NS_PER_DAY = 86_400_000_000_000
_EPOCH = dt.date(1970, 1, 1)

# The on-disk OHLCV record (identical in DBN v1, v2 and v3): 16-byte record header then the bar body.
DBN_OHLCV_DTYPE = np.dtype(
    [
        ("length", "u1"),  # record length in 4-byte words (14 for OHLCV, 16 with ts_out)
        ("rtype", "u1"),
        ("publisher_id", "u2"),
        ("instrument_id", "u4"),
        ("ts_event", "u8"),
        ("open", "i8"),
        ("high", "i8"),
        ("low", "i8"),
        ("close", "i8"),
        ("volume", "u8"),
    ]
)
_DBN_OHLCV_TS_OUT_DTYPE = np.dtype(DBN_OHLCV_DTYPE.descr + [("ts_out", "u8")])
# rtype of 1-minute OHLCV records; 0x11 is the deprecated generic OHLCV rtype of early DBN v1 files.
_OHLCV_1M_RTYPES = (int(databento_dbn.RType.OHLCV_1M.value), 0x11)

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_RECORD_HEADER_BYTES = 16
_COUNT_CHUNK_RECORDS = 1 << 17
_DBN_MAGIC = b"DBN"
_GLOB_CHARS = re.compile(r"[*?\[]")
_MONTH_CODES = "FGHJKMNQUVXZ"


@dataclass(frozen=True)
class SymbolFilter:
    """Which records to keep: the continuous symbol itself, or any outright contract of ``root``.

    ``instrument_labels``: also keep records whose mapping label is the instrument id itself, or that no mapping
    covers (files requested with stype_in instrument_id, e.g. landed outright contracts): outright bars of unknown
    name (raw_symbol b"", named by instrument definitions)."""

    root: str  # e.g. "ES"
    continuous: str | None  # e.g. "ES.v.0"; None for an outright series (one contract, no continuous symbol)
    instrument_labels: bool = False
    _outright: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        pattern = re.compile(rf"^{re.escape(self.root)}[{_MONTH_CODES}]\d{{1,2}}$")
        object.__setattr__(self, "_outright", pattern)

    def matches(self, symbol: str) -> bool:
        """True for the continuous symbol exactly or an outright of the root ("ESU4", "ESH26").

        Spreads ("ESU4-ESZ4"), other products sharing a prefix ("ESTX") and other roots ("NQU4") do not match.
        """
        return symbol == self.continuous or self.is_outright(symbol) or (self.instrument_labels and symbol.isdigit())

    def is_outright(self, symbol: str) -> bool:
        """An outright contract of the root ("ESU4")."""
        return self._outright.match(symbol) is not None


@dataclass(frozen=True)
class DbnFileInfo:
    """What the metadata header of one DBN file says."""

    path: Path
    version: int
    schema: str | None
    dataset: str
    stype_in: str | None
    stype_out: str
    start_ns: int
    end_ns: int | None
    ts_out: bool
    compressed: bool
    symbols: tuple[str, ...]
    metadata_length: int  # bytes before the first record in the decompressed stream
    # Symbology as (instrument_id, start_day, end_day, symbol), days since the epoch, end exclusive.
    intervals: tuple[tuple[int, int, int, str], ...]

    def maps(self, symbol: str) -> bool:
        """Whether the file's symbology maps `symbol` (e.g. the continuous ES.v.0) to an instrument."""
        return any(iv[3] == symbol for iv in self.intervals)


def expand_paths(spec: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Expand one or more paths / glob patterns (``~`` and ``**`` allowed) into a list of DBN files.

    A directory expands to the ``*.dbn`` and ``*.dbn.zst`` files inside it. Order: patterns in the order
    given, each pattern's matches sorted; duplicates dropped. Raises EngineError naming the first pattern
    that matches nothing.
    """
    specs = [spec] if isinstance(spec, str | os.PathLike) else list(spec)
    if not specs:
        raise EngineError(
            "no DBN input files were given", fix="set the source paths to a file or glob pattern"
        )
    seen: set[Path] = set()
    out: list[Path] = []
    for item in specs:
        pattern = os.path.expanduser(os.fspath(item))
        if _GLOB_CHARS.search(pattern):
            matches = [Path(p) for p in sorted(glob.glob(pattern, recursive=True)) if Path(p).is_file()]
        elif Path(pattern).is_dir():
            d = Path(pattern)
            matches = sorted({*d.glob("*.dbn"), *d.glob("*.dbn.zst")})
        else:
            matches = [Path(pattern)] if Path(pattern).is_file() else []
        if not matches:
            raise EngineError(
                f"no DBN file matches {os.fspath(item)!r}",
                fix="check the path or glob pattern (relative paths are resolved from the working directory "
                f"{os.getcwd()}); files must end in .dbn or .dbn.zst",
            )
        for p in matches:
            key = p.resolve()
            if key not in seen:
                seen.add(key)
                out.append(p)
    return out


class _ZstdFrames:
    """Decompress concatenated zstd frames, insisting that the input ends where a frame ends.

    ``zstandard``'s ``stream_reader`` silently stops at a cut block; a cut file must fail instead. A cut exactly
    between two frames is valid zstd and cannot be told from a shorter file here (the record count can).
    """

    READ_SIZE = 1 << 18

    def __init__(self, raw: IO[bytes], path: Path):
        self.raw, self.path = raw, path
        self._dctx = zstandard.ZstdDecompressor()
        self._dobj: zstandard.ZstdDecompressionObj | None = None
        self._pieces: collections.deque[bytes | memoryview] = collections.deque()
        self._have = 0
        self._eof = False

    def _fill(self) -> None:
        chunk = self.raw.read(self.READ_SIZE)
        if not chunk:
            if self._dobj is not None:
                raise EngineError(
                    f"{self.path} ends inside a zstd frame: the file is truncated; download it again",
                    "download the file again from Databento (or restore a complete copy)",
                )
            self._eof = True
            return
        try:
            while chunk:
                if self._dobj is None:
                    self._dobj = self._dctx.decompressobj()
                out = self._dobj.decompress(chunk)
                if out:
                    self._pieces.append(out)
                    self._have += len(out)
                if self._dobj.eof:
                    chunk, self._dobj = self._dobj.unused_data, None
                else:
                    chunk = b""
        except zstandard.ZstdError as exc:
            raise EngineError(
                f"cannot decompress {self.path}: {exc}", "the file is damaged; download it again"
            ) from None

    def read(self, n: int) -> bytes:
        while self._have < n and not self._eof:
            self._fill()
        out: list[bytes | memoryview] = []
        need = n
        while need and self._pieces:
            piece = self._pieces[0]
            if len(piece) <= need:
                out.append(self._pieces.popleft())
                need -= len(piece)
            else:  # split without copying the rest
                view = memoryview(piece)
                out.append(view[:need])
                self._pieces[0] = view[need:]
                need = 0
        data = out[0] if len(out) == 1 and isinstance(out[0], bytes) else b"".join(out)
        self._have -= len(data)
        return data

    def close(self) -> None:
        self._pieces.clear()


class _DbnStream:
    """Decompressed DBN bytes of one file; closes the decompressor and the file."""

    def __init__(self, raw: IO[bytes], stream: IO[bytes] | _ZstdFrames, compressed: bool):
        self.raw, self.stream, self.compressed = raw, stream, compressed

    def read(self, n: int) -> bytes:
        """Read n bytes (fewer only at end of stream), looping over short reads.

        Raises EngineError naming the file when a compressed file ends inside a zstd frame or is damaged.
        """
        data = self.stream.read(n)
        if len(data) == n or not data:
            return data
        parts = [data]
        got = len(data)
        while got < n:
            more = self.stream.read(n - got)
            if not more:
                break
            parts.append(more)
            got += len(more)
        return b"".join(parts)

    def close(self) -> None:
        try:
            if self.stream is not self.raw:
                self.stream.close()
        finally:
            self.raw.close()


def _open_stream(path: Path) -> _DbnStream:
    """Open a .dbn / .dbn.zst file as a stream of decompressed DBN bytes."""
    try:
        raw = open(path, "rb")  # noqa: SIM115 -- handed to the caller, which closes it
    except FileNotFoundError:
        raise EngineError(f"DBN file not found: {path}", fix="check the path of the input file") from None
    except OSError as exc:
        raise EngineError(f"cannot open DBN file {path}: {exc}", fix="check the file's permissions") from None
    head = raw.read(4)
    raw.seek(0)
    if head == _ZSTD_MAGIC or (len(head) == 4 and head[1:] == b"\x2a\x4d\x18" and head[0] & 0xF0 == 0x50):
        return _DbnStream(raw, _ZstdFrames(raw, path), True)
    if head[:3] == _DBN_MAGIC:
        return _DbnStream(raw, raw, False)
    raw.close()
    raise EngineError(
        f"{path} is not a DBN file (neither raw DBN nor zstd-compressed DBN)",
        fix="point the source at Databento .dbn or .dbn.zst files",
    )


def _date_to_day(value: dt.date | str) -> int:
    if isinstance(value, str):
        value = dt.date.fromisoformat(value)
    return (value - _EPOCH).days


def _read_info(path: Path) -> DbnFileInfo:
    stream = _open_stream(path)
    try:
        try:
            prelude = stream.read(8)
            if len(prelude) < 8 or prelude[:3] != _DBN_MAGIC:
                raise ValueError("missing DBN prelude")
            meta_len = int.from_bytes(prelude[4:8], "little")
            body = stream.read(meta_len)
            if len(body) < meta_len:
                raise ValueError("metadata is truncated")
            meta = databento_dbn.Metadata.decode(
                prelude + body, upgrade_policy=databento_dbn.VersionUpgradePolicy.AS_IS
            )
        except EngineError:
            raise
        except Exception as exc:  # zstd errors, DBNError, ValueError: all mean a damaged file
            raise EngineError(
                f"cannot read the DBN metadata of {path}: {exc}",
                fix="the file is damaged or truncated; download it again from Databento",
            ) from None
    finally:
        stream.close()

    stype_in = None if meta.stype_in is None else str(meta.stype_in)
    stype_out = str(meta.stype_out)
    intervals: list[tuple[int, int, int, str]] = []
    for symbol_in, entries in meta.mappings.items():
        for entry in entries:
            symbol_out = entry["symbol"]
            if not symbol_out:
                continue
            # Same rule as databento.common.symbology._resolve_mapping_tuple.
            try:
                if stype_in == "instrument_id":
                    iid, symbol = int(symbol_in), str(symbol_out)
                elif stype_out == "instrument_id":
                    iid, symbol = int(symbol_out), str(symbol_in)
                else:
                    continue  # no instrument ids in this symbology: records stay unmapped
            except ValueError:
                continue
            start_day, end_day = _date_to_day(entry["start_date"]), _date_to_day(entry["end_date"])
            if end_day > start_day:
                intervals.append((iid, start_day, end_day, symbol))
    return DbnFileInfo(
        path=path,
        version=int(meta.version),
        schema=None if meta.schema is None else str(meta.schema),
        dataset=str(meta.dataset),
        stype_in=stype_in,
        stype_out=stype_out,
        start_ns=int(meta.start),
        end_ns=None if meta.end is None else int(meta.end),
        ts_out=bool(meta.ts_out),
        compressed=stream.compressed,
        symbols=tuple(meta.symbols),
        metadata_length=8 + meta_len,
        intervals=tuple(intervals),
    )


def count_records(path: Path) -> tuple[DbnFileInfo, int]:
    """The metadata of `path` and how many records it holds, read through the same stream as ingest.

    Every record must have the length and rtype of the first (true of every DBN schema this engine reads).
    Raises EngineError naming the file when it ends inside a zstd frame or a record, or is damaged.
    """
    info = _read_info(path)
    stream = _open_stream(path)
    try:
        if len(stream.read(info.metadata_length)) < info.metadata_length:
            raise EngineError(f"{path} is truncated inside its metadata", "download the file again")
        first = stream.read(2)
        if not first:
            return info, 0
        size = first[0] * 4
        if len(first) < 2 or size < _RECORD_HEADER_BYTES:
            raise EngineError(
                f"{path} is damaged: its first record claims {size} bytes", "download the file again"
            )
        data = first + stream.read(size * _COUNT_CHUNK_RECORDS - 2)
        count = 0
        while data:
            whole = len(data) // size
            recs = np.frombuffer(data, dtype=np.uint8, count=whole * size).reshape(whole, size)
            bad = (recs[:, 0] != first[0]) | (recs[:, 1] != first[1])
            if bad.any():
                at = info.metadata_length + (count + int(np.flatnonzero(bad)[0])) * size
                raise EngineError(
                    f"{path} is damaged: the record at decompressed byte {at} is not framed like the others",
                    "download the file again",
                )
            count += whole
            if len(data) % size:
                raise EngineError(
                    f"{path} is truncated: it ends with an incomplete {len(data) % size}-byte record "
                    f"after {count} records",
                    "download the file again",
                )
            data = stream.read(size * _COUNT_CHUNK_RECORDS)
        return info, count
    finally:
        stream.close()


@dataclass(frozen=True)
class _Resolver:
    """Vectorised (instrument_id, UTC day) -> (kept?, label) lookup for one file and one filter."""

    keys: np.ndarray  # uint64 (instrument_id << 32 | start_day), sorted, non-overlapping per instrument
    iids: np.ndarray  # uint32
    ends: np.ndarray  # int64 end day, exclusive
    keep: np.ndarray  # bool
    label: np.ndarray  # int64 index into labels
    labels: tuple[str, ...]
    continuous: np.ndarray  # bool: the kept record maps to the continuous symbol
    raw: np.ndarray  # S16 per segment: the outright symbol it maps to (b"" when none)
    keep_unmapped: bool = False  # SymbolFilter.instrument_labels

    @classmethod
    def build(cls, intervals: Sequence[tuple[int, int, int, str]], flt: SymbolFilter) -> _Resolver:
        by_iid: dict[int, list[tuple[int, int, str]]] = {}
        for iid, start, end, symbol in intervals:
            by_iid.setdefault(iid, []).append((start, end, symbol))
        segments: list[tuple[int, int, int, tuple[str, ...]]] = []
        for iid, ivs in by_iid.items():
            # Split into elementary, non-overlapping segments: several symbols may map to one instrument on
            # the same day (e.g. ES.v.0 and ES.c.0 in one file, or the overlap at a synthetic roll date).
            bounds = sorted({b for s, e, _ in ivs for b in (s, e)})
            for a, b in zip(bounds, bounds[1:], strict=False):
                covering = tuple(sym for s, e, sym in ivs if s <= a and b <= e)
                if covering:
                    segments.append((iid, a, b, covering))
        segments.sort(key=lambda seg: (seg[0], seg[1]))
        labels: list[str] = []
        label_ix: dict[str, int] = {}
        keep, label, continuous, raw = [], [], [], []
        for _, _, _, symbols in segments:
            matching = [s for s in symbols if flt.matches(s)]
            via_continuous = flt.continuous in matching
            name = flt.continuous if via_continuous else matching[0] if matching else symbols[0]
            if name not in label_ix:
                label_ix[name] = len(labels)
                labels.append(name)
            keep.append(bool(matching))
            label.append(label_ix[name])
            continuous.append(via_continuous)
            raw.append(next((s for s in symbols if flt.is_outright(s)), "").encode())
        return cls(
            keys=np.array([(s[0] << 32) | s[1] for s in segments], dtype=np.uint64),
            iids=np.array([s[0] for s in segments], dtype=np.uint32),
            ends=np.array([s[2] for s in segments], dtype=np.int64),
            keep=np.array(keep, dtype=bool),
            label=np.array(label, dtype=np.int64),
            labels=tuple(labels),
            continuous=np.array(continuous, dtype=bool),
            raw=np.array(raw, dtype="S16"),
            keep_unmapped=flt.instrument_labels,
        )

    def resolve(self, iid: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per record: keep mask, label index and segment index (both -1 when no mapping interval covers it)."""
        n = len(iid)
        if len(self.keys) == 0:
            keep = np.full(n, self.keep_unmapped, dtype=bool)
            return keep, np.full(n, -1, dtype=np.int64), np.full(n, -1, dtype=np.int64)
        day = (ts // NS_PER_DAY).astype(np.int64)
        rkey = (iid.astype(np.uint64) << np.uint64(32)) | day.astype(np.uint64)
        pos = np.searchsorted(self.keys, rkey, side="right") - 1
        posc = np.maximum(pos, 0)
        mapped = (pos >= 0) & (self.iids[posc] == iid) & (day < self.ends[posc])
        keep = mapped & self.keep[posc]
        if self.keep_unmapped:
            keep |= ~mapped
        return keep, np.where(mapped, self.label[posc], -1), np.where(mapped, posc, -1)


class DbnBarFile:
    """One or more DBN files of 1-minute OHLCV bars, decoded lazily in chunks of RAW_BAR_DTYPE arrays.

    The metadata of every file is validated when the object is built (schema must be ohlcv-1m, all files must
    belong to one dataset); records are only read by ``iter_chunks``.
    """

    def __init__(self, paths: Sequence[Path | str] | Path | str):
        if isinstance(paths, str | os.PathLike):
            paths = [paths]
        if not paths:
            raise EngineError("no DBN input files were given", fix="pass at least one .dbn or .dbn.zst file")
        self.paths: tuple[Path, ...] = tuple(Path(p) for p in paths)
        self.files: tuple[DbnFileInfo, ...] = tuple(_read_info(p) for p in self.paths)
        for info in self.files:
            if info.schema != OHLCV_1M:
                shown = info.schema or "mixed (no single schema)"
                raise EngineError(
                    f"{info.path} holds {shown} records, not ohlcv-1m bars",
                    fix="use an ohlcv-1m file (request schema='ohlcv-1m' from Databento)",
                )
        datasets = sorted({info.dataset for info in self.files})
        if len(datasets) > 1:
            raise EngineError(
                f"the DBN files come from different datasets: {', '.join(datasets)}",
                fix="ingest one dataset per source (e.g. only GLBX.MDP3 files)",
            )
        self.ignored: dict[str, int] = {}
        self.outside_window = 0
        self.stopped_early: list[Path] = []

    def __repr__(self) -> str:
        return f"DbnBarFile({[str(p) for p in self.paths]!r})"

    @property
    def schema(self) -> str:
        return OHLCV_1M

    @property
    def dataset(self) -> str:
        return self.files[0].dataset

    @property
    def stype_in(self) -> str | None:
        """The input symbology of the files ("raw_symbol", "continuous", ...); None when they differ."""
        values = {info.stype_in for info in self.files}
        return values.pop() if len(values) == 1 else None

    def iter_chunks(
        self, flt: SymbolFilter, chunk_size: int = 250_000, window: tuple[int, int] | None = None
    ) -> Iterator[np.ndarray]:
        """Yield RAW_BAR_DTYPE arrays of the records matching ``flt``, in file order.

        Each chunk comes from at most ``chunk_size`` records read (so it may hold fewer bars after filtering;
        empty chunks are not yielded). Records of other instruments are counted in ``self.ignored``, keyed by
        their symbol, or "instrument_id=N" when the metadata does not map them; it is reset on each call.
        Bars are not validated here.

        ``window=(start_ns, end_ns)`` (local files): records with ts outside ``[start_ns, end_ns)`` but inside the
        file's own metadata range are other parts of the file, not bad data: they are dropped before the symbol
        filter and counted in ``self.outside_window``. A record outside the file's own range is an anomaly and is
        passed on (validation quarantines it). A file is left early once its records, in time order so far
        (checked record by record), have reached the window end (two records at or past it, so that one
        corrupted timestamp cannot end the read); such files are listed in ``self.stopped_early``.
        """
        for chunk, _ in self.iter_labelled(flt, chunk_size, window):
            yield chunk

    def iter_labelled(
        self, flt: SymbolFilter, chunk_size: int = 250_000, window: tuple[int, int] | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """As ``iter_chunks``, each chunk with a bool array: True where the record came via the continuous symbol.

        ``raw_symbol`` of each bar is the outright symbol the file's mapping gives its instrument that day
        (b"" for records mapped to the continuous symbol only, or labelled by their instrument id)."""
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.ignored = {}
        self.outside_window = 0
        self.stopped_early = []
        for info in self.files:
            yield from self._iter_file(info, flt, chunk_size, window)

    def outright_names(self, flt: SymbolFilter) -> list[tuple[int, int, int, str]]:
        """The mapping intervals (instrument_id, start_day, end_day, symbol) of the root's outrights, all files."""
        return [iv for info in self.files for iv in info.intervals if flt.is_outright(iv[3])]

    def read(self, flt: SymbolFilter) -> np.ndarray:
        """All matching bars of all files as one RAW_BAR_DTYPE array (convenience for small inputs)."""
        chunks = list(self.iter_chunks(flt))
        return np.concatenate(chunks) if chunks else np.empty(0, dtype=RAW_BAR_DTYPE)

    def _iter_file(
        self, info: DbnFileInfo, flt: SymbolFilter, chunk_size: int, window: tuple[int, int] | None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        dtype = _DBN_OHLCV_TS_OUT_DTYPE if info.ts_out else DBN_OHLCV_DTYPE
        itemsize = dtype.itemsize
        resolver = _Resolver.build(info.intervals, flt)
        # A file whose own range lies inside the window has nothing to trim (its anomalies pass on either way).
        inside = window is None or (info.end_ns is not None and window[0] <= info.start_ns and info.end_ns <= window[1])
        trim = None if inside else _WindowTrim(info, window)
        stream = _open_stream(info.path)
        try:
            if len(stream.read(info.metadata_length)) < info.metadata_length:
                raise EngineError(f"{info.path} is truncated", fix="download the file again")
            while True:
                try:
                    data = stream.read(chunk_size * itemsize)
                except EngineError:
                    raise
                except Exception as exc:  # zstd decompression errors
                    raise EngineError(
                        f"cannot decompress {info.path}: {exc}", fix="the file is damaged; download it again"
                    ) from None
                if not data:
                    return
                loose = len(data) % itemsize
                whole = np.frombuffer(data, dtype=dtype, count=len(data) // itemsize)
                if len(whole):
                    self._check_records(info, whole, itemsize)
                    if trim is not None:
                        whole, outside = trim.apply(whole)
                        self.outside_window += outside
                    out = self._select(whole, resolver) if len(whole) else None
                    if out is not None and len(out[0]):
                        yield out
                    if trim is not None and trim.past_end:
                        self.stopped_early.append(info.path)
                        return
                if loose:
                    raise EngineError(
                        f"{info.path} is truncated: it ends with an incomplete {loose}-byte record",
                        fix="download the file again from Databento",
                    )
        finally:
            stream.close()

    @staticmethod
    def _check_records(info: DbnFileInfo, recs: np.ndarray, itemsize: int) -> None:
        rtype, length = recs["rtype"], recs["length"]
        ok_rtype = rtype == _OHLCV_1M_RTYPES[0]
        if not ok_rtype.all():
            ok_rtype |= rtype == _OHLCV_1M_RTYPES[1]
        if not (ok_rtype.all() and (length == itemsize // 4).all()):
            bad = int(np.flatnonzero(~ok_rtype | (length != itemsize // 4))[0])
            raise EngineError(
                f"{info.path} contains a record that is not a 1-minute OHLCV bar "
                f"(rtype={int(rtype[bad])}, length={int(length[bad]) * 4} bytes) although its metadata says "
                "ohlcv-1m",
                fix="the file is damaged or mixes schemas; download a plain ohlcv-1m file again",
            )

    def _select(self, recs: np.ndarray, resolver: _Resolver) -> tuple[np.ndarray, np.ndarray]:
        iid, ts = recs["instrument_id"], recs["ts_event"].view(np.int64)
        keep, label, segment = resolver.resolve(iid, ts)
        if not keep.all():
            self._count_ignored(iid[~keep], label[~keep], resolver.labels)
            recs, segment = recs[keep], segment[keep]
        out = np.empty(len(recs), dtype=RAW_BAR_DTYPE)
        out["ts"] = recs["ts_event"]
        out["instrument_id"] = recs["instrument_id"]
        for name in ("open", "high", "low", "close", "volume"):
            out[name] = recs[name]
        mapped = segment >= 0
        if mapped.all():
            via_continuous = resolver.continuous[segment]
            out["raw_symbol"] = np.where(via_continuous, b"", resolver.raw[segment])
        else:  # SymbolFilter.instrument_labels: records no mapping covers are outright bars of unknown name
            via_continuous = np.zeros(len(out), dtype=bool)
            via_continuous[mapped] = resolver.continuous[segment[mapped]]
            out["raw_symbol"] = b""
            out["raw_symbol"][mapped] = np.where(via_continuous[mapped], b"", resolver.raw[segment[mapped]])
        return out, via_continuous

    def _count_ignored(self, iid: np.ndarray, label: np.ndarray, labels: tuple[str, ...]) -> None:
        mapped = label >= 0
        if mapped.any():
            counts = np.bincount(label[mapped], minlength=len(labels))
            for ix in np.flatnonzero(counts):
                name = labels[ix]
                self.ignored[name] = self.ignored.get(name, 0) + int(counts[ix])
        if not mapped.all():
            ids, counts = np.unique(iid[~mapped], return_counts=True)
            for i, c in zip(ids.tolist(), counts.tolist(), strict=True):
                name = f"instrument_id={i}"
                self.ignored[name] = self.ignored.get(name, 0) + c


class InstrumentNames:
    """Vectorised (instrument_id, UTC day) -> raw symbol, from mapping intervals (outright files' symbology,
    instrument definitions). The first interval given wins where two name one instrument on the same day."""

    def __init__(self, intervals: Sequence[tuple[int, int, int, str]]):
        rows = sorted({(iid, start, end, sym) for iid, start, end, sym in intervals}, key=lambda r: (r[0], r[1]))
        self._keys = np.array([(r[0] << 32) | r[1] for r in rows], dtype=np.uint64)
        self._iids = np.array([r[0] for r in rows], dtype=np.uint32)
        self._ends = np.array([r[2] for r in rows], dtype=np.int64)
        self._names = np.array([r[3].encode() for r in rows], dtype="S16")

    def __len__(self) -> int:
        return len(self._keys)

    def lookup(self, iid: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """S16 raw symbol per (instrument_id, ts); b"" where no interval names the instrument that day."""
        out = np.zeros(len(iid), dtype="S16")
        if not len(self._keys) or not len(iid):
            return out
        day = np.asarray(ts, dtype=np.int64) // NS_PER_DAY
        rkey = (np.asarray(iid).astype(np.uint64) << np.uint64(32)) | day.astype(np.uint64)
        pos = np.searchsorted(self._keys, rkey, side="right") - 1
        posc = np.maximum(pos, 0)
        found = (pos >= 0) & (self._iids[posc] == iid) & (day < self._ends[posc])
        out[found] = self._names[posc[found]]
        return out


def read_definitions(paths: Sequence[Path]) -> list[tuple[int, int, int, str]]:
    """(instrument_id, start_day, end_day, raw_symbol) of every instrument definition in the given DBN files
    (schema definition): each names its instrument from the file's first day through its expiration day."""
    out: list[tuple[int, int, int, str]] = []
    for path in paths:
        stream = _open_stream(Path(path))
        try:
            data = stream.read(1 << 40)
        finally:
            stream.close()
        decoder = databento_dbn.DBNDecoder()
        try:
            decoder.write(data)
            records = decoder.decode()
        except Exception as exc:  # DBNError: a damaged file
            raise EngineError(f"cannot decode the instrument definitions in {path}: {exc}",
                              "the file is damaged; download it again") from None
        meta = records[0] if records and isinstance(records[0], databento_dbn.Metadata) else None
        for rec in records:
            if not isinstance(rec, databento_dbn.InstrumentDefMsg) or not rec.raw_symbol:
                continue
            first = (int(meta.start) if meta is not None else int(rec.ts_recv)) // NS_PER_DAY
            last = max(int(rec.ts_recv), int(rec.expiration) if rec.expiration < 2**63 else 0) // NS_PER_DAY
            if meta is not None and meta.end is not None:
                last = max(last, (int(meta.end) - 1) // NS_PER_DAY)
            out.append((int(rec.instrument_id), first, last + 1, str(rec.raw_symbol)))
    return out


class _WindowTrim:
    """Drops the records of one file outside a window, and notices when the file is past the window's end."""

    def __init__(self, info: DbnFileInfo, window: tuple[int, int]):
        self.lo, self.hi = int(window[0]), int(window[1])
        self.file_lo = info.start_ns
        self.file_hi = info.end_ns if info.end_ns is not None else np.iinfo(np.int64).max
        self.last = np.iinfo(np.int64).min  # latest ts in the file's range so far
        self.ordered = True  # the file's in-range records are in time order so far
        self.at_or_past_end = 0  # in-range records at or past the window end, while ordered
        self.past_end = False

    def apply(self, recs: np.ndarray) -> tuple[np.ndarray, int]:
        """(records to pass on, number dropped as outside the window)."""
        ts = recs["ts_event"].astype(np.int64)  # u8; an undefined ts becomes -1 and is then out of every range
        in_file = (ts >= self.file_lo) & (ts < self.file_hi)
        in_window = (ts >= self.lo) & (ts < self.hi)
        if self.ordered:
            seen = ts[in_file]
            if len(seen):
                self.ordered = bool(seen[0] >= self.last) and bool(np.all(seen[1:] >= seen[:-1]))
                self.last = int(seen[-1])
                if self.ordered:
                    self.at_or_past_end += int(np.count_nonzero(seen >= self.hi))
                    self.past_end = self.at_or_past_end >= 2
        drop = in_file & ~in_window
        outside = int(np.count_nonzero(drop))
        return (recs[~drop] if outside else recs), outside


@dataclass(kw_only=True)
class DbnFileSource(SourceParams):
    """Local DBN files (.dbn or .dbn.zst), as they are: paths or globs."""

    paths: list[str] = MISSING
    local: ClassVar[bool] = True

    def check(self) -> None:
        """Before the run: every entry names files (a directory must hold .dbn or .dbn.zst files)."""
        for entry in self.paths:
            path = Path(os.path.expanduser(entry))
            if path.is_dir() and not (any(path.glob("*.dbn")) or any(path.glob("*.dbn.zst"))):
                raise EngineError(
                    f"source.paths entry {entry!r} is a directory without .dbn or .dbn.zst files",
                    f"give the files or a glob, e.g. 'source.paths=[{entry.rstrip('/')}/**/*.dbn.zst]'")
            expand_paths([entry])  # names an entry that matches no file

    def acquire(self, ctx, progress) -> Landing:
        return acquire(ctx, progress)

    def available_end(self, cfg) -> dt.datetime:
        """The files' own end: the latest end their metadata gives (a file without one: its last bar + 1 min)."""
        ends = [info.end_ns if info.end_ns is not None else _last_bar_end_ns(info)
                for info in (_read_info(p) for p in expand_paths(list(self.paths)))]
        ends = [end for end in ends if end is not None]
        if not ends:
            raise EngineError(f"the files of source.paths ({', '.join(self.paths)}) hold no bars, so "
                              "window=incremental has no end", "point source.paths at the DBN files to ingest")
        return dt.datetime.fromtimestamp(max(ends) // 1_000_000_000, dt.UTC)


def _last_bar_end_ns(info: DbnFileInfo) -> int | None:
    """The minute after the latest record of a file whose metadata has no end; None when it holds no record."""
    dtype = _DBN_OHLCV_TS_OUT_DTYPE if info.ts_out else DBN_OHLCV_DTYPE
    latest = None
    stream = _open_stream(info.path)
    try:
        stream.read(info.metadata_length)
        while data := stream.read(_COUNT_CHUNK_RECORDS * dtype.itemsize):
            records = np.frombuffer(data, dtype=dtype, count=len(data) // dtype.itemsize)
            if len(records):
                latest = max(latest or 0, int(records["ts_event"].max()))
    finally:
        stream.close()
    return None if latest is None else latest + NS_PER_MINUTE


def acquire(ctx, progress) -> Landing:
    """The configured local files, as they are (paths or globs in source.paths)."""
    paths = expand_paths(list(ctx.source.paths))
    return Landing(paths, raw_files=[{"path": str(p), "sha256": file_digest(p)[0], "reused": True} for p in paths])
