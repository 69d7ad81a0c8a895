"""Futures market-data engine: Databento 1-minute bars, clean ingest, triangle detection."""
