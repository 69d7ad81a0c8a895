"""Stage registry: a stage is one module with `run(ctx) -> dict` plus one line here.

A stage module that also defines `chunk_settings(ctx) -> dict` runs chunk by chunk under `window.chunk`.
"""

from types import ModuleType

from engine.stages import chart, detect, ingest, parity, registry

STAGES: dict[str, ModuleType] = {
    "registry": registry,
    "ingest": ingest,
    "detect": detect,
    "parity": parity,
    "chart": chart,
}
