"""``pgqueue worker`` exits within ``--shutdown-grace`` + ``EXIT_MARGIN`` seconds
of SIGTERM even when something in it will not stop: asyncio.Runner would wait
for a task that swallows its cancel without limit, and Python waits for every
executor thread at exit."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

import pgqueue
from pgqueue.cli import EXIT_MARGIN

from .helpers import (
    Processes,
    TcpProxy,
    WorkerProcess,
    cli_command,
    cli_env,
    scalar,
    wait_until,
)

APP = "tests.acceptance.stubborn_app:queue"


def _start(procs: Processes, dsn: str, *extra: str, **env: str) -> WorkerProcess:
    argv = cli_command(
        "worker", "--app", APP, "--queues", "stubborn", "--shutdown-grace", "0",
        "--poll-interval", "0.2", *extra,
    )  # fmt: skip
    proc = WorkerProcess(
        f"worker{len(procs.started) + 1}", argv, cli_env(dsn, **env), procs.log_dir
    )
    procs.started.append(proc)
    proc.wait_for_log(" started: queues=")
    return proc


def _enqueue(dsn: str, task: str) -> int:
    q = pgqueue.Queue(dsn)
    q.task(name=task, queue="stubborn")(lambda ctx: None)
    return q.enqueue_sync(task, {})


def _sigterm_and_time(worker: WorkerProcess) -> tuple[int, float]:
    sent = time.monotonic()
    worker.send(signal.SIGTERM)
    try:
        code = worker.wait(timeout=EXIT_MARGIN + 10)
    except subprocess.TimeoutExpired:
        pytest.fail(f"no exit {EXIT_MARGIN + 10:.0f}s after SIGTERM:\n{worker.log()}")
    return code, time.monotonic() - sent


def _running(dsn: str, job_id: int) -> bool:
    return scalar(dsn, "SELECT status::text FROM pgqueue.jobs WHERE id = %s", [job_id]) == "running"


def test_a_job_that_swallows_its_cancel_does_not_hold_the_exit(
    db_dsn: str, procs: Processes
) -> None:
    _enqueue(db_dsn, "deaf")
    worker = _start(procs, db_dsn)
    # the body itself, not only the job's row: a task cancelled before its
    # first step never gets to swallow the cancel
    worker.wait_for_log("deaf: the body is running")
    code, took = _sigterm_and_time(worker)
    log = worker.log()
    assert code == 0, log
    assert took < EXIT_MARGIN, log
    assert "exiting without waiting for task" in log and "in deaf" in log, log


def test_a_background_loop_that_swallows_its_cancel_does_not_hold_the_exit(
    db_dsn: str, procs: Processes
) -> None:
    worker = _start(procs, db_dsn, PGQUEUE_TEST_DEAF_LOOP="1")
    code, took = _sigterm_and_time(worker)
    log = worker.log()
    assert code == 0, log
    assert took < EXIT_MARGIN, log
    assert "exiting without waiting for task pgqueue-prune" in log, log


def test_a_thread_that_never_returns_ends_in_a_stack_dump_at_the_bound(
    db_dsn: str, procs: Processes
) -> None:
    job_id = _enqueue(db_dsn, "offload")
    worker = _start(procs, db_dsn)
    # the thread itself, not only the job's row: a SIGTERM sent before the
    # thread ran stopped a worker that had nothing stuck (exit 0)
    worker.wait_for_log("offload: the thread is running")
    code, took = _sigterm_and_time(worker)
    log = worker.log()
    assert code == 1, log
    assert EXIT_MARGIN - 1 < took < EXIT_MARGIN + 3, log
    # every thread's stack, the stuck one's included
    assert "Timeout (" in log and "concurrent/futures/thread.py" in log, log
    # the worker itself had stopped cleanly: the job was handed back
    assert scalar(db_dsn, "SELECT status::text FROM pgqueue.jobs WHERE id = %s", [job_id]) == (
        "pending"
    )


def test_hand_backs_during_a_database_outage_fit_in_the_bound(
    db_dsn: str, procs: Processes, db_proxy: TcpProxy
) -> None:
    """Threads that ignore ``should_stop`` have their jobs handed back one by
    one at exit; with the database gone each try waits for a connection, and
    together they must not push the exit past the bound (the watchdog's exit
    status would then be 1)."""
    ids = [_enqueue(db_dsn, "deaf_sync") for _ in range(4)]
    worker = _start(procs, db_proxy.dsn(db_dsn), "--concurrency", "4", "--shutdown-grace", "1")
    wait_until(
        lambda: all(_running(db_dsn, job_id) for job_id in ids), timeout=30, what="4 jobs to start"
    )
    db_proxy.down()
    time.sleep(1.0)  # the worker notices: its calls start failing
    code, took = _sigterm_and_time(worker)
    log = worker.log()
    assert code == 0, log
    assert took < 1 + EXIT_MARGIN, log
    assert "not handed back before the outcome deadline" in log, log
