"""Stage registry: a stage is one module with `run(ctx) -> dict` plus one line here."""

from collections.abc import Callable

from engine.stages import ingest, registry

STAGES: dict[str, Callable] = {
    "registry": registry.run,
    "ingest": ingest.run,
}
