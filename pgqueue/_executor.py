"""The executor: runs one attempt of a task and returns its outcome as a value.

It writes nothing to the database: the worker hands the outcome to the
completer (``pgqueue/_completer.py``). Async tasks run on the worker's loop,
sync tasks in a thread pool of ``concurrency`` threads. A sync task cannot be
interrupted: after its timeout the executor keeps the lease until its thread
returns, and a stopped thread that runs on is counted as abandoned (it holds
a slot until it returns).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from psycopg.types.json import Jsonb

from ._completer import Outcome, Stopped, Success, format_error
from ._database import Failure, Release
from ._leases import HeldLease
from ._queue import Queue, Task, encode_json
from .errors import NonRetryableError

log = logging.getLogger("pgqueue.worker")

# What a task that returns None stores (JSON null), made once, not per job.
_NULL_RESULT = Jsonb(None, dumps=lambda _value: "null")


def _failure(
    error: str, retryable: bool, timed_out: bool = False, retry_delay: float | None = None
) -> Failure:
    """A failed attempt as ``pgqueue.fail`` takes it: a task's fixed
    ``retry_delay`` becomes the delay of its next attempt (None: the
    database's default backoff)."""
    retry_in = None
    if retryable and retry_delay is not None:
        retry_in = timedelta(seconds=max(0.0, retry_delay))
    return Failure(error, retryable, timed_out, retry_in)


class Executor:
    """Runs attempts of ``queue``'s tasks for the worker ``worker_id``.

    ``finished(lease)`` is called once the body of an attempt has ended (its
    slot is free), ``last_progress(lease)`` writes a report the task made
    just before it ended, and ``thread_returned()`` is called (from the
    thread) when an abandoned thread finally returns.
    """

    def __init__(
        self,
        queue: Queue,
        worker_id: str,
        *,
        finished: Callable[[HeldLease], None],
        last_progress: Callable[[HeldLease], Awaitable[None]],
        thread_returned: Callable[[], None],
    ) -> None:
        self._queue = queue
        self._worker_id = worker_id
        self._finished = finished
        self._last_progress = last_progress
        self._thread_returned = thread_returned
        self._threads: ThreadPoolExecutor | None = None
        self._abandoned: list[concurrent.futures.Future[Any]] = []

    def open(self, concurrency: int) -> None:
        self._threads = ThreadPoolExecutor(
            max_workers=concurrency, thread_name_prefix="pgqueue-task"
        )

    def close(self) -> None:
        """Stop taking work; threads still running are left to finish on their own."""
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)

    @property
    def abandoned_threads(self) -> int:
        """Threads of stopped sync tasks that are still running."""
        self._abandoned = [f for f in self._abandoned if not f.done()]
        return len(self._abandoned)

    async def run(self, lease: HeldLease) -> Outcome | None:
        """Run one attempt; its outcome, or None when there is none to write
        now (a shutdown holds a thread that cannot be stopped: its job is
        handed back just before the process exits)."""
        task = self._queue.tasks.get(lease.task_name)
        # no timeout, no timer: asyncio.timeout(None) would still cost its setup
        timeout_cm = None if lease.timeout is None else asyncio.timeout(lease.timeout)
        timed_out = False
        try:
            if task is None:  # claim filters by task name; kept as a safety net
                raise NonRetryableError(
                    f"unknown task {lease.task_name!r}: "
                    f"worker {self._worker_id} does not register it"
                )
            lease.body = self._body(task, lease)
            if timeout_cm is None:
                result = await lease.body
            else:
                async with timeout_cm:
                    result = await lease.body
            payload = self._result_payload(task, result)
        except asyncio.CancelledError as exc:
            if lease.stop is not None:
                return self._stopped(lease)
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                self._finished(lease)
                raise  # this runner itself is being cancelled
            # The task raised CancelledError on its own (say, a future some
            # library cancelled): an ordinary error of this attempt.
            error, retryable = format_error(exc), True
        except TimeoutError as exc:
            if timeout_cm is not None and timeout_cm.expired():
                lease.ctx.request_stop("timeout")
                if not await self._join_thread(lease):
                    return self._stopped(lease)
                error = f"attempt {lease.attempt} exceeded its timeout of {lease.timeout} s"
                retryable, timed_out = True, True
            else:
                error, retryable = format_error(exc), True
        except NonRetryableError as exc:
            error, retryable = format_error(exc), False
        except Exception as exc:
            error, retryable = format_error(exc), True
        else:
            await self._last_progress(lease)
            self._finished(lease)
            return Success(payload)
        await self._last_progress(lease)
        self._finished(lease)
        retry_delay = task.retry_delay if task is not None else None
        return _failure(error, retryable, timed_out, retry_delay)

    async def _join_thread(self, lease: HeldLease) -> bool:
        """After a sync task's timeout: Python cannot interrupt its thread, so keep
        the lease (heartbeats go on) and its slot until the thread returns; the
        next attempt then cannot run beside it. False if the worker stopped the
        attempt meanwhile (lost, cancelled, shutdown)."""
        if lease.stop is not None:  # stopped while the timeout was being handled
            return False
        if lease.thread is None or lease.thread.done():
            return True
        log.warning(
            "job %s attempt %s timed out; waiting for its thread to return",
            lease.job_id,
            lease.attempt,
        )
        lease.body = asyncio.wrap_future(lease.thread)
        try:
            await lease.body
        except asyncio.CancelledError:
            if lease.stop is None:
                raise
            return False
        except Exception:
            pass  # it failed after its time was up: the outcome is the timeout
        return True

    def _stopped(self, lease: HeldLease) -> Outcome | None:
        """The outcome of an attempt the worker stopped (``lease.stop`` says why)."""
        self._finished(lease)
        thread_alive = lease.thread is not None and not lease.thread.done()
        if thread_alive:
            assert lease.thread is not None
            self._abandon(lease.thread)
        if lease.stop == "memory":
            return _failure(lease.stop_error or "memory limit exceeded", retryable=True)
        if lease.stop == "shutdown":
            if thread_alive:
                # Released as the very last step of shutdown, just before the
                # process exits (pgqueue.cli), so no other worker runs the job
                # while this thread still does.
                return None
            return Release()
        return Stopped(lease.stop or "stopped")

    def _abandon(self, thread: concurrent.futures.Future[Any]) -> None:
        """A stopped sync task's thread runs on; it holds a slot until it returns."""
        self._abandoned.append(thread)
        thread.add_done_callback(lambda _: self._thread_returned())

    def _body(self, task: Task[Any], lease: HeldLease) -> asyncio.Future[Any]:
        if task.is_async:
            coroutine: Coroutine[Any, Any, Any] = task.fn(lease.ctx, **lease.ctx.args)
            return asyncio.ensure_future(coroutine)
        assert self._threads is not None, "the executor is not open"
        lease.thread = self._threads.submit(task.fn, lease.ctx, **lease.ctx.args)
        return asyncio.wrap_future(lease.thread)

    def _result_payload(self, task: Task[Any], result: Any) -> Jsonb:
        if result is None:
            return _NULL_RESULT
        try:
            return encode_json(
                result, f"the result of task {task.name!r}", self._queue.max_payload_bytes
            )
        except (TypeError, ValueError) as exc:
            raise NonRetryableError(
                f"task {task.name!r} returned a value that cannot be stored as JSON: {exc}"
            ) from None
