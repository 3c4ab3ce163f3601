"""The procrastinate app the bridge's acceptance tests run in real
``procrastinate worker`` processes (``test_procrastinate_bridge.py``).

Workers load it with ``python -m procrastinate --app
tests.acceptance.procrastinate_app.app worker`` (cwd = the repository root);
its connector's conninfo comes from ``$PGQUEUE_BRIDGE_TEST_DSN``. The test
process imports it too, only for the tasks: it defers through its own
connections (``defer(..., conn=...)``) and never opens the app.

The app is bridged with :func:`pgqueue.procrastinate.attach` (the middleware,
progress written at most every 50 ms, and the periodic stalled-worker
recovery: by default every minute with a threshold so long that it never
touches a test's jobs; a test that wants it sets
``$PGQUEUE_BRIDGE_TEST_STALLED_AFTER`` and ``$PGQUEUE_BRIDGE_TEST_RECOVER_EVERY``
(a cron, with seconds as a sixth field) in a worker's environment). Workers
heartbeat every 0.5 s and poll every 0.2 s, so the tests need no long waits.

Every task body writes to ``bridge_runs`` (created by :func:`create_tables`)
on a connection of its own: one row per start (``attempt`` = procrastinate's
attempts so far + 1, the worker's ``pid``), ``ended`` set when the body ran to
its end, so a test tells from the database which process ran what, and how
often. ``bridge_flags`` holds switches the tests flip (see :func:`flaky`).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import procrastinate
import psycopg
from procrastinate import JobContext
from procrastinate.exceptions import JobAborted

import pgqueue.procrastinate as bridge

DSN_VARIABLE = "PGQUEUE_BRIDGE_TEST_DSN"
STALLED_VARIABLE = "PGQUEUE_BRIDGE_TEST_STALLED_AFTER"
RECOVER_EVERY_VARIABLE = "PGQUEUE_BRIDGE_TEST_RECOVER_EVERY"
APP_PATH = "tests.acceptance.procrastinate_app.app"

HEARTBEAT_INTERVAL = 0.5
PROGRESS_INTERVAL = 0.05
# How long a task waits for one of its progress reports to reach its mirror.
PROGRESS_LANDS_WITHIN = 20.0
STEP = 0.05  # the long tasks sleep in steps this long

TABLES_SQL = """
CREATE TABLE IF NOT EXISTS bridge_runs (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    procrastinate_id bigint NOT NULL,
    task             text NOT NULL,
    attempt          integer NOT NULL,
    pid              integer NOT NULL,
    started          timestamptz NOT NULL DEFAULT clock_timestamp(),
    ended            timestamptz
);
CREATE TABLE IF NOT EXISTS bridge_flags (
    name text PRIMARY KEY,
    fail boolean NOT NULL
);
"""


def create_tables(dsn: str) -> None:
    """Create ``bridge_runs`` and ``bridge_flags`` (idempotent)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(TABLES_SQL)


def _dsn() -> str:
    return os.environ.get(DSN_VARIABLE, "")


app = bridge.attach(
    procrastinate.App(
        connector=procrastinate.PsycopgConnector(
            conninfo=_dsn(), min_size=1, max_size=8, timeout=30
        ),
        worker_defaults={
            "update_heartbeat_interval": HEARTBEAT_INTERVAL,
            # a worker never prunes another at start-up during a test: a dead
            # worker's jobs are left to the bridge's recovery
            "stalled_worker_timeout": 600,
            "fetch_job_polling_interval": 0.2,
            "abort_job_polling_interval": 0.2,
        },
    ),
    stalled_after=float(os.environ.get(STALLED_VARIABLE, "600")),
    recover_every=os.environ.get(RECOVER_EVERY_VARIABLE, "* * * * *"),
    progress_interval=PROGRESS_INTERVAL,
)


# -- bridge_runs ---------------------------------------------------------------------------

_START = (
    "INSERT INTO bridge_runs (procrastinate_id, task, attempt, pid)"
    " VALUES (%s, %s, %s, %s) RETURNING id"
)
_END = "UPDATE bridge_runs SET ended = clock_timestamp() WHERE id = %s"
_LANDED = (
    "SELECT progress_message FROM pgqueue.jobs"
    " WHERE executor = 'procrastinate' AND external_id = %s"
)


def _attempt(context: JobContext) -> int:
    return context.job.attempts + 1


def _start_sync(context: JobContext) -> int:
    with psycopg.connect(_dsn(), autocommit=True) as conn:
        row = conn.execute(
            _START, (context.job.id, context.job.task_name, _attempt(context), os.getpid())
        ).fetchone()
    assert row is not None
    return int(row[0])


def _end_sync(run: int) -> None:
    with psycopg.connect(_dsn(), autocommit=True) as conn:
        conn.execute(_END, (run,))


async def _start_async(context: JobContext) -> int:
    async with await psycopg.AsyncConnection.connect(_dsn(), autocommit=True) as conn:
        cur = await conn.execute(
            _START, (context.job.id, context.job.task_name, _attempt(context), os.getpid())
        )
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def _end_async(run: int) -> None:
    async with await psycopg.AsyncConnection.connect(_dsn(), autocommit=True) as conn:
        await conn.execute(_END, (run,))


# -- progress that is seen before the next report ------------------------------------------
#
# bridge.progress() never blocks and coalesces reports made within
# PROGRESS_INTERVAL. The reporting tasks wait until each report is on the
# mirror before making the next, so the history a test reads is exactly the
# reports made (under any load), not a timing-dependent subset of them.


def _steps(n: int) -> list[tuple[int, str]]:
    return [(round(100 * i / n), f"step {i}/{n}") for i in range(1, n + 1)]


async def _report_async(
    conn: psycopg.AsyncConnection[Any], job_id: int, pct: int, msg: str
) -> None:
    bridge.progress(pct, msg)
    deadline = time.monotonic() + PROGRESS_LANDS_WITHIN
    while time.monotonic() < deadline:
        cur = await conn.execute(_LANDED, (job_id,))
        row = await cur.fetchone()
        if row is not None and row[0] == msg:
            return
        await asyncio.sleep(0.02)


def _report_sync(conn: psycopg.Connection[Any], job_id: int, pct: int, msg: str) -> None:
    bridge.progress(pct, msg)
    deadline = time.monotonic() + PROGRESS_LANDS_WITHIN
    while time.monotonic() < deadline:
        row = conn.execute(_LANDED, (job_id,)).fetchone()
        if row is not None and row[0] == msg:
            return
        time.sleep(0.02)


# -- tasks -----------------------------------------------------------------------------------


@app.task(name="report_async", pass_context=True)
async def report_async(context: JobContext, tag: str, n: int = 4) -> dict[str, Any]:
    """Reports progress ``n`` times (step i/n), returns a JSON result."""
    run = await _start_async(context)
    assert context.job.id is not None
    async with await psycopg.AsyncConnection.connect(_dsn(), autocommit=True) as conn:
        for pct, msg in _steps(n):
            await asyncio.sleep(0.01)
            await _report_async(conn, context.job.id, pct, msg)
    await _end_async(run)
    return {"tag": tag, "kind": "async", "steps": n, "squares": [i * i for i in range(n)]}


@app.task(name="report_sync", pass_context=True)
def report_sync(context: JobContext, tag: str, n: int = 3) -> dict[str, Any]:
    """:func:`report_async` for a sync task (run in a thread by procrastinate)."""
    run = _start_sync(context)
    assert context.job.id is not None
    with psycopg.connect(_dsn(), autocommit=True) as conn:
        for pct, msg in _steps(n):
            time.sleep(0.01)
            _report_sync(conn, context.job.id, pct, msg)
    _end_sync(run)
    return {"tag": tag, "kind": "sync", "steps": n}


@app.task(
    name="always_fails",
    pass_context=True,
    retry=procrastinate.RetryStrategy(max_attempts=2, wait=1),
)
def always_fails(context: JobContext, tag: str) -> None:
    """Raises on every attempt: 3 attempts (2 retries, 1 s apart), then failed."""
    run = _start_sync(context)
    _end_sync(run)
    raise ValueError(f"always fails: {tag} (attempt {_attempt(context)})")


@app.task(
    name="flaky",
    pass_context=True,
    retry=procrastinate.RetryStrategy(max_attempts=1, wait=1),
)
def flaky(context: JobContext, flag: str) -> dict[str, Any]:
    """Fails while ``bridge_flags`` says ``fail`` for ``flag`` (2 attempts a run)."""
    run = _start_sync(context)
    with psycopg.connect(_dsn(), autocommit=True) as conn:
        row = conn.execute("SELECT fail FROM bridge_flags WHERE name = %s", (flag,)).fetchone()
    _end_sync(run)
    if row is None or row[0]:
        raise RuntimeError(f"flag {flag} says fail (attempt {_attempt(context)})")
    return {"flag": flag, "attempt": _attempt(context)}


async def _long(context: JobContext, seconds: float, then_seconds: float | None) -> Any:
    run = await _start_async(context)
    first = context.job.attempts == 0
    duration = seconds if first or then_seconds is None else then_seconds
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        if context.should_abort():
            raise JobAborted("long: asked to abort")
        await asyncio.sleep(STEP)
    await _end_async(run)
    return {"slept": duration, "attempt": _attempt(context)}


@app.task(name="long", pass_context=True)
async def long(context: JobContext, seconds: float, then_seconds: float | None = None) -> Any:
    """Sleeps ``seconds`` in small steps (``then_seconds`` on a later attempt).
    Cancellable (an abort cancels it), and it checks ``should_abort`` too."""
    return await _long(context, seconds, then_seconds)


@app.task(
    name="long_retried",
    pass_context=True,
    retry=procrastinate.RetryStrategy(max_attempts=2, wait=0),
)
async def long_retried(
    context: JobContext, seconds: float, then_seconds: float | None = None
) -> Any:
    """:func:`long` with a retry strategy: procrastinate retries it when a
    worker's shutdown interrupts it."""
    return await _long(context, seconds, then_seconds)


@app.task(name="long_sync", pass_context=True)
def long_sync(context: JobContext, seconds: float) -> Any:
    """:func:`long` for a sync task: it can only stop by checking ``should_abort``."""
    run = _start_sync(context)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if context.should_abort():
            raise JobAborted("long_sync: asked to abort")
        time.sleep(STEP)
    _end_sync(run)
    return {"slept": seconds, "attempt": _attempt(context)}


@app.task(name="fan_out_async")
async def fan_out_async(who: str, n: int = 2) -> dict[str, Any]:
    """From inside a job, through the app's own pool (no ``conn``): a batch of
    ``n`` :func:`report_async` jobs and one more job, all owned by ``who``.
    (A task argument cannot be called ``owner``: defer() takes that one.)"""
    batch = await bridge.defer_batch_async(
        report_async, [{"tag": f"child-{i}", "n": 2} for i in range(n)], owner=who
    )
    single = await bridge.defer_async(report_async, owner=who, tag="single", n=2)
    return {"batch": batch.id, "children": batch.job_ids, "single": single}


@app.task(name="fan_out_sync")
def fan_out_sync(who: str, n: int = 2) -> dict[str, Any]:
    """:func:`fan_out_async` from a sync task (``defer_batch``/``defer``)."""
    batch = bridge.defer_batch(
        report_sync, [{"tag": f"child-{i}", "n": 2} for i in range(n)], owner=who
    )
    single = bridge.defer(report_sync, owner=who, tag="single", n=2)
    return {"batch": batch.id, "children": batch.job_ids, "single": single}
