"""Stage `registry`: make sure the seed symbols exist (roots, and outright contracts such as ESU4: see
``engine.symbols``), show the registry, resolve the job's symbol."""

from dataclasses import dataclass

from rich.table import Table

from engine.console import console
from engine.context import StageContext
from engine.db import registry
from engine.results import StageResult
from engine.symbols import seed_rows


@dataclass
class RegistryResult(StageResult):
    seeded: int
    registered: int
    symbol: str
    databento_symbol: str
    resolved_from: dict[str, str]  # where each symbol field came from (registry, defaults, override)

    def describe(self) -> str:
        return (f"{self.symbol} ({self.databento_symbol}, from {self.resolved_from}); {self.registered} symbols "
                f"registered, {self.seeded} seeded now")

    def rows(self, stage: str) -> list[tuple[str, str]]:
        return []  # the symbol has its own row in the closing table


class Registry:
    """Stage `registry` (see the module docstring)."""

    def run(self, ctx: StageContext) -> RegistryResult:
        return run(ctx)


def run(ctx: StageContext) -> RegistryResult:
    added = registry.insert_missing(ctx.db, seed_rows(ctx.cfg.registry.defaults, ctx.cfg.registry.seed))
    rows = registry.all_rows(ctx.db)
    table = Table(title="symbol_registry", title_justify="left")
    for column in ("internal_symbol", "dataset", "root", "roll_rule", "rank", "schema", "stype_in", "is_active"):
        table.add_column(column)
    for row in rows:
        table.add_row(*("NULL" if row[column.header] is None else str(row[column.header]) for column in table.columns))
    console.print(table)
    symbol = ctx.symbol
    return RegistryResult(seeded=added, registered=len(rows), symbol=symbol.internal_symbol,
                          databento_symbol=symbol.databento_symbol, resolved_from=symbol.origin)
