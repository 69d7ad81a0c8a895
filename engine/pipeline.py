"""The pipeline: the configured stages (plugins, engine/stages/__init__.py) in order, each given the stage context.

Stages that declare `chunk_settings(ctx)` (ingest, detect) run chunk by chunk when `window.chunk` is
set; a chunk already done with the same settings is skipped unless `force=true`; the results of the chunks
run are combined with their `merge`.

A chunkable stage that also declares `lookahead_ready(ctx, through)` (detect) reads bars after its chunk
(the n bars that confirm the pivots among the chunk's last bars). When an earlier stage of the same group
writes those bars (ingest), its chunk k waits until the chunks ingested after it hold that look-ahead
(usually chunk k+1), and whatever still waits runs after the last ingest; so a chunked backfill gives the
same bars and events as one unchunked run. A chunk whose result says `lookahead_complete` false (the
data ends inside its look-ahead) is not recorded done: the next run redoes it.
"""

from __future__ import annotations

import json
from collections import deque
from datetime import datetime

from engine.console import CHUNK_LINE, chunk_lines_only, progress_bars
from engine.context import StageContext
from engine.db import chunks
from engine.provenance import sha256_text
from engine.results import ChunkedResult, StageResult
from engine.windows import Window


def run_stages(ctx: StageContext) -> None:
    stages = {name: plugin.obj for name, plugin in ctx.plugins.stages.items()}
    for group in _groups(stages):
        if hasattr(stages[group[0]], "chunk_settings") and ctx.window.chunk is not None:
            _run_chunked(ctx, {name: stages[name] for name in group})
        else:
            for name in group:
                _run(ctx, name, stages[name])


def _run(ctx: StageContext, name: str, stage) -> StageResult:
    ctx.log.info("stage %s: start", name)
    result = _checked(name, stage.run(ctx))
    ctx.run.results[name] = result
    ctx.log.info("stage %s: done", name)
    return result


def _checked(name: str, result: object) -> StageResult:
    if not isinstance(result, StageResult):
        raise TypeError(f"stage {name} returned {type(result).__name__}, not a StageResult (engine/results.py)")
    return result


def _run_chunked(ctx: StageContext, stages: dict) -> None:
    """On the console: one line per stage and chunk, and a bar over all of them with an ETA."""
    names = list(stages)
    pieces = ctx.window.chunks()
    totals = {name: ChunkedResult(chunks=len(pieces), waits_for_lookahead=hasattr(stage, "lookahead_ready"))
              for name, stage in stages.items()}
    ctx.run.results.update(totals)
    # Stages that read look-ahead bars an earlier stage of this group writes: their chunks wait in line.
    waiting: dict[str, deque[tuple[int, Window]]] = {
        name: deque() for k, name in enumerate(names) if k and hasattr(stages[name], "lookahead_ready")}
    whole = ctx.window
    ctx.log.info("%s: %d chunks of %s over %s", ", ".join(names), len(pieces), whole.chunk, whole.label)

    def chunk(name: str, number: int, piece: Window, through: datetime | None = None) -> bool:
        """Run (or skip) chunk `number` of stage `name`; False when it must wait for more chunks ingested.

        `through`: the end of the chunks the earlier stages have done so far (None: all of them).
        """
        stage, total = stages[name], totals[name]
        ctx.window = piece
        settings = sha256_text(json.dumps(stage.chunk_settings(ctx), sort_keys=True, default=str))
        symbol = ctx.symbol.internal_symbol
        label = f"{name} chunk {number}/{len(pieces)} {piece.label}"
        if not ctx.cfg.force and chunks.is_done(ctx.db, name, symbol, piece.start, piece.end, settings):
            ctx.log.info("%s skipped: done before with the same settings (force=true redoes it)", label,
                         extra=CHUNK_LINE)
            total.chunks_skipped += 1
            progress.advance(bar)
            return True
        if through is not None and not stage.lookahead_ready(ctx, through):
            return False
        progress.update(bar, description=label)
        result = _checked(name, stage.run(ctx))
        total.add(result)
        if getattr(result, "lookahead_complete", True):
            chunks.record_done(ctx.db, ctx.run.id, name, symbol, piece.start, piece.end, settings, result.as_json())
            total.chunks_done += 1
            ctx.log.info("%s done: %s", label, result.describe(), extra=CHUNK_LINE)
        else:
            total.lookahead_complete = False
            total.chunks_pending += 1
            ctx.log.warning("%s left pending, not recorded done, the next run redoes it: %s", label,
                            result.pending_reason())
        progress.advance(bar)
        return True

    with chunk_lines_only(), progress_bars() as progress:
        bar = progress.add_task(", ".join(names), total=len(pieces) * len(names), unit="chunks")
        try:
            for number, piece in enumerate(pieces, 1):
                for name in names:
                    if name in waiting:
                        waiting[name].append((number, piece))
                    else:
                        chunk(name, number, piece)
                for name, line in waiting.items():
                    while line and chunk(name, *line[0], through=piece.end):
                        line.popleft()
            for name, line in waiting.items():  # every chunk ingested: the rest reads what the table holds after it
                while line:
                    chunk(name, *line.popleft())
        finally:
            ctx.window = whole


def _groups(stages: dict) -> list[list[str]]:
    """Consecutive chunkable stages run together per chunk: [registry], [ingest, detect], [chart]."""
    groups: list[list[str]] = []
    for name, stage in stages.items():
        if groups and hasattr(stage, "chunk_settings") and hasattr(stages[groups[-1][-1]], "chunk_settings"):
            groups[-1].append(name)
        else:
            groups.append([name])
    return groups
