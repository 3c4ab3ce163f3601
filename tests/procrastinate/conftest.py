"""Databases for the bridge's tests: pgqueue migrated and procrastinate's
schema applied (a session template, cloned per test), and the same with the
bridge installed."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest

from tests.conftest import create_database, drop_database, scratch_database

procrastinate = pytest.importorskip("procrastinate")


def apply_procrastinate_schema(dsn: str) -> None:
    from procrastinate.schema import SchemaManager

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SchemaManager.get_schema())


@contextmanager
def _template(
    pg_server: str, base: str, prefix: str, prepare: Callable[[str], None]
) -> Iterator[str]:
    """A session template: ``base`` cloned and prepared; yields its name."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    dsn = create_database(pg_server, name, template=base)
    try:
        prepare(dsn)
        yield name
    finally:
        drop_database(pg_server, name)


@pytest.fixture(scope="session")
def procrastinate_template(pg_server: str, template_db: str) -> Iterator[str]:
    """A database cloned from the migrated template, with procrastinate's schema."""
    with _template(pg_server, template_db, "pgqueue_ptpl", apply_procrastinate_schema) as name:
        yield name


@pytest.fixture
def procrastinate_dsn(pg_server: str, procrastinate_template: str) -> Iterator[str]:
    """A fresh database: pgqueue migrated, procrastinate's schema, no bridge."""
    with scratch_database(pg_server, "pgqueue_p", template=procrastinate_template) as dsn:
        yield dsn


@pytest.fixture(scope="session")
def bridged_template(pg_server: str, procrastinate_template: str) -> Iterator[str]:
    """The procrastinate template with the bridge installed (its SQL run as
    `pgqueue procrastinate install` runs it)."""
    from importlib import resources

    def install(dsn: str) -> None:
        bridge = resources.files("pgqueue.sql").joinpath("procrastinate.sql").read_text()
        with psycopg.connect(dsn) as conn:
            conn.execute(bridge)  # type: ignore[arg-type]

    with _template(pg_server, procrastinate_template, "pgqueue_btpl", install) as name:
        yield name


@pytest.fixture
def bridged_db(pg_server: str, bridged_template: str) -> Iterator[str]:
    """A fresh database: pgqueue migrated, procrastinate's schema, the bridge."""
    with scratch_database(pg_server, "pgqueue_b", template=bridged_template) as dsn:
        yield dsn


@pytest.fixture
async def bridged_dsn(procrastinate_dsn: str) -> str:
    """:func:`procrastinate_dsn` with the bridge installed."""
    from pgqueue.procrastinate import _install

    async with await psycopg.AsyncConnection.connect(procrastinate_dsn, autocommit=True) as conn:
        await _install.install(conn)
    return procrastinate_dsn


@pytest.fixture
async def app(bridged_dsn: str) -> AsyncIterator[Any]:
    """An open procrastinate App on the bridged database (register tasks in the test)."""
    from procrastinate import App, PsycopgConnector

    application = App(
        connector=PsycopgConnector(conninfo=bridged_dsn, min_size=1, max_size=4, timeout=10)
    )
    async with application.open_async():
        yield application


async def run_worker(app: Any, **options: Any) -> None:
    """Run a worker until the queues are empty (bounded, never a speed check)."""
    settings: dict[str, Any] = {
        "wait": False,
        "install_signal_handlers": False,
        "listen_notify": False,
        "fetch_job_polling_interval": 0.1,
        **options,
    }
    await asyncio.wait_for(app.run_worker_async(**settings), 30)
