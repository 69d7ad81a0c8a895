"""Download raw DBN from Databento's historical API -- safely, and never paying twice.

One request (dataset, symbol, schema, stype_in, [start, end)) lands as one file:

    <data_dir>/raw/<dataset>/<schema>/<symbol>/<start>_<end>.dbn.zst       the verified data
    <data_dir>/raw/<dataset>/<schema>/<symbol>/<start>_<end>.dbn.zst.json  sidecar (request, sha256, cost)

The data file only ever appears through an atomic rename of `<name>.part` after the download was checked
to be complete, decodable DBN of the requested schema, so "the data file exists" means "complete".
A complete file is reused without any HTTP call (no key needed); a left-over `.part` is deleted.

The API key comes only from the DATABENTO_API_KEY environment variable and is never logged or written.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import json
import logging
import math
import os
import re
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, TypeVar

import databento
import databento_dbn
import requests
import zstandard
from databento.common.error import BentoClientError, BentoError, BentoHttpError, BentoServerError

from engine.errors import EngineError
from engine.sources import Landing

try:  # POSIX only; without it concurrent fetches of the same request are simply not serialised
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

API_KEY_ENV = "DATABENTO_API_KEY"
#: A server's Retry-After is honoured up to this many seconds (a broken header must not park a job for a day).
RETRY_AFTER_CAP_SECONDS = 900.0
#: How often the size of the growing `.part` file is reported to `on_bytes`.
PROGRESS_INTERVAL_SECONDS = 0.2

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_DBN_PREFIX = b"DBN"
_RECORD_HEADER_BYTES = 16
_SAFE_PATH_CHARS = re.compile(r"[^A-Za-z0-9._+\-=^]")

T = TypeVar("T")


# --------------------------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class RawRequest:
    """One Databento time-series request: `symbol` in `dataset`/`schema` over [start, end) UTC."""

    dataset: str  # "GLBX.MDP3"
    symbol: str  # continuous symbol, e.g. "NQ.v.0"
    schema: str  # "ohlcv-1m"
    stype_in: str  # "continuous"
    start: datetime  # tz-aware UTC, inclusive
    end: datetime  # tz-aware UTC, exclusive

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            value = getattr(self, name)
            if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
                raise EngineError(
                    f"Databento request {name}={value!r} is not a timezone-aware datetime",
                    "give window times with a timezone, e.g. 2025-11-30T23:00:00Z",
                )
            object.__setattr__(self, name, value.astimezone(UTC))
        if self.end <= self.start:
            raise EngineError(
                f"Databento request window is empty: end {self.end.isoformat()} is not after "
                f"start {self.start.isoformat()}",
                "make the window end later than its start",
            )
        for name in ("dataset", "symbol", "schema", "stype_in"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise EngineError(f"Databento request {name}={value!r} is empty", f"set a {name}")

    def landing_path(self, data_dir: Path) -> Path:
        """data_dir/raw/GLBX.MDP3/ohlcv-1m/NQ.v.0/20251130T230000Z_20251202T050000Z.dbn.zst"""
        name = f"{_stamp(self.start)}_{_stamp(self.end)}.dbn.zst"
        return Path(data_dir) / "raw" / _safe(self.dataset) / _safe(self.schema) / _safe(self.symbol) / name

    def as_dict(self) -> dict[str, str]:
        return {
            "dataset": self.dataset,
            "symbol": self.symbol,
            "schema": self.schema,
            "stype_in": self.stype_in,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
        }

    def client_params(self) -> dict:
        """The request as keyword arguments of the Databento client's metadata.get_cost / timeseries.get_range."""
        return {
            "dataset": self.dataset,
            "symbols": [self.symbol],
            "schema": self.schema,
            "stype_in": self.stype_in,
            "start": self.start,
            "end": self.end,
        }

    def describe(self) -> str:
        return (
            f"{self.dataset} {self.symbol} ({self.stype_in}) {self.schema} "
            f"[{self.start.isoformat()}, {self.end.isoformat()})"
        )


@dataclass
class FetchResult:
    path: Path
    sha256: str
    reused: bool
    retries: int
    cost_usd: float | None
    bytes: int


def _stamp(ts: datetime) -> str:
    return ts.strftime("%Y%m%dT%H%M%S.%fZ" if ts.microsecond else "%Y%m%dT%H%M%SZ")


def _safe(part: str) -> str:
    cleaned = _SAFE_PATH_CHARS.sub("_", part.strip())
    return "_" + cleaned if cleaned in {".", ".."} else cleaned


def _sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _part_path(path: Path) -> Path:
    return path.with_name(path.name + ".part")


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


# --------------------------------------------------------------------------------------------- public API


def fetch_raw(
    req: RawRequest,
    data_dir: Path,
    *,
    max_cost_usd: float,
    max_retries: int = 5,
    backoff_seconds: float = 1.0,
    max_backoff_seconds: float = 60.0,
    gateway: str | None = None,
    on_bytes: Callable[[int], None] | None = None,
    sleep: Callable[[float], Any] = time.sleep,
) -> FetchResult:
    """Land the raw DBN for `req` under `data_dir` (see `RawRequest.landing_path`), or reuse it.

    `on_bytes(n)` is told the bytes written so far; it may be called from a background thread.
    Raises EngineError for anything the person running the job has to fix.
    """
    final = req.landing_path(Path(data_dir))
    reused = _reuse(req, final, on_bytes)
    if reused is not None:
        return reused

    policy = _RetryPolicy(max_retries, backoff_seconds, max_backoff_seconds, sleep)
    client = _client(gateway)
    cost = _get_cost(client, req, policy)
    if cost > max_cost_usd:
        raise EngineError(
            f"Databento quotes ${cost:,.2f} for {req.describe()}, "
            f"above the limit source.max_cost_usd=${max_cost_usd:,.2f}; nothing was downloaded",
            f"raise the limit, e.g. source.max_cost_usd={math.ceil(cost * 100) / 100:.2f}, "
            "or request a shorter window",
        )

    log.info("Databento quotes $%.4f for %s (limit source.max_cost_usd=$%.2f)", cost, req.describe(), max_cost_usd)
    final.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(final):
        # Another process may have landed the same request while we waited for the lock.
        reused = _reuse(req, final, on_bytes)
        if reused is not None:
            reused.retries = policy.retries
            return reused
        part = _part_path(final)
        part.unlink(missing_ok=True)  # left over from a crash: never trusted, never resumed

        def attempt() -> int:
            part.unlink(missing_ok=True)  # the client insists on creating the file itself
            try:
                with _ProgressPoller(part, on_bytes):
                    _download(client, req, part)
                return _verify_dbn(part, req)
            except BaseException:
                part.unlink(missing_ok=True)  # a partial download is never kept, not even while waiting
                raise

        try:
            records = policy.run(attempt, "timeseries.get_range", req)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        sha256, size = _sha256(part)
        _fsync_file(part)
        sidecar = {
            "request": req.as_dict(),
            "file": final.name,
            "sha256": sha256,
            "bytes": size,
            "records": records,
            "cost_usd": cost,
            "retries": policy.retries,
            "downloaded_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "client": f"databento {databento.__version__}",
        }
        _write_json_atomic(_sidecar_path(final), sidecar)
        os.replace(part, final)
        _fsync_dir(final.parent)
        with contextlib.suppress(OSError):  # safe once the data file exists: any waiter re-checks and reuses
            _lock_path(final).unlink()

    log.info("Downloaded %s -> %s (%d bytes, %d records, $%.4f)", req.describe(), final, size, records, cost)
    _report(on_bytes, size)
    return FetchResult(
        path=final, sha256=sha256, reused=False, retries=policy.retries, cost_usd=cost, bytes=size
    )


def estimate_cost(
    req: RawRequest,
    gateway: str | None = None,
    *,
    max_retries: int = 5,
    backoff_seconds: float = 1.0,
    max_backoff_seconds: float = 60.0,
    sleep: Callable[[float], Any] = time.sleep,
) -> float:
    """What Databento would charge (USD) for `req` -- `metadata.get_cost`, free of charge."""
    policy = _RetryPolicy(max_retries, backoff_seconds, max_backoff_seconds, sleep)
    return _get_cost(_client(gateway), req, policy)


# --------------------------------------------------------------------------------------------- reuse


def _reuse(req: RawRequest, final: Path, on_bytes: Callable[[int], None] | None) -> FetchResult | None:
    if not final.is_file():
        return None
    sha256, size = _sha256(final)
    sidecar_path = _sidecar_path(final)
    cost: float | None = None
    recorded: dict[str, Any] | None = None
    if sidecar_path.is_file():
        try:
            recorded = json.loads(sidecar_path.read_text())
        except (OSError, ValueError):
            recorded = None
    if recorded is not None:
        if recorded.get("request") not in (None, req.as_dict()):
            raise EngineError(
                f"{final} was downloaded for a different request ({recorded.get('request')}) "
                f"than {req.describe()}",
                f"move {final} and {sidecar_path.name} aside, then run again",
            )
        if recorded.get("sha256") not in (None, sha256):
            raise EngineError(
                f"{final} changed on disk since it was downloaded: sha256 {sha256} "
                f"but {sidecar_path.name} recorded {recorded.get('sha256')}",
                f"delete {final} and {sidecar_path.name} to download it again "
                f"(Databento will charge again, last time ${recorded.get('cost_usd')})",
            )
        cost = recorded.get("cost_usd")
    else:
        # A data file only appears by rename after verification; the sidecar was lost or the file was
        # placed by hand. Record what we know so later runs can detect on-disk changes.
        log.warning("%s has no sidecar; reusing it and writing %s", final, sidecar_path.name)
        with contextlib.suppress(OSError):
            _write_json_atomic(
                sidecar_path,
                {
                    "request": req.as_dict(),
                    "file": final.name,
                    "sha256": sha256,
                    "bytes": size,
                    "cost_usd": None,
                    "adopted_at": datetime.now(UTC).isoformat(timespec="seconds"),
                },
            )
    log.info("Reusing %s (%d bytes, sha256 %s)", final, size, sha256[:12])
    _report(on_bytes, size)
    return FetchResult(path=final, sha256=sha256, reused=True, retries=0, cost_usd=cost, bytes=size)


# --------------------------------------------------------------------------------------------- client calls


def _api_key() -> str:
    key = os.environ.get(API_KEY_ENV, "")
    if not key.strip():
        raise EngineError(
            f"{API_KEY_ENV} is not set, so Databento's API cannot be used",
            f"export {API_KEY_ENV}=<your key from https://databento.com/portal/keys> "
            "(or use source=dbn_file with files you already have)",
        )
    return key.strip()


def _client(gateway: str | None) -> databento.Historical:
    key = _api_key()
    try:
        if gateway:
            return databento.Historical(key=key, gateway=gateway)
        return databento.Historical(key=key)
    except ValueError as exc:
        # The only ValueErrors here are about the gateway URL (the key was checked above; never echo it).
        raise EngineError(
            f"Databento gateway {gateway!r} is not usable: {exc}",
            "fix source.gateway or remove it to use Databento's default",
        ) from None


def _get_cost(client: databento.Historical, req: RawRequest, policy: _RetryPolicy) -> float:
    def call() -> float:
        return client.metadata.get_cost(**req.client_params())

    cost = policy.run(call, "metadata.get_cost", req)
    try:
        value = float(cost)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise EngineError(
            f"Databento's metadata.get_cost answered {cost!r} for {req.describe()}",
            "try again later; if it persists contact support@databento.com",
        )
    return value


def _download(client: databento.Historical, req: RawRequest, part: Path) -> None:
    try:
        client.timeseries.get_range(**req.client_params(), path=part)
    except (databento_dbn.DBNError, ValueError) as exc:
        # After streaming, the client opens the file it wrote (DBNStore.from_file). An empty or mangled
        # body fails there. ValueErrors raised *before* the request (argument validation) leave no file.
        if part.exists():
            raise _Truncated(f"the downloaded body is not readable DBN ({exc})") from None
        raise


# --------------------------------------------------------------------------------------------- retries


class _Truncated(Exception):
    """The download ended early or arrived damaged: worth another attempt."""


@dataclass
class _Transient:
    reason: str
    retry_after: float | None = None


@dataclass
class _RetryPolicy:
    max_retries: int
    backoff_seconds: float
    max_backoff_seconds: float
    sleep: Callable[[float], Any]
    retries: int = field(default=0)

    def delay(self, retry_number: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, RETRY_AFTER_CAP_SECONDS)
        return min(self.max_backoff_seconds, self.backoff_seconds * 2 ** (retry_number - 1))

    def run(self, action: Callable[[], T], what: str, req: RawRequest) -> T:
        attempt_retries = 0
        while True:
            try:
                return action()
            except Exception as exc:  # classified below; unknown ones re-raised
                transient = _classify(exc, what, req)
            if attempt_retries >= self.max_retries:
                gave_up = EngineError(
                    f"Databento {what} for {req.describe()} kept failing; gave up after "
                    f"{attempt_retries} retries. Last failure: {transient.reason}",
                    "check your network and https://status.databento.com, then run again "
                    "(files that completed are reused, not bought again), or raise source.max_retries",
                )
                gave_up.retries = self.retries  # the ingest records them (engine.stages.ingest._retries_of)
                raise gave_up from None
            attempt_retries += 1
            self.retries += 1
            delay = self.delay(attempt_retries, transient.retry_after)
            log.warning(
                "Databento %s: %s; retry %d/%d in %.1fs",
                what,
                transient.reason,
                attempt_retries,
                self.max_retries,
                delay,
            )
            self.sleep(delay)


def _classify(exc: Exception, what: str, req: RawRequest) -> _Transient:
    """Transient failures come back as _Transient; everything else becomes EngineError or is re-raised."""
    if isinstance(exc, BentoHttpError):
        return _classify_http(exc, what, req)
    if isinstance(exc, _Truncated):
        return _Transient(str(exc))
    if isinstance(exc, BentoError):
        # Non-HTTP BentoError: the client wraps anything raised while reading the body
        # ("Error streaming response: ..."), and fails to recognise a mangled body's format.
        return _Transient(f"the stream broke: {exc}")
    if isinstance(
        exc,
        requests.exceptions.ConnectionError
        | requests.exceptions.Timeout
        | requests.exceptions.ChunkedEncodingError
        | requests.exceptions.ContentDecodingError,
    ):
        return _Transient(f"connection problem: {type(exc).__name__}: {exc}")
    if isinstance(exc, ValueError):  # the client's own argument validation (bad schema / stype_in ...)
        raise EngineError(
            f"Databento {what} rejected the request for {req.describe()}: {exc}",
            "check source.dataset, the symbol, schema and stype_in",
        ) from None
    if isinstance(exc, OSError):
        raise EngineError(
            f"could not write the Databento download for {req.describe()}: {exc}",
            "check free space and permissions under data_dir",
        ) from exc
    raise exc


def _classify_http(exc: BentoHttpError, what: str, req: RawRequest) -> _Transient:
    status = exc.http_status
    said = _server_message(exc)
    if status == 429 or status == 408 or (isinstance(exc, BentoServerError) and status >= 500):
        return _Transient(f"HTTP {status} {said}".rstrip(), _retry_after(exc.headers))
    if status in (401, 403):
        raise EngineError(
            f"Databento refused the API key (HTTP {status}) on {what}: {said}",
            f"check {API_KEY_ENV}: export a valid, active key from https://databento.com/portal/keys "
            "that has access to this dataset",
        ) from None
    if status == 402:
        raise EngineError(
            f"Databento refused {what} for {req.describe()} for billing reasons (HTTP 402): {said}",
            "check the billing / payment method and credit limits at https://databento.com/portal/billing",
        ) from None
    if isinstance(exc, BentoClientError):
        raise EngineError(
            f"Databento rejected {what} for {req.describe()} (HTTP {status}): {said}",
            "check the dataset, symbol, stype_in, schema and window (is it inside the dataset's "
            "available range and not in the future?)",
        ) from None
    return _Transient(f"HTTP {status} {said}".rstrip(), _retry_after(exc.headers))


def _server_message(exc: BentoHttpError) -> str:
    message = exc.message
    if not message and exc.http_body:
        message = str(exc.http_body)[:500]
    text = "; ".join(line.strip() for line in str(message or "").splitlines() if line.strip())
    if exc.request_id:
        text = f"{text} (request {exc.request_id})"
    return text


def _retry_after(headers: Any) -> float | None:
    try:
        value = headers.get("Retry-After") if headers is not None else None
    except AttributeError:
        return None
    if value is None:
        return None
    value = str(value).strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


# --------------------------------------------------------------------------------------------- verification


def _verify_dbn(path: Path, req: RawRequest) -> int:
    """Check `path` is complete DBN for `req`; return its record count.

    Incomplete data (an unfinished zstd frame, a cut-off record, no metadata) raises _Truncated -- the
    stream broke, try again. Complete data for the wrong dataset/schema, or that cannot be decoded,
    raises EngineError straight away: downloading it again would cost again and give the same answer.
    """
    walker = _DbnWalker()
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(0)
        if head == _ZSTD_MAGIC:
            chunks = _zstd_chunks(f)
        elif head[:3] == _DBN_PREFIX:
            chunks = iter(lambda: f.read(1 << 20), b"")
        elif not head:
            raise _Truncated("the response body was empty")
        else:
            raise _Truncated(f"the response body is neither zstd nor DBN (starts {head.hex()})")
        for chunk in chunks:
            walker.feed(chunk)
    walker.finish()

    metadata = walker.metadata
    assert metadata is not None
    got_schema = str(metadata.schema or "")
    if got_schema.lower() != req.schema.lower() or metadata.dataset != req.dataset:
        raise EngineError(
            f"Databento sent {metadata.dataset} {got_schema or 'mixed-schema'} data for {req.describe()}",
            "report this to support@databento.com; nothing was saved",
        )
    return walker.records


def _zstd_chunks(f: IO[bytes]) -> Iterator[bytes]:
    """Decompress possibly-concatenated zstd frames, insisting the last frame is finished."""
    dctx = zstandard.ZstdDecompressor()
    dobj = dctx.decompressobj()
    in_frame = False
    try:
        while chunk := f.read(1 << 20):
            while chunk:
                in_frame = True
                out = dobj.decompress(chunk)
                if out:
                    yield out
                if dobj.eof:
                    in_frame = False
                    chunk = dobj.unused_data
                    dobj = dctx.decompressobj()
                else:
                    chunk = b""
    except zstandard.ZstdError as exc:
        raise _Truncated(f"the zstd stream is damaged ({exc})") from None
    if in_frame:
        raise _Truncated("the zstd stream ends in the middle of a frame")


class _DbnWalker:
    """Frames a DBN byte stream: metadata header, then records of `length * 4` bytes each."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0
        self.metadata: databento_dbn.Metadata | None = None
        self.records = 0

    def feed(self, data: bytes) -> None:
        self._buf += data
        if self.metadata is None:
            if len(self._buf) < 8:
                return
            if bytes(self._buf[:3]) != _DBN_PREFIX:
                raise EngineError(
                    "Databento sent data that is not DBN", "report this to support@databento.com"
                )
            (meta_len,) = struct.unpack_from("<I", self._buf, 4)
            if len(self._buf) < 8 + meta_len:
                return
            try:
                self.metadata = databento_dbn.Metadata.decode(bytes(self._buf[: 8 + meta_len]))
            except databento_dbn.DBNError as exc:
                raise EngineError(
                    f"cannot decode the DBN metadata Databento sent: {exc}",
                    "upgrade databento / databento-dbn (pip install -U databento), then run again",
                ) from None
            self._pos = 8 + meta_len
        buf, pos, end = self._buf, self._pos, len(self._buf)
        while pos < end:
            size = buf[pos] * 4
            if size < _RECORD_HEADER_BYTES:
                raise _Truncated(f"a DBN record at byte {pos} has impossible length {size}")
            if pos + size > end:
                break
            pos += size
            self.records += 1
        del buf[:pos]
        self._pos = 0

    def finish(self) -> None:
        if self.metadata is None:
            raise _Truncated("the download ended before the DBN metadata was complete")
        if self._buf:
            raise _Truncated(f"the download ends with {len(self._buf)} bytes of an incomplete DBN record")


# --------------------------------------------------------------------------------------------- files


def _sha256(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def _exclusive(final: Path) -> Iterator[None]:
    """Serialise fetches of the same request across processes (e.g. parallel multirun jobs)."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    with open(_lock_path(final), "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _report(on_bytes: Callable[[int], None] | None, size: int) -> None:
    if on_bytes is None:
        return
    try:
        on_bytes(size)
    except Exception:  # a progress bar must never break a download
        log.debug("on_bytes callback failed", exc_info=True)


class _ProgressPoller:
    """Reports the size of the file the client is writing, from a background thread."""

    def __init__(
        self, path: Path, on_bytes: Callable[[int], None] | None, interval: float = PROGRESS_INTERVAL_SECONDS
    ) -> None:
        self._path = path
        self._on_bytes = on_bytes
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last = -1

    def __enter__(self) -> _ProgressPoller:
        if self._on_bytes is not None:
            self._poll()
            self._thread = threading.Thread(target=self._run, name="databento-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._poll()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._poll()

    def _poll(self) -> None:
        try:
            size = self._path.stat().st_size
        except OSError:
            size = 0
        if size != self._last:
            self._last = size
            _report(self._on_bytes, size)


def acquire(ctx, progress) -> Landing:
    """Download (or reuse) the job's window from Databento, with a byte counter on the progress bar."""
    symbol, source = ctx.symbol, ctx.cfg.source
    req = RawRequest(symbol.dataset, symbol.continuous, symbol.schema, symbol.stype_in, ctx.window.start,
                     ctx.window.end)
    task = progress.add_task(f"download {symbol.continuous}", total=None, unit="bytes")
    result = fetch_raw(
        req, Path(ctx.cfg.data_dir), max_cost_usd=source.max_cost_usd, max_retries=source.max_retries,
        backoff_seconds=source.backoff_seconds, gateway=source.gateway,
        on_bytes=lambda n: progress.update(task, completed=n),
    )
    progress.update(task, visible=False)
    return Landing(
        [result.path],
        retries=result.retries,
        raw_files=[{"path": str(result.path), "sha256": result.sha256, "reused": result.reused,
                    "bytes": result.bytes, "cost_usd": result.cost_usd}],
    )
