"""Stage `registry`: make sure the seed symbols exist, show the registry, resolve the job's symbol."""

from rich.table import Table

from engine.console import console
from engine.context import StageContext
from engine.db import registry
from engine.symbols import seed_rows


def run(ctx: StageContext) -> dict:
    added = registry.insert_missing(ctx.db, seed_rows(ctx.cfg.registry.defaults, ctx.cfg.registry.seed))
    rows = registry.all_rows(ctx.db)
    table = Table(title="symbol_registry", title_justify="left")
    for column in ("internal_symbol", "dataset", "root", "roll_rule", "rank", "schema", "stype_in", "is_active"):
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(row[column.header]) for column in table.columns))
    console.print(table)
    symbol = ctx.symbol
    return {
        "seeded": added,
        "registered": len(rows),
        "symbol": symbol.internal_symbol,
        "databento_symbol": symbol.continuous,
        "resolved_from": symbol.origin,
    }
