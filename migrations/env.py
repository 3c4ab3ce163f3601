"""Alembic environment for pgqueue.

pgqueue keeps its own version table (``pgqueue.pgqueue_alembic_version``) and the
branch label ``pgqueue``, so it sits beside an application's own alembic history
without touching it. Run it with ``pgqueue migrate`` or ``pgqueue.migrate()``.
"""

from __future__ import annotations

import sqlalchemy
from alembic import context

from pgqueue._migrate import VERSION_SCHEMA, VERSION_TABLE, _connection


def run(connection: sqlalchemy.Connection) -> None:
    # One migrator at a time: a second one waits, then finds nothing to do.
    connection.exec_driver_sql("SELECT pg_advisory_xact_lock(hashtext('pgqueue.migrate'))")
    connection.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {VERSION_SCHEMA}")
    context.configure(
        connection=connection,
        version_table=VERSION_TABLE,
        version_table_schema=VERSION_SCHEMA,
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()


given = context.config.attributes.get("connection")
if given is not None:
    run(given)
else:  # invoked through the alembic command line: use PGQUEUE_DSN / DATABASE_URL
    with _connection(None) as conn:
        run(conn)
