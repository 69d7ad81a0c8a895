"""Download raw DBN from Databento's historical API -- safely, and never paying twice.

One request (dataset, symbol, schema, stype_in, [start, end)) lands as one file:

    <data_dir>/raw/<dataset>/<schema>/<symbol>/<start>_<end>.dbn.zst       the verified data
    <data_dir>/raw/<dataset>/<schema>/<symbol>/<start>_<end>.dbn.zst.json  sidecar (request, sha256, bytes,
                                                                            records, cost)

The data file only ever appears through an atomic rename of `<name>.part` after the download was checked
to be complete: every zstd frame finished, every record whole, exactly as many records as Databento's
(free) `metadata.get_record_count` says for the same request, and the requested dataset and schema.
urllib3 already refuses a body shorter than its Content-Length. A complete file is reused without any HTTP
call (no key needed) after its size, sha256 and record count are checked again; a landing that fails the
check is moved aside to `<name>.rejected-<n>` (with its sidecar) and the run stops, so the next run buys it
again exactly once. A left-over `.part` is deleted.

A 200 body that is not the DBN asked for is paid for, so it is downloaded again at most once; then the run
stops and the bodies stay as `<name>.rejected-<n>` for inspection. Timeouts and a total retry budget bound
how long a stalled gateway can hold a job.

The API key comes only from the DATABENTO_API_KEY environment variable and is never logged or written.

This module decides what to fetch, what it may cost and whether a landing can be reused; the request is
`databento_request`, the client calls `databento_client`, the retries `databento_retry`, the progress
`progress` and the file handling `landing`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import databento

from engine.errors import EngineError
from engine.sources import Landing
from engine.sources import databento_conditions as conditions
from engine.sources import databento_ratelimit as ratelimit
from engine.sources.databento_batch import fetch_batch, wants_batch
from engine.sources.databento_client import (
    download,
    get_cost,
    get_dataset_range,
    get_record_count,
    historical,
    resolve_intervals,
)
from engine.sources.databento_days import (
    FetchResult,
    day_pieces,
    days_dir,
    locked_days,
    plan_days,
    split_run,
    verify_body,
    verify_landed_piece,
)
from engine.sources.databento_request import RawRequest
from engine.sources.databento_retry import API_KEY_ENV, BadBody, RetryPolicy, Timeouts, timeouts
from engine.sources.databento_retry import policy_of as _policy
from engine.sources.databento_symbology import check_symbology, store_symbology
from engine.sources.dbn import _read_info, count_records
from engine.sources.landing import (
    exclusive,
    file_digest,
    fsync_dir,
    fsync_file,
    lock_path,
    part_path,
    read_sidecar,
    set_aside,
    sidecar_path,
    write_json_atomic,
)
from engine.sources.progress import ProgressPoller, notify

if TYPE_CHECKING:
    from engine.sources.databento import DatabentoSource

__all__ = ["FetchResult", "Planned", "RawRequest", "Timeouts", "acquire", "available_end", "bars_planned",
           "estimate_cost", "extra_requests", "fetch_days", "fetch_raw", "planned_requests", "rolls_of", "timeouts"]

log = logging.getLogger(__name__)
_EPOCH = dt.date(1970, 1, 1)


def fetch_raw(
    req: RawRequest,
    data_dir: Path,
    *,
    max_cost_usd: float,
    max_retries: int = 5,
    backoff_seconds: float = 1.0,
    max_backoff_seconds: float = 60.0,
    timeouts: Timeouts = Timeouts(),  # noqa: B008 -- frozen
    gateway: str | None = None,
    on_bytes: Callable[[int], None] | None = None,
    on_status: Callable[[str], None] | None = None,
    sleep: Callable[[float], Any] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    quote: float | None = None,
) -> FetchResult:
    """Land the raw DBN for `req` under `data_dir` (see `RawRequest.landing_path`), or reuse it.

    `quote`: the price already asked of `metadata.get_cost` for `req` (then it is not asked again).

    `on_bytes(n)` is told the bytes written so far, `on_status(text)` what is going wrong ("stalled 3 s,
    retry 1/5", "" when nothing); both may be called from a background thread.
    Raises EngineError for anything the person running the job has to fix. Any exception raised after at
    least one retry carries the number of retries made as its `retries` attribute.
    """
    policy = RetryPolicy(max_retries, backoff_seconds, max_backoff_seconds, sleep, timeouts, clock, on_status)
    return _counting_retries(policy, lambda: _fetch(req, Path(data_dir), max_cost_usd, policy, gateway, on_bytes,
                                                    quote))


def _counting_retries(policy: RetryPolicy, call: Callable[[], Any]) -> Any:
    """`call()`; an exception raised after at least one retry carries the number made as its `retries`."""
    try:
        return call()
    except BaseException as exc:
        if policy.retries:
            with contextlib.suppress(AttributeError):
                exc.retries = policy.retries  # type: ignore[attr-defined]
        raise


def _fetch(
    req: RawRequest,
    data_dir: Path,
    max_cost_usd: float,
    policy: RetryPolicy,
    gateway: str | None,
    on_bytes: Callable[[int], None] | None,
    quote: float | None = None,
) -> FetchResult:
    final = req.landing_path(data_dir)
    reused = _reuse(req, final, on_bytes, gateway, policy)
    if reused is not None:
        return reused

    client = historical(gateway)
    cost = get_cost(client, req, policy) if quote is None else quote
    if cost > max_cost_usd:
        raise EngineError(
            f"Databento quotes ${cost:,.2f} for {req.describe()}, "
            f"above the limit source.max_cost_usd=${max_cost_usd:,.2f}; nothing was downloaded",
            f"raise the limit, e.g. source.max_cost_usd={math.ceil(cost * 100) / 100:.2f}, "
            "or request a shorter window",
        )
    expected = get_record_count(client, req, policy)

    log.info(
        "Databento quotes $%.4f for %s, %d records (limit source.max_cost_usd=$%.2f)",
        cost, req.describe(), expected, max_cost_usd,
    )
    final.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(final):
        # Another process may have landed the same request while we waited for the lock.
        reused = _reuse(req, final, on_bytes, gateway, policy)
        if reused is not None:
            reused.retries = policy.retries
            return reused
        part = part_path(final)
        part.unlink(missing_ok=True)  # left over from a crash: never trusted, never resumed

        def attempt() -> int:
            part.unlink(missing_ok=True)  # the client insists on creating the file itself
            try:
                with ProgressPoller(part, on_bytes, policy.show_stall):
                    download(client, req, part, policy)
                return _verify_download(part, req, expected)
            except BadBody as bad:
                bad.kept = set_aside(part, final)
                raise
            except BaseException:
                part.unlink(missing_ok=True)  # a partial download is never kept, not even while waiting
                raise

        try:
            records = policy.run(attempt, "timeseries.get_range", req)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        sha256, size = file_digest(part)
        fsync_file(part)
        sidecar = {
            "request": req.as_dict(),
            "file": final.name,
            "sha256": sha256,
            "bytes": size,
            "records": records,
            "records_checked": "metadata.get_record_count",
            "cost_usd": cost,
            "retries": policy.retries,
            "downloaded_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "client": f"databento {databento.__version__}",
        }
        write_json_atomic(sidecar_path(final), sidecar)
        os.replace(part, final)
        fsync_dir(final.parent)
        with contextlib.suppress(OSError):  # safe once the data file exists: any waiter re-checks and reuses
            lock_path(final).unlink()

    log.info("Downloaded %s -> %s (%d bytes, %d records, $%.4f)", req.describe(), final, size, records, cost)
    notify(on_bytes, size)
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
    timeouts: Timeouts = Timeouts(),  # noqa: B008 -- frozen
    sleep: Callable[[float], Any] = time.sleep,
) -> float:
    """What Databento would charge (USD) for `req` -- `metadata.get_cost`, free of charge."""
    policy = RetryPolicy(max_retries, backoff_seconds, max_backoff_seconds, sleep, timeouts)
    return get_cost(historical(gateway), req, policy)


def fetch_days(
    req: RawRequest,
    data_dir: Path,
    *,
    max_cost_usd: float,
    max_retries: int = 5,
    backoff_seconds: float = 1.0,
    max_backoff_seconds: float = 60.0,
    timeouts: Timeouts = Timeouts(),  # noqa: B008 -- frozen
    gateway: str | None = None,
    on_bytes: Callable[[int], None] | None = None,
    on_status: Callable[[str], None] | None = None,
    sleep: Callable[[float], Any] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    quotes: dict[RawRequest, float] | None = None,
) -> list[FetchResult]:
    """Serve `req` from its UTC-day pieces (engine.sources.databento_days): the landed ones, checked, and the missing
    time bought as one request per contiguous run and split into days. In time order.

    `quotes`: prices already asked of `metadata.get_cost` (by run); the runs asked now are added. The cost guard
    applies to the sum of the missing runs. Otherwise as `fetch_raw`.
    """
    policy = RetryPolicy(max_retries, backoff_seconds, max_backoff_seconds, sleep, timeouts, clock, on_status)
    return _counting_retries(policy, lambda: _fetch_days(req, Path(data_dir), max_cost_usd, policy, gateway, on_bytes,
                                                         {} if quotes is None else quotes))


def _fetch_days(req: RawRequest, data_dir: Path, max_cost_usd: float, policy: RetryPolicy, gateway: str | None,
                on_bytes: Callable[[int], None] | None, quotes: dict[RawRequest, float]) -> list[FetchResult]:
    plan = plan_days(data_dir, req)
    bought: dict[Path, FetchResult] = {}
    if plan.missing:
        client = historical(gateway)
        for run in plan.missing:
            if run not in quotes:
                quotes[run] = get_cost(client, run, policy)
        cost = sum(quotes[run] for run in plan.missing)
        if cost > max_cost_usd:
            raise EngineError(
                f"Databento quotes ${cost:,.2f} for {req.describe()} ({len(plan.missing_days())} missing days: "
                f"{_listed(plan.missing_days())}), above the limit source.max_cost_usd=${max_cost_usd:,.2f}; "
                "nothing was downloaded",
                f"raise the limit, e.g. source.max_cost_usd={math.ceil(cost * 100) / 100:.2f}, "
                "or request a shorter window",
            )
        with locked_days(days_dir(data_dir, req), plan.missing):
            # Another process may have landed some of it while we waited for the locks: buy only what is still missing.
            for run in plan_days(data_dir, req).missing:
                run_cost = quotes[run] if run in quotes else get_cost(client, run, policy)
                for result in _buy_run(client, run, data_dir, run_cost, policy, on_bytes):
                    bought[result.path] = result
        for result in bought.values():
            result.retries = policy.retries  # all of this call's, on each piece it bought
        plan = plan_days(data_dir, req)
        if plan.missing:  # pragma: no cover -- every run bought was landed, under the locks
            raise EngineError(f"{req.describe()} still misses {_listed(plan.missing_days())} after buying it",
                              "run again; if it persists report this as a bug")
    served = [bought.get(path) or verify_landed_piece(path) for path in plan.landed]
    reused = [r for r in served if r.reused]
    if reused:
        log.info("Reusing %d landed day pieces of %s (%d bytes)", len(reused), req.describe(),
                 sum(r.bytes for r in reused))
    notify(on_bytes, sum(r.bytes for r in served))
    return served


def _listed(days: list[str], most: int = 6) -> str:
    return ", ".join(days[:most]) + (f" and {len(days) - most} more" if len(days) > most else "")


def _buy_run(client: databento.Historical, run: RawRequest, data_dir: Path, cost: float, policy: RetryPolicy,
             on_bytes: Callable[[int], None] | None) -> list[FetchResult]:
    """Buy `run` as one get_range, check it as one body, land it as its day pieces."""
    expected = get_record_count(client, run, policy)
    log.info("Databento quotes $%.4f for %s, %d records, %d day pieces", cost, run.describe(), expected,
             len(day_pieces(run)))
    nominal = days_dir(data_dir, run) / f"run-{run.landing_path(data_dir).name}"
    part = part_path(nominal)

    def attempt() -> int:
        part.unlink(missing_ok=True)  # the client insists on creating the file itself
        try:
            with ProgressPoller(part, on_bytes, policy.show_stall):
                download(client, run, part, policy)
            return verify_body(part, run, expected)
        except BadBody as bad:
            bad.kept = set_aside(part, nominal)
            raise
        except BaseException:
            part.unlink(missing_ok=True)
            raise

    try:
        records = policy.run(attempt, "timeseries.get_range", run)
        results = split_run(part, run, expected_records=records, cost_usd=cost, retries=policy.retries,
                            data_dir=data_dir)
    finally:
        part.unlink(missing_ok=True)
    log.info("Downloaded %s -> %d day pieces in %s (%d records, $%.4f)", run.describe(), len(results),
             nominal.parent, records, cost)
    return results


# --------------------------------------------------------------------------------------------- reuse


def _reuse(
    req: RawRequest,
    final: Path,
    on_bytes: Callable[[int], None] | None,
    gateway: str | None,
    policy: RetryPolicy,
) -> FetchResult | None:
    """The landed file for `req` after checking it again (size, sha256, records), or None when there is none.

    A landing that fails the check is moved aside and EngineError raised: the next run buys it again.
    """
    if not final.is_file():
        return None
    sha256, size = file_digest(final)
    recorded = read_sidecar(final)
    if recorded is not None and recorded.get("request") not in (None, req.as_dict()):
        raise EngineError(
            f"{final} was downloaded for a different request ({recorded.get('request')}) "
            f"than {req.describe()}",
            f"move {final} and {sidecar_path(final).name} aside, then run again",
        )
    recorded = recorded or {}
    problems: list[str] = []
    if recorded.get("bytes") not in (None, size):
        problems.append(f"it has {size:,} bytes but {recorded['bytes']:,} were downloaded")
    if recorded.get("sha256") not in (None, sha256):
        problems.append(f"its sha256 {sha256[:12]}… differs from the {recorded['sha256'][:12]}… downloaded")
    count: int | None = None
    try:
        count = count_records(final)[1]
    except EngineError as exc:
        problems.append(exc.problem.replace(f"{final} ", "it ").replace(str(final), "it"))
    expected = recorded.get("records")
    if count is not None and expected is not None and recorded.get("records_checked") and count != expected:
        problems.append(f"received {count:,} of {expected:,} records")
    if count is not None and not problems and not recorded.get("records_checked"):
        # Landed before record counts were checked (or placed by hand): ask Databento once, for free.
        expected = _check_legacy_count(req, final, count, gateway, policy)
        if expected is not None and expected != count:
            problems.append(f"received {count:,} of {expected:,} records (metadata.get_record_count)")
        elif expected is not None:
            recorded = {
                **recorded, "request": req.as_dict(), "file": final.name, "sha256": sha256, "bytes": size,
                "records": count, "records_checked": "metadata.get_record_count",
            }
            with contextlib.suppress(OSError):
                write_json_atomic(sidecar_path(final), recorded)
    if problems:
        kept = set_aside(final, final)
        last = recorded.get("cost_usd")
        raise EngineError(
            f"the landed Databento file {final} is not a complete download: {'; '.join(problems)}. "
            f"Moved it (and its sidecar) to {kept} for inspection",
            "run again to download it once more"
            + (f" (Databento charges again, last time ${last})" if last is not None else ""),
        )
    log.info("Reusing %s (%d bytes, %d records, sha256 %s)", final, size, count, sha256[:12])
    notify(on_bytes, size)
    return FetchResult(
        path=final, sha256=sha256, reused=True, retries=0, cost_usd=recorded.get("cost_usd"), bytes=size
    )


def _check_legacy_count(
    req: RawRequest, final: Path, count: int, gateway: str | None, policy: RetryPolicy
) -> int | None:
    """Databento's record count for a landing whose sidecar has none checked; None (with a warning) if no key."""
    if not os.environ.get(API_KEY_ENV, "").strip():
        log.warning(
            "%s holds %d records that were never checked against Databento's record count; set %s to check "
            "it (free)", final, count, API_KEY_ENV,
        )
        return None
    return get_record_count(historical(gateway), req, policy)


def _verify_download(part: Path, req: RawRequest, expected: int) -> int:
    """Check the body in `part` is the complete DBN asked for; return its record count (see `verify_body`)."""
    return verify_body(part, req, expected)


# --------------------------------------------------------------------------------------------- the job's requests

BARS, DEFINITIONS, OUTRIGHTS = "bars", "definitions", "outrights"
#: The outright bars of a roll on UTC day D cover [D - 2 days, D + 1 day), clipped to the window's end: the last
#: full session before the roll (a continuous mapping changes at 00:00 UTC, inside the CME session that opened
#: at 17:00 Chicago the evening before), the roll session itself and, over a weekend, at least Friday's close.
ROLL_DAYS_BEFORE = 2
ROLL_DAYS_AFTER = 1


@dataclass(frozen=True)
class Planned:
    """One request of a job: what it is for (`kind`), and for an outright request the roll it prices."""

    kind: str  # BARS | DEFINITIONS | OUTRIGHTS
    req: RawRequest
    roll: tuple[dt.date, int, int] | None = None  # (roll day, outgoing instrument_id, incoming instrument_id)
    # Bars by day: whether the pieces are all landed already (None: the request-keyed file decides), and the UTC
    # days a missing run lands as (`DayPlan.missing_days`).
    landed: bool | None = None
    days: tuple[str, ...] = ()

    def is_landed(self, data_dir: Path) -> bool:
        return self.landed if self.landed is not None else self.req.landing_path(data_dir).is_file()

    def label(self) -> str:
        if self.roll is None:
            return self.kind
        day, out, inc = self.roll
        return f"{self.kind} {out} → {inc} (roll {day.isoformat()})"


def bars_request(symbol, window) -> RawRequest:
    """The bars of the job's window, exactly as asked for (continuous symbol or outright)."""
    return RawRequest(symbol.dataset, symbol.databento_symbol, symbol.schema, symbol.stype_in, window.start,
                      window.end)


def rolls_of(intervals, continuous: str) -> list[tuple[dt.date, int, int]]:
    """(roll day, outgoing id, incoming id) wherever the instrument of `continuous` changes between consecutive
    mapping intervals ((instrument_id, start_day, end_day, symbol), as `DbnFileInfo.intervals`)."""
    mine = sorted((start, end, iid) for iid, start, end, sym in intervals if sym == continuous)
    return [(_EPOCH + dt.timedelta(days=b_start), a_iid, b_iid)
            for (_, _, a_iid), (b_start, _, b_iid) in zip(mine, mine[1:], strict=False) if a_iid != b_iid]


def extra_requests(source, symbol, window, intervals) -> list[Planned]:
    """Beside the bars of a continuous download: its instrument definitions (source.definitions) and, for each
    roll in `intervals` (the continuous symbol's mappings; None when not known), the outgoing and incoming
    contracts' ohlcv-1m bars by instrument_id over the roll session (source.roll_outrights)."""
    if symbol.stype_in != "continuous":
        return []
    out = []
    if source.definitions:
        out.append(Planned(DEFINITIONS, RawRequest(symbol.dataset, symbol.databento_symbol, "definition",
                                                   symbol.stype_in, window.start, window.end)))
    if source.roll_outrights and intervals is not None:
        for day, old, new in rolls_of(intervals, symbol.databento_symbol):
            midnight = dt.datetime.combine(day, dt.time(), UTC)
            start = midnight - dt.timedelta(days=ROLL_DAYS_BEFORE)
            end = min(midnight + dt.timedelta(days=ROLL_DAYS_AFTER), window.end)
            out.append(Planned(OUTRIGHTS, RawRequest(symbol.dataset, f"{old},{new}", "ohlcv-1m", "instrument_id",
                                                     start, end), (day, old, new)))
    return out


def planned_requests(source, symbol, window, data_dir: Path, *, online: bool) -> list[Planned]:
    """Every request of one job (bars first), for the cost guard and the dry run. The rolls come from the
    landed bars' mappings, else (`online`) from Databento's free `symbology.resolve`, else they are unknown
    and no outright request is listed."""
    bars = bars_request(symbol, window)
    return [*bars_planned(bars, data_dir), *extra_requests(source, symbol, window,
                                                           _intervals(source, symbol, bars, data_dir, online))]


def bars_planned(bars: RawRequest, data_dir: Path) -> list[Planned]:
    """The bars of a window: a request-keyed landing of an earlier version when there is one for exactly this
    window (reused as it is), else one item per run of missing time (the days it lands as listed), or one landed
    item when every day piece of the window is landed."""
    if bars.landing_path(data_dir).is_file():
        return [Planned(BARS, bars)]
    plan = plan_days(data_dir, bars)
    if not plan.missing:
        return [Planned(BARS, bars, landed=True)]
    return [Planned(BARS, run, landed=False, days=tuple(plan_days(data_dir, run).missing_days()))
            for run in plan.missing]


def _intervals(source, symbol, bars: RawRequest, data_dir: Path, online: bool):
    if symbol.stype_in != "continuous" or not source.roll_outrights:
        return None
    landed = bars.landing_path(data_dir)
    plan = plan_days(data_dir, bars)
    paths = [landed] if landed.is_file() else list(plan.landed) if not plan.missing else []
    if paths:
        with contextlib.suppress(EngineError):  # a damaged landing is refused (and bought again) when landed
            return _day_before(source, symbol, bars, data_dir, online) + [
                iv for path in paths for iv in _read_info(path).intervals]
    if not online:
        return None
    # One free call for the day before the window and the window; the day before is kept for the landing step.
    day = bars.start.date() - dt.timedelta(days=1)
    spanning = dataclasses.replace(bars, start=datetime.combine(day, dt.time(), UTC))
    intervals = resolve_intervals(historical(source.gateway), spanning, _policy(source))
    _day_before(source, symbol, bars, data_dir, online, resolved=intervals)
    return intervals


def _day_before(source, symbol, window, data_dir: Path, online: bool, resolved=None) -> list[tuple[int, int, int, str]]:
    """The continuous symbol's mapping on the UTC day before the window (free `symbology.resolve`, or taken from
    `resolved`, a resolve that spans it; kept beside the landings so it is asked once): a roll on the window's first
    day, e.g. at a chunk boundary, is then a roll of this window and its outright bars are landed."""
    day = window.start.date() - dt.timedelta(days=1)
    req = RawRequest(symbol.dataset, symbol.databento_symbol, symbol.schema, symbol.stype_in,
                     datetime.combine(day, dt.time(), UTC), datetime.combine(window.start.date(), dt.time(), UTC))
    landing = req.landing_path(Path(data_dir))  # data_dir/raw/<dataset>/<schema>/<symbol>/...
    path = landing.parents[2] / "symbology" / f"{landing.parent.name}_{day:%Y%m%d}.json"
    if resolved is None and path.is_file():
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            return [tuple(item) for item in json.loads(path.read_text())["intervals"]]
    if resolved is None and not online:
        return []
    first = (day - _EPOCH).days
    intervals = ([(iid, max(a, first), min(b, first + 1), sym) for iid, a, b, sym in resolved if a <= first < b]
                 if resolved is not None else resolve_intervals(historical(source.gateway), req, _policy(source)))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"request": req.as_dict(), "intervals": [list(iv) for iv in intervals]})
    return intervals


def _quote_all(planned: list[Planned], data_dir: Path, source, quotes: dict[RawRequest, float]) -> None:
    """Price every request not landed yet (into `quotes`, free) and refuse, before anything is bought, when
    all of them together cost more than source.max_cost_usd; stops asking once the limit is passed."""
    limit = source.max_cost_usd
    client = None
    for item in planned:
        if item.req in quotes or item.is_landed(data_dir):
            continue
        client = client or historical(source.gateway)
        quotes[item.req] = get_cost(client, item.req, _policy(source))
        if sum(quotes.values()) > limit:
            break
    total = sum(quotes.values())
    if total <= limit:
        return
    parts = {}
    for item in planned:
        if item.req in quotes:
            parts[item.kind] = parts.get(item.kind, 0.0) + quotes[item.req]
    shown = ", ".join(f"{kind} ${usd:,.2f}" for kind, usd in parts.items())
    extras = [f"source.{name}=false" for kind, name in ((DEFINITIONS, "definitions"), (OUTRIGHTS, "roll_outrights"))
              if kind in parts]
    also = f" and its extra requests ({shown})" if len(parts) > 1 else ""
    raise EngineError(
        f"Databento quotes ${total:,.2f} for {_bars_described(planned)}{also}, "
        f"above the limit source.max_cost_usd=${limit:,.2f}; nothing was downloaded",
        f"raise the limit, e.g. source.max_cost_usd={math.ceil(total * 100) / 100:.2f}, request a shorter window"
        + (f", or leave out extras ({' / '.join(extras)})" if extras else ""),
    )


def _bars_described(planned: list[Planned]) -> str:
    """The bars items of `planned`: one request, or the days still missing."""
    runs = [item for item in planned if item.kind == BARS]
    days = [day for item in runs for day in item.days]
    if not days:
        return runs[0].req.describe()
    req = runs[0].req
    return f"{req.dataset} {req.symbol} ({req.stype_in}) {req.schema}, {len(days)} missing days ({_listed(days)})"


def acquire(ctx, progress) -> Landing:
    """Download (or reuse) the job's window from Databento, with a byte counter on the progress bar.

    A continuous download also lands the window's instrument definitions and the outright bars of each roll
    session (see `extra_requests`). All requests not landed yet are priced first and the cost guard applies to
    their sum. The rolls are then read again from the landed bars' own mappings: those are what is bought.

    Before anything is bought, the days Databento has no data for are left out (`_condition_plan`), and missing
    runs above source.batch_threshold_bytes (or with source.mode=batch) are bought as batch jobs
    (engine/sources/databento_batch.py) that land day pieces; the window is then served from its day pieces.
    """
    symbol, source, data_dir = ctx.symbol, ctx.source, Path(ctx.cfg.data_dir)
    with ratelimit.installed(source, data_dir) as budget:  # every call keeps the host's rate limits
        try:
            symbology = check_symbology(source, symbol, ctx.window, data_dir, online=_has_key())  # before any price
            landing = _acquire(ctx, progress, symbology)
        except BaseException as exc:
            if budget.retries:
                with contextlib.suppress(AttributeError):  # the retries of every call, pricing and symbology too
                    exc.retries, exc.rate_limited = budget.retries, budget.rate_limited  # type: ignore[attr-defined]
            raise
    landing.retries, landing.rate_limited = budget.retries, budget.rate_limited
    return landing


def _acquire(ctx, progress, symbology) -> Landing:
    symbol, source, data_dir = ctx.symbol, ctx.source, Path(ctx.cfg.data_dir)
    bars_req = bars_request(symbol, ctx.window)
    quality = _condition_plan(source, bars_req, data_dir)
    if quality is not None and not quality.buy:
        raise EngineError(
            f"Databento has no data yet for any day of {bars_req.describe()} ("
            + ", ".join(f"{day} {condition}" for day, condition in sorted(quality.skipped.items()))
            + "); nothing was bought",
            "run again once metadata.get_dataset_condition says available or degraded, or choose another window")
    pieces = conditions.runs(bars_req, quality.buy) if quality is not None else [bars_req]
    planned = planned_requests(source, symbol, ctx.window, data_dir, online=_has_key())
    others = [item for item in planned if item.kind != BARS]
    bars_items = [item for piece in pieces for item in bars_planned(piece, data_dir)]
    quotes: dict[RawRequest, float] = {}
    _quote_all([*bars_items, *others], data_dir, source, quotes)
    landing = Landing([])
    if quality is not None:
        landing.raw_files.extend(conditions.report(quality))
        landing.day_conditions = {**{day: flag for day, flag in quality.flags.items() if quality.flagged(day)},
                                  **{day: {"condition": condition, "bought": False}
                                     for day, condition in quality.skipped.items()}}
    if bars_items[0].landed is None:  # a request-keyed landing of an earlier version
        bars = _land(bars_items[0], ctx, progress, quotes, landing)
        store_symbology(bars.path, symbology)
        landing.paths.append(bars.path)
    else:
        for piece in pieces:
            _land_batches(piece, ctx, progress, quality)
            served = _land_days(piece, ctx, progress, quotes, landing)
            if quality is not None:
                _flag_days(served, quality)
            landing.paths.extend(served)
    if symbol.stype_in == "continuous" and source.roll_outrights:
        intervals = _day_before(source, symbol, ctx.window, data_dir, online=True) + [
            iv for path in landing.paths for iv in _read_info(path).intervals]
        extras = extra_requests(source, symbol, ctx.window, intervals)
        if any(item.req not in quotes and not item.is_landed(data_dir) for item in extras):
            _quote_all([*bars_items, *extras], data_dir, source, quotes)  # the file's mappings differ from resolve
    else:
        extras = others
    for item in extras:
        result = _land(item, ctx, progress, quotes, landing)
        (landing.definitions if item.kind == DEFINITIONS else landing.outrights).append(result.path)
    return landing


def _condition_plan(source, bars: RawRequest, data_dir: Path) -> conditions.DayPlan | None:
    """Which days of `bars` are bought (databento_conditions), or None when nothing needs asking: no key, a
    request-keyed landing of an earlier version, or every day landed and none flagged degraded or provisional.
    Landed days whose flags Databento has since moved on are set aside here, so they are bought again (once)."""
    if not _has_key() or bars.landing_path(data_dir).is_file():
        return None
    days = plan_days(data_dir, bars)
    flagged = {path: sidecar for path in days.landed
               if conditions.flagged(sidecar := read_sidecar(path) or {})}
    if not days.missing and not flagged:
        return None
    plan = conditions.plan_days(source, bars, _policy(source))
    for path, sidecar in flagged.items():
        day = dt.date.fromisoformat(sidecar["request"]["start"][:10])
        if day in plan.flags and conditions.needs_rebuy(sidecar, plan.flags[day]):
            log.warning("Databento regenerated %s (last modified %s, was %s): buying it once more", day,
                        plan.flags[day]["last_modified_date"], sidecar.get("last_modified_date"))
            set_aside(path, path)
    return plan


def _flag_days(paths: list[Path], plan: conditions.DayPlan) -> None:
    """Record the day's condition in the sidecar of each day piece bought without one (streamed just now)."""
    for path in paths:
        sidecar = read_sidecar(path) or {}
        day = dt.date.fromisoformat(sidecar.get("request", {}).get("start", "1970-01-01")[:10])
        if "condition" not in sidecar and day in plan.flags:
            write_json_atomic(sidecar_path(path), {**sidecar, **plan.flags[day]})


def _land_batches(piece: RawRequest, ctx, progress, quality: conditions.DayPlan | None) -> None:
    """Land the missing runs of `piece` through batch jobs when they are big enough (or source.mode=batch)."""
    source, data_dir = ctx.source, Path(ctx.cfg.data_dir)
    missing = list(plan_days(data_dir, piece).missing)
    if not wants_batch(source, missing, _policy(source)):
        return
    for run in missing:
        label = f"batch {run.symbol}"
        task = progress.add_task(label, total=None, unit="bytes")
        fetch_batch(run, data_dir, ctx.db, ctx.run.id, source, _policy(source),
                    on_status=lambda text, task=task, label=label: progress.update(
                        task, description=f"{label} ({text})"),
                    flags=quality.flags if quality is not None else {})
        progress.update(task, visible=False)


def _land_days(bars: RawRequest, ctx, progress, quotes: dict[RawRequest, float], landing: Landing) -> list[Path]:
    """The window's bars from their day pieces (bought where missing); one raw_files entry for all of them."""
    source = ctx.source
    label = f"download {bars.symbol}"
    task = progress.add_task(label, total=None, unit="bytes")
    try:
        results = fetch_days(
            bars, Path(ctx.cfg.data_dir), max_cost_usd=source.max_cost_usd, max_retries=source.max_retries,
            backoff_seconds=source.backoff_seconds, timeouts=timeouts(source), gateway=source.gateway,
            on_bytes=lambda n: progress.update(task, completed=n),
            on_status=lambda text: progress.update(task, description=f"{label} ({text})" if text else label),
            quotes=quotes,
        )
    except BaseException as exc:
        if landing.retries:
            with contextlib.suppress(AttributeError):
                exc.retries = landing.retries + getattr(exc, "retries", 0)  # type: ignore[attr-defined]
        raise
    progress.update(task, visible=False)
    bought = [r for r in results if not r.reused]
    landing.retries += max((r.retries for r in bought), default=0)
    landing.trim = True  # whole days serve a window: their records outside it are counted, not quarantined
    costs = [r.cost_usd for r in results]
    landing.raw_files.append({
        "path": str(days_dir(Path(ctx.cfg.data_dir), bars)),
        "sha256": hashlib.sha256("".join(r.sha256 for r in results).encode()).hexdigest(),
        "reused": not bought,
        "bytes": sum(r.bytes for r in results),
        "cost_usd": None if None in costs else round(sum(costs), 6),
        "days": len(results),
        "days_bought": len(bought),
        "first": results[0].path.name if results else None,
        "last": results[-1].path.name if results else None,
    })
    return [r.path for r in results]


def _land(item: Planned, ctx, progress, quotes: dict[RawRequest, float], landing: Landing) -> FetchResult:
    source = ctx.source
    label = f"download {item.label()} {item.req.symbol}" if item.kind != BARS else f"download {item.req.symbol}"
    task = progress.add_task(label, total=None, unit="bytes")
    try:
        result = fetch_raw(
            item.req, Path(ctx.cfg.data_dir), max_cost_usd=source.max_cost_usd, max_retries=source.max_retries,
            backoff_seconds=source.backoff_seconds, timeouts=timeouts(source), gateway=source.gateway,
            on_bytes=lambda n: progress.update(task, completed=n),
            on_status=lambda text: progress.update(task, description=f"{label} ({text})" if text else label),
            quote=quotes.get(item.req),
        )
    except BaseException as exc:
        if landing.retries:
            with contextlib.suppress(AttributeError):
                exc.retries = landing.retries + getattr(exc, "retries", 0)  # type: ignore[attr-defined]
        raise
    progress.update(task, visible=False)
    landing.retries += result.retries
    entry = {"path": str(result.path), "sha256": result.sha256, "reused": result.reused, "bytes": result.bytes,
             "cost_usd": result.cost_usd}
    if item.kind != BARS:
        entry["kind"] = item.kind
    landing.raw_files.append(entry)
    return result


def _has_key() -> bool:
    return bool(os.environ.get(API_KEY_ENV, "").strip())


def available_end(source: DatabentoSource, dataset: str, schema: str) -> datetime:
    """Where `dataset`'s `schema` ends at Databento (exclusive): the schema's own range from
    metadata.get_dataset_range, else the dataset's."""
    answer = get_dataset_range(historical(source.gateway), dataset, _policy(source))
    ranges = answer.get("schema")
    own = ranges.get(schema) if isinstance(ranges, dict) else None
    text = own["end"] if isinstance(own, dict) and isinstance(own.get("end"), str) else answer["end"]
    try:
        return parse_iso_ns(text)
    except ValueError:
        raise EngineError(f"Databento's metadata.get_dataset_range gave {dataset} the end {text!r}, not a time",
                          "try again later; if it persists contact support@databento.com") from None


def parse_iso_ns(text: str) -> datetime:
    """An ISO-8601 UTC time as Databento writes it (`2025-12-09T22:00:00.000000000Z`: nanoseconds, cut to
    microseconds)."""
    head, dot, tail = text.strip().removesuffix("Z").partition(".")
    digits = "".join(ch for ch in tail if ch.isdigit())
    zone = tail[len(digits):]
    value = datetime.fromisoformat(head + (f".{digits[:6]}" if dot and digits else "") + zone)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
