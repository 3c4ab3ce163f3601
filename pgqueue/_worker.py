"""The worker: the producer that claims jobs into free slots, and the parts it runs.

A worker is made of small parts, each in its own module:

- the producer (here): sizes each claim to the free slots and runs it as one
  statement (``pgqueue.claim``); idle, it waits on NOTIFY ``pgqueue_enqueue``
  with a jittered poll as the backstop; it also owns the shutdown;
- the executor (``_executor.py``): runs one attempt and returns its outcome;
- the completer (``_completer.py``): writes outcomes, successes batched into
  one ``complete_many`` call that grows with load;
- the lease keeper (``_leases.py``): heartbeat, fence, progress writes;
- the maintenance duties (``_maintenance/``): rescue, prune, vacuum, periodic
  ticks, the memory limit;
- the notifier (``_notifier.py``): the LISTEN session and its reconnects.

Every database call goes through the seam ``WorkerDatabase``
(``_database.py``), which retries lost connections with backoff; refusals
(a stale lease) are final. The what is in docs/operations.md.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import math
import os
import signal
import socket
import time
import uuid
from collections.abc import Coroutine, Sequence
from datetime import timedelta
from typing import Any

import psycopg

from . import _connect, _metrics
from ._completer import Completer
from ._context import JobContext
from ._database import ClaimedJob, Lease, Release, WorkerDatabase
from ._executor import Executor
from ._leases import HeldLease, LeaseKeeper
from ._maintenance import Tally, jitter, memory, pruner, rescuer, scheduler, vacuumer
from ._notifier import listen_forever, wait_event
from ._queue import Queue
from ._settings import WorkerSettings
from .errors import DatabaseUnavailable, MemoryLimitExceeded, StaleLease, first_line

log = logging.getLogger("pgqueue.worker")

CLAIM_GATHER = 0.002
"""Seconds a busy worker waits for more free slots before a small claim."""

OUTCOME_DEADLINE = 10.0
"""Seconds a stopping worker spends writing outcomes before giving up on them
(their leases are then rescued)."""

THREAD_RELEASE_DELAY = 2.0
"""Seconds before a job whose sync thread could not be stopped at shutdown
becomes claimable again."""


class Worker:
    """Runs the tasks of a :class:`Queue`.

    ``await Worker(queue).run()`` works until :meth:`stop` is called or the
    process gets SIGTERM/SIGINT; it then stops claiming, lets running jobs
    finish for ``shutdown_grace`` seconds and hands the rest back, so no job
    is left ``running``.
    """

    def __init__(
        self,
        queue: Queue,
        *,
        queues: Sequence[str] | None = None,
        worker_id: str | None = None,
        settings: WorkerSettings | None = None,
        database: type[WorkerDatabase] = WorkerDatabase,
        **overrides: Any,
    ) -> None:
        self.queue = queue
        self.queues = list(queues) if queues else queue.queue_names
        # Unique per process: leases and orphan recovery rely on it, so a given
        # id is a prefix and gets a random suffix.
        prefix = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.worker_id = f"{prefix}:{uuid.uuid4().hex[:6]}"
        base = settings or WorkerSettings()
        self.settings = dataclasses.replace(base, **overrides) if overrides else base
        self.keeper = LeaseKeeper(lambda: self.db, self.worker_id, self.settings)
        self._running = 0  # leases whose body has not ended
        self._until_idle = False
        self._stopping = False
        self._stop_requested: float | None = None  # monotonic time of the first stop()
        self._hard_stop = False
        self._wakeup = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._outcomes_pending: set[asyncio.Task[None]] = set()
        self._release_at_exit: list[HeldLease] = []
        self._rate_limited: bool | None = None  # was a queue held back by its rate limit?
        self._database_class = database
        self._db: WorkerDatabase | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._over_memory_limit: str | None = None  # what the memory guard saw, once it fired
        self._metrics_server: asyncio.Server | None = None
        self.executor = Executor(
            queue,
            self.worker_id,
            finished=self._finish,
            last_progress=self.keeper.last_progress,
            thread_returned=self._thread_returned,
        )
        self.jobs_done = 0
        """Attempts this worker finished (any outcome); for tests and the demo."""
        self.completer = Completer(
            lambda: self.db,
            forget=self._forget,
            held=lambda key: key in self.keeper.leases,
            giving_up=lambda: self._hard_stop,
            retry_for=self.settings.stale_after,
        )
        self.outcomes: collections.Counter[str] = self.completer.outcomes
        """Attempts by how they ended (see :attr:`Completer.outcomes`)."""
        self._tally = Tally()
        self.maintenance_passes = self._tally.passes
        """Maintenance passes run, by duty (rescue, prune, vacuum, periodic)."""
        self.maintenance_failures = self._tally.failures
        """Maintenance passes that failed, by duty (each also logged at WARNING)."""

    # -- public control ----------------------------------------------------------------

    def stop(self) -> None:
        """Begin a graceful shutdown (safe to call from a signal handler)."""
        if self._stopping:
            self._hard_stop = True  # a second request skips the grace period
            log.warning("second stop request: handing back running jobs now")
        else:
            self._stop_requested = time.monotonic()
        self._stopping = True
        self._wakeup.set()
        self._slot_freed.set()

    async def run(self, *, install_signal_handlers: bool = True, until_idle: bool = False) -> None:
        """Work until stopped. With ``until_idle`` return once no job is due
        or waiting to become due (jobs held by a paused queue or batch do not
        count), none is running and every outcome is written (for scripts and
        tests)."""
        self._loop = asyncio.get_running_loop()
        dsn = await asyncio.to_thread(lambda: self.queue.dsn)
        await asyncio.to_thread(lambda: self.queue.listen_dsn)  # a malformed one fails here
        await self._wait_for_database(dsn)
        self._db = self._database_class(
            dsn,
            pool_size=self.settings.pool_size,
            name=f"pgqueue-worker-{self.worker_id}",
            give_up_now=self._gives_up,
        )
        await self._db.open()
        self.executor.open(self.settings.concurrency)
        self.keeper.bind(self._loop)
        if self.settings.metrics_port is not None:
            self._metrics_server = await _metrics.serve(
                self.render_metrics, self.settings.metrics_host, self.settings.metrics_port
            )
            host, port = self.metrics_address or ("?", 0)
            log.info("metrics at http://%s:%d/metrics", host, port)
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(sig, self.stop)
        log.info(
            "worker %s started: queues=%s concurrency=%d loop=%s",
            self.worker_id,
            ",".join(self.queues),
            self.settings.concurrency,
            type(self._loop).__module__.partition(".")[0],
        )
        helpers = [
            asyncio.create_task(self.completer.run(), name="pgqueue-complete"),
            asyncio.create_task(self.keeper.heartbeat_loop(), name="pgqueue-heartbeat"),
            asyncio.create_task(self.keeper.fence_loop(), name="pgqueue-fence"),
            asyncio.create_task(self.keeper.progress_loop(), name="pgqueue-progress"),
        ]
        helpers += [
            asyncio.create_task(duty, name=f"pgqueue-{name}")
            for name, duty in self._maintenance_duties()
        ]
        if self.settings.listen:
            helpers.append(asyncio.create_task(self._listen_loop(), name="pgqueue-listen"))
        phases = _Phases()
        try:
            try:
                self._until_idle = until_idle
                await self._claim_loop()
            finally:
                phases.start(self._stop_requested)
                phases.mark("claim loop")
                await self._drain(phases)
        finally:
            phases.start(self._stop_requested)  # no-op unless the drain never began
            await _stop_tasks(helpers)
            phases.mark("background tasks")
            if install_signal_handlers:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    self._loop.remove_signal_handler(sig)
            self.executor.close()
            if self.abandoned_threads:
                log.warning(
                    "%d sync task(s) ignored should_stop and still hold a thread; their jobs "
                    "were handed back and their results will be refused",
                    self.abandoned_threads,
                )
            if self._metrics_server is not None:
                self._metrics_server.close()
                await self._metrics_server.wait_closed()
                self._metrics_server = None
            await self._db.close()
            phases.mark("pool")
            log.info(
                "worker %s stopped after %d jobs (shutdown: %s)",
                self.worker_id,
                self.jobs_done,
                phases,
            )
        if self._over_memory_limit is not None:
            raise MemoryLimitExceeded(self._over_memory_limit)

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """(host, port) the metrics endpoint listens on while the worker runs."""
        if self._metrics_server is None or not self._metrics_server.sockets:
            return None
        name = self._metrics_server.sockets[0].getsockname()
        return str(name[0]), int(name[1])

    def render_metrics(self) -> str:
        """This worker's metrics in Prometheus text format (what ``/metrics`` serves)."""
        out = _metrics.Exposition()
        out.metric(
            "pgqueue_worker_jobs_finished_total",
            "counter",
            "Attempts this worker ended, by the outcome it wrote.",
            [({"outcome": k}, v) for k, v in sorted(self.outcomes.items())],
        )
        duties = sorted({"rescue", "prune", "vacuum", "periodic"} | set(self.maintenance_passes))
        out.metric(
            "pgqueue_worker_maintenance_passes_total",
            "counter",
            "Maintenance passes run, by duty.",
            [({"duty": d}, self.maintenance_passes[d]) for d in duties],
        )
        out.metric(
            "pgqueue_worker_maintenance_failures_total",
            "counter",
            "Maintenance passes that failed, by duty.",
            [({"duty": d}, self.maintenance_failures[d]) for d in duties],
        )
        out.metric(
            "pgqueue_worker_claim_retries_total",
            "counter",
            "Claims retried after a connection failure.",
            [({}, self._db.claim_retries if self._db is not None else 0)],
        )
        out.metric(
            "pgqueue_worker_leases",
            "gauge",
            "Leases held (running jobs and results not yet written).",
            [({}, len(self.keeper.leases))],
        )
        out.metric(
            "pgqueue_worker_running_jobs",
            "gauge",
            "Task bodies running.",
            [({}, self._running)],
        )
        out.metric(
            "pgqueue_worker_concurrency",
            "gauge",
            "Jobs this worker runs at once at most.",
            [({}, self.settings.concurrency)],
        )
        return out.text()

    @property
    def abandoned_threads(self) -> int:
        """Threads of stopped sync tasks that are still running (Python cannot
        stop a thread). Each holds a slot; after :meth:`run` returns, a
        process should exit rather than wait for them, as ``pgqueue worker`` does."""
        return self.executor.abandoned_threads

    @property
    def db(self) -> WorkerDatabase:
        """The worker's seam to its database (open while :meth:`run` runs)."""
        assert self._db is not None, "the worker is not running"
        return self._db

    def _gives_up(self, operation: str) -> bool:
        """Whether a database call that failed for a lost connection stops
        retrying: a stopping worker claims nothing more, and past its outcome
        deadline it writes nothing more (the jobs concerned are rescued)."""
        return self._hard_stop or (self._stopping and operation == "claim")

    async def _wait_for_database(self, dsn: str) -> None:
        """Wait (with backoff, logging each failure) for PostgreSQL to accept a
        connection, up to ``startup_timeout``; then raise DatabaseUnavailable."""
        deadline = time.monotonic() + self.settings.startup_timeout
        delay = 0.5
        while True:
            try:
                conn = await _connect.connect(dsn, connect_timeout=5)
            except psycopg.Error as exc:
                reason = first_line(exc)
                if time.monotonic() + delay > deadline:
                    raise DatabaseUnavailable(
                        f"database unreachable for {self.settings.startup_timeout:.0f}s: {reason}"
                    ) from exc
                log.warning("waiting for the database (%s); retrying in %.1fs", reason, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            await conn.close()
            return

    # -- claiming ----------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        settings = self.settings
        db = self.db
        lease_timeout = timedelta(seconds=settings.stale_after)
        tasks = sorted(self.queue.tasks)
        gathered = False
        while not self._stopping:
            # A slot is free once its body ended, even while its outcome waits in
            # the completion batch, so the next claim overlaps the flush. Held
            # leases stay bounded (twice the concurrency) if flushes fall behind.
            # Threads of stopped sync tasks still hold executor threads: count them.
            free = (
                min(
                    settings.concurrency - self._running,
                    2 * settings.concurrency - len(self.keeper.leases),
                )
                - self.abandoned_threads
            )
            if free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            if free < settings.concurrency // 2 and self._running and not gathered:
                # Busy: let a few more bodies end first, so one claim fills many
                # slots (a claim of 50 jobs costs little more than a claim of 1).
                gathered = True
                await asyncio.sleep(CLAIM_GATHER)
                continue
            gathered = False
            self._wakeup.clear()
            retries, claim_started = db.claim_retries, time.monotonic()
            try:
                claimed = await db.claim(self.worker_id, self.queues, free, lease_timeout, tasks)
                for job in claimed:
                    self._start(job)
                if db.claim_retries != retries:
                    # The connection broke mid-claim: an earlier try may have
                    # committed rows this worker never saw. Hand them back.
                    await self._release_orphans(time.monotonic() - claim_started)
                if len(claimed) < free:
                    idle = not claimed and not self.keeper.leases and not self.completer.busy
                    if self._until_idle and idle and not await self._has_unfinished():
                        return
                    sleep = jitter(settings.poll_interval)
                    if not claimed or self._rate_limited is not False:
                        sleep = min(sleep, await self._rate_wait())
                    await wait_event(self._wakeup, sleep)
            except Exception:
                if self._stopping:
                    return
                log.exception("claim failed")
                await asyncio.sleep(jitter(settings.poll_interval))

    async def _rate_wait(self) -> float:
        """Seconds until a rate-limited queue of this worker that is out of room
        may start a job again (infinity if none is held back by its limit): an
        idle worker claims again then, not a poll interval later."""
        wait = await self.db.rate_wait(self.queues)
        # Asked after every empty claim; after a partial one only while some
        # queue was last seen held back (so unlimited workers pay no query).
        self._rate_limited = wait is not None
        return math.inf if wait is None else max(wait, 0.0) + 0.005

    async def _release_orphans(self, within: float) -> None:
        """Release rows leased to this worker in the last ``within`` seconds (the
        retried claim) that it does not hold: the reply to a committed claim
        was lost, so nobody runs them."""
        held = await self.db.held_by_worker(self.worker_id, timedelta(seconds=within + 1))
        for lease in held:
            if lease not in self.keeper.leases:
                log.warning(
                    "job %s attempt %s was claimed but never seen; handing it back",
                    lease.job_id,
                    lease.attempt,
                )
                with contextlib.suppress(StaleLease):
                    await self.db.release(lease)

    async def _has_unfinished(self) -> bool:
        """For ``until_idle``: whether any job of this worker's queues is still
        pending, retrying (even if not yet due) or running anywhere."""
        return await self.db.unfinished(self.queues)

    def _start(self, job: ClaimedJob) -> None:
        job_id, attempt = job.lease.job_id, job.lease.attempt
        ctx = JobContext(
            job_id=job_id,
            attempt=attempt,
            max_attempts=job.max_attempts,
            task_name=job.task,
            queue=job.queue,
            args=job.args,
            on_progress=self.keeper.progress_reported,
        )
        lease = HeldLease(job_id, attempt, job.task, ctx, job.timeout, renewed=job.leased)
        self.keeper.leases[lease.key] = lease
        self._running += 1
        runner = asyncio.create_task(self._execute(lease), name=f"pgqueue-job-{job_id}")
        self._outcomes_pending.add(runner)
        runner.add_done_callback(self._outcomes_pending.discard)

    # -- running a job -----------------------------------------------------------------

    async def _execute(self, lease: HeldLease) -> None:
        """Run one attempt and hand its outcome to the completer."""
        outcome = await self.executor.run(lease)
        if outcome is None:
            # A stopped sync task's thread still runs: its job is handed back
            # as the very last step of shutdown.
            self._release_at_exit.append(lease)
        else:
            await self.completer.record(lease.key, outcome)

    def _forget(self, key: Lease) -> None:
        """Forget a lease whose outcome is written (or refused, or left for rescue)."""
        self.keeper.leases.pop(key, None)
        self._slot_freed.set()
        if self._until_idle and not self.keeper.leases:
            self._wakeup.set()  # the idle check may be waiting for the last outcome

    def _finish(self, lease: HeldLease) -> None:
        """The body ended: free its slot (the lease stays until its outcome is written)."""
        if lease.finished:
            return
        lease.finished = True
        self._running -= 1
        self.jobs_done += 1
        self._slot_freed.set()

    def _thread_returned(self) -> None:
        """An abandoned thread returned (called from it): its slot is free."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._slot_freed.set)

    # -- background loops ------------------------------------------------------------

    def _maintenance_duties(self) -> list[tuple[str, Coroutine[Any, Any, None]]]:
        """The maintenance loops this worker runs (pgqueue/_maintenance/), by name."""
        settings, db, tally, stopping = self.settings, self.db, self._tally, self._is_stopping
        duties: list[tuple[str, Coroutine[Any, Any, None]]] = [
            (
                "rescue",
                rescuer.run(
                    db, tally, interval=settings.rescue_interval, stale_after=settings.stale_after
                ),
            )
        ]
        if settings.prune_interval > 0:
            prune = pruner.run(
                db,
                tally,
                interval=settings.prune_interval,
                retain_completed=settings.retain_completed,
                retain_failed=settings.retain_failed,
                stopping=stopping,
            )
            duties.append(("prune", prune))
        if settings.vacuum_interval > 0:

            async def connect() -> psycopg.AsyncConnection[Any]:
                return await self.queue.listen_connection(connect_timeout=5)

            vacuum = vacuumer.run(
                connect, tally, interval=settings.vacuum_interval, stopping=stopping
            )
            duties.append(("vacuum", vacuum))
        if settings.periodic_interval > 0 and self.queue.periodic_tasks:
            periodics = list(self.queue.periodic_tasks.values())
            schedule = scheduler.run(
                db, tally, periodics, interval=settings.periodic_interval, stopping=stopping
            )
            duties.append(("periodic", schedule))
        if settings.max_memory_mb > 0:
            duties.append(("memory", memory.run(settings.max_memory_mb, self._over_memory)))
        return duties

    def _is_stopping(self) -> bool:
        return self._stopping

    def _over_memory(self, resident: float) -> None:
        """The memory limit was crossed: fail the running attempts (they are
        the suspects, and an attempt is charged, as an OOM kill would) and stop."""
        limit = self.settings.max_memory_mb
        running = self.keeper.running()
        self._over_memory_limit = (
            f"worker {self.worker_id} exceeded its memory limit of {limit:.0f} MiB "
            f"(resident {resident:.0f} MiB)"
        )
        log.error(
            "%s; failing %d running attempts and stopping", self._over_memory_limit, len(running)
        )
        for lease in running:
            lease.stop_task("memory", f"{self._over_memory_limit} while this attempt ran")
        self.stop()
        self._hard_stop = True

    async def _listen_loop(self) -> None:
        await listen_forever(
            self.queue.listen_connection,
            ("pgqueue_enqueue", "pgqueue_cancel"),
            self._on_notify,
            on_connect=self._wakeup.set,  # anything enqueued while we were not listening
            logger=log,
        )

    def _on_notify(self, channel: str, payload: str) -> None:
        if channel == "pgqueue_enqueue":
            if payload in self.queues:
                self._wakeup.set()
        elif channel == "pgqueue_cancel":
            with contextlib.suppress(ValueError):
                self.keeper.cancelled(int(payload))

    # -- shutdown ----------------------------------------------------------------------

    async def _drain(self, phases: _Phases) -> None:
        """Stop: let running jobs finish within the grace period, hand back the
        rest, and write every outcome before returning."""
        running = len(self.keeper.running())
        if running:
            log.info(
                "stopping: waiting up to %.0fs for %d running jobs",
                self.settings.shutdown_grace,
                running,
            )
        # Both deadlines count from the stop request: time the claim loop spent
        # ending (waiting for a connection in an outage) is not added to them.
        begin = self._stop_requested or time.monotonic()
        deadline = begin + self.settings.shutdown_grace
        while self.keeper.running() and time.monotonic() < deadline and not self._hard_stop:
            self._slot_freed.clear()
            await wait_event(self._slot_freed, 0.1)
        phases.mark("grace")
        for lease in self.keeper.running():
            if lease.body is not None:
                # Async bodies are cancelled; a thread cannot be interrupted, so
                # only its future is. Either way the job is handed back (a
                # stop already under way keeps its reason).
                lease.stop_task(lease.stop or "shutdown", lease.stop_error)
        # Outcomes take milliseconds to write; the deadline only matters when
        # the database is unreachable, and then waiting longer does not help.
        deadline = begin + self.settings.shutdown_grace + OUTCOME_DEADLINE
        deadline = max(deadline, time.monotonic() + 1.0)
        if self._outcomes_pending:
            await asyncio.wait(
                set(self._outcomes_pending), timeout=max(0.0, deadline - time.monotonic())
            )
        while self.completer.busy and time.monotonic() < deadline:
            self.completer.wake()
            await asyncio.sleep(0.01)
        phases.mark("outcomes")
        # Whatever is still retrying a database call now gives up: the jobs
        # concerned will be rescued.
        self._hard_stop = True
        handed_back = 0
        try:
            # Each call may wait for a connection, or on one gone silent: the
            # whole hand-back shares the outcome deadline (these jobs are
            # rescued anyway), so it cannot push the exit past its bound.
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                for lease in self._release_at_exit:
                    await self.completer.record(
                        lease.key, Release(timedelta(seconds=THREAD_RELEASE_DELAY))
                    )
                    handed_back += 1
        except TimeoutError:
            log.warning(
                "%d jobs not handed back before the outcome deadline; they will be rescued",
                len(self._release_at_exit) - handed_back,
            )
        phases.mark("releases")


class _Phases:
    """How long each step of a shutdown took, for the worker's last log line:
    a slow exit names its step."""

    def __init__(self) -> None:
        self._since: float | None = None
        self._took: list[tuple[str, float]] = []

    def start(self, at: float | None) -> None:
        if self._since is None:
            self._since = time.monotonic() if at is None else at

    def mark(self, name: str) -> None:
        now = time.monotonic()
        self._took.append((name, now - (self._since or now)))
        self._since = now

    def __str__(self) -> str:
        return ", ".join(f"{name} {took:.2f}s" for name, took in self._took)


async def _stop_tasks(
    tasks: Sequence[asyncio.Task[Any]], within: float = 5.0
) -> set[asyncio.Task[Any]]:
    """Cancel ``tasks`` and wait until they have ended, cancelling again any
    that swallowed a cancel (Python 3.11's ``asyncio.wait_for`` can), so a
    stopping worker never waits forever on a background loop. Tasks still
    running after ``within`` seconds are logged, left behind and returned."""
    pending = {task for task in tasks if not task.done()}
    deadline = time.monotonic() + within
    while pending and time.monotonic() < deadline:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)
    if pending:
        log.error(
            "background tasks did not stop within %.0fs: %s",
            within,
            ", ".join(sorted(task.get_name() for task in pending)),
        )
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())
    return pending


async def run_worker(
    queue: Queue,
    *,
    queues: Sequence[str] | None = None,
    until_idle: bool = False,
    **settings: Any,
) -> Worker:
    """Create a :class:`Worker` and run it; returns it once it has stopped."""
    worker = Worker(queue, queues=queues, **settings)
    await worker.run(until_idle=until_idle)
    return worker
