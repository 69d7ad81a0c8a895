"""Sources land raw DBN files; the ingest stage decodes, validates and writes them the same way.

A source is one module with `acquire(ctx, progress) -> Landing`, one line in SOURCES and one YAML file
in conf/source/.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Landing:
    paths: list[Path]
    retries: int = 0
    raw_files: list[dict] = field(default_factory=list)  # [{path, sha256, reused, ...}] for the run log


SOURCES: dict[str, str] = {
    "synthetic": "engine.sources.synthetic",
    "dbn_file": "engine.sources.dbn",
    "databento": "engine.sources.databento_api",
}


def acquire(name: str, ctx, progress) -> Landing:
    """Land the raw files for the job's symbol and window with the named source (imported on use)."""
    return importlib.import_module(SOURCES[name]).acquire(ctx, progress)
