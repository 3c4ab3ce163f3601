"""Frozen revisions: each applies the SQL file of the same name, never edited after release."""

from pathlib import Path

from alembic import op


def run_sql(sql: str) -> None:
    """Run a SQL script on the migration's connection, inside its transaction.

    It goes through the raw psycopg connection without parameters, so the script
    runs as one batch and its ``%`` characters are left alone.
    """
    op.get_bind().connection.driver_connection.execute(sql)  # type: ignore[union-attr]


def run_sql_file(name: str) -> None:
    """Run the frozen SQL file ``name`` stored beside the revisions."""
    run_sql((Path(__file__).parent / name).read_text(encoding="utf-8"))
