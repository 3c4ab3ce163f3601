"""The executor on its own: one attempt in, one outcome value out.

No database: the executor writes nothing, so what it returns is the whole of
its behaviour (the worker tests prove the outcomes are then written).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import pgqueue
from pgqueue._completer import Outcome, Stopped, Success
from pgqueue._context import JobContext
from pgqueue._database import Failure, Release
from pgqueue._executor import Executor
from pgqueue._leases import HeldLease

queue = pgqueue.Queue(dsn="postgresql://nobody@127.0.0.1:1/never-connected")


@queue.task
async def add(ctx: pgqueue.JobContext, a: int, b: int) -> int:
    return a + b


@queue.task
async def returns_a_set(ctx: pgqueue.JobContext) -> Any:
    return {1, 2}


@queue.task(retry_delay=7)
async def raises(ctx: pgqueue.JobContext) -> None:
    raise ValueError("no luck")


@queue.task
async def refuses(ctx: pgqueue.JobContext) -> None:
    raise pgqueue.NonRetryableError("never again")


@queue.task
async def sleeps(ctx: pgqueue.JobContext) -> None:
    await asyncio.sleep(3600)


thread_started = threading.Event()
release_thread = threading.Event()


@queue.task
def blocks(ctx: pgqueue.JobContext) -> str:
    thread_started.set()
    release_thread.wait(10)
    return "late"


async def until_the_thread_runs() -> None:
    # A thread's future cancelled before it started would simply not run: these
    # tests are about one that runs on.
    assert await asyncio.to_thread(thread_started.wait, 5)


class Harness:
    def __init__(self) -> None:
        self.finished: list[int] = []
        self.returned = threading.Event()
        self.executor = Executor(
            queue,
            "test-worker",
            finished=lambda lease: self.finished.append(lease.job_id),
            last_progress=self._no_progress,
            thread_returned=self.returned.set,
        )
        self.executor.open(concurrency=2)

    @staticmethod
    async def _no_progress(lease: HeldLease) -> None:
        return None

    def lease(self, task: str, timeout: float | None = None, **args: Any) -> HeldLease:
        ctx = JobContext(
            job_id=1, attempt=1, max_attempts=3, task_name=task, queue="default", args=args
        )
        return HeldLease(1, 1, task, ctx, timeout, renewed=time.monotonic())

    async def run(self, lease: HeldLease) -> Outcome | None:
        return await self.executor.run(lease)


@pytest.fixture
def h() -> Iterator[Harness]:
    harness = Harness()
    yield harness
    harness.executor.close()


async def test_a_result_becomes_a_success_with_its_json(h: Harness) -> None:
    outcome = await h.run(h.lease("add", a=2, b=3))
    assert isinstance(outcome, Success)
    assert outcome.payload.obj == 5
    assert h.finished == [1]


async def test_an_error_is_a_retryable_failure_with_the_tasks_retry_delay(h: Harness) -> None:
    outcome = await h.run(h.lease("raises"))
    assert isinstance(outcome, Failure)
    assert outcome.retryable and not outcome.timed_out
    assert "ValueError: no luck" in outcome.error
    assert outcome.retry_in is not None and outcome.retry_in.total_seconds() == 7


async def test_non_retryable_errors_and_unstorable_results_are_final_failures(h: Harness) -> None:
    refused = await h.run(h.lease("refuses"))
    unstorable = await h.run(h.lease("returns_a_set"))
    unknown = await h.run(h.lease("no_such_task"))
    for outcome, words in (
        (refused, "never again"),
        (unstorable, "cannot be stored as JSON"),
        (unknown, "does not register it"),
    ):
        assert isinstance(outcome, Failure)
        assert not outcome.retryable
        assert words in outcome.error


async def test_an_async_timeout_is_a_timed_out_failure(h: Harness) -> None:
    outcome = await h.run(h.lease("sleeps", timeout=0.05))
    assert isinstance(outcome, Failure)
    assert outcome.timed_out and outcome.retryable
    assert "exceeded its timeout of 0.05 s" in outcome.error


async def test_a_sync_timeout_waits_for_the_thread_before_it_ends_the_attempt(h: Harness) -> None:
    thread_started.clear()
    release_thread.clear()
    # The timeout leaves the thread time to start (a future cancelled before
    # its thread took it never runs at all).
    runner = asyncio.create_task(h.run(h.lease("blocks", timeout=0.5)))
    await until_the_thread_runs()
    await asyncio.sleep(0.8)
    # Past its timeout, the thread still runs: the slot is not free yet, so a
    # next attempt cannot run beside it.
    assert not runner.done()
    assert h.finished == []
    release_thread.set()
    outcome = await asyncio.wait_for(runner, 5)
    assert isinstance(outcome, Failure) and outcome.timed_out
    assert h.finished == [1]


async def test_stopped_attempts_become_the_outcome_of_their_reason(h: Harness) -> None:
    for reason, error, expected in (
        ("cancelled", None, Stopped("cancelled")),
        ("lost", None, Stopped("lost")),
        ("shutdown", None, Release()),
        ("memory", "worker w exceeded its memory limit", None),
    ):
        lease = h.lease("sleeps")
        runner = asyncio.create_task(h.run(lease))
        await asyncio.sleep(0.01)
        lease.stop_task(reason, error)
        outcome = await asyncio.wait_for(runner, 5)
        assert lease.ctx.stop_reason == reason
        if expected is not None:
            assert outcome == expected
        else:
            assert isinstance(outcome, Failure)
            assert outcome.retryable and outcome.error == error


async def test_a_sync_task_stopped_at_shutdown_holds_a_slot_until_its_thread_returns(
    h: Harness,
) -> None:
    thread_started.clear()
    release_thread.clear()
    lease = h.lease("blocks")
    runner = asyncio.create_task(h.run(lease))
    await until_the_thread_runs()
    lease.stop_task("shutdown")
    # None: nothing to write now; the worker releases the job as its last step.
    assert await asyncio.wait_for(runner, 5) is None
    assert h.executor.abandoned_threads == 1
    release_thread.set()
    assert await asyncio.to_thread(h.returned.wait, 5)
    assert h.executor.abandoned_threads == 0
