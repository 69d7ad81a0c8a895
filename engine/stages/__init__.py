"""Stages: plugins (engine/plugins.py) selected with `stages=[...]`, each from its YAML in conf/stages/.

A stage is a class with `run(ctx) -> StageResult` (engine/results.py). One that also has
`chunk_settings(ctx) -> dict` runs chunk by chunk under `window.chunk` (its result defines `merge`); one that
also has `lookahead_ready(ctx, through) -> bool` reads bars after its chunk (engine/pipeline.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from engine.context import StageContext
    from engine.results import StageResult


class Stage(Protocol):
    def run(self, ctx: StageContext) -> StageResult: ...
