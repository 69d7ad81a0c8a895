"""Run the packaged migrations by hand: `engine-migrate upgrade head --url <url>` (or `python -m engine.db.migrate`).

The engine upgrades to head by itself at the start of every run; this is for a DBA who wants the schema in place
(or rolled back) before any job runs. It works from an installed wheel: the scripts ship in engine/db/migrations.
"""

from __future__ import annotations

import argparse
import os
import sys

from engine.errors import EngineError

USAGE_FIX = "pass --url <SQLAlchemy URL> (e.g. sqlite:///data/market.sqlite) or set ENGINE_DB_URL"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="engine-migrate", description="Apply the engine's database migrations.")
    parser.add_argument("command", choices=["upgrade", "downgrade", "current"])
    parser.add_argument("revision", nargs="?", help="upgrade: default head; downgrade: default base")
    parser.add_argument("--url", default=os.environ.get("ENGINE_DB_URL"),
                        help="the database (default: $ENGINE_DB_URL); a password is better kept in ~/.pgpass")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> str:
    """Apply the command; returns one line: the database (password masked) and its revision before and after."""
    from sqlalchemy.exc import OperationalError

    from engine.db.connect import create_db_engine, current_revision, downgrade, head_revision, masked_url, upgrade

    if not args.url:
        raise EngineError("no database given", USAGE_FIX)
    engine = create_db_engine(args.url)
    try:
        before = current_revision(engine)
        if args.command == "upgrade":
            upgrade(engine, args.revision or "head")
        elif args.command == "downgrade":
            downgrade(engine, args.revision or "base")
        revision = current_revision(engine)
    except OperationalError as exc:
        raise EngineError(f"cannot open the database {masked_url(args.url)}: {str(exc.orig).strip()}",
                          "check --url, that the server is running and that the database exists") from None
    finally:
        engine.dispose()
    head = head_revision()
    moved = f"{before or 'empty'} -> {revision or 'empty'}" if before != revision else f"at {revision or 'empty'}"
    return f"{masked_url(args.url)}: {moved}" + (" (head)" if revision == head else f" (head is {head})")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        print(run(args))
    except EngineError as exc:
        print(f"ERROR {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
