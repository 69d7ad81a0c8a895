"""Shared test fixtures: real DBN fixture files, scratch SQLite and PostgreSQL databases."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DBN = Path(os.environ.get("ENGINE_DBN_FIXTURES", REPO.parent / "shared" / "fixtures" / "dbn"))


@pytest.fixture(scope="session")
def dbn_fixtures() -> Path:
    """The folder of real Databento files in ../shared/fixtures/dbn (skips when it is absent)."""
    if not SHARED_DBN.is_dir():
        pytest.skip(f"real DBN fixtures not found at {SHARED_DBN}")
    return SHARED_DBN
