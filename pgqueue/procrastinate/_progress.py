"""Progress of a running procrastinate job, written to its pgqueue mirror.

The middleware puts a :class:`RunningJob` in a context variable for each job;
:func:`progress` finds it there. procrastinate runs sync tasks in a thread
through asgiref's ``sync_to_async``, which copies context variables, so sync
and async tasks see the same job.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import logging
import math
import threading
from typing import Any

log = logging.getLogger("pgqueue.procrastinate")

DEFAULT_INTERVAL = 0.5
"""Seconds between two progress writes of one job (reports in between coalesce)."""

Report = tuple[float, str | None]

PROGRESS_QUERY = (
    "SELECT pgqueue_procrastinate.progress("
    "%(job)s::bigint, %(worker)s::bigint, %(pct)s::numeric, %(message)s::text) AS written"
)


class ProgressThrottle:
    """The latest progress report of one job, and when it may be written.

    Thread-safe: sync tasks report from a worker thread while the writer runs
    on the worker's loop. ``now`` is passed in, so a test drives the clock.
    Exactly one writer runs at a time: it is started only by the
    :meth:`offer` that returns True, and it ends when :meth:`due_in` returns
    None (which lets the next offer start another one).
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._pending: Report | None = None
        self._written: Report | None = None
        self._last_write: float | None = None
        self._writer = False
        self._closed = False

    def offer(self, pct: float, message: str | None) -> bool:
        """Keep ``(pct, message)`` as the latest report. True when the caller
        must start a writer (none is running); False when one will pick it up,
        or after :meth:`close`."""
        with self._lock:
            if self._closed:
                return False
            self._pending = (pct, message)
            if self._writer:
                return False
            self._writer = True
            return True

    def due_in(self, now: float) -> float | None:
        """Seconds until the pending report may be written (0: now), or None
        when there is nothing new to write: the writer then ends."""
        with self._lock:
            if self._pending is None or self._pending == self._written:
                self._pending = None
                self._writer = False
                return None
            if self._last_write is None:
                return 0.0
            return max(0.0, self._last_write + self.interval - now)

    def take(self, now: float) -> Report | None:
        """The report to write now (counted as written at ``now``), or None
        when the latest one is already written."""
        with self._lock:
            report, self._pending = self._pending, None
            if report is None or report == self._written:
                return None
            self._written = report
            self._last_write = now
            return report

    def close(self) -> Report | None:
        """Accept no more reports; return the latest one if it is unwritten."""
        with self._lock:
            self._closed = True
            self._writer = False
            report, self._pending = self._pending, None
            if report is None or report == self._written:
                return None
            self._written = report
            return report


@dataclasses.dataclass(eq=False)
class RunningJob:
    """The procrastinate job the current task runs, and its progress writer."""

    job_id: int
    worker_id: int
    connector: Any  # the app's procrastinate connector: its pool, never another
    loop: asyncio.AbstractEventLoop
    interval: float = DEFAULT_INTERVAL
    throttle: ProgressThrottle = dataclasses.field(init=False)
    lost: bool = dataclasses.field(default=False, init=False)
    _flushing: bool = dataclasses.field(default=False, init=False)
    _task: asyncio.Task[None] | None = dataclasses.field(default=None, init=False)
    _wake: asyncio.Event = dataclasses.field(default_factory=asyncio.Event, init=False)

    def __post_init__(self) -> None:
        self.throttle = ProgressThrottle(self.interval)

    def report(self, pct: float, message: str | None) -> None:
        """Record a report from any thread; never blocks on the database."""
        if not self.throttle.offer(pct, message):
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            self._start()
        else:  # a sync task in its thread
            self.loop.call_soon_threadsafe(self._start)

    def _start(self) -> None:
        self._task = self.loop.create_task(
            self._run(), name=f"pgqueue progress of procrastinate job {self.job_id}"
        )

    async def _run(self) -> None:
        loop = self.loop
        while True:
            delay = self.throttle.due_in(loop.time())
            if delay is None:
                return
            if delay > 0 and not self._flushing:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                continue
            report = self.throttle.take(loop.time())
            if report is not None:
                await self._write(report)

    async def _write(self, report: Report) -> None:
        if self.lost:
            return
        pct, message = report
        try:
            row = await self.connector.execute_query_one_async(
                PROGRESS_QUERY, job=self.job_id, worker=self.worker_id, pct=pct, message=message
            )
        except Exception as exc:
            log.warning("could not record progress of procrastinate job %s: %s", self.job_id, exc)
            return
        if row.get("written") is None:
            # another worker holds the job now (or its mirror is gone): stop writing
            self.lost = True
            log.info(
                "procrastinate job %s is no longer held by worker %s: progress not recorded",
                self.job_id,
                self.worker_id,
            )

    async def flush(self) -> None:
        """Write the latest report now and accept no more (the middleware calls
        this before it records the outcome, so the last step is kept)."""
        self._flushing = True
        self._wake.set()
        task = self._task
        if task is not None and not task.done():
            # shielded: a cancelled job must not cut a write short mid-query
            await asyncio.shield(task)
        final = self.throttle.close()
        if final is not None:
            await self._write(final)


_current: contextvars.ContextVar[RunningJob | None] = contextvars.ContextVar(
    "pgqueue_procrastinate_job", default=None
)


def current_job() -> RunningJob | None:
    """The bridged procrastinate job this code runs in, if any."""
    return _current.get()


def check_report(percent: object, message: object) -> float:
    """``percent`` as a float, or ValueError/TypeError saying what is wrong."""
    if isinstance(percent, bool) or not isinstance(percent, int | float):
        raise TypeError(f"progress percent must be a number, not {percent!r}")
    try:
        value = float(percent)
    except OverflowError:
        raise ValueError(f"progress percent must be a finite number, not {percent!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"progress percent must be a finite number, not {percent!r}")
    if message is not None:
        if not isinstance(message, str):
            raise TypeError(f"progress message must be a string or None, not {message!r}")
        if "\x00" in message:
            raise ValueError("progress message contains a NUL character, which PostgreSQL refuses")
    return value


def progress(percent: float, message: str | None = None) -> None:
    """Report the running procrastinate job's progress (0 to 100, clamped by
    the database) on its pgqueue mirror, from an async or a sync task.

    Never blocks: the latest report is written shortly after, at most once per
    ``progress_interval`` (see :func:`attach`); the last one is written before
    the job's outcome. Raises RuntimeError outside a job run by a worker with
    :data:`pgqueue.procrastinate.middleware`.
    """
    value = check_report(percent, message)
    job = _current.get()
    if job is None:
        raise RuntimeError(
            "pgqueue.procrastinate.progress() was called outside a procrastinate job run "
            "with pgqueue's middleware: call it from a task, and add the middleware to the "
            "app (pgqueue.procrastinate.attach(app))"
        )
    job.report(value, message)
