"""The pipeline: the configured stages in order, each a plain function of the stage context.

Stages that declare `chunk_settings(ctx)` (ingest, detect) run chunk by chunk when `window.chunk` is
set; a chunk already done with the same settings is skipped unless `force=true`.
"""

from __future__ import annotations

import json

from engine.context import StageContext
from engine.db import chunks
from engine.provenance import sha256_text
from engine.stages import STAGES


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
    pieces = ctx.window.chunks()
    totals: dict[str, dict] = {name: {"chunks_done": 0, "chunks_skipped": 0} for name in names}
    whole = ctx.window
    try:
        for number, piece in enumerate(pieces, 1):
            ctx.window = piece
            for name in names:
                settings = sha256_text(json.dumps(STAGES[name].chunk_settings(ctx), sort_keys=True, default=str))
                symbol = ctx.symbol.internal_symbol
                label = f"{name} chunk {number}/{len(pieces)} [{piece.start:%Y-%m-%d %H:%M}, {piece.end:%H:%M %d/%m})"
                if not ctx.cfg.force and chunks.is_done(ctx.db, name, symbol, piece.start, piece.end, settings):
                    ctx.log.info("%s: done before with the same settings, skipped (force=true redoes it)", label)
                    totals[name]["chunks_skipped"] += 1
                    continue
                ctx.log.info("%s", label)
                summary = STAGES[name].run(ctx)
                chunks.record_done(ctx.db, ctx.run.id, name, symbol, piece.start, piece.end, settings, summary)
                _add(totals[name], summary)
                totals[name]["chunks_done"] += 1
                ctx.run.summary[name] = totals[name]
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

