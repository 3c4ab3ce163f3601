"""The worker: claims jobs, runs their tasks, reports outcomes, keeps leases alive.

Design notes (the why; the what is in docs/operations.md):

- Claims are sized to free slots and run as one statement (``pgqueue.claim``).
- Successful outcomes are buffered and flushed with one ``complete_many`` call;
  while one flush is in flight the next batch accumulates, so the batch grows
  with load and latency stays low when idle.
- One heartbeat statement refreshes every lease the worker holds, including
  results still waiting to be flushed; a lease missing from its answer was
  lost (rescued, cancelled) and its task is stopped.
- Idle workers wait on NOTIFY ``pgqueue_enqueue`` with a jittered poll as the
  backstop; the LISTEN connection reconnects after a database restart.
- Every worker with periodic tasks runs the scheduler (``pgqueue/_periodic.py``):
  it wakes at the next tick by the database's clock (at most every
  ``periodic_interval``), and the database lets one worker enqueue each tick.
- All database calls go through :meth:`Worker._call`, which retries connection
  failures with backoff; refusals (stale lease) are final and logged.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
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
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from . import _connect, _metrics
from ._completer import Completer, Outcome, Stopped, Success, format_error
from ._context import JobContext
from ._database import ClaimedJob, Failure, Lease, Release, WorkerDatabase
from ._maintenance import Tally, jitter, memory, pruner, rescuer, scheduler, vacuumer
from ._notifier import listen_forever, wait_event
from ._queue import Queue, Task, encode_json
from .errors import (
    ConfigurationError,
    DatabaseUnavailable,
    MemoryLimitExceeded,
    NonRetryableError,
    StaleLease,
)

log = logging.getLogger("pgqueue.worker")

# What a task that returns None stores (JSON null), made once, not per job.
_NULL_RESULT = Jsonb(None, dumps=lambda _value: "null")

CLAIM_GATHER = 0.002
"""Seconds a busy worker waits for more free slots before a small claim."""

OUTCOME_DEADLINE = 10.0
"""Seconds a stopping worker spends writing outcomes before giving up on them
(their leases are then rescued)."""

THREAD_RELEASE_DELAY = 2.0
"""Seconds before a job whose sync thread could not be stopped at shutdown
becomes claimable again."""


@dataclasses.dataclass(eq=False)
class _Lease:
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
    stop: str | None = None  # why the worker stopped it: lost, cancelled, shutdown
    finished: bool = False  # the task body has ended; its outcome may be unflushed
    # one progress write at a time, so the last report is written after the others
    progress_lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)

    @property
    def key(self) -> Lease:
        return Lease(self.job_id, self.attempt)


def _flag(
    name: str, help_text: str, *, type: type[Any], metavar: str | None = None
) -> dict[str, Any]:
    """The ``pgqueue worker`` option of a setting (pgqueue.cli builds the
    worker's options from these, so a new setting gets its flag here)."""
    return {"flag": name, "help": help_text, "type": type, "metavar": metavar}


@dataclasses.dataclass(frozen=True)
class WorkerSettings:
    """Tuning knobs of :class:`Worker`; every default suits production."""

    concurrency: int = dataclasses.field(
        default=10, metadata=_flag("--concurrency", "jobs at once (default 10)", type=int)
    )
    """Jobs run at once (async tasks on the loop, sync tasks in as many threads)."""
    poll_interval: float = dataclasses.field(
        default=1.0, metadata=_flag("--poll-interval", "idle poll seconds", type=float)
    )
    """Seconds between claims when idle and no NOTIFY arrives (jittered +/-20 %)."""
    heartbeat_interval: float = dataclasses.field(
        default=5.0, metadata=_flag("--heartbeat-interval", "seconds (default 5)", type=float)
    )
    """Seconds between heartbeats of all leases (one statement)."""
    stale_after: float = dataclasses.field(
        default=20.0, metadata=_flag("--stale-after", "lease lost after (20 s)", type=float)
    )
    """Seconds without heartbeat after which another worker rescues a lease."""
    rescue_interval: float = dataclasses.field(
        default=5.0, metadata=_flag("--rescue-interval", "rescue pass every (5 s)", type=float)
    )
    """Seconds between rescue passes (one worker at a time runs one)."""
    shutdown_grace: float = dataclasses.field(
        default=30.0, metadata=_flag("--shutdown-grace", "seconds (default 30)", type=float)
    )
    """Seconds running jobs get to finish after SIGTERM before being handed back."""
    listen: bool = dataclasses.field(
        default=True, metadata=_flag("--no-listen", "poll only, no LISTEN/NOTIFY", type=bool)
    )
    """Wake on LISTEN/NOTIFY; False polls only (e.g. behind a transaction pooler)."""
    progress_interval: float = 0.25
    """Seconds between progress writes of one job (reports in between coalesce)."""
    progress_history: int = dataclasses.field(
        default=100,
        metadata=_flag("--progress-history", "progress reports kept per job (100)", type=int),
    )
    """Progress reports kept per job in ``pgqueue.progress_history`` (0: none)."""
    retain_completed: float = dataclasses.field(
        default=86400.0,
        metadata=_flag("--retain-completed", "keep completed jobs (1 day)", type=float),
    )
    """Seconds a completed job (and its history) is kept before it is pruned."""
    retain_failed: float = dataclasses.field(
        default=7 * 86400.0,
        metadata=_flag("--retain-failed", "keep other ended jobs (7 days)", type=float),
    )
    """Seconds a job that ended any other way is kept (errors are kept longer)."""
    prune_interval: float = dataclasses.field(
        default=60.0,
        metadata=_flag("--prune-interval", "retention pass every (60 s; 0: off)", type=float),
    )
    """Seconds between retention passes (one worker at a time); 0 disables them."""
    vacuum_interval: float = dataclasses.field(
        default=5.0,
        metadata=_flag(
            "--vacuum-interval",
            "VACUUM pgqueue's tables when full of dead rows, checked every (5 s; 0: off)",
            type=float,
        ),
    )
    """Seconds between checks of pgqueue's tables for dead rows; one worker at a
    time VACUUMs those with at least 10,000 (and a tenth of their live rows).
    Every claim, completion and prune leaves dead row versions, and autovacuum
    visits a database about once a minute: under heavy load the table would
    bloat in between and claims slow down. 0 leaves it all to autovacuum (a
    role that does not own the tables is left to it anyway)."""
    periodic_interval: float = dataclasses.field(
        default=5.0,
        metadata=_flag(
            "--periodic-interval",
            "periodic scheduler: longest sleep between passes (5 s; 0: off in this worker)",
            type=float,
        ),
    )
    """Longest sleep of the periodic scheduler between passes (it wakes at each
    due tick anyway, by the database's clock); 0 disables it in this worker."""
    max_memory_mb: float = dataclasses.field(
        default=0.0,
        metadata=_flag(
            "--max-memory",
            "resident memory limit: over it, running attempts fail and the worker exits 1",
            metavar="MIB",
            type=float,
        ),
    )
    """Resident memory (MiB) above which the worker stops: its running attempts
    fail (charged, so a leaking job ends ``dead_letter`` instead of taking down
    worker after worker) and :meth:`Worker.run` raises
    :class:`MemoryLimitExceeded` so the process can be restarted. 0: no limit."""
    pool_size: int = 4
    """Database connections for claims, outcomes and heartbeats (tasks use none)."""
    startup_timeout: float = dataclasses.field(
        default=60.0,
        metadata=_flag("--startup-timeout", "wait for the database (60 s)", type=float),
    )
    """Seconds to wait for the database at start before giving up (once running,
    a worker rides out outages of any length)."""
    metrics_port: int | None = dataclasses.field(
        default=None,
        metadata=_flag(
            "--metrics-port",
            "serve Prometheus metrics at http://HOST:PORT/metrics (default: off)",
            metavar="PORT",
            type=int,
        ),
    )
    """Serve this worker's metrics in Prometheus text format at ``/metrics`` on
    this TCP port (0: any free port, see :attr:`Worker.metrics_address`);
    None: no metrics endpoint."""
    metrics_host: str = dataclasses.field(
        default="127.0.0.1",
        metadata=_flag(
            "--metrics-host", "address the metrics endpoint binds (default 127.0.0.1)", type=str
        ),
    )
    """Address the metrics endpoint binds (``0.0.0.0`` to scrape it from elsewhere)."""

    def __post_init__(self) -> None:
        positive = (
            "startup_timeout",
            "poll_interval",
            "heartbeat_interval",
            "stale_after",
            "rescue_interval",
            "progress_interval",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"{name} must be positive, not {getattr(self, name)!r}")
        if self.concurrency < 1:
            raise ConfigurationError("concurrency must be at least 1")
        if self.pool_size < 2:
            raise ConfigurationError("pool_size must be at least 2")
        if self.shutdown_grace < 0:
            raise ConfigurationError("shutdown_grace must not be negative")
        for name in (
            "progress_history",
            "retain_completed",
            "retain_failed",
            "prune_interval",
            "vacuum_interval",
            "periodic_interval",
            "max_memory_mb",
        ):
            if getattr(self, name) < 0:
                raise ConfigurationError(
                    f"{name} must not be negative, not {getattr(self, name)!r}"
                )
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ConfigurationError(f"metrics_port must be 0..65535, not {self.metrics_port!r}")
        if self.stale_after <= self.heartbeat_interval * 2:
            raise ConfigurationError("stale_after must exceed two heartbeat intervals")


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
        self._leases: dict[Lease, _Lease] = {}
        self._running = 0  # leases whose body has not ended
        self._until_idle = False
        self._stopping = False
        self._stop_requested: float | None = None  # monotonic time of the first stop()
        self._hard_stop = False
        self._wakeup = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._progress_ready = asyncio.Event()
        self._outcomes_pending: set[asyncio.Task[None]] = set()
        self._abandoned: list[concurrent.futures.Future[Any]] = []
        self._release_at_exit: list[_Lease] = []
        self._rate_limited: bool | None = None  # was a queue held back by its rate limit?
        self._last_beat = time.monotonic()  # when the last heartbeat that got through was sent
        self._database_class = database
        self._db: WorkerDatabase | None = None
        self._threads: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._memory_error: str | None = None
        self._metrics_server: asyncio.Server | None = None
        self.jobs_done = 0
        """Attempts this worker finished (any outcome); for tests and the demo."""
        self.completer = Completer(
            lambda: self.db,
            forget=self._forget,
            held=lambda key: key in self._leases,
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
        self._threads = ThreadPoolExecutor(
            max_workers=self.settings.concurrency, thread_name_prefix="pgqueue-task"
        )
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
            asyncio.create_task(self._heartbeat_loop(), name="pgqueue-heartbeat"),
            asyncio.create_task(self._fence_loop(), name="pgqueue-fence"),
            asyncio.create_task(self._progress_loop(), name="pgqueue-progress"),
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
            self._threads.shutdown(wait=False, cancel_futures=True)
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
        if self._memory_error is not None:
            raise MemoryLimitExceeded(self._memory_error.split(" while ")[0])

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
            [({}, len(self._leases))],
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
        self._abandoned = [f for f in self._abandoned if not f.done()]
        return len(self._abandoned)

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
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
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
                    2 * settings.concurrency - len(self._leases),
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
                    idle = not claimed and not self._leases and not self.completer.busy
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
            if lease not in self._leases:
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
            on_progress=self._progress_reported,
        )
        lease = _Lease(job_id, attempt, job.task, ctx, job.timeout, renewed=job.leased)
        self._leases[lease.key] = lease
        self._running += 1
        runner = asyncio.create_task(self._execute(lease), name=f"pgqueue-job-{job_id}")
        self._outcomes_pending.add(runner)
        runner.add_done_callback(self._outcomes_pending.discard)

    # -- running a job -----------------------------------------------------------------

    async def _execute(self, lease: _Lease) -> None:
        """Run one attempt and hand its outcome to the completer."""
        outcome = await self._attempt(lease)
        if outcome is not None:
            await self.completer.record(lease.key, outcome)

    async def _attempt(self, lease: _Lease) -> Outcome | None:
        """Run one attempt; its outcome, or None when there is none to write
        now (a shutdown holds a thread that cannot be stopped: its job is
        handed back just before the process exits)."""
        task = self.queue.tasks.get(lease.task_name)
        # no timeout, no timer: asyncio.timeout(None) would still cost its setup
        timeout_cm = None if lease.timeout is None else asyncio.timeout(lease.timeout)
        timed_out = False
        try:
            if task is None:  # claim filters by task name; kept as a safety net
                raise NonRetryableError(
                    f"unknown task {lease.task_name!r}: "
                    f"worker {self.worker_id} does not register it"
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
                self._finish(lease)
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
            self._finish(lease)
            return Success(payload)
        await self._last_progress(lease)
        self._finish(lease)
        retry_delay = task.retry_delay if task is not None else None
        return _failure(error, retryable, timed_out, retry_delay)

    async def _last_progress(self, lease: _Lease) -> None:
        """Write a progress report the task made just before it ended and the
        progress loop has not written yet, so the history keeps the last step;
        wait for a write of this lease still under way. Most tasks report none
        (the body has ended, so no new report can come): nothing to await."""
        if lease.ctx.progress_unwritten or lease.progress_lock.locked():
            await self._write_progress_of(lease)

    async def _join_thread(self, lease: _Lease) -> bool:
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

    def _stopped(self, lease: _Lease) -> Outcome | None:
        """The outcome of an attempt the worker stopped (``lease.stop`` says why)."""
        self._finish(lease)
        thread_alive = lease.thread is not None and not lease.thread.done()
        if thread_alive:
            assert lease.thread is not None
            self._abandon(lease.thread)
        if lease.stop == "memory":
            return _failure(self._memory_error or "memory limit exceeded", retryable=True)
        if lease.stop == "shutdown":
            if thread_alive:
                # Released as the very last step of shutdown, just before the
                # process exits (pgqueue.cli), so no other worker runs the job
                # while this thread still does.
                self._release_at_exit.append(lease)
                return None
            return Release()
        return Stopped(lease.stop or "stopped")

    def _abandon(self, thread: concurrent.futures.Future[Any]) -> None:
        """A stopped sync task's thread runs on; it holds a slot until it returns."""
        self._abandoned.append(thread)
        loop = self._loop
        if loop is not None:
            thread.add_done_callback(lambda _: loop.call_soon_threadsafe(self._slot_freed.set))

    def _body(self, task: Task[Any], lease: _Lease) -> asyncio.Future[Any]:
        if task.is_async:
            coroutine: Coroutine[Any, Any, Any] = task.fn(lease.ctx, **lease.ctx.args)
            return asyncio.ensure_future(coroutine)
        assert self._threads is not None
        lease.thread = self._threads.submit(task.fn, lease.ctx, **lease.ctx.args)
        return asyncio.wrap_future(lease.thread)

    def _result_payload(self, task: Task[Any], result: Any) -> Jsonb:
        if result is None:
            return _NULL_RESULT
        try:
            return encode_json(
                result, f"the result of task {task.name!r}", self.queue.max_payload_bytes
            )
        except (TypeError, ValueError) as exc:
            raise NonRetryableError(
                f"task {task.name!r} returned a value that cannot be stored as JSON: {exc}"
            ) from None

    def _forget(self, key: Lease) -> None:
        """Forget a lease whose outcome is written (or refused, or left for rescue)."""
        self._leases.pop(key, None)
        self._slot_freed.set()
        if self._until_idle and not self._leases:
            self._wakeup.set()  # the idle check may be waiting for the last outcome

    def _finish(self, lease: _Lease) -> None:
        """The body ended: free its slot (the lease stays until its outcome is written)."""
        if lease.finished:
            return
        lease.finished = True
        self._running -= 1
        self.jobs_done += 1
        self._slot_freed.set()

    # -- background loops ------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        settings = self.settings
        while True:
            await asyncio.sleep(settings.heartbeat_interval)
            leases = list(self._leases.values())
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
                    held = await self.db.heartbeat(
                        self.worker_id,
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
                    self._lost(lease, "lost")

    async def _fence_loop(self) -> None:
        """Self-fencing: once a lease's last renewal that got through is nearly
        a lease timeout old, other workers may soon rescue and re-run its job,
        so stop its task now rather than run it twice at once. Each lease counts
        from its own renewal: one claimed after an outage is as fresh as its claim."""
        settings = self.settings
        limit = settings.stale_after - settings.heartbeat_interval
        while True:
            await asyncio.sleep(settings.heartbeat_interval / 4)
            now = time.monotonic()
            stale = [
                lease
                for lease in self._leases.values()
                if not lease.finished and now - lease.renewed > limit
            ]
            if stale:
                log.error(
                    "no heartbeat for %.0fs: stopping %d tasks before their leases are rescued",
                    now - min(lease.renewed for lease in stale),
                    len(stale),
                )
                for lease in stale:
                    self._lost(lease, "lost")

    def _lost(self, lease: _Lease, reason: str) -> None:
        """The lease is gone (cancelled or rescued): stop the task, report nothing."""
        if lease.finished or lease.key not in self._leases:
            return
        log.warning(
            "job %s attempt %s: lease %s; stopping its task", lease.job_id, lease.attempt, reason
        )
        lease.stop = reason
        lease.ctx.request_stop(reason)
        if lease.body is not None:
            lease.body.cancel()

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
        running = [lease for lease in self._leases.values() if not lease.finished]
        self._memory_error = (
            f"worker {self.worker_id} exceeded its memory limit of {limit:.0f} MiB "
            f"(resident {resident:.0f} MiB) while this attempt ran"
        )
        log.error("%s; failing %d running attempts and stopping", self._memory_error, len(running))
        for lease in running:
            lease.stop = "memory"
            lease.ctx.request_stop("memory")
            if lease.body is not None:
                lease.body.cancel()
        self.stop()
        self._hard_stop = True

    def _progress_reported(self, ctx: JobContext) -> None:
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

    async def _progress_loop(self) -> None:
        while True:
            await self._progress_ready.wait()
            self._progress_ready.clear()
            await self._write_progress()
            await asyncio.sleep(self.settings.progress_interval)

    async def _write_progress(self) -> None:
        for lease in list(self._leases.values()):
            if not lease.finished:
                await self._write_progress_of(lease)

    async def _write_progress_of(self, lease: _Lease) -> None:
        async with lease.progress_lock:
            report = lease.ctx.take_progress()
            if report is None:
                return
            pct, message = report
            try:
                await self.db.progress(
                    lease.key,
                    pct,
                    message,
                    history=self.settings.progress_history,
                    give_up=self.settings.heartbeat_interval,
                )
            except StaleLease:
                self._lost(lease, "lost")
            except Exception:
                log.exception("could not record progress of job %s", lease.job_id)

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
                job_id = int(payload)
                for lease in [lease for lease in self._leases.values() if lease.job_id == job_id]:
                    self._lost(lease, "cancelled")

    # -- shutdown ----------------------------------------------------------------------

    async def _drain(self, phases: _Phases) -> None:
        """Stop: let running jobs finish within the grace period, hand back the
        rest, and write every outcome before returning."""
        running = sum(1 for lease in self._leases.values() if not lease.finished)
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
        while (
            any(not lease.finished for lease in self._leases.values())
            and time.monotonic() < deadline
            and not self._hard_stop
        ):
            self._slot_freed.clear()
            await wait_event(self._slot_freed, 0.1)
        phases.mark("grace")
        for lease in list(self._leases.values()):
            if not lease.finished and lease.body is not None:
                # Async bodies are cancelled; a thread cannot be interrupted, so
                # only its future is. Either way _execute hands the job back.
                lease.stop = lease.stop or "shutdown"
                lease.ctx.request_stop(lease.stop)
                lease.body.cancel()
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
