"""pgqueue.Worker run in the test's event loop against a real PostgreSQL.

Each test gets its own migrated database (the ``queue`` fixture). Workers use
short intervals so leases, heartbeats and rescues happen within a second; the
time limits below are generous upper bounds for "it happens", never speed checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import psycopg
import pytest

import pgqueue
from pgqueue import JobStatus
from pgqueue._database import WorkerDatabase

FAST: dict[str, Any] = {
    "heartbeat_interval": 0.2,
    "stale_after": 1.0,
    "poll_interval": 0.1,
    "rescue_interval": 0.2,
    "shutdown_grace": 1.0,
}

WAIT = 5.0  # upper bound for anything that should happen "soon"


@contextlib.asynccontextmanager
async def running_worker(
    queue: pgqueue.Queue, *, stop_within: float = 10.0, **settings: Any
) -> AsyncIterator[pgqueue.Worker]:
    """A worker running in the background for the duration of the block; on a
    clean exit it is stopped gracefully and must finish within ``stop_within``."""
    worker = pgqueue.Worker(queue, **{**FAST, **settings})
    runner = asyncio.create_task(worker.run(install_signal_handlers=False))
    try:
        yield worker
    except BaseException:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        raise
    worker.stop()
    done, _ = await asyncio.wait({runner}, timeout=stop_within)
    if runner not in done:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        pytest.fail(f"worker did not stop within {stop_within} s")
    runner.result()  # a crash of the worker fails the test


async def eventually(
    check: Callable[[], Awaitable[Any]], *, timeout: float = WAIT, what: str = "condition"
) -> Any:
    """Poll ``check`` until it returns something truthy; return that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


async def job(queue: pgqueue.Queue, job_id: int) -> pgqueue.Job:
    found = await queue.get_job(job_id)
    assert found is not None, f"job {job_id} vanished"
    return found


async def wait_status(
    queue: pgqueue.Queue, job_id: int, *statuses: JobStatus, timeout: float = WAIT
) -> pgqueue.Job:
    async def check() -> pgqueue.Job | None:
        current = await job(queue, job_id)
        return current if current.status in statuses else None

    return await eventually(check, timeout=timeout, what=f"job {job_id} to be {statuses}")  # type: ignore[no-any-return]


async def outcomes(queue: pgqueue.Queue, job_id: int) -> list[str]:
    return [a.outcome for a in await queue.attempts(job_id)]


async def wait_event(event: asyncio.Event | threading.Event, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not event.is_set():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def log_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "pgqueue.worker"]


async def wait_log(caplog: pytest.LogCaptureFixture, needle: str) -> str:
    async def check() -> str | None:
        return next((m for m in log_messages(caplog) if needle in m), None)

    return await eventually(check, what=f"a worker log containing {needle!r}")  # type: ignore[no-any-return]


# -- results ----------------------------------------------------------------------------------


async def test_async_and_sync_tasks_complete_with_their_results(queue: pgqueue.Queue) -> None:
    loop_thread = threading.get_ident()
    seen_threads: dict[str, tuple[int, str]] = {}

    @queue.task
    async def add(ctx: pgqueue.JobContext, a: int, b: int) -> int:
        seen_threads["async"] = (threading.get_ident(), threading.current_thread().name)
        await asyncio.sleep(0)
        return a + b

    @queue.task
    def describe(ctx: pgqueue.JobContext, name: str) -> dict[str, Any]:
        seen_threads["sync"] = (threading.get_ident(), threading.current_thread().name)
        return {"name": name, "job": ctx.job_id, "attempt": ctx.attempt, "tags": [1, None]}

    async with running_worker(queue, queues=["default"], concurrency=2):
        a = await add.enqueue(a=2, b=40)
        d = await describe.enqueue(name="x")
        assert await queue.wait(a, timeout=WAIT) == 42
        assert await queue.wait(d, timeout=WAIT) == {
            "name": "x",
            "job": d,
            "attempt": 1,
            "tags": [1, None],
        }

    assert seen_threads["async"][0] == loop_thread
    assert seen_threads["sync"][0] != loop_thread
    assert seen_threads["sync"][1].startswith("pgqueue-task")
    for job_id in (a, d):
        row = await job(queue, job_id)
        assert row.status is JobStatus.COMPLETED
        assert row.progress == 100
        assert row.attempts == 1
        assert row.completed_at is not None and row.started_at is not None
        assert row.completed_at >= row.started_at >= row.created_at
        assert row.error is None
        assert await outcomes(queue, job_id) == ["completed"]


async def test_until_idle_returns_once_all_jobs_are_done(queue: pgqueue.Queue) -> None:
    done: list[int] = []

    @queue.task
    async def work(ctx: pgqueue.JobContext, n: int) -> int:
        await asyncio.sleep(0.05)
        done.append(n)
        return n * n

    @queue.task
    def sync_work(ctx: pgqueue.JobContext, n: int) -> int:
        time.sleep(0.05)
        done.append(n)
        return n * n

    ids = [await work.enqueue(n=n) for n in range(4)]
    ids += [await sync_work.enqueue(n=n) for n in range(4, 7)]
    worker = pgqueue.Worker(queue, queues=["default"], concurrency=3, **FAST)

    await asyncio.wait_for(worker.run(install_signal_handlers=False, until_idle=True), 15)

    assert sorted(done) == list(range(7))
    assert worker.jobs_done == 7
    for n, job_id in enumerate(ids):
        row = await job(queue, job_id)
        assert row.status is JobStatus.COMPLETED, row
        assert row.result == n * n


async def test_a_task_returning_none_stores_json_null(queue: pgqueue.Queue) -> None:
    @queue.task
    async def quiet_async(ctx: pgqueue.JobContext) -> None:
        return None

    @queue.task
    def quiet_sync(ctx: pgqueue.JobContext) -> None:
        return None

    async with running_worker(queue, queues=["default"], concurrency=2):
        ids = [await quiet_async.enqueue(), await quiet_sync.enqueue(), await quiet_async.enqueue()]
        for job_id in ids:
            assert await queue.wait(job_id, timeout=WAIT) is None
    with psycopg.connect(queue.dsn, autocommit=True) as conn:
        stored = conn.execute(
            "SELECT id, result IS NULL, jsonb_typeof(result) FROM pgqueue.jobs ORDER BY id"
        ).fetchall()
    # a JSON null, not a missing result: the job did return, and returned nothing
    assert stored == [(job_id, False, "null") for job_id in ids]


# -- failures, retries and timeouts ----------------------------------------------------------


async def test_raising_task_retries_then_dead_letters(queue: pgqueue.Queue) -> None:
    attempts_seen: list[int] = []

    @queue.task(max_attempts=3, retry_delay=0.05)
    async def flaky(ctx: pgqueue.JobContext) -> None:
        attempts_seen.append(ctx.attempt)
        raise ValueError(f"bad input on attempt {ctx.attempt}")

    async with running_worker(queue, queues=["default"]):
        job_id = await flaky.enqueue()
        with pytest.raises(pgqueue.JobFailed) as info:
            await queue.wait(job_id, timeout=WAIT)

    assert info.value.status == "dead_letter"
    assert info.value.job_id == job_id
    assert "bad input on attempt 3" in (info.value.error or "")
    assert "ValueError" in (info.value.error or "")
    assert attempts_seen == [1, 2, 3]
    row = await job(queue, job_id)
    assert row.status is JobStatus.DEAD_LETTER
    assert row.attempts == 3 and row.completed_at is not None
    history = await queue.attempts(job_id)
    assert [(a.attempt, a.outcome) for a in history] == [(1, "error"), (2, "error"), (3, "error")]
    assert "bad input on attempt 1" in (history[0].error or "")


async def test_retrying_state_then_success_on_next_attempt(queue: pgqueue.Queue) -> None:
    @queue.task(max_attempts=2, retry_delay=1.5)
    def once_broken(ctx: pgqueue.JobContext) -> str:
        if ctx.attempt == 1:
            raise RuntimeError("transient")
        return f"ok on {ctx.attempt}"

    async with running_worker(queue, queues=["default"]):
        job_id = await once_broken.enqueue()
        retrying = await wait_status(queue, job_id, JobStatus.RETRYING)
        assert retrying.completed_at is None
        assert "transient" in (retrying.error or "")
        assert retrying.run_at > retrying.leased_at  # the retry is scheduled later
        assert await queue.wait(job_id, timeout=WAIT) == "ok on 2"

    assert await outcomes(queue, job_id) == ["error", "completed"]


async def test_non_retryable_error_fails_at_once(queue: pgqueue.Queue) -> None:
    calls: list[int] = []

    @queue.task(max_attempts=5, retry_delay=0.05)
    async def strict(ctx: pgqueue.JobContext) -> None:
        calls.append(ctx.attempt)
        raise pgqueue.NonRetryableError("payload is malformed")

    async with running_worker(queue, queues=["default"]):
        job_id = await strict.enqueue()
        with pytest.raises(pgqueue.JobFailed) as info:
            await queue.wait(job_id, timeout=WAIT)

    assert info.value.status == "failed"
    assert "payload is malformed" in (info.value.error or "")
    assert calls == [1]
    row = await job(queue, job_id)
    assert (row.status, row.attempts, row.max_attempts) == (JobStatus.FAILED, 1, 5)
    assert await outcomes(queue, job_id) == ["error"]


@pytest.mark.parametrize("timeout", [None, 30.0])
async def test_timeout_error_raised_by_the_task_is_an_ordinary_error(
    queue: pgqueue.Queue, timeout: float | None
) -> None:
    """A TimeoutError of the task's own (its HTTP call, say), with or without
    a task timeout that has not expired, is a retryable error, not ``timeout``."""

    @queue.task(timeout=timeout, max_attempts=2, retry_delay=0.05)
    async def calls_out(ctx: pgqueue.JobContext) -> str:
        if ctx.attempt == 1:
            raise TimeoutError("upstream did not answer")
        return "answered"

    async with running_worker(queue, queues=["default"]):
        job_id = await calls_out.enqueue()
        assert await queue.wait(job_id, timeout=WAIT) == "answered"

    history = await queue.attempts(job_id)
    assert [(a.attempt, a.outcome) for a in history] == [(1, "error"), (2, "completed")]
    assert "TimeoutError: upstream did not answer" in (history[0].error or "")
    assert "exceeded its timeout" not in (history[0].error or "")


async def test_async_timeout_on_last_attempt_ends_timeout(queue: pgqueue.Queue) -> None:
    cancelled: list[int] = []

    @queue.task(timeout=0.3, max_attempts=1)
    async def sleepy(ctx: pgqueue.JobContext) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(ctx.attempt)
            raise

    async with running_worker(queue, queues=["default"]):
        job_id = await sleepy.enqueue()
        with pytest.raises(pgqueue.JobFailed) as info:
            await queue.wait(job_id, timeout=WAIT)

    assert info.value.status == "timeout"
    assert "exceeded its timeout" in (info.value.error or "")
    assert cancelled == [1]  # the body was cancelled, not left running
    row = await job(queue, job_id)
    assert row.status is JobStatus.TIMEOUT and row.attempts == 1
    assert await outcomes(queue, job_id) == ["timeout"]


async def test_async_timeout_with_attempts_left_retries_then_ends_timeout(
    queue: pgqueue.Queue,
) -> None:
    attempts_seen: list[int] = []

    @queue.task(timeout=0.3, max_attempts=2, retry_delay=0.05)
    async def sleepy(ctx: pgqueue.JobContext) -> None:
        attempts_seen.append(ctx.attempt)
        await asyncio.sleep(30)

    async with running_worker(queue, queues=["default"]):
        job_id = await sleepy.enqueue()
        await wait_status(queue, job_id, *pgqueue.TERMINAL_STATUSES)

    row = await job(queue, job_id)
    assert row.status is JobStatus.TIMEOUT
    assert attempts_seen == [1, 2]
    history = await queue.attempts(job_id)
    assert [(a.attempt, a.outcome) for a in history] == [(1, "timeout"), (2, "timeout")]
    # attempt 1 left the job retrying (the job was not terminal in between)
    assert history[0].ended_at <= history[1].started_at
    assert "exceeded its timeout" in (row.error or "")


async def test_sync_task_is_told_to_stop_at_its_timeout(queue: pgqueue.Queue) -> None:
    reasons: list[str | None] = []
    stopped = threading.Event()

    @queue.task(timeout=0.3)
    def grinding(ctx: pgqueue.JobContext) -> str:
        deadline = time.monotonic() + 10
        while not ctx.should_stop and time.monotonic() < deadline:
            time.sleep(0.01)
        reasons.append(ctx.stop_reason)
        stopped.set()
        return "too late"

    async with running_worker(queue, queues=["default"]):
        job_id = await grinding.enqueue()
        await wait_status(queue, job_id, JobStatus.TIMEOUT)
        await wait_event(stopped, "the thread to notice the timeout")

    assert reasons == ["timeout"]
    row = await job(queue, job_id)
    assert row.status is JobStatus.TIMEOUT and row.result is None
    assert await outcomes(queue, job_id) == ["timeout"]


# -- cancellation and stale leases -----------------------------------------------------------


async def test_cancel_running_async_job_stops_the_task(queue: pgqueue.Queue) -> None:
    started = asyncio.Event()
    observed: list[tuple[bool, str | None]] = []
    stopped = asyncio.Event()

    @queue.task
    async def long(ctx: pgqueue.JobContext) -> str:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            observed.append((ctx.should_stop, ctx.stop_reason))
            stopped.set()
            raise
        return "finished"

    # slow heartbeats: the NOTIFY, not a heartbeat, must deliver the cancel
    async with running_worker(
        queue, queues=["default"], heartbeat_interval=2.0, stale_after=5.0
    ) as worker:
        job_id = await long.enqueue()
        await wait_event(started, "the task to start")
        assert await queue.cancel(job_id) is JobStatus.CANCELLED
        await wait_event(stopped, "the task to be cancelled")
        assert observed == [(True, "cancelled")]
        await eventually(lambda: _no_lease(worker, job_id), what="the lease to be dropped")
        # the worker wrote nothing after the cancel
        await asyncio.sleep(0.3)
        row = await job(queue, job_id)

    assert row.status is JobStatus.CANCELLED
    assert row.result is None
    assert await outcomes(queue, job_id) == ["cancelled"]
    with pytest.raises(pgqueue.JobFailed) as info:
        await queue.wait(job_id, timeout=1)
    assert info.value.status == "cancelled"


async def _no_lease(worker: pgqueue.Worker, job_id: int) -> bool:
    """No lease of any attempt of ``job_id`` is held (leases are keyed by
    (job id, attempt))."""
    return all(key.job_id != job_id for key in worker.keeper.leases)


async def test_cancel_running_sync_job_sets_should_stop(queue: pgqueue.Queue) -> None:
    started = threading.Event()
    reasons: list[str | None] = []

    @queue.task
    def loop(ctx: pgqueue.JobContext) -> str:
        started.set()
        deadline = time.monotonic() + 10
        while not ctx.should_stop and time.monotonic() < deadline:
            time.sleep(0.01)
        reasons.append(ctx.stop_reason)
        return "partial"

    async with running_worker(queue, queues=["default"], heartbeat_interval=2.0, stale_after=5.0):
        job_id = await loop.enqueue()
        await wait_event(started, "the task to start")
        await queue.cancel(job_id)
        await eventually(lambda: _truthy(reasons), what="the thread to see should_stop")

    assert reasons == ["cancelled"]
    row = await job(queue, job_id)
    assert row.status is JobStatus.CANCELLED and row.result is None


async def _truthy(value: Any) -> bool:
    return bool(value)


async def test_late_result_after_cancel_is_refused(
    queue: pgqueue.Queue, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pgqueue.worker")
    started = asyncio.Event()
    cancel_seen: list[str | None] = []

    @queue.task
    async def stubborn(ctx: pgqueue.JobContext) -> str:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancel_seen.append(ctx.stop_reason)  # swallow it and return anyway
        return "late result"

    async with running_worker(queue, queues=["default"]) as worker:
        job_id = await stubborn.enqueue()
        await wait_event(started, "the task to start")
        await queue.cancel(job_id)
        message = await wait_log(caplog, "discarded")
        await eventually(lambda: _no_lease(worker, job_id), what="the lease to be dropped")

    assert f"job {job_id}" in message
    assert cancel_seen and cancel_seen[0] in ("cancelled", "lost")
    row = await job(queue, job_id)
    assert row.status is JobStatus.CANCELLED
    assert row.result is None  # the late result was not applied
    assert row.progress != 100
    assert await outcomes(queue, job_id) == ["cancelled"]


async def _steal_lease(dsn: str, job_id: int) -> None:
    """Make the job's heartbeat look an hour old (as if its worker froze)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE pgqueue.jobs SET heartbeat_at = now() - interval '1 hour' WHERE id = %s",
            (job_id,),
        )


# Slow heartbeats and rescues: only the test's own rescue call steals the lease.
SLOW_LEASES = {"heartbeat_interval": 5.0, "stale_after": 11.0, "rescue_interval": 10.0}


async def test_stolen_lease_late_completion_is_refused(
    queue: pgqueue.Queue, db_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pgqueue.worker")
    started = asyncio.Event()
    release = asyncio.Event()

    @queue.task(max_attempts=1)
    async def slow(ctx: pgqueue.JobContext) -> str:
        started.set()
        await release.wait()
        return "stale result"

    async with running_worker(queue, queues=["default"], **SLOW_LEASES):
        job_id = await slow.enqueue()
        await wait_event(started, "the task to start")
        await _steal_lease(db_dsn, job_id)
        assert await queue.rescue(stale_after=0.5) == [(job_id, JobStatus.ZOMBIE)]
        release.set()
        message = await wait_log(caplog, "discarded")

    assert f"job {job_id}" in message
    row = await job(queue, job_id)
    assert row.status is JobStatus.ZOMBIE
    assert row.result is None
    assert "lost" in (row.error or "")
    assert await outcomes(queue, job_id) == ["lost"]


async def test_stolen_lease_new_attempt_wins(
    queue: pgqueue.Queue, db_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pgqueue.worker")
    first_started = asyncio.Event()
    release_first = asyncio.Event()

    @queue.task(max_attempts=2)
    async def slow(ctx: pgqueue.JobContext) -> str:
        if ctx.attempt == 1:
            first_started.set()
            await release_first.wait()
        return f"attempt {ctx.attempt}"

    async with running_worker(queue, queues=["default"], concurrency=2, **SLOW_LEASES):
        job_id = await slow.enqueue()
        await wait_event(first_started, "attempt 1 to start")
        await _steal_lease(db_dsn, job_id)
        assert await queue.rescue(stale_after=0.5) == [(job_id, JobStatus.RETRYING)]
        # attempt 2 runs and completes while attempt 1 is still stuck
        assert await queue.wait(job_id, timeout=WAIT) == "attempt 2"
        release_first.set()
        await wait_log(caplog, "discarded")

    row = await job(queue, job_id)
    assert row.status is JobStatus.COMPLETED
    assert row.result == "attempt 2"  # not overwritten by attempt 1's late result
    assert row.attempts == 2
    assert await outcomes(queue, job_id) == ["lost", "completed"]


async def test_lost_lease_is_detected_by_heartbeat_and_task_stopped(
    queue: pgqueue.Queue, db_dsn: str
) -> None:
    started = asyncio.Event()
    reasons: list[str | None] = []

    @queue.task(max_attempts=1)
    async def long(ctx: pgqueue.JobContext) -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            reasons.append(ctx.stop_reason)
            raise

    # fast heartbeats; the worker's own rescue pass must not hold the rescue lock
    async with running_worker(queue, queues=["default"], rescue_interval=10.0):
        job_id = await long.enqueue()
        await wait_event(started, "the task to start")
        # age the heartbeat and rescue in one transaction, so no heartbeat can
        # refresh the lease in between
        with psycopg.connect(db_dsn) as conn:
            conn.execute(
                "UPDATE pgqueue.jobs SET heartbeat_at = now() - interval '1 hour' WHERE id = %s",
                (job_id,),
            )
            rescued = conn.execute("SELECT * FROM pgqueue.rescue(interval '0.5 s')").fetchall()
        assert rescued == [(job_id, "zombie")]
        await eventually(lambda: _truthy(reasons), what="the task to be stopped")

    assert reasons == ["lost"]
    assert (await job(queue, job_id)).status is JobStatus.ZOMBIE


async def test_stale_attempt_ending_does_not_orphan_the_new_attempt(
    queue: pgqueue.Queue, db_dsn: str
) -> None:
    """A rescued job re-claimed by the same worker while its stale attempt is still
    running: when the stale attempt ends (result refused), the worker must keep
    the new attempt's lease, so a cancel still reaches the new attempt's task."""
    first_started = asyncio.Event()
    release_first = asyncio.Event()
    second_started = asyncio.Event()
    release_second = asyncio.Event()
    second_stopped: list[str | None] = []

    @queue.task(max_attempts=2)
    async def slow(ctx: pgqueue.JobContext) -> str:
        if ctx.attempt == 1:
            first_started.set()
            while not release_first.is_set():  # a stale body that ignores cancellation
                with contextlib.suppress(asyncio.CancelledError):
                    await release_first.wait()
            return "attempt 1"
        second_started.set()
        try:
            await release_second.wait()
        except asyncio.CancelledError:
            second_stopped.append(ctx.stop_reason)
            raise
        return "attempt 2"

    try:
        async with running_worker(queue, queues=["default"], concurrency=2, **SLOW_LEASES):
            job_id = await slow.enqueue()
            await wait_event(first_started, "attempt 1 to start")
            await _steal_lease(db_dsn, job_id)
            assert await queue.rescue(stale_after=0.5) == [(job_id, JobStatus.RETRYING)]
            await wait_event(second_started, "attempt 2 to start on the same worker")
            release_first.set()  # attempt 1 ends late; its result is refused
            await asyncio.sleep(0.5)
            # Cancelling the job must still reach attempt 2's task.
            await queue.cancel(job_id)
            await eventually(lambda: _truthy(second_stopped), timeout=3.0, what="attempt 2 stop")
    finally:
        release_first.set()
        release_second.set()
    assert second_stopped == ["cancelled"]


# -- progress ---------------------------------------------------------------------------------


async def _wait_progress(queue: pgqueue.Queue, job_id: int, pct: int) -> pgqueue.Job:
    async def check() -> pgqueue.Job | None:
        row = await job(queue, job_id)
        return row if row.progress == pct else None

    return await eventually(check, what=f"progress {pct} of job {job_id}")  # type: ignore[no-any-return]


async def test_progress_of_async_task_is_recorded_while_running(queue: pgqueue.Queue) -> None:
    step1, step2 = asyncio.Event(), asyncio.Event()

    @queue.task
    async def staged(ctx: pgqueue.JobContext) -> str:
        ctx.progress(30)
        await step1.wait()
        ctx.progress(60, "more than half")
        await step2.wait()
        return "done"

    async with running_worker(queue, queues=["default"]):
        job_id = await staged.enqueue()
        row = await _wait_progress(queue, job_id, 30)
        assert row.status is JobStatus.RUNNING
        step1.set()
        row = await _wait_progress(queue, job_id, 60)
        assert row.status is JobStatus.RUNNING
        assert row.progress_message == "more than half"
        step2.set()
        assert await queue.wait(job_id, timeout=WAIT) == "done"

    assert (await job(queue, job_id)).progress == 100


async def test_progress_of_sync_task_is_recorded(queue: pgqueue.Queue) -> None:
    step1, step2 = threading.Event(), threading.Event()

    @queue.task
    def staged(ctx: pgqueue.JobContext) -> str:
        ctx.progress(30.4, "a third")
        step1.wait(10)
        ctx.progress(250)  # clamped by the database
        step2.wait(10)
        return "done"

    try:
        async with running_worker(queue, queues=["default"]):
            job_id = await staged.enqueue()
            row = await _wait_progress(queue, job_id, 30)
            assert row.progress_message == "a third"
            step1.set()
            row = await _wait_progress(queue, job_id, 100)
            assert row.status is JobStatus.RUNNING  # 100 from the report, not completion
            step2.set()
            assert await queue.wait(job_id, timeout=WAIT) == "done"
    finally:
        step1.set()
        step2.set()


async def test_last_report_waits_for_a_progress_write_under_way(queue: pgqueue.Queue) -> None:
    """The task's one report is being written (slowly) when it returns: the
    outcome waits for that write, so the report is not refused as late."""

    @queue.task
    async def reports_once(ctx: pgqueue.JobContext) -> str:
        ctx.progress(40, "only step")
        await asyncio.sleep(0.05)  # the progress loop has taken the report by now
        return "done"

    class SlowProgress(WorkerDatabase):
        async def progress(self, *args: Any, **kwargs: Any) -> None:
            await asyncio.sleep(0.3)
            await super().progress(*args, **kwargs)

    async with running_worker(queue, queues=["default"], database=SlowProgress):
        job_id = await reports_once.enqueue()
        assert await queue.wait(job_id, timeout=WAIT) == "done"

    history = await queue.progress_history(job_id)
    assert [(p.pct, p.message) for p in history] == [(40, "only step")]


async def test_invalid_progress_fails_the_task(queue: pgqueue.Queue) -> None:
    @queue.task
    async def bad_progress(ctx: pgqueue.JobContext) -> None:
        ctx.progress(float("nan"))

    async with running_worker(queue, queues=["default"]):
        job_id = await bad_progress.enqueue()
        with pytest.raises(pgqueue.JobFailed) as info:
            await queue.wait(job_id, timeout=WAIT)
    assert "progress must be a number" in (info.value.error or "")


# -- shutdown ---------------------------------------------------------------------------------


async def test_graceful_stop_hands_back_a_long_running_job(queue: pgqueue.Queue) -> None:
    started = asyncio.Event()
    reasons: list[str | None] = []
    block = True

    @queue.task(max_attempts=1)
    async def long(ctx: pgqueue.JobContext) -> str:
        if block:
            started.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                reasons.append(ctx.stop_reason)
                raise
        return f"finished on attempt {ctx.attempt}"

    worker = pgqueue.Worker(queue, queues=["default"], **{**FAST, "shutdown_grace": 0.2})
    runner = asyncio.create_task(worker.run(install_signal_handlers=False))
    job_id = await long.enqueue()
    await wait_event(started, "the task to start")
    worker.stop()
    await asyncio.wait_for(runner, 10)

    assert reasons == ["shutdown"]
    row = await job(queue, job_id)
    assert row.status is JobStatus.PENDING
    assert row.attempts == 1
    assert row.max_attempts == 2  # the interrupted attempt is not charged
    assert row.completed_at is None
    history = await queue.attempts(job_id)
    assert [(a.attempt, a.outcome) for a in history] == [(1, "interrupted")]

    # nothing is lost: another worker picks the job up and finishes it
    block = False
    again = pgqueue.Worker(queue, queues=["default"], **FAST)
    await asyncio.wait_for(again.run(install_signal_handlers=False, until_idle=True), 10)
    row = await job(queue, job_id)
    assert row.status is JobStatus.COMPLETED
    assert row.result == "finished on attempt 2"


async def test_graceful_stop_lets_short_jobs_finish(queue: pgqueue.Queue) -> None:
    started = asyncio.Event()

    @queue.task
    async def short(ctx: pgqueue.JobContext) -> str:
        started.set()
        await asyncio.sleep(0.3)
        return "made it"

    worker = pgqueue.Worker(queue, queues=["default"], **{**FAST, "shutdown_grace": 5.0})
    runner = asyncio.create_task(worker.run(install_signal_handlers=False))
    job_id = await short.enqueue()
    await wait_event(started, "the task to start")
    worker.stop()
    await asyncio.wait_for(runner, 10)

    row = await job(queue, job_id)
    assert row.status is JobStatus.COMPLETED and row.result == "made it"
    assert await outcomes(queue, job_id) == ["completed"]


async def test_graceful_stop_releases_sync_job_that_honours_should_stop(
    queue: pgqueue.Queue,
) -> None:
    started = threading.Event()
    reasons: list[str | None] = []

    @queue.task
    def grinding(ctx: pgqueue.JobContext) -> None:
        started.set()
        deadline = time.monotonic() + 10
        while not ctx.should_stop and time.monotonic() < deadline:
            time.sleep(0.01)
        reasons.append(ctx.stop_reason)

    worker = pgqueue.Worker(queue, queues=["default"], **{**FAST, "shutdown_grace": 0.2})
    runner = asyncio.create_task(worker.run(install_signal_handlers=False))
    job_id = await grinding.enqueue()
    await wait_event(started, "the task to start")
    worker.stop()
    await asyncio.wait_for(runner, 10)

    await eventually(lambda: _truthy(reasons), what="the thread to stop")
    assert reasons == ["shutdown"]
    row = await job(queue, job_id)
    assert row.status is JobStatus.PENDING
    assert await outcomes(queue, job_id) == ["interrupted"]


# -- which jobs a worker claims ---------------------------------------------------------------


async def test_worker_claims_only_its_own_queues(queue: pgqueue.Queue) -> None:
    ran: list[str] = []

    @queue.task(queue="mine")
    async def work(ctx: pgqueue.JobContext) -> str:
        ran.append(ctx.queue)
        return ctx.queue

    mine = await work.enqueue()
    theirs = await work.options(queue="theirs").enqueue()
    worker = pgqueue.Worker(queue, queues=["mine"], **FAST)
    await asyncio.wait_for(worker.run(install_signal_handlers=False, until_idle=True), 10)

    assert ran == ["mine"]
    assert (await job(queue, mine)).status is JobStatus.COMPLETED
    other = await job(queue, theirs)
    assert (other.status, other.attempts, other.worker_id) == (JobStatus.PENDING, 0, None)


async def test_paused_queue_is_not_claimed_until_resumed(queue: pgqueue.Queue) -> None:
    @queue.task(queue="paused-q")
    async def work(ctx: pgqueue.JobContext) -> str:
        return "ran"

    await queue.pause_queue("paused-q")
    async with running_worker(queue, queues=["paused-q"]):
        job_id = await work.enqueue()
        await asyncio.sleep(1.0)  # ten poll intervals
        row = await job(queue, job_id)
        assert (row.status, row.attempts) == (JobStatus.PENDING, 0)
        await queue.resume_queue("paused-q")
        assert await queue.wait(job_id, timeout=WAIT) == "ran"


async def test_priorities_are_respected_with_concurrency_one(queue: pgqueue.Queue) -> None:
    order: list[str] = []

    @queue.task
    async def record(ctx: pgqueue.JobContext, label: str) -> None:
        order.append(label)

    await record.options(priority=0).enqueue(label="low")
    await record.options(priority=10).enqueue(label="high-1")
    await record.options(priority=5).enqueue(label="mid")
    await record.options(priority=10).enqueue(label="high-2")
    await record.options(priority=-3).enqueue(label="lowest")
    worker = pgqueue.Worker(queue, queues=["default"], concurrency=1, **FAST)
    await asyncio.wait_for(worker.run(install_signal_handlers=False, until_idle=True), 10)

    assert order == ["high-1", "high-2", "mid", "low", "lowest"]


async def test_listen_wakes_an_idle_worker(queue: pgqueue.Queue, db_dsn: str) -> None:
    @queue.task
    async def ping(ctx: pgqueue.JobContext) -> str:
        return "pong"

    dbname = psycopg.conninfo.conninfo_to_dict(db_dsn)["dbname"]

    async def listening() -> bool:
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
                " AND query LIKE 'LISTEN %%pgqueue_cancel%%' AND state = 'idle'",
                (dbname,),
            ).fetchone()
        return bool(row and row[0])

    # a 30 s poll: only a NOTIFY can make the worker claim within the test
    async with running_worker(queue, queues=["default"], poll_interval=30.0):
        await eventually(listening, what="the worker's LISTEN connection")
        await asyncio.sleep(0.5)  # let the claim that follows LISTEN find nothing
        job_id = await ping.enqueue()
        assert await queue.wait(job_id, timeout=WAIT) == "pong"


async def test_worker_leaves_jobs_of_tasks_it_does_not_register_for_a_worker_that_does(
    queue: pgqueue.Queue, db_dsn: str, conn: psycopg.Connection[Any]
) -> None:
    """During a rolling deploy an old worker must not take (and fail) a job of a
    task only the new version knows: it stays pending until a worker that
    registers the task claims it."""

    @queue.task
    async def known(ctx: pgqueue.JobContext) -> str:
        return "known"

    row = conn.execute(
        "SELECT pgqueue.enqueue('new_task', '{}'::jsonb, p_max_attempts => 3)"
    ).fetchone()
    assert row is not None
    job_id = int(row[0])
    known_id = await known.enqueue()

    async with running_worker(queue, queues=["default"]):
        assert await queue.wait(known_id, timeout=WAIT) == "known"
        await asyncio.sleep(0.5)  # several polls of the old worker
        waiting = await job(queue, job_id)
        assert (waiting.status, waiting.attempts) == (JobStatus.PENDING, 0)

    newer = pgqueue.Queue(db_dsn)

    @newer.task(name="new_task")
    async def new_task(ctx: pgqueue.JobContext) -> str:
        return "ran on the new worker"

    try:
        async with running_worker(newer, queues=["default"]):
            assert await newer.wait(job_id, timeout=WAIT) == "ran on the new worker"
    finally:
        await newer.close()


# -- bugs found -------------------------------------------------------------------------------


async def test_result_that_is_not_valid_json_fails_the_job_and_does_not_block_others(
    queue: pgqueue.Queue,
) -> None:
    @queue.task
    async def nan_result(ctx: pgqueue.JobContext) -> dict[str, float]:
        return {"ratio": float("nan")}

    @queue.task
    async def fine(ctx: pgqueue.JobContext) -> int:
        return 1

    worker = pgqueue.Worker(queue, queues=["default"], **FAST)
    runner = asyncio.create_task(worker.run(install_signal_handlers=False))
    try:
        bad = await nan_result.enqueue()
        good = await fine.enqueue()
        assert await queue.wait(good, timeout=3.0) == 1
        final = await wait_status(queue, bad, *pgqueue.TERMINAL_STATUSES, timeout=2.0)
        assert final.status is JobStatus.FAILED
    finally:
        # the worker cannot drain a completion it can never write: do not wait 30 s
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


async def test_task_raising_cancelled_error_itself_is_not_stuck_running(
    queue: pgqueue.Queue,
) -> None:
    @queue.task(max_attempts=2, retry_delay=0.05)
    async def gives_up(ctx: pgqueue.JobContext) -> None:
        # e.g. awaiting a future some library cancelled
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.cancel()
        await future

    worker = pgqueue.Worker(queue, queues=["default"], **FAST)
    runner = asyncio.create_task(worker.run(install_signal_handlers=False))
    try:
        job_id = await gives_up.enqueue()
        # well past stale_after (1 s): a live worker must have ended it or let it retry
        final = await wait_status(queue, job_id, *pgqueue.TERMINAL_STATUSES, timeout=4.0)
        assert final.status in (JobStatus.FAILED, JobStatus.DEAD_LETTER)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


async def test_oversized_result_fails_the_job_with_a_clear_error(db_dsn: str) -> None:
    small = pgqueue.Queue(db_dsn, max_payload_bytes=1000)
    try:

        @small.task
        async def big(ctx: pgqueue.JobContext) -> str:
            return "x" * 5000

        job_id = await big.enqueue()
        async with running_worker(small, queues=["default"]):
            with pytest.raises(pgqueue.JobFailed) as info:
                await small.wait(job_id, timeout=WAIT)
        assert info.value.status == "failed"
        assert "over the limit of 1,000" in (info.value.error or "")
    finally:
        await small.close()
