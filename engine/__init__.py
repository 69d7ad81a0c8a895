"""Futures market-data engine: Databento 1-minute bars, clean ingest, triangle detection.

``from engine import read_bars, read_events`` reads the data back (engine/read.py, imported on first use so that
``python -m engine --help`` stays fast).
"""

__all__ = ["read_bars", "read_events"]


def __getattr__(name: str):
    if name in __all__:
        from engine import read

        return getattr(read, name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
