"""Which UTC days of a request are bought, by Databento's data-quality dates (issue 14 item 3).

Before anything is bought, `metadata.get_dataset_condition` (free) is asked for the request's days:

- `available`: bought;
- `degraded` (data known to have gaps or errors): bought, and flagged -- the landing's sidecar records its
  `condition` and `last_modified_date`, and so does the ingest's coverage (clean_coverage_conditions);
- `pending` (not yet there) and `missing` (not there): not bought, reported in the run's output and result, and
  not covered (no bars are landed for them, so coverage leaves their sessions out);
- a day that ends within the last 24 hours is not final yet (Databento serves it as preliminary historical data):
  bought and flagged `provisional`, like a degraded day.

A flagged landing is bought again once when Databento's `last_modified_date` for its day moves on (the day was
regenerated); an unflagged (`available`, final) landing is never bought again.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime

from engine.sources.databento_client import DayCondition, get_dataset_condition, historical
from engine.sources.databento_request import RawRequest
from engine.sources.databento_retry import RetryPolicy

log = logging.getLogger(__name__)

BOUGHT = ("available", "degraded")
#: Data younger than this is not final yet at Databento.
FINAL_AFTER = dt.timedelta(hours=24)


@dataclass
class DayPlan:
    """The request's days: what is bought (in order), what is not and why, and the flags of the bought ones."""

    buy: list[dt.date] = field(default_factory=list)
    skipped: dict[dt.date, str] = field(default_factory=dict)  # day -> pending | missing
    flags: dict[dt.date, dict] = field(default_factory=dict)  # day -> {condition, last_modified_date, provisional}

    def flagged(self, day: dt.date) -> bool:
        return flagged(self.flags.get(day))


def flagged(record: dict | None) -> bool:
    """Whether a day's flags (a plan's, or those a sidecar recorded) say degraded or provisional."""
    return bool(record) and (record.get("condition") == "degraded" or bool(record.get("provisional")))


def days_of(req: RawRequest) -> list[dt.date]:
    """The UTC days `req` touches."""
    first, last = req.start.date(), (req.end - dt.timedelta(microseconds=1)).date()
    return [first + dt.timedelta(days=n) for n in range((last - first).days + 1)]


def day_request(req: RawRequest, day: dt.date) -> RawRequest:
    """`req`'s part on UTC day `day`."""
    midnight = datetime.combine(day, dt.time(), UTC)
    return RawRequest(req.dataset, req.symbol, req.schema, req.stype_in, max(req.start, midnight),
                      min(req.end, midnight + dt.timedelta(days=1)))


def plan_days(source, req: RawRequest, policy: RetryPolicy, now: datetime | None = None) -> DayPlan:
    """Ask Databento for the condition of each day of `req` and decide (see the module docstring)."""
    days = days_of(req)
    conditions = get_dataset_condition(historical(source.gateway), req.dataset, days[0], days[-1], policy)
    return decide(req, conditions, now or datetime.now(UTC))


def decide(req: RawRequest, conditions: dict[dt.date, DayCondition], now: datetime) -> DayPlan:
    plan = DayPlan()
    for day in days_of(req):
        known = conditions.get(day)
        condition = known.condition if known is not None else "missing"  # a day Databento does not list
        if condition not in BOUGHT:
            plan.skipped[day] = condition
            continue
        plan.buy.append(day)
        modified = known.last_modified.isoformat() if known.last_modified else None
        plan.flags[day] = {"condition": condition, "last_modified_date": modified,
                           "provisional": day_request(req, day).end > now - FINAL_AFTER}
    if plan.skipped:
        log.warning("Not buying %d day(s) of %s that Databento has no data for: %s", len(plan.skipped),
                    req.describe(), ", ".join(f"{d.isoformat()} ({c})" for d, c in sorted(plan.skipped.items())))
    return plan


def needs_rebuy(recorded: dict | None, current: dict) -> bool:
    """Whether a landed day whose sidecar flags are `recorded` is bought again: it was degraded or provisional
    and Databento's last_modified_date for it has moved since (once per move)."""
    return flagged(recorded) and recorded.get("last_modified_date") != current.get("last_modified_date")


def runs(req: RawRequest, days: list[dt.date]) -> list[RawRequest]:
    """`req` cut to the consecutive runs of `days` (sorted): one request per run, clipped to `req`."""
    out: list[RawRequest] = []
    for day in sorted(days):
        piece = day_request(req, day)
        if out and out[-1].end == piece.start:
            last = out[-1]
            out[-1] = RawRequest(last.dataset, last.symbol, last.schema, last.stype_in, last.start, piece.end)
        else:
            out.append(piece)
    return out


def report(plan: DayPlan) -> list[dict]:
    """The days not bought, as entries of the ingest's raw_files (result.json and clean_ingest_runs)."""
    return [{"day": day.isoformat(), "condition": condition, "bought": False}
            for day, condition in sorted(plan.skipped.items())]
