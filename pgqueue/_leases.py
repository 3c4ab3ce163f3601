"""The leases a worker holds, and keeping them: heartbeat, fence, progress.

- One heartbeat statement renews every lease the worker holds, including
  results still waiting to be written; a lease missing from its answer was
  lost (rescued, cancelled) and its task is stopped.
- The fence stops a task whose lease could not be renewed for nearly a lease
  timeout, before another worker may rescue and re-run its job.
- Progress reports are coalesced per job and written at most every
  ``progress_interval``, one write per lease at a time, so the last report a
  task made is the last one written.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

from ._context import JobContext
from ._database import Lease, WorkerDatabase
from ._settings import WorkerSettings
from .errors import StaleLease

log = logging.getLogger("pgqueue.worker")


@dataclasses.dataclass(eq=False)
class HeldLease:
    """A job this worker holds: id + attempt, its context and its running body."""

    job_id: int
    attempt: int
    task_name: str
    ctx: JobContext
    timeout: float | None
    # When the server last renewed this lease, by this worker's clock: the
    # sending of the claim that took it or of the last heartbeat it answered.
    renewed: float
    body: asyncio.Future[Any] | None = None
    thread: concurrent.futures.Future[Any] | None = None  # a sync task's thread
    stop: str | None = None  # why the worker stopped it: lost, cancelled, shutdown, memory
    stop_error: str | None = None  # the error a stop that charges the attempt records
    finished: bool = False  # the task body has ended; its outcome may be unflushed
    # one progress write at a time, so the last report is written after the others
    progress_lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)

    @property
    def key(self) -> Lease:
        return Lease(self.job_id, self.attempt)

    def stop_task(self, reason: str, error: str | None = None) -> None:
        """Ask the task to stop and cancel its body (a sync task's thread runs
        on: only its future is cancelled). The executor turns ``reason`` into
        the attempt's outcome."""
        self.stop = reason
        self.stop_error = error
        self.ctx.request_stop(reason)
        if self.body is not None:
            self.body.cancel()


class LeaseKeeper:
    """Holds the worker's leases and keeps them alive (heartbeat, fence) and
    their progress written; runs as three background loops of the worker."""

    def __init__(
        self,
        db: Callable[[], WorkerDatabase],
        worker_id: str,
        settings: WorkerSettings,
    ) -> None:
        self._db = db
        self._worker_id = worker_id
        self._settings = settings
        self.leases: dict[Lease, HeldLease] = {}
        self._last_beat = time.monotonic()  # when the last heartbeat that got through was sent
        self._progress_ready = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def running(self) -> list[HeldLease]:
        """The leases whose task body has not ended."""
        return [lease for lease in self.leases.values() if not lease.finished]

    def lost(self, lease: HeldLease, reason: str) -> None:
        """The lease is gone (cancelled or rescued): stop the task, report nothing."""
        if lease.finished or lease.key not in self.leases:
            return
        log.warning(
            "job %s attempt %s: lease %s; stopping its task", lease.job_id, lease.attempt, reason
        )
        lease.stop_task(reason)

    def cancelled(self, job_id: int) -> None:
        """The job was cancelled (``pgqueue_cancel``): stop its task if held here."""
        for lease in [lease for lease in self.leases.values() if lease.job_id == job_id]:
            self.lost(lease, "cancelled")

    # -- heartbeat and fence -----------------------------------------------------------

    async def heartbeat_loop(self) -> None:
        settings = self._settings
        while True:
            await asyncio.sleep(settings.heartbeat_interval)
            leases = list(self.leases.values())
            sent = time.monotonic()
            if not leases:
                self._last_beat = sent
                continue
            try:
                # Bounded, so a hung connection cannot hold back the next beat.
                # (asyncio.timeout, not wait_for: on Python 3.11 wait_for drops a
                # cancel that arrives as the call completes, and this loop would
                # then outlive the worker's shutdown.)
                async with asyncio.timeout(settings.heartbeat_interval):
                    held = await self._db().heartbeat(
                        self._worker_id,
                        [lease.key for lease in leases],
                        give_up=settings.heartbeat_interval,
                    )
            except Exception as exc:
                log.warning(
                    "heartbeat failed (%s); none for %.0fs",
                    str(exc) or type(exc).__name__,  # a timeout's text is empty
                    time.monotonic() - self._last_beat,
                )
                continue
            self._last_beat = sent
            for lease in leases:
                if lease.key in held:
                    lease.renewed = max(lease.renewed, sent)
                elif not lease.finished:
                    self.lost(lease, "lost")

    async def fence_loop(self) -> None:
        """Self-fencing: once a lease's last renewal that got through is nearly
        a lease timeout old, other workers may soon rescue and re-run its job,
        so stop its task now rather than run it twice at once. Each lease counts
        from its own renewal: one claimed after an outage is as fresh as its claim."""
        settings = self._settings
        limit = settings.stale_after - settings.heartbeat_interval
        while True:
            await asyncio.sleep(settings.heartbeat_interval / 4)
            now = time.monotonic()
            stale = [lease for lease in self.running() if now - lease.renewed > limit]
            if stale:
                log.error(
                    "no heartbeat for %.0fs: stopping %d tasks before their leases are rescued",
                    now - min(lease.renewed for lease in stale),
                    len(stale),
                )
                for lease in stale:
                    self.lost(lease, "lost")

    # -- progress ----------------------------------------------------------------------

    def progress_reported(self, ctx: JobContext) -> None:
        """A task reported progress (``ctx.progress``; from the loop or a thread)."""
        loop = self._loop
        if loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._progress_ready.set()
        else:  # a sync task in a worker thread
            loop.call_soon_threadsafe(self._progress_ready.set)

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop the worker runs on (progress from a thread wakes it)."""
        self._loop = loop

    async def progress_loop(self) -> None:
        while True:
            await self._progress_ready.wait()
            self._progress_ready.clear()
            for lease in list(self.leases.values()):
                if not lease.finished:  # a body may end during an earlier write
                    await self.write_progress(lease)
            await asyncio.sleep(self._settings.progress_interval)

    async def write_progress(self, lease: HeldLease) -> None:
        """Write the task's unwritten progress report, if it has one."""
        async with lease.progress_lock:
            report = lease.ctx.take_progress()
            if report is None:
                return
            pct, message = report
            try:
                await self._db().progress(
                    lease.key,
                    pct,
                    message,
                    history=self._settings.progress_history,
                    give_up=self._settings.heartbeat_interval,
                )
            except StaleLease:
                self.lost(lease, "lost")
            except Exception:
                log.exception("could not record progress of job %s", lease.job_id)

    async def last_progress(self, lease: HeldLease) -> None:
        """Write a progress report the task made just before it ended and the
        progress loop has not written yet, so the history keeps the last step;
        wait for a write of this lease still under way. Most tasks report none
        (the body has ended, so no new report can come): nothing to await."""
        if lease.ctx.progress_unwritten or lease.progress_lock.locked():
            await self.write_progress(lease)
