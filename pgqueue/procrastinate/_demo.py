"""``pgqueue demo --procrastinate``: the example procrastinate app
(:mod:`pgqueue.procrastinate.example`) run by procrastinate's own worker and
followed through pgqueue."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg

from .. import _connect, _extras, _migrate
from .._demo import _describe
from .._extras import procrastinate as require
from .._job import Job
from .._queue import Queue
from .._status import JobStatus
from ..errors import ConfigurationError, PgQueueError, translate
from . import _install

APP = "pgqueue.procrastinate.example.app"
# procrastinate's CLI, as `procrastinate --app ... worker` runs it. Four jobs at
# a time; a retried job waits a second, so poll for due jobs twice a second.
WORKER_ARGS = (
    "--log-level", "info", "--app", APP,
    "worker", "--concurrency", "4", "--fetch-job-polling-interval", "0.5",
)  # fmt: skip
OWNERS = ("alice", "bob")
STOP_TIMEOUT = 30.0  # seconds the worker has to stop after SIGTERM
ONCE_TIMEOUT = 180.0  # --once gives up when the jobs have not finished by then


async def run_demo(
    *,
    dsn: str | None,
    once: bool,
    jobs: int = 12,
    host: str = "127.0.0.1",
    port: int | None = None,
) -> int:
    """Install procrastinate's schema (when missing) and the bridge, start
    ``procrastinate worker`` on the example app, defer its demo jobs
    (``jobs`` in all, most of them one batch) and print them moving, as
    pgqueue sees them. With ``once`` return when they have all finished,
    stopping the worker with SIGTERM; otherwise keep the worker until Ctrl-C.
    The status API and dashboard run on ``host:port`` (default 8000; with
    ``once`` only when a port is given). SIGTERM stops it as Ctrl-C does:
    the worker is stopped first, never left behind."""
    require()
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    terminated = False

    def terminate() -> None:
        nonlocal terminated
        terminated = True
        if main is not None:
            main.cancel()

    loop.add_signal_handler(signal.SIGTERM, terminate)
    try:
        return await _run(dsn=dsn, once=once, jobs=jobs, host=host, port=port)
    except asyncio.CancelledError:
        if not terminated:
            raise
        return 128 + signal.SIGTERM
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


async def _run(*, dsn: str | None, once: bool, jobs: int, host: str, port: int | None) -> int:
    queue = Queue(dsn)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("procrastinate").setLevel(logging.WARNING)  # "Deferred 1 job"...
    print("pgqueue demo --procrastinate")
    if port is None and not once:
        try:
            _extras.api()
            port = 8000
        except ConfigurationError as exc:
            print(f"  dashboard: off ({exc})")
    try:
        resolved = await asyncio.to_thread(lambda: queue.dsn)
        print(f"  database:  {_describe(resolved)}")
        await asyncio.to_thread(_migrate.upgrade, resolved)
        revision = await asyncio.to_thread(_migrate.current_revision, resolved)
        print(f"  schema:    pgqueue revision {revision}")
        await _install_bridge(resolved)

        from . import example

        async with contextlib.AsyncExitStack() as stack:
            if port is not None:
                await stack.enter_async_context(_serve_api(queue, host, port))
            # one transaction: all of the demo's jobs, or none
            conn = await _connect.connect(resolved, connect_timeout=10)
            async with conn, conn.transaction():
                demo = await example.defer_demo(conn, images=max(1, jobs - 3))
            print(
                f"  deferred:  {len(demo.job_ids)} procrastinate jobs for {' and '.join(OWNERS)}; "
                f"pgqueue ids {demo.job_ids[0]}..{demo.job_ids[-1]}, alice's album is "
                f"batch {demo.batch_id}"
            )
            worker = await stack.enter_async_context(_procrastinate_worker(resolved))
            print()
            return await _follow(queue, demo, worker, once=once)
    finally:
        await queue.close()


async def _install_bridge(dsn: str) -> None:
    """procrastinate's schema if the database lacks it (``procrastinate schema
    --apply`` would refuse to apply it twice), then the bridge (idempotent)."""
    from procrastinate.schema import SchemaManager

    try:
        conn = await _connect.connect(dsn, connect_timeout=10)
    except psycopg.Error as exc:
        raise translate(exc) from exc
    async with conn:
        cur = await conn.execute("SELECT to_regclass('procrastinate_jobs') IS NOT NULL")
        row = await cur.fetchone()
        if row is not None and row[0]:
            print("  procrastinate: schema present")
        else:
            async with conn.transaction():
                await conn.execute(SchemaManager.get_schema())
            print("  procrastinate: schema applied (as `procrastinate schema --apply` does)")
        version = await _install.install(conn)
    print(f"  bridge:    installed (version {version}; `pgqueue procrastinate install`)")


@contextlib.asynccontextmanager
async def _serve_api(queue: Queue, host: str, port: int) -> AsyncIterator[None]:
    """The status API and dashboard, with tokens for the admin and each owner
    (signed with PGQUEUE_API_SECRET, or a random secret for this run)."""
    service = _extras.api()
    secret = os.environ.get(service.SECRET_ENV) or secrets.token_urlsafe(32)
    settings = service.Settings(secret=secret)
    async with service.running(queue, settings, host=host, port=port, close_queue=False) as url:
        admin = service.mint_token(secret, "admin", admin=True)
        tokens = {owner: service.mint_token(secret, owner) for owner in OWNERS}
        print(f"  dashboard: {url}/#token={admin}")
        print(f"  as alice:  {url}/#token={tokens['alice']}  (her jobs only)")
        print(f"  API:       {url}/api/v1  (docs/api.md; tokens valid 24 h)")
        print(f"  admin token:      {admin}")
        for owner, token in tokens.items():
            print(f"  token for {owner!r}:{' ' * (7 - len(owner))}{token}")
        print(
            f'  try:       curl -H "Authorization: Bearer {tokens["bob"]}" {url}/api/v1/jobs/active'
        )
        yield


class _Worker:
    """The ``procrastinate worker`` subprocess and its log file."""

    def __init__(self, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.proc = proc
        self.log = log

    def tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(f"    | {line}" for line in text.splitlines()[-lines:])


@contextlib.asynccontextmanager
async def _procrastinate_worker(dsn: str) -> AsyncIterator[_Worker]:
    """``procrastinate --app pgqueue.procrastinate.example.app worker`` in a
    session of its own (Ctrl-C reaches the demo only, which then stops it with
    one SIGTERM: a second signal would stop procrastinate's worker at once)."""
    fd, name = tempfile.mkstemp(prefix="pgqueue-procrastinate-demo-", suffix=".log")
    log = Path(name)
    env = {**os.environ, "PGQUEUE_DSN": dsn, "PYTHONUNBUFFERED": "1"}
    with os.fdopen(fd, "wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "procrastinate", *WORKER_ARGS,
            env=env, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out,
            start_new_session=True,
        )  # fmt: skip
    worker = _Worker(proc, log)
    print(f"  worker:    procrastinate {' '.join(WORKER_ARGS)}  (pid {proc.pid})")
    print(f"             its log: {log}")
    try:
        yield worker
    finally:  # done, failed or interrupted (Ctrl-C): never left behind
        await _stop(worker)


async def _stop(worker: _Worker) -> None:
    proc = worker.proc
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        code = await asyncio.wait_for(asyncio.shield(proc.wait()), STOP_TIMEOUT)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await asyncio.shield(proc.wait())
        print(f"  procrastinate worker killed: it did not stop within {STOP_TIMEOUT:.0f}s")
        raise
    print(f"  procrastinate worker stopped by SIGTERM (exit status {code})")
    if code != 0:
        raise PgQueueError(f"the procrastinate worker exited with status {code} ({worker.log})")


def _line(job: Job) -> str:
    bar = "#" * (job.progress // 10) + "." * (10 - job.progress // 10)
    if job.status is JobStatus.COMPLETED:
        detail = f"result={job.result}"
    elif job.error and job.status is not JobStatus.RUNNING:
        detail = job.error.strip().splitlines()[-1][:60]
    else:
        detail = job.progress_message or ""
    attempt = f"#{job.attempts}" if job.attempts > 1 else ""
    return (
        f"  job {job.id:>4} (procrastinate {job.external_id:>4})  {job.owner or '-':<5} "
        f"{job.task:<13} {job.status.value + attempt:<13} [{bar}] {job.progress:>3}%  {detail}"
    ).rstrip()


async def _follow(queue: Queue, demo: Any, worker: _Worker, *, once: bool) -> int:
    """Print each demo job's mirror when its status or progress moves (read
    through pgqueue's Queue, as the API reads it) until they have all finished."""
    ids: list[int] = demo.job_ids
    seen: dict[int, tuple[str, int, int]] = {}
    started = time.monotonic()
    while True:
        finished = 0
        for job_id in ids:
            job = await queue.get_job(job_id)
            if job is None:
                continue
            key = (job.status.value, job.attempts, job.progress // 25)
            if seen.get(job_id) != key:
                seen[job_id] = key
                print(_line(job))
            finished += job.status.is_terminal
        if finished == len(ids):
            break
        if worker.proc.returncode is not None:
            raise PgQueueError(
                f"the procrastinate worker exited (status {worker.proc.returncode}) before the "
                f"demo jobs finished; the end of its log:\n{worker.tail()}"
            )
        if once and time.monotonic() - started > ONCE_TIMEOUT:
            raise PgQueueError(
                f"the demo jobs did not finish within {ONCE_TIMEOUT:.0f}s (`pgqueue jobs list`, "
                "`pgqueue procrastinate check`)"
            )
        await asyncio.sleep(0.2)

    elapsed = time.monotonic() - started
    reports = 0
    for job_id in ids:
        reports += len(await queue.progress_history(job_id, limit=1000))
    batch = await queue.get_batch(demo.batch_id)
    print()
    print(f"  all {len(ids)} procrastinate jobs finished in {elapsed:.1f}s, as pgqueue saw them")
    print(f"  progress history: {reports} reports, kept by pgqueue")
    if batch is not None:
        print(f"  batch {batch.id} (alice's album): {batch.status.value}, {batch.total} jobs")
    print("  see them with: pgqueue jobs list   ·   pgqueue batches list   ·   pgqueue queues")
    if once:
        return 0
    print(
        "  procrastinate's worker keeps running; defer more from another shell, with\n"
        "  PGQUEUE_DSN set to the database above, e.g.\n"
        f"    .venv/bin/procrastinate --app {APP} defer resize_image '{{\"image_id\": 42}}'\n"
        "  Ctrl-C stops it."
    )
    code = await worker.proc.wait()
    raise PgQueueError(f"the procrastinate worker exited (status {code}); its log: {worker.log}")
