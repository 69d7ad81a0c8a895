"""The pipeline: the configured stages, in order, each a plain function of the stage context."""

from engine.context import StageContext
from engine.stages import STAGES


def run_stages(ctx: StageContext) -> None:
    for name in ctx.cfg.stages:
        ctx.log.info("stage %s: start", name)
        ctx.run.summary[name] = STAGES[name](ctx)
        ctx.log.info("stage %s: done %s", name, ctx.run.summary[name])
