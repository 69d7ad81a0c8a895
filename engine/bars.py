"""The in-memory bar record shared by sources, validation and writers, its prices, and why a bar is rejected."""

import numpy as np

# One 1-minute bar as decoded from DBN: prices stay fixed-point integers (1e-9 units) until validated.
RAW_BAR_DTYPE = np.dtype(
    [
        ("ts", "i8"),  # bar open time, ns since the Unix epoch, UTC
        ("instrument_id", "u4"),
        ("open", "i8"),
        ("high", "i8"),
        ("low", "i8"),
        ("close", "i8"),
        ("volume", "u8"),
        ("raw_symbol", "S16"),  # the contract (e.g. b"ESU4") as the inputs name it; b"" where they do not
    ]
)

PRICE_SCALE = 1_000_000_000
NS_PER_MINUTE = 60_000_000_000


# Why a bar is rejected, in the order validation checks (``engine.validate``); the quarantine table stores them.
REASONS = (
    "undef_price",
    "non_positive_price",
    "price_not_representable",
    "ohlc_inconsistent",
    "negative_volume",
    "ts_not_on_minute",
    "ts_outside_window",
    "off_tick",
    "duplicate_ts",
)


def to_prices(raw: np.ndarray) -> np.ndarray:
    """Fixed-point (1e-9) int64 prices as float64. Exact round trip for representable prices
    (``engine.validate.prices_representable``)."""
    return np.asarray(raw, dtype=np.int64) / PRICE_SCALE
