"""Schema migrations: alembic, with pgqueue's own version table and branch label."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from typing import TYPE_CHECKING, Any

import psycopg

from ._connect import resolve_dsn
from .errors import translate

# alembic and SQLAlchemy (with mako and pygments) take most of a second to
# import; they are imported by the functions below, when a migration runs, so
# `import pgqueue` in an application, a worker or the CLI does not pay for it.
if TYPE_CHECKING:
    import sqlalchemy
    from alembic.config import Config

# Alembic keeps the running command's context in module globals (alembic.op,
# alembic.context), so two commands in one process must not overlap; separate
# processes are serialised by the advisory lock in migrations/env.py.
_ALEMBIC_LOCK = threading.Lock()

VERSION_TABLE = "pgqueue_alembic_version"
VERSION_SCHEMA = "pgqueue"
BRANCH = "pgqueue"


def alembic_config(connection: sqlalchemy.Connection | None = None) -> Config:
    """An alembic configuration pointing at pgqueue's migrations. With a
    ``connection`` the migrations run on it (inside its transaction)."""
    from alembic.config import Config

    location = str(resources.files("pgqueue.migrations"))
    cfg = Config()
    cfg.set_main_option("script_location", location)
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("version_locations", f"{location}/versions")
    cfg.attributes["connection"] = connection
    return cfg


@contextmanager
def _connection(dsn: str | None) -> Iterator[sqlalchemy.Connection]:
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    conninfo = resolve_dsn(dsn)

    def connect() -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(conninfo, connect_timeout=10)
        except psycopg.Error as exc:
            raise translate(exc) from exc

    engine = sqlalchemy.create_engine("postgresql+psycopg://", creator=connect, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            yield conn
    finally:
        engine.dispose()


def upgrade(dsn: str | None = None, revision: str = "heads") -> None:
    """Bring the pgqueue schema up to ``revision`` (default: the latest)."""
    from alembic import command

    with _ALEMBIC_LOCK, _connection(dsn) as conn:
        command.upgrade(alembic_config(conn), revision)


def downgrade(dsn: str | None = None, revision: str = "-1") -> None:
    """Step the pgqueue schema down to ``revision`` (``-1``: one step; ``base``: none)."""
    from alembic import command

    with _ALEMBIC_LOCK, _connection(dsn) as conn:
        command.downgrade(alembic_config(conn), revision)


def current_revision(dsn: str | None = None) -> str | None:
    """The revision the database is at, or None if pgqueue was never installed."""
    from alembic.runtime.migration import MigrationContext

    with _connection(dsn) as conn:
        ctx = MigrationContext.configure(
            conn, opts={"version_table": VERSION_TABLE, "version_table_schema": VERSION_SCHEMA}
        )
        return ctx.get_current_revision()


def head_revision() -> str:
    """The latest revision shipped with this version of pgqueue."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head
