"""Alembic environment: the engine passes a live connection; the CLI passes a URL.

CLI use: `alembic -x db_url=sqlite:///data/market.sqlite upgrade head` (or set ENGINE_DB_URL).
"""

import os

from alembic import context

from engine.db.schema import metadata


def run_with(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    run_with(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("db_url") or os.environ.get("ENGINE_DB_URL")
    if not url:
        raise SystemExit("alembic: pass -x db_url=<SQLAlchemy URL> or set ENGINE_DB_URL")
    from engine.db.connect import create_db_engine

    with create_db_engine(url).connect() as conn:
        run_with(conn)
        conn.commit()
