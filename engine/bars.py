"""The in-memory bar record shared by sources, validation and writers."""

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
    ]
)

PRICE_SCALE = 1_000_000_000
NS_PER_MINUTE = 60_000_000_000
