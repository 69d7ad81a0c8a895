"""The pipeline: the configured stages in order, each a plain function of the stage context.

Stages that declare `chunk_settings(ctx)` (ingest, detect) run chunk by chunk when `window.chunk` is
set; a chunk already done with the same settings is skipped unless `force=true`.

A chunkable stage that also declares `lookahead_ready(ctx, through)` (detect) reads bars after its chunk
(the n bars that confirm the pivots among the chunk's last bars). When an earlier stage of the same group
writes those bars (ingest), its chunk k waits until the chunks ingested after it hold that look-ahead
(usually chunk k+1), and whatever still waits runs after the last ingest; so a chunked backfill gives the
same bars and events as one unchunked run. A chunk whose summary says `lookahead_complete: false` (the
data ends inside its look-ahead) is not recorded done: the next run redoes it.

Chunkable stages also declare `describe(summary) -> str`: their counts for the chunk's one console line.
"""

from __future__ import annotations

import json
from collections import deque
from datetime import datetime

from engine.console import CHUNK_LINE, chunk_lines_only, progress_bars
from engine.context import StageContext
from engine.db import chunks
from engine.provenance import sha256_text
from engine.stages import STAGES
from engine.windows import Window


def run_stages(ctx: StageContext) -> None:
    for group in _groups(ctx.cfg.stages):
        if _chunked(group[0]) and ctx.window.chunk is not None:
            _run_chunked(ctx, group)
        else:
            for name in group:
                _run(ctx, name)


def _run(ctx: StageContext, name: str) -> dict:
    ctx.log.info("stage %s: start", name)
    summary = STAGES[name].run(ctx)
    ctx.run.summary[name] = summary
    ctx.log.info("stage %s: done", name)
    return summary


def _run_chunked(ctx: StageContext, names: list[str]) -> None:
    """On the console: one line per stage and chunk, and a bar over all of them with an ETA."""
    pieces = ctx.window.chunks()
    totals: dict[str, dict] = {name: {"chunks": len(pieces), "chunks_done": 0, "chunks_skipped": 0}
                               for name in names}
    for name in names:
        if hasattr(STAGES[name], "pending_reason"):  # whether every chunk had its look-ahead, not a sum
            totals[name].update(lookahead_complete=True, chunks_pending=0)
        ctx.run.summary[name] = totals[name]
    # Stages that read look-ahead bars an earlier stage of this group writes: their chunks wait in line.
    waiting: dict[str, deque[tuple[int, Window]]] = {
        name: deque() for k, name in enumerate(names) if k and hasattr(STAGES[name], "lookahead_ready")}
    whole = ctx.window
    ctx.log.info("%s: %d chunks of %s over %s", ", ".join(names), len(pieces), whole.chunk, whole.label)

    def chunk(name: str, number: int, piece: Window, through: datetime | None = None) -> bool:
        """Run (or skip) chunk `number` of stage `name`; False when it must wait for more chunks ingested.

        `through`: the end of the chunks the earlier stages have done so far (None: all of them).
        """
        ctx.window = piece
        settings = sha256_text(json.dumps(STAGES[name].chunk_settings(ctx), sort_keys=True, default=str))
        symbol = ctx.symbol.internal_symbol
        label = f"{name} chunk {number}/{len(pieces)} {piece.label}"
        if not ctx.cfg.force and chunks.is_done(ctx.db, name, symbol, piece.start, piece.end, settings):
            ctx.log.info("%s skipped: done before with the same settings (force=true redoes it)", label,
                         extra=CHUNK_LINE)
            totals[name]["chunks_skipped"] += 1
            progress.advance(bar)
            return True
        if through is not None and not STAGES[name].lookahead_ready(ctx, through):
            return False
        progress.update(bar, description=label)
        summary = STAGES[name].run(ctx)
        total = totals[name]
        _add(total, summary)
        if summary.get("lookahead_complete", True):
            chunks.record_done(ctx.db, ctx.run.id, name, symbol, piece.start, piece.end, settings, summary)
            total["chunks_done"] += 1
            ctx.log.info("%s done: %s", label, STAGES[name].describe(summary), extra=CHUNK_LINE)
        else:
            total["lookahead_complete"] = False
            total["chunks_pending"] += 1
            ctx.log.warning("%s left pending, not recorded done, the next run redoes it: %s", label,
                            STAGES[name].pending_reason(summary))
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


def _add(total: dict, summary: dict) -> None:
    """Sum the numeric counts of chunk summaries (nested dicts such as events by direction too)."""
    for key, value in summary.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            total[key] = total.get(key, 0) + value
        elif isinstance(value, dict) and all(isinstance(v, int | float) for v in value.values()):
            _add(total.setdefault(key, {}), value)
        else:
            total.setdefault(key, value)


def _chunked(name: str) -> bool:
    return hasattr(STAGES[name], "chunk_settings")


def _groups(names: list[str]) -> list[list[str]]:
    """Consecutive chunkable stages run together per chunk: [registry], [ingest, detect], [chart]."""
    groups: list[list[str]] = []
    for name in names:
        if groups and _chunked(name) and _chunked(groups[-1][-1]):
            groups[-1].append(name)
        else:
            groups.append([name])
    return groups
