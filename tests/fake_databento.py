"""A scriptable stand-in for Databento's historical HTTP API, on a real socket.

It answers the five endpoints `engine.sources.databento_api` uses, exactly as `databento.Historical` calls
them (databento 0.88, API v0):

    POST /v0/metadata.get_cost      form: dataset, start, end, symbols, schema, stype_in, stype_out
                                     -> 200 application/json, a bare number (USD)
    POST /v0/metadata.get_record_count  form: dataset, start, end, symbols, schema, stype_in
                                     -> 200 application/json, a bare integer (records get_range will send)
    POST /v0/timeseries.get_range   form: ... + stype_out, encoding=dbn, compression=zstd
                                     -> 200 application/octet-stream, a zstd-compressed DBN stream
                                        (no Content-Encoding: the client writes the bytes as they arrive)
    POST /v0/symbology.resolve      form: dataset, symbols, stype_in, stype_out, start_date, end_date
                                     -> 200 application/json {"result": {symbol: [{"d0", "d1", "s"}]},
                                        "symbols", "stype_in", "stype_out", "start_date", "end_date",
                                        "partial", "not_found", "message", "status"}
    GET  /v0/metadata.get_dataset_range  query: dataset
                                     -> 200 application/json {"start", "end", "schema": {name: {"start", "end"}}}
                                        (ISO-8601 UTC with nanoseconds; end exclusive): `dataset_end`, per schema
                                        `schema_ends` where given

Served data: schema ohlcv-* (`ohlcv_dbn`) or definition (`definition_dbn`, InstrumentDefMsg records), for a
continuous symbol (mapping to CONTRACTS[0], then the next contract from each of `rolls` on) or for a list of
instrument ids (stype_in instrument_id). get_record_count counts the records of the body get_range would send.

Errors are JSON `{"detail": {"case", "message", "status_code", "docs"}}`, which the client turns into
BentoClientError (4xx) / BentoServerError (5xx). Auth is HTTP basic with the key as user name.

The client forces `https://` onto any gateway URL, so the fake speaks TLS with a throw-away self-signed
certificate (made with the `openssl` command) that `install()` makes requests trust via REQUESTS_CA_BUNDLE.
Without `openssl` it serves plain HTTP and `install()` stops the client from rewriting the scheme.

Rate limits (`rate_limits={endpoint: n}`): more than n requests of an endpoint within any second, over all
handler threads, are answered HTTP 429 with `Retry-After` and the JSON error above (case rate_limit_exceeded);
`rate_limited` counts them per endpoint, `accepted_at` times the others. symbology.resolve answers
`unknown_symbols` as `not_found` and a symbol of `symbol_starts` as mapped only from that day (`partial`), with
message/status "OK"/0, "Partially resolved"/1 or "Not found"/2.

Each endpoint has a queue of scripted `Reply`s; when the queue is empty it answers normally, with a
DBN body built (by databento_dbn) from the request's own dataset/symbol/schema/window.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import random
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import databento_dbn
import zstandard
from databento_dbn import (
    InstrumentClass,
    InstrumentDefMsg,
    Metadata,
    OHLCVMsg,
    RType,
    Schema,
    SecurityUpdateAction,
    SType,
)

GET_COST = "metadata.get_cost"
GET_RECORD_COUNT = "metadata.get_record_count"
GET_RANGE = "timeseries.get_range"
RESOLVE = "symbology.resolve"
GET_DATASET_RANGE = "metadata.get_dataset_range"
ENDPOINTS = (GET_COST, GET_RECORD_COUNT, GET_RANGE, RESOLVE, GET_DATASET_RANGE)
_GET_ENDPOINTS = (GET_DATASET_RANGE,)
DATASET_START = dt.datetime(2010, 6, 6, tzinfo=dt.UTC)  # GLBX.MDP3's first day

INSTRUMENT_ID = 42_005_804  # what NQ.v.0 resolved to, any stable number will do
_OHLCV = {
    "ohlcv-1s": (RType.OHLCV_1S, 1),
    "ohlcv-1m": (RType.OHLCV_1M, 60),
    "ohlcv-1h": (RType.OHLCV_1H, 3600),
    "ohlcv-1d": (RType.OHLCV_1D, 86400),
}
_NS = 1_000_000_000
_PX = 1_000_000_000  # DBN fixed-point price scale
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


# --------------------------------------------------------------------------------------------- DBN bytes


@dataclass
class _Interval:
    start_date: dt.date
    end_date: dt.date
    symbol: str


@dataclass
class _Mapping:
    raw_symbol: str
    intervals: list[_Interval]


#: The instrument of each contract the fake's continuous symbol maps to, in roll order, with its month code and
#: expiration (the third Friday, 13:30 UTC, of the contract month). The raw symbol is the root plus the code.
CONTRACTS = (
    (INSTRUMENT_ID, "Z5", dt.datetime(2025, 12, 19, 13, 30, tzinfo=dt.UTC)),
    (42_140_878, "H6", dt.datetime(2026, 3, 20, 13, 30, tzinfo=dt.UTC)),
    (42_288_528, "M6", dt.datetime(2026, 6, 18, 13, 30, tzinfo=dt.UTC)),
)
_CONTRACT = {iid: (code, expiry) for iid, code, expiry in CONTRACTS}


def raw_symbol(instrument_id: int, root: str = "NQ") -> str:
    """The contract the fake names instrument `instrument_id` (NQZ5, NQH6, ...; `root?` for an unknown id)."""
    return root + _CONTRACT.get(instrument_id, ("?", None))[0]


def _ns(value: dt.datetime | int) -> int:
    return value if isinstance(value, int) else int(value.timestamp()) * _NS + value.microsecond * 1000


def _day_ns(day: dt.date) -> int:
    return int(dt.datetime.combine(day, dt.time(), dt.UTC).timestamp()) * _NS


def continuous_intervals(first_day: dt.date, last_day: dt.date, rolls: tuple[dt.date, ...] = ()) -> list[_Interval]:
    """The mapping intervals of the continuous symbol over [first_day, last_day): CONTRACTS[k] from the k-th roll
    day on, whatever the range asked for (as Databento's mappings are: a request starting after a roll maps to the
    contract after it; end dates exclusive, as Databento writes them)."""
    days = [first_day, *[d for d in sorted(rolls) if first_day < d < last_day], last_day]
    return [_Interval(a, b, str(CONTRACTS[sum(1 for r in rolls if r <= a)][0])) for a, b in zip(days, days[1:],
                                                                                               strict=False)]


def _instrument_at(intervals: list[_Interval], ts_ns: int) -> int:
    day = dt.datetime.fromtimestamp(ts_ns // _NS, dt.UTC).date()
    for interval in intervals:
        if interval.start_date <= day < interval.end_date:
            return int(interval.symbol)
    return int(intervals[-1].symbol)


def ohlcv_dbn(
    *,
    dataset: str = "GLBX.MDP3",
    symbol: str = "NQ.v.0",
    schema: str = "ohlcv-1m",
    stype_in: str = "continuous",
    start: dt.datetime | int = dt.datetime(2025, 11, 30, 23, tzinfo=dt.UTC),
    end: dt.datetime | int | None = None,
    records: int = 60,
    seed: int = 1,
    compress: bool = True,
    first_frame_records: int | None = None,
    stride: int = 1,
    rolls: tuple[dt.date, ...] = (),
) -> bytes:
    """Real DBN (as Databento streams it: zstd-compressed) with `records` bars of a random walk, one every
    `stride` bar intervals.

    A continuous `symbol` maps to CONTRACTS[0], and to the next contract from each of `rolls` (UTC days) on;
    each bar carries the instrument id of its day. With stype_in instrument_id, `symbol` is a comma-separated
    list of ids, each of which has `records` bars (the k-th id 50 points above the walk: contango) and maps to
    itself. With `first_frame_records`, the zstd stream is two concatenated frames: metadata plus that many
    records, then the rest.
    """
    rtype, step = _OHLCV[schema]
    start_ns = _ns(start)
    end_ns = _ns(end) if end is not None else start_ns + records * step * stride * _NS
    first_day = dt.datetime.fromtimestamp(start_ns / _NS, dt.UTC).date()
    last_day = dt.datetime.fromtimestamp(end_ns / _NS, dt.UTC).date() + dt.timedelta(days=1)
    if stype_in == "instrument_id":
        ids = [int(part) for part in symbol.split(",")]
        mappings = [_Mapping(str(iid), [_Interval(first_day, last_day, str(iid))]) for iid in ids]
        symbols = [str(iid) for iid in ids]
    else:
        intervals = continuous_intervals(first_day, last_day, rolls)
        mappings, symbols, ids = [_Mapping(symbol, intervals)], [symbol], [None]
    metadata = Metadata(
        dataset=dataset,
        start=start_ns,
        end=end_ns,
        stype_in=SType(stype_in),
        stype_out=SType.INSTRUMENT_ID,
        schema=Schema(schema),
        symbols=symbols,
        mappings=mappings,
    )
    rng = random.Random(seed)
    price = 21_000.0
    out = bytearray(bytes(metadata))
    header_bytes = len(out)
    for i in range(records):
        open_ = price
        close = max(1.0, open_ + rng.randint(-40, 40) * 0.25)
        high = max(open_, close) + rng.randint(0, 12) * 0.25
        low = min(open_, close) - rng.randint(0, 12) * 0.25
        volume = rng.randint(1, 5000)
        price = close
        ts = start_ns + i * step * stride * _NS
        for k, iid in enumerate(ids):
            premium = 50.0 * k
            out += bytes(
                OHLCVMsg(
                    rtype=rtype,
                    publisher_id=1,
                    instrument_id=_instrument_at(intervals, ts) if iid is None else iid,
                    ts_event=ts,
                    open=round((open_ + premium) * _PX),
                    high=round((high + premium) * _PX),
                    low=round((low + premium) * _PX),
                    close=round((close + premium) * _PX),
                    volume=volume,
                )
            )
    return _finish(out, header_bytes, compress, first_frame_records)


def definition_dbn(
    *,
    dataset: str = "GLBX.MDP3",
    symbol: str = "NQ.v.0",
    stype_in: str = "continuous",
    start: dt.datetime | int = dt.datetime(2025, 11, 30, 23, tzinfo=dt.UTC),
    end: dt.datetime | int = dt.datetime(2025, 12, 2, 5, tzinfo=dt.UTC),
    rolls: tuple[dt.date, ...] = (),
    compress: bool = True,
    first_frame_records: int | None = None,
) -> bytes:
    """Real DBN of schema `definition`, as Databento sends it for [start, end): one InstrumentDefMsg for each
    instrument mapped on each UTC day of the window (at the later of the day's start and `start`), naming the
    contract (raw_symbol NQZ5, expiration, tick size, ...), with the same symbology mappings as the bars."""
    start_ns, end_ns = _ns(start), _ns(end)
    first_day = dt.datetime.fromtimestamp(start_ns / _NS, dt.UTC).date()
    last_day = dt.datetime.fromtimestamp((end_ns - 1) // _NS, dt.UTC).date() + dt.timedelta(days=1)
    if stype_in == "instrument_id":
        ids = [int(part) for part in symbol.split(",")]
        mappings = [_Mapping(str(iid), [_Interval(first_day, last_day, str(iid))]) for iid in ids]
        root, symbols = "NQ", [str(iid) for iid in ids]
    else:
        intervals = continuous_intervals(first_day, last_day, rolls)
        mappings, symbols, root = [_Mapping(symbol, intervals)], [symbol], symbol.split(".")[0]
    metadata = Metadata(dataset=dataset, start=start_ns, end=end_ns, stype_in=SType(stype_in),
                        stype_out=SType.INSTRUMENT_ID, schema=Schema.DEFINITION, symbols=symbols, mappings=mappings)
    out = bytearray(bytes(metadata))
    header_bytes = len(out)
    day = first_day
    while day < last_day:
        ts = max(_day_ns(day), start_ns)
        if ts < end_ns:
            todays = ids if stype_in == "instrument_id" else [_instrument_at(intervals, ts)]
            for iid in todays:
                expiry = _CONTRACT.get(iid, (None, dt.datetime(2026, 12, 18, 13, 30, tzinfo=dt.UTC)))[1]
                out += bytes(InstrumentDefMsg(
                    publisher_id=1, instrument_id=iid, ts_event=ts, ts_recv=ts, min_price_increment=250_000_000,
                    display_factor=1_000_000_000, raw_symbol=raw_symbol(iid, root), asset=root, security_type="FUT",
                    instrument_class=InstrumentClass.FUTURE, security_update_action=SecurityUpdateAction.ADD,
                    expiration=_ns(expiry), activation=_ns(expiry - dt.timedelta(days=270)),
                    currency="USD", exchange="XCME", group=root, cfi="FFIXSX", unit_of_measure="IPNT",
                    unit_of_measure_qty=20 * _PX, contract_multiplier=20,
                ))
        day += dt.timedelta(days=1)
    return _finish(out, header_bytes, compress, first_frame_records)


def _finish(out: bytearray, header_bytes: int, compress: bool, first_frame_records: int | None) -> bytes:
    if not compress:
        return bytes(out)
    zstd = zstandard.ZstdCompressor(level=3)
    if first_frame_records is None:
        return zstd.compress(bytes(out))
    size = out[header_bytes] * 4 if len(out) > header_bytes else 1
    cut = header_bytes + min(first_frame_records, (len(out) - header_bytes) // size) * size
    return zstd.compress(bytes(out[:cut])) + zstd.compress(bytes(out[cut:]))


def record_count(body: bytes) -> int:
    """How many records the (zstd-compressed) DBN `body` holds: what metadata.get_record_count answers."""
    data = zstandard.ZstdDecompressor().decompressobj().decompress(body) if body[:4] == _ZSTD_MAGIC else body
    records = data[8 + int.from_bytes(data[4:8], "little"):]
    return len(records) // (records[0] * 4) if records else 0


def zstd_frames(body: bytes) -> list[bytes]:
    """The concatenated zstd frames of `body`, each as its own bytes."""
    frames, rest = [], body
    while rest:
        dobj = zstandard.ZstdDecompressor().decompressobj()
        dobj.decompress(rest)
        assert dobj.eof, "the body ends inside a frame"
        frames.append(rest[: len(rest) - len(dobj.unused_data)])
        rest = dobj.unused_data
    return frames


# --------------------------------------------------------------------------------------------- scripting


@dataclass
class Reply:
    """One scripted answer. `fault` breaks the transport on purpose:

    - "truncate": headers with the full Content-Length, half the body, then the socket is shut
      (the client sees an incomplete read while streaming);
    - "truncate_silently": no Content-Length, half the body, close -- for the client the body simply
      ended, so only checking the file can tell;
    - "drop": close the connection without answering at all;
    - "stall": send the headers and `stall_after` bytes of the body, then sleep `stall` seconds and hang up
      (`stall_after=None`: sleep before sending anything);
    - "cut_frame": the DBN body in two zstd frames (metadata and `first_frame_records` records, then the
      rest), of which only the first is sent, with its true Content-Length: valid zstd, clean transfer,
      records missing.

    `delay` seconds pass before the answer starts (to hold a download open).
    """

    status: int = 200
    json: Any = None
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    fault: str | None = None
    delay: float = 0.0
    stall: float = 0.0
    stall_after: int | None = None
    first_frame_records: int = 10

    @classmethod
    def error(
        cls, status: int, message: str = "", *, case: str = "", retry_after: float | None = None
    ) -> Reply:
        headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
        detail = {
            "case": case or f"http_{status}",
            "message": message or f"scripted HTTP {status}",
            "status_code": status,
            "docs": None,
        }
        return cls(status=status, json={"detail": detail}, headers=headers)

    @classmethod
    def cost(cls, usd: float) -> Reply:
        return cls(json=usd)

    @classmethod
    def broken(cls) -> Reply:
        return cls(fault="truncate")

    @classmethod
    def truncated_silently(cls) -> Reply:
        return cls(fault="truncate_silently")

    @classmethod
    def dropped(cls) -> Reply:
        return cls(fault="drop")

    @classmethod
    def stalled(cls, seconds: float, after_bytes: int | None = None) -> Reply:
        return cls(fault="stall", stall=seconds, stall_after=after_bytes)

    @classmethod
    def cut_at_frame(cls, first_frame_records: int = 10) -> Reply:
        return cls(fault="cut_frame", first_frame_records=first_frame_records)

    @classmethod
    def garbage(cls, body: bytes = b"<html><body>502 Bad Gateway</body></html>\n" * 4) -> Reply:
        """A 200 whose body is not DBN at all (what a misbehaving proxy sends)."""
        return cls(body=body)

    @classmethod
    def count(cls, records: int) -> Reply:
        return cls(json=records)


@dataclass
class Seen:
    """One request the fake received."""

    endpoint: str
    method: str
    path: str
    params: dict[str, str]
    auth_user: str | None
    headers: dict[str, str]


# --------------------------------------------------------------------------------------------- the server


class FakeDatabento:
    """`with FakeDatabento(...) as fake:` -- then `fake.gateway`, `fake.script(...)`, `fake.seen(...)`."""

    def __init__(self, *, cost_usd: float = 0.25, records: int = 60, cert: tuple[Path, Path] | None = None,
                 stride: int = 1, rolls: tuple[dt.date, ...] = (), dataset_end: dt.datetime | None = None,
                 schema_ends: dict[str, dt.datetime] | None = None, every_minutes: int | None = None,
                 rate_limits: dict[str, float] | None = None, retry_after: float = 1.0,
                 unknown_symbols: tuple[str, ...] = (), symbol_starts: dict[str, dt.date] | None = None):
        self.cost_usd = cost_usd
        # Bars by day (issue 14): with `every_minutes`, an ohlcv body holds one bar every that many minutes of the
        # epoch's grid inside [start, end), whatever `records` says, so overlapping requests agree on their minutes.
        self.every_minutes = every_minutes
        # Rate limits (issue 14 item 4): at most rate_limits[endpoint] requests of that endpoint in any second
        # (sliding, over all handler threads); above it HTTP 429 with Retry-After `retry_after`, Databento's JSON.
        self.rate_limits = dict(rate_limits or {})
        self.retry_after = retry_after
        self.rate_limited: dict[str, int] = {e: 0 for e in ENDPOINTS}  # 429s sent, per endpoint
        self.accepted_at: dict[str, list[float]] = {e: [] for e in ENDPOINTS}  # time.monotonic() of the others
        # Symbology (issue 14 item 5): symbols symbology.resolve answers `not_found`, and symbols mapped only from
        # a day on (earlier days unmapped: `partial`).
        self.unknown_symbols = set(unknown_symbols)
        self.symbol_starts = dict(symbol_starts or {})
        # metadata.get_dataset_range: where the dataset ends (None: now, to the second), and per schema
        self.dataset_end = dataset_end
        self.schema_ends = dict(schema_ends or {})
        self.records = records
        self.stride = stride
        self.rolls = tuple(rolls)  # UTC days on which the continuous symbol maps to the next of CONTRACTS
        self.cert = cert
        self.requests: list[Seen] = []
        self._queues: dict[str, deque[Reply]] = {e: deque() for e in ENDPOINTS}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.batch = FakeBatch(self)  # batch jobs and dataset conditions (the block at the end of this file)

    # scripting / inspection
    def script(self, endpoint: str, *replies: Reply) -> None:
        assert endpoint in ENDPOINTS, endpoint
        with self._lock:
            self._queues[endpoint].extend(replies)

    def clear(self, endpoint: str) -> None:
        """Drop the replies still scripted for `endpoint` (it answers normally again)."""
        with self._lock:
            self._queues[endpoint].clear()

    def seen(self, endpoint: str | None = None) -> list[Seen]:
        with self._lock:
            return [r for r in self.requests if endpoint is None or r.endpoint == endpoint]

    def body_for(self, params: dict[str, str], first_frame_records: int | None = None) -> bytes:
        """The DBN the fake streams for a get_range with these form params."""
        if params["stype_in"] not in ("continuous", "instrument_id"):
            raise ValueError(f"stype_in {params['stype_in']} is not served")
        if params["schema"] == "definition":
            return definition_dbn(
                dataset=params["dataset"],
                symbol=params["symbols"],
                stype_in=params["stype_in"],
                start=_parse_ts(params["start"]),
                end=_parse_ts(params["end"]),
                rolls=self.rolls,
                first_frame_records=first_frame_records,
            )
        start, end = _parse_ts(params["start"]), _parse_ts(params["end"]) if params.get("end") else None
        records, stride, first = self.records, self.stride, start
        if self.every_minutes and end is not None and params["schema"] == "ohlcv-1m":  # the grid inside the window
            grid = self.every_minutes * 60 * _NS
            first = -(-start // grid) * grid
            records, stride = max(0, -(-(end - first) // grid)), self.every_minutes
        return ohlcv_dbn(
            dataset=params["dataset"],
            symbol=params["symbols"] if params["stype_in"] == "instrument_id" else params["symbols"].split(",")[0],
            schema=params["schema"],
            stype_in=params["stype_in"],
            start=first,
            end=end,
            records=records,
            first_frame_records=first_frame_records,
            stride=stride,
            rolls=self.rolls,
        )

    def resolve(self, params: dict[str, str]) -> dict:
        """symbology.resolve: the continuous symbols' mappings over [start_date, end_date), as Databento answers."""
        first, last = dt.date.fromisoformat(params["start_date"]), dt.date.fromisoformat(params["end_date"])
        symbols = params["symbols"].split(",")
        result, partial, not_found = {}, [], []
        for symbol in symbols:
            begins = max(first, self.symbol_starts.get(symbol, first))
            if symbol in self.unknown_symbols or begins >= last:
                not_found.append(symbol)
            elif params["stype_in"] == "instrument_id":
                result[symbol] = [{"d0": first.isoformat(), "d1": last.isoformat(), "s": symbol}]
            else:
                result[symbol] = [{"d0": i.start_date.isoformat(), "d1": i.end_date.isoformat(), "s": i.symbol}
                                  for i in continuous_intervals(begins, last, self.rolls)]
                if begins > first:
                    partial.append(symbol)
        # status 0 "OK", 1 "Partially resolved" (some symbols partly or not mapped), 2 "Not found" (none mapped)
        status, message = (2, "Not found") if not result else (1, "Partially resolved") if partial or not_found \
            else (0, "OK")
        return {"result": result, "symbols": symbols, "stype_in": params["stype_in"],
                "stype_out": params["stype_out"], "start_date": first.isoformat(), "end_date": last.isoformat(),
                "partial": partial, "not_found": not_found, "message": message, "status": status}

    def dataset_range(self) -> dict:
        """metadata.get_dataset_range, as Databento answers it: every schema ends where the dataset does unless
        `schema_ends` says otherwise."""
        end = self.dataset_end or dt.datetime.now(dt.UTC).replace(microsecond=0)
        schemas = ("mbo", "mbp-1", "mbp-10", "tbbo", "trades", "ohlcv-1s", "ohlcv-1m", "ohlcv-1h", "ohlcv-1d",
                   "definition", "statistics", "status")
        return {"start": _iso_ns(DATASET_START), "end": _iso_ns(end),
                "schema": {name: {"start": _iso_ns(DATASET_START), "end": _iso_ns(self.schema_ends.get(name, end))}
                           for name in schemas}}

    # lifecycle
    @property
    def scheme(self) -> str:
        return "https" if self.cert else "http"

    @property
    def gateway(self) -> str:
        assert self._server is not None, "not started"
        host, port = self._server.server_address[:2]
        return f"{self.scheme}://{host}:{port}"

    def __enter__(self) -> FakeDatabento:
        server = _Server(("127.0.0.1", 0), _handler_for(self))
        server.daemon_threads = True
        if self.cert:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(self.cert[0]), str(self.cert[1]))
            server.socket = ctx.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-databento", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def install(self, monkeypatch: Any) -> None:
        """Point the real client (requests) at this fake: trust its certificate, bypass any proxy."""
        for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
        if self.cert:
            monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(self.cert[0]))
        else:  # plain HTTP: keep the client from rewriting http:// to https://
            import databento.historical.client as client_module

            monkeypatch.setattr(client_module, "validate_gateway", lambda url: url)

    # serving (called from handler threads)
    def _next(self, endpoint: str) -> Reply | None:
        with self._lock:
            queue = self._queues[endpoint]
            return queue.popleft() if queue else None

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self.requests.append(seen)

    def _over_rate(self, endpoint: str) -> bool:
        """Whether this request of `endpoint` exceeds its rate limit (then counted as a 429, else as accepted)."""
        with self._lock:
            now, limit = time.monotonic(), self.rate_limits.get(endpoint)
            recent = [t for t in self.accepted_at[endpoint][-int(limit or 0) - 1:] if now - t < 1.0]
            if limit is not None and len(recent) >= limit:
                self.rate_limited[endpoint] += 1
                return True
            self.accepted_at[endpoint].append(now)
            return False


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (a killed job, a timed-out attempt) is part of the faults the tests make: not
        printed, also not later, when a held reply ends during another test. Anything else is."""
        if not isinstance(sys.exc_info()[1], ConnectionError | ssl.SSLError | TimeoutError):
            super().handle_error(request, client_address)


def make_cert(directory: Path) -> tuple[Path, Path] | None:
    """A self-signed certificate for 127.0.0.1 (cert, key), or None when `openssl` is not installed."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    cert, key = directory / "fake-databento.crt", directory / "fake-databento.key"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


def _iso_ns(value: dt.datetime) -> str:
    """`2025-12-09T22:00:00.000000000Z`: how Databento writes a time in metadata answers."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond * 1000:09d}Z"


def _parse_ts(value: str) -> int:
    """The client sends datetimes as isoformat(); ints as nanoseconds."""
    if value.lstrip("-").isdigit():
        return int(value)
    ts = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=dt.UTC)
    return int(ts.timestamp()) * _NS + ts.microsecond * 1000


def _handler_for(fake: FakeDatabento) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "fake-databento/0"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 -- keep test output quiet
            pass

        def do_GET(self) -> None:  # noqa: N802
            self._handle()

        def do_POST(self) -> None:  # noqa: N802
            self._handle()

        def _handle(self) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            params = dict(parse_qsl(url.query, keep_blank_values=True))
            params.update(parse_qsl(raw.decode(), keep_blank_values=True))
            endpoint = BATCH_DOWNLOAD if url.path.startswith(_DOWNLOAD_PREFIX) else url.path.rsplit("/", 1)[-1]
            fake._record(
                Seen(
                    endpoint=endpoint,
                    method=self.command,
                    path=url.path,
                    params=params,
                    auth_user=_basic_user(self.headers.get("Authorization")),
                    headers={k.lower(): v for k, v in self.headers.items()},
                )
            )

            if url.path.startswith("/v0/batch") or endpoint in BATCH_ENDPOINTS:
                return _serve_batch(fake, self, url.path, endpoint, params)
            method = "GET" if endpoint in _GET_ENDPOINTS else "POST"
            if url.path not in {f"/v0/{e}" for e in ENDPOINTS} or self.command != method:
                return self._send(Reply.error(404, f"no route {self.command} {url.path}"))
            if _basic_user(self.headers.get("Authorization")) in (None, ""):
                return self._send(Reply.error(401, "missing API key"))
            if fake._over_rate(endpoint):
                return self._send(Reply.error(429, f"Rate limit exceeded for {endpoint}; retry later",
                                              case="rate_limit_exceeded", retry_after=fake.retry_after))
            reply = fake._next(endpoint) or Reply()
            if reply.status == 200 and reply.json is None and reply.body is None:
                if endpoint == GET_COST:
                    reply = replace(reply, json=fake.cost_usd)
                elif endpoint == GET_DATASET_RANGE:
                    reply = replace(reply, json=fake.dataset_range())
                elif endpoint == RESOLVE:
                    try:
                        reply = replace(reply, json=fake.resolve(params))
                    except (KeyError, ValueError) as exc:
                        return self._send(Reply.error(422, f"fake cannot resolve {params}: {exc}"))
                elif endpoint == GET_RECORD_COUNT:
                    try:
                        reply = replace(reply, json=record_count(fake.body_for(params)))
                    except (KeyError, ValueError, databento_dbn.DBNError) as exc:
                        return self._send(Reply.error(422, f"fake cannot count {params}: {exc}"))
                else:
                    split = reply.first_frame_records if reply.fault == "cut_frame" else None
                    try:
                        body = fake.body_for(params, split)
                    except (KeyError, ValueError, databento_dbn.DBNError) as exc:
                        return self._send(Reply.error(422, f"fake cannot serve {params}: {exc}"))
                    reply = replace(reply, body=zstd_frames(body)[0] if split is not None else body)
            self._send(reply, octet=endpoint == GET_RANGE)

        def _send(self, reply: Reply, octet: bool = False) -> None:
            if reply.delay:
                time.sleep(reply.delay)
            if reply.fault == "drop":
                return self._cut()
            if reply.fault == "stall" and reply.stall_after is None:
                time.sleep(reply.stall)
                return self._cut()
            if reply.body is not None:
                body, ctype = reply.body, "application/octet-stream" if octet else "application/json"
            else:
                body, ctype = json.dumps(reply.json).encode(), "application/json"
            self.send_response(reply.status)
            self.send_header("Content-Type", ctype)
            self.send_header("request-id", f"fake-{len(fake.requests)}")
            for name, value in reply.headers.items():
                self.send_header(name, value)
            if reply.fault == "truncate_silently":
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])
                return self._cut()
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if reply.fault == "truncate":
                self.wfile.write(body[: len(body) // 2])
                return self._cut()
            if reply.fault == "stall":
                self.wfile.write(body[: reply.stall_after])
                self.wfile.flush()
                time.sleep(reply.stall)
                return self._cut()
            self.wfile.write(body)

        def _cut(self) -> None:
            """Hang up abruptly (no TLS close_notify, no more bytes)."""
            self.close_connection = True
            try:
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    return Handler


def _basic_user(header: str | None) -> str | None:
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        return base64.b64decode(header.split(" ", 1)[1]).decode().split(":", 1)[0]
    except (ValueError, UnicodeDecodeError):
        return None



# ======================================================================================= batch jobs and conditions
# Databento's batch API and the dataset-condition / billable-size metadata, as the official client calls them
# (databento/historical/api/batch.py, metadata.py):
#
#   POST /v0/batch.submit_job      form: dataset, symbols, schema, start, end, stype_in, stype_out, encoding,
#                                  compression, split_duration, delivery, ... -> the job (JSON, state "received")
#   GET  /v0/batch.list_jobs       query: states, since[, short] -> [{"id", "state", "ts_received"}] (short form;
#                                  short=False: every job field)
#   GET  /v0/batch.get_job_details query: job_id -> every field of the job
#   GET  /v0/batch.list_files      query: job_id -> [{"filename", "size", "hash": "sha256:<hex>",
#                                  "urls": {"https", "ftp"}}], one DBN zstd file per UTC day (split_duration=day)
#                                  and manifest.json; 400 until the job is done
#   GET  /v0/batch/download/<job_id>/<filename>  the file; honours "Range: bytes=a-b" (206 + Content-Range)
#   GET  /v0/metadata.get_dataset_condition  query: dataset, start_date, end_date (inclusive)
#                                  -> [{"date", "condition", "last_modified_date"}]
#   POST /v0/metadata.get_billable_size  form: as get_record_count -> a bare integer (uncompressed DBN bytes)
#
# A job's state moves on each time it is looked at (list_jobs / get_job_details): `queued_polls` looks "queued",
# then `processing_polls` "processing", then "done". Scripting, per test, on `fake.batch`:
#   queued_polls, processing_polls   how many looks stay queued / processing (for every job)
#   corrupt = {filename, ...}        list_files gives these files a wrong sha256 (the bytes are right)
#   cut_after = {filename: n}        the next download of that file sends n bytes with the full Content-Length,
#                                    then hangs up (once); `stall_after = {filename: (n, seconds)}` sends n bytes
#                                    and then holds the connection `seconds` (to kill a run mid-download)
#   conditions = {date: (condition, last_modified_date)}  the others are "available", modified the day after
#   billable_size = n                metadata.get_billable_size answers n (None: the request's DBN size)

SUBMIT_JOB = "batch.submit_job"
LIST_JOBS = "batch.list_jobs"
GET_JOB_DETAILS = "batch.get_job_details"
LIST_FILES = "batch.list_files"
BATCH_DOWNLOAD = "batch.download"
GET_DATASET_CONDITION = "metadata.get_dataset_condition"
GET_BILLABLE_SIZE = "metadata.get_billable_size"
BATCH_ENDPOINTS = (SUBMIT_JOB, LIST_JOBS, GET_JOB_DETAILS, LIST_FILES, BATCH_DOWNLOAD, GET_DATASET_CONDITION,
                   GET_BILLABLE_SIZE)
_BATCH_POST = (SUBMIT_JOB, GET_BILLABLE_SIZE)
_DOWNLOAD_PREFIX = "/v0/batch/download/"


@dataclass
class FakeJob:
    details: dict[str, Any]
    files: dict[str, bytes]
    looks: int = 0


class FakeBatch:
    """The batch jobs and dataset conditions of one FakeDatabento (see the block comment above)."""

    def __init__(self, fake: FakeDatabento):
        self.fake = fake
        self.jobs: dict[str, FakeJob] = {}
        self.queued_polls = 1
        self.processing_polls = 1
        self.corrupt: set[str] = set()
        self.cut_after: dict[str, int] = {}
        self.stall_after: dict[str, tuple[int, float]] = {}
        self.conditions: dict[dt.date, tuple[str, str | None]] = {}
        self.billable_size: int | None = None

    def submit(self, params: dict[str, str]) -> dict:
        start, end = _parse_ts(params["start"]), _parse_ts(params["end"])
        job_id = f"{params['dataset'].split('.')[0]}-{dt.datetime.now(dt.UTC):%Y%m%d}-{len(self.jobs) + 1:010d}"
        # The records get_range would stream for the whole job, cut by UTC day (ts_event), each day behind the
        # metadata header Databento writes for that day's piece of the window.
        streamed = _plain(self.fake.body_for(params))
        records = streamed[8 + int.from_bytes(streamed[4:8], "little"):]
        size = records[0] * 4 if records else 1
        files: dict[str, bytes] = {}
        day = dt.datetime.fromtimestamp(start // _NS, dt.UTC).date()
        while _day_ns(day) < end:
            lo, hi = max(start, _day_ns(day)), min(end, _day_ns(day + dt.timedelta(days=1)))
            header = _plain(self.fake.body_for({**params, "start": str(lo), "end": str(hi)}))
            header = header[:8 + int.from_bytes(header[4:8], "little")]
            todays = b"".join(records[i:i + size] for i in range(0, len(records), size)
                              if lo <= int.from_bytes(records[i + 8:i + 16], "little") < hi)
            name = f"{params['dataset'].lower().replace('.', '-')}-{day:%Y%m%d}.{params['schema']}.dbn.zst"
            files[name] = zstandard.ZstdCompressor(level=3).compress(header + todays)
            day += dt.timedelta(days=1)
        manifest = {"job_id": job_id, "files": [{"filename": name, "size": len(body),
                                                 "hash": "sha256:" + hashlib.sha256(body).hexdigest()}
                                                for name, body in files.items()]}
        files["manifest.json"] = json.dumps(manifest, indent=2).encode()
        now = _iso_ns(dt.datetime.now(dt.UTC))
        dbn = [b for name, b in files.items() if name.endswith(".dbn.zst")]
        details = {
            "id": job_id, "user_id": "FAKEUSER", "api_key": "fake-001", "cost_usd": self.fake.cost_usd,
            "dataset": params["dataset"], "symbols": params["symbols"], "stype_in": params["stype_in"],
            "stype_out": params["stype_out"], "schema": params["schema"], "start": _iso_ns(_from_ns(start)),
            "end": _iso_ns(_from_ns(end)), "limit": None, "encoding": params["encoding"],
            "compression": params.get("compression"), "pretty_px": params.get("pretty_px") == "True",
            "pretty_ts": params.get("pretty_ts") == "True", "map_symbols": params.get("map_symbols") == "True",
            "split_symbols": params.get("split_symbols") == "True", "split_duration": params["split_duration"],
            "split_size": None, "packaging": None, "delivery": params["delivery"],
            "record_count": sum(record_count(b) for b in dbn),
            "billed_size": sum(len(_plain(b)) for b in dbn),
            "actual_size": sum(len(b) for b in dbn), "package_size": sum(len(b) for b in files.values()),
            "state": "received", "ts_received": now, "ts_queued": None, "ts_process_start": None,
            "ts_process_done": None, "ts_expiration": None, "progress": 0,
        }
        with self.fake._lock:
            self.jobs[job_id] = FakeJob(details, files)
        return dict(details)

    def look(self, job: FakeJob) -> dict:
        """The job as seen now; each look moves it on (received -> queued -> processing -> done)."""
        with self.fake._lock:
            job.looks += 1
            now = _iso_ns(dt.datetime.now(dt.UTC))
            d = job.details
            if d["state"] != "expired":
                if job.looks <= self.queued_polls:
                    d["state"], d["ts_queued"] = "queued", d["ts_queued"] or now
                elif job.looks <= self.queued_polls + self.processing_polls:
                    d["state"], d["ts_process_start"], d["progress"] = "processing", d["ts_process_start"] or now, 50
                else:
                    d["state"], d["progress"] = "done", 100
                    d["ts_queued"] = d["ts_queued"] or now
                    d["ts_process_start"] = d["ts_process_start"] or now
                    d["ts_process_done"] = d["ts_process_done"] or now
                    d["ts_expiration"] = d["ts_expiration"] or _iso_ns(dt.datetime.now(dt.UTC) + dt.timedelta(days=30))
            return dict(d)

    def expire(self, job_id: str) -> None:
        with self.fake._lock:
            self.jobs[job_id].details["state"] = "expired"

    def list_files(self, job: FakeJob) -> list[dict]:
        base = self.fake.gateway
        out = []
        for name, body in job.files.items():
            digest = hashlib.sha256(body + (b"x" if name in self.corrupt else b"")).hexdigest()
            out.append({"filename": name, "size": len(body), "hash": f"sha256:{digest}",
                        "urls": {"https": f"{base}{_DOWNLOAD_PREFIX}{job.details['id']}/{name}",
                                 "ftp": f"ftp://ftp.fake.databento.com/{job.details['id']}/{name}"}})
        return out

    def condition(self, dataset: str, first: dt.date, last: dt.date) -> list[dict]:
        out = []
        day = first
        while day <= last:
            condition, modified = self.conditions.get(day, ("available", (day + dt.timedelta(days=1)).isoformat()))
            out.append({"date": day.isoformat(), "condition": condition, "last_modified_date": modified})
            day += dt.timedelta(days=1)
        return out

    def billable(self, params: dict[str, str]) -> int:
        if self.billable_size is not None:
            return self.billable_size
        return len(_plain(self.fake.body_for(params)))

    def submitted(self) -> int:
        """How many jobs were submitted (what a client paid for)."""
        return len(self.fake.seen(SUBMIT_JOB))


def _plain(body: bytes) -> bytes:
    return zstandard.ZstdDecompressor().decompressobj().decompress(body) if body[:4] == _ZSTD_MAGIC else body


def _from_ns(ns: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ns // _NS, dt.UTC).replace(microsecond=(ns % _NS) // 1000)


def _serve_batch(fake: FakeDatabento, handler: BaseHTTPRequestHandler, path: str, endpoint: str,
                 params: dict[str, str]) -> None:
    send = handler._send  # type: ignore[attr-defined]
    batch = fake.batch
    expected = "POST" if endpoint in _BATCH_POST else "GET"
    known = path.startswith(_DOWNLOAD_PREFIX) or path == f"/v0/{endpoint}"
    if not known or endpoint not in BATCH_ENDPOINTS or handler.command != expected:
        return send(Reply.error(404, f"no route {handler.command} {path}"))
    if _basic_user(handler.headers.get("Authorization")) in (None, ""):
        return send(Reply.error(401, "missing API key"))
    if endpoint == SUBMIT_JOB:
        if params.get("encoding") != "dbn" or params.get("split_duration") not in ("day", "week", "month", "none"):
            return send(Reply.error(422, f"fake serves encoding=dbn only, got {params}"))
        try:
            return send(Reply(json=batch.submit(params)))
        except (KeyError, ValueError, databento_dbn.DBNError) as exc:
            return send(Reply.error(422, f"fake cannot batch {params}: {exc}"))
    if endpoint == GET_BILLABLE_SIZE:
        return send(Reply(json=batch.billable(params)))
    if endpoint == GET_DATASET_CONDITION:
        first = dt.date.fromisoformat(params.get("start_date") or DATASET_START.date().isoformat())
        last = dt.date.fromisoformat(params.get("end_date") or dt.datetime.now(dt.UTC).date().isoformat())
        return send(Reply(json=batch.condition(params["dataset"], first, last)))
    if endpoint == LIST_JOBS:
        states = set((params.get("states") or "queued,processing,done").split(","))
        short = params.get("short", "True") != "False"
        jobs = [batch.look(job) for job in list(batch.jobs.values())]
        jobs = [({k: j[k] for k in ("id", "state", "ts_received")} if short else j) for j in jobs
                if j["state"] in states or j["state"] == "received"]
        return send(Reply(json=jobs))
    if endpoint == BATCH_DOWNLOAD:
        job_id, _, name = path[len(_DOWNLOAD_PREFIX):].partition("/")
        job = batch.jobs.get(job_id)
        if job is None or name not in job.files:
            return send(Reply.error(404, f"no file {name} in job {job_id}"))
        if job.details["state"] != "done":
            return send(Reply.error(400, f"job {job_id} is {job.details['state']}", case="job_not_done"))
        return _send_file(batch, handler, name, job.files[name])
    job = batch.jobs.get(params.get("job_id", ""))
    if job is None:
        return send(Reply.error(404, f"no batch job {params.get('job_id')!r}", case="job_not_found"))
    if endpoint == GET_JOB_DETAILS:
        return send(Reply(json=batch.look(job)))
    if job.details["state"] != "done":  # list_files
        return send(Reply.error(400, f"job {job.details['id']} is {job.details['state']}", case="job_not_done"))
    return send(Reply(json=batch.list_files(job)))


def _send_file(batch: FakeBatch, handler: BaseHTTPRequestHandler, name: str, body: bytes) -> None:
    first, last = 0, len(body) - 1
    ranged = handler.headers.get("Range", "")
    if ranged.startswith("bytes="):
        lo, _, hi = ranged[len("bytes="):].partition("-")
        first, last = int(lo), int(hi) if hi else len(body) - 1
    part = body[first:last + 1]
    with batch.fake._lock:
        cut = batch.cut_after.pop(name, None)
        stall = batch.stall_after.pop(name, None)
    handler.send_response(206 if ranged else 200)
    handler.send_header("Content-Type", "application/octet-stream")
    handler.send_header("Content-Length", str(len(part)))
    if ranged:
        handler.send_header("Content-Range", f"bytes {first}-{last}/{len(body)}")
    handler.end_headers()
    if stall is not None:
        handler.wfile.write(part[:stall[0]])
        handler.wfile.flush()
        time.sleep(stall[1])
        return handler._cut()  # type: ignore[attr-defined]
    if cut is not None:
        handler.wfile.write(part[:cut])
        return handler._cut()  # type: ignore[attr-defined]
    handler.wfile.write(part)
