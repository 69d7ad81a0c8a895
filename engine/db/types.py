"""Timestamps as the databases store them: a column type that behaves the same on SQLite and PostgreSQL, and the
conversions between ns since the Unix epoch (how bars and events carry time), datetimes and SQLite's text."""

import functools
from datetime import UTC, datetime, timedelta

import numpy as np
from sqlalchemy import String
from sqlalchemy.dialects.postgresql import TIMESTAMP
from sqlalchemy.types import TypeDecorator

# SQLite has no timestamp type: store fixed-width UTC text, which sorts and compares like time.
SQLITE_TS_FORMAT = "%Y-%m-%d %H:%M:%S+00:00"
UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
NS_PER_SECOND = 1_000_000_000
_SECONDS_PER_DAY = 86_400
_SQLITE_TS_SUFFIX = np.frombuffer("+00:00".encode("utf-32-le"), dtype=np.uint32)


class UtcTimestamp(TypeDecorator):
    """Timezone-aware UTC instant: TIMESTAMPTZ on PostgreSQL, 'YYYY-MM-DD HH:MM:SS+00:00' on SQLite."""

    impl = String(25)
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name == "postgresql":
            return dialect.type_descriptor(TIMESTAMP(timezone=True))
        return dialect.type_descriptor(String(25))

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: engine timestamps are timezone-aware UTC")
        if dialect.name == "postgresql":
            return value
        return value.astimezone(UTC).strftime(SQLITE_TS_FORMAT)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        return value.astimezone(UTC)


def datetime_to_ns(value: datetime) -> int:
    """A timezone-aware datetime -> ns since the Unix epoch (datetimes hold whole microseconds)."""
    return (value - UNIX_EPOCH) // timedelta(microseconds=1) * 1000


def ns_to_datetime(ns: int, *, ceil: bool = False) -> datetime:
    """ns since the Unix epoch -> UTC datetime, floored (or with ``ceil``, rounded up) to the microsecond."""
    us = -(-int(ns) // 1000) if ceil else int(ns) // 1000
    return UNIX_EPOCH + timedelta(microseconds=us)


@functools.lru_cache(maxsize=1)
def _time_of_day_codes() -> np.ndarray:
    """'HH:MM:SS' for every second of a day, as UTF-32 code points, shape (86400, 8)."""
    seconds = np.arange(_SECONDS_PER_DAY, dtype=np.int64).astype("datetime64[s]")
    text = np.datetime_as_string(seconds, unit="s").astype("<U19")
    return text.view(np.uint32).reshape(-1, 19)[:, 11:19].copy()


def sqlite_ts_text(ts_ns: np.ndarray) -> np.ndarray:
    """ns since the epoch -> '<U25' 'YYYY-MM-DD HH:MM:SS+00:00' (floored to the second), the SQLite format.

    Vectorised: dates are formatted once per distinct day and times of day come from a lookup table.
    """
    ts_ns = np.asarray(ts_ns, dtype=np.int64)
    if len(ts_ns) == 0:
        return np.empty(0, dtype="<U25")
    if (ts_ns == np.iinfo(np.int64).min).any():
        raise ValueError("ts of -2**63 (NaT) cannot be stored")
    secs = ts_ns // NS_PER_SECOND
    days, second_of_day = np.divmod(secs, _SECONDS_PER_DAY)
    unique_days, day_index = np.unique(days, return_inverse=True)
    # int64 ns always lies in years 1677..2262, so every date is exactly 10 characters.
    day_text = np.datetime_as_string(unique_days.astype("datetime64[D]"), unit="D").astype("<U10")
    out = np.empty((len(ts_ns), 25), dtype=np.uint32)
    # np.take is much faster than fancy indexing for gathering rows.
    out[:, :10] = np.take(day_text.view(np.uint32).reshape(-1, 10), day_index.reshape(-1), axis=0)
    out[:, 10] = ord(" ")
    out[:, 11:19] = np.take(_time_of_day_codes(), second_of_day, axis=0)
    out[:, 19:] = _SQLITE_TS_SUFFIX
    return out.view("<U25").reshape(-1)
