"""Column types that behave the same on SQLite and PostgreSQL."""

from datetime import UTC, datetime

from sqlalchemy import String
from sqlalchemy.dialects.postgresql import TIMESTAMP
from sqlalchemy.types import TypeDecorator

# SQLite has no timestamp type: store fixed-width UTC text, which sorts and compares like time.
SQLITE_TS_FORMAT = "%Y-%m-%d %H:%M:%S+00:00"


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
