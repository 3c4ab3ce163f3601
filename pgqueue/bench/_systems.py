"""The job queues ``pgqueue bench`` compares, behind one small interface.

Each system gets its own scratch database, installs its own schema there, and
is measured the same way: a client in the bench process enqueues (one job per
call, then in chunks), and real worker *processes* drain a backlog of no-op
jobs, timed inside the workers by :mod:`pgqueue.bench._probe`.

pgqueue's workers are ``pgqueue worker`` processes on their default loop
(uvloop when installed, as it is with pgqueue); the clients run on the bench
process's asyncio loop, the same for every system.

Peers (procrastinate, PgQueuer) are optional: install them with
``pip install 'pgqueue[bench]'``. Each runs with the settings its own
documentation recommends for throughput, and again at its defaults:

- PgQueuer: its ``pgq run`` path (uvloop, one asyncpg connection per
  QueueManager, as its performance guide recommends), ``batch_size=10``
  (default) and ``batch_size=100``; tables stay durable (logged), like pgqueue's.
- procrastinate: ``PsycopgConnector``, worker ``concurrency=1`` (default) and
  ``concurrency=100``; finished jobs kept (its default, like pgqueue).
- procrastinate + bridge: the same, in a database where pgqueue's schema and
  the procrastinate bridge (``pgqueue procrastinate install``) are installed
  too, and with the worker's app given to :func:`pgqueue.procrastinate.attach`:
  every defer, fetch and finish also moves the job's mirror in pgqueue.jobs,
  so its rows divided by procrastinate's are the bridge's cost.

``python -m pgqueue.bench.peer {procrastinate,pgqueuer} ...`` runs a peer's
bench worker process (:func:`main`); ``procrastinate --bridge`` attaches the
bridge.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import importlib.util
import os
import sys
from dataclasses import dataclass
from typing import Any, LiteralString

import psycopg

from .._queue import Queue
from ._app import BENCH_QUEUE
from ._app import noop as pgqueue_noop

ENQUEUE_CHUNK = 1000


@dataclass(frozen=True)
class Config:
    """One way of running a system's worker."""

    label: str
    options: tuple[str, ...]


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


class Client:
    """Enqueues jobs into one system, from the bench process."""

    async def enqueue_one(self, sample: int | None = None) -> None:
        raise NotImplementedError

    async def enqueue_many(self, n: int) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class System:
    name = ""
    distribution = ""
    modules: tuple[str, ...] = ()
    configs: tuple[Config, ...] = ()
    job_tables: LiteralString = ""  # truncated between runs
    finished_sql: LiteralString = ""  # count of jobs that finished successfully

    def installed(self) -> bool:
        return all(importlib.util.find_spec(m) is not None for m in self.modules)

    def version(self) -> str:
        return _version(self.distribution)

    async def setup(self, dsn: str) -> None:
        raise NotImplementedError

    async def client(self, dsn: str) -> Client:
        raise NotImplementedError

    def worker_command(self, config: Config, *, drain: bool) -> list[str]:
        raise NotImplementedError

    def reset(self, dsn: str) -> None:
        """Empty the job tables, so every run starts from the same state."""
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"TRUNCATE {self.job_tables} CASCADE")

    def analyze(self, dsn: str) -> None:
        """Fresh statistics after a fill, as a long-lived table would have."""
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"ANALYZE {self.job_tables}")

    def finished(self, dsn: str) -> int:
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute(self.finished_sql).fetchone()
        return int(row[0]) if row else 0


# -- pgqueue -------------------------------------------------------------------------------


class _PgqueueClient(Client):
    def __init__(self, dsn: str) -> None:
        self.queue = Queue(dsn)
        self.queue.task(queue=BENCH_QUEUE)(pgqueue_noop.fn)

    async def enqueue_one(self, sample: int | None = None) -> None:
        args = {} if sample is None else {"sample": sample}
        await self.queue.enqueue("noop", args)

    async def enqueue_many(self, n: int) -> None:
        for offset in range(0, n, ENQUEUE_CHUNK):
            await self.queue.enqueue_many("noop", [{}] * min(ENQUEUE_CHUNK, n - offset))

    async def close(self) -> None:
        await self.queue.close()


class Pgqueue(System):
    name = "pgqueue"
    distribution = "pgqueue"
    modules = ("pgqueue",)
    configs = (
        Config("concurrency 100", ("--concurrency", "100")),
        Config("defaults: concurrency 10", ()),
    )
    job_tables = "pgqueue.jobs, pgqueue.attempts"
    finished_sql = "SELECT count(*) FROM pgqueue.jobs WHERE status = 'completed'"

    async def setup(self, dsn: str) -> None:
        from .. import _migrate

        await asyncio.to_thread(_migrate.upgrade, dsn)

    async def client(self, dsn: str) -> Client:
        return _PgqueueClient(dsn)

    def worker_command(self, config: Config, *, drain: bool) -> list[str]:
        command = [sys.executable, "-m", "pgqueue.cli", "worker"]
        command += ["--app", "pgqueue.bench._app:queue", "--queues", BENCH_QUEUE]
        command += list(config.options)
        # An idle worker must be woken by NOTIFY, not by a lucky poll.
        return command + (["--until-idle"] if drain else ["--poll-interval", "5"])


# -- procrastinate -------------------------------------------------------------------------


def _procrastinate_app(dsn: str) -> Any:
    import procrastinate

    from . import _probe

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))

    @app.task(name="noop")  # type: ignore[untyped-decorator]
    async def noop(sample: int | None = None) -> None:
        _probe.job(sample)

    return app


class _ProcrastinateClient(Client):
    def __init__(self, app: Any) -> None:
        self.app = app
        self.task = app.tasks["noop"]

    async def enqueue_one(self, sample: int | None = None) -> None:
        if sample is None:
            await self.task.defer_async()
        else:
            await self.task.defer_async(sample=sample)

    async def enqueue_many(self, n: int) -> None:
        for offset in range(0, n, ENQUEUE_CHUNK):
            await self.task.batch_defer_async(*[{}] * min(ENQUEUE_CHUNK, n - offset))

    async def close(self) -> None:
        await self.app.close_async()


class Procrastinate(System):
    name = "procrastinate"
    distribution = "procrastinate"
    modules = ("procrastinate",)
    configs = (
        Config("concurrency 100", ("--concurrency", "100")),
        Config("defaults: concurrency 1", ("--concurrency", "1")),
    )
    job_tables = "procrastinate_jobs, procrastinate_events"
    finished_sql = "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"

    async def setup(self, dsn: str) -> None:
        app = _procrastinate_app(dsn)
        async with app.open_async():
            await app.schema_manager.apply_schema_async()

    async def client(self, dsn: str) -> Client:
        app = _procrastinate_app(dsn)
        await app.open_async()
        return _ProcrastinateClient(app)

    def worker_command(self, config: Config, *, drain: bool) -> list[str]:
        command = [sys.executable, "-m", "pgqueue.bench.peer", "procrastinate"]
        return command + list(config.options) + (["--drain"] if drain else [])


class ProcrastinateBridge(Procrastinate):
    """procrastinate with pgqueue's bridge: the same client (procrastinate's own
    defer, which the bridge's triggers mirror), worker settings and task, and
    the worker's app attached (the middleware; no stalled-worker recovery,
    whose periodic job would be one more job in the drain)."""

    name = "procrastinate + bridge"
    job_tables = (
        "procrastinate_jobs, procrastinate_events, pgqueue.jobs, pgqueue.attempts,"
        " pgqueue_procrastinate.outcomes, pgqueue_procrastinate.errors"
    )
    # A job counts once procrastinate finished it and its mirror completed:
    # the triggers swallow their errors, and a mirror left behind is no bridge.
    finished_sql = (
        "SELECT LEAST("
        "(SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'),"
        " (SELECT count(*) FROM pgqueue.jobs"
        " WHERE executor = 'procrastinate' AND status = 'completed'))"
    )

    async def setup(self, dsn: str) -> None:
        from .. import _connect, _migrate
        from ..procrastinate import _install

        await super().setup(dsn)
        await asyncio.to_thread(_migrate.upgrade, dsn)
        async with await _connect.connect(dsn) as conn:
            await _install.install(conn)

    def worker_command(self, config: Config, *, drain: bool) -> list[str]:
        return [*super().worker_command(config, drain=drain), "--bridge"]


async def _procrastinate_worker(dsn: str, concurrency: int, drain: bool, bridge: bool) -> None:
    app = _procrastinate_app(dsn)
    if bridge:
        from ..procrastinate import attach

        attach(app, stalled_after=0)  # 0: no recovery task
    async with app.open_async():
        # wait=False: exit once no job is left, like pgqueue's --until-idle.
        await app.run_worker_async(concurrency=concurrency, wait=not drain)


# -- PgQueuer ------------------------------------------------------------------------------


async def _asyncpg_connect(dsn: str) -> Any:
    """asyncpg takes URLs or keywords, not libpq key=value strings."""
    import asyncpg
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(dsn)
    names = {"host": "host", "port": "port", "user": "user", "password": "password"}
    kwargs: dict[str, Any] = {new: params[old] for old, new in names.items() if old in params}
    if "dbname" in params:
        kwargs["database"] = params["dbname"]
    if "port" in kwargs:
        kwargs["port"] = int(kwargs["port"])
    return await asyncpg.connect(**kwargs)


class _PgqueuerClient(Client):
    def __init__(self, conn: Any) -> None:
        from pgqueuer import AsyncpgDriver, Queries

        self.conn = conn
        self.queries = Queries(AsyncpgDriver(conn))

    async def enqueue_one(self, sample: int | None = None) -> None:
        payload = None if sample is None else str(sample).encode()
        await self.queries.enqueue("noop", payload)

    async def enqueue_many(self, n: int) -> None:
        for offset in range(0, n, ENQUEUE_CHUNK):
            size = min(ENQUEUE_CHUNK, n - offset)
            await self.queries.enqueue(["noop"] * size, [None] * size, [0] * size)

    async def close(self) -> None:
        await self.conn.close()


class Pgqueuer(System):
    name = "PgQueuer"
    distribution = "pgqueuer"
    modules = ("pgqueuer", "asyncpg", "uvloop")
    configs = (
        Config("batch 100", ("--batch-size", "100")),
        Config("defaults: batch 10", ("--batch-size", "10")),
    )
    job_tables = "pgqueuer, pgqueuer_log"
    finished_sql = "SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'"

    async def setup(self, dsn: str) -> None:
        from pgqueuer import AsyncpgDriver, Queries

        conn = await _asyncpg_connect(dsn)
        try:
            await Queries(AsyncpgDriver(conn)).install()
        finally:
            await conn.close()

    async def client(self, dsn: str) -> Client:
        return _PgqueuerClient(await _asyncpg_connect(dsn))

    def worker_command(self, config: Config, *, drain: bool) -> list[str]:
        command = [sys.executable, "-m", "pgqueue.bench.peer", "pgqueuer"]
        return command + list(config.options) + (["--drain"] if drain else [])


async def _pgqueuer_worker(dsn: str, batch_size: int, drain: bool) -> None:
    from pgqueuer import AsyncpgDriver, PgQueuer
    from pgqueuer.types import QueueExecutionMode

    from . import _probe

    conn = await _asyncpg_connect(dsn)
    pgq = PgQueuer(AsyncpgDriver(conn))

    @pgq.entrypoint("noop")  # type: ignore[untyped-decorator]
    async def noop(job: Any) -> None:
        _probe.job(int(job.payload) if job.payload else None)

    mode = QueueExecutionMode.drain if drain else QueueExecutionMode.continuous
    try:
        await pgq.run(batch_size=batch_size, mode=mode)
    finally:
        await conn.close()


# The bridge right after plain procrastinate: the two rows it is read against
# are measured one after the other.
SYSTEMS: tuple[System, ...] = (Pgqueue(), Pgqueuer(), Procrastinate(), ProcrastinateBridge())


def main(argv: list[str] | None = None) -> None:
    """A peer's bench worker process (DSN in ``PGQUEUE_DSN``)."""
    parser = argparse.ArgumentParser(prog="python -m pgqueue.bench.peer")
    parser.add_argument("system", choices=["procrastinate", "pgqueuer"])
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--drain", action="store_true")
    parser.add_argument(
        "--bridge", action="store_true", help="procrastinate: attach pgqueue's bridge"
    )
    args = parser.parse_args(argv)
    if args.bridge and args.system != "procrastinate":
        parser.error("--bridge is for procrastinate")
    dsn = os.environ["PGQUEUE_DSN"]
    if args.system == "procrastinate":
        asyncio.run(_procrastinate_worker(dsn, args.concurrency, args.drain, args.bridge))
    else:
        import uvloop  # what `pgq run` uses when it is installed

        uvloop.run(_pgqueuer_worker(dsn, args.batch_size, args.drain))


if __name__ == "__main__":
    main()
