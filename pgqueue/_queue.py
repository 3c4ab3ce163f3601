"""The client side: :class:`Queue` (tasks, enqueue, inspect, wait) and :class:`Task`."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import json
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Generic, Literal, LiteralString, TypeVar, overload

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from . import _connect, _migrate
from ._connect import resolve_dsn
from ._context import JobContext
from ._database import ClientDatabase, NewBatch, NewJob, NewJobs
from ._job import Attempt, Batch, Job, ProgressEntry
from ._notifier import listen_forever, wait_event
from ._periodic import Periodic, SchedulePass, make_periodic, schedule_due, schedule_status
from ._status import BatchStatus, JobStatus
from .errors import (
    BatchFailed,
    BatchNotFound,
    ConfigurationError,
    InvalidJobError,
    JobFailed,
    JobNotFound,
    UnknownTaskError,
    translate,
)

R = TypeVar("R")
TaskFunction = Callable[..., Any]

RESERVED_ARGUMENTS = frozenset({"conn"})
"""Keyword names ``Task.enqueue`` keeps for itself; a task may not take them."""

_MAX_QUEUE_NAME = 128
_MAX_DEDUPE_KEY = 512

DedupeKey = str | Callable[[Mapping[str, Any]], str | None]
"""A unique job's key: a string, or a function of the job's arguments (None: no key)."""

DedupeScope = Literal["pending", "active"] | timedelta | float
"""How long a unique job holds its key: ``"pending"`` (until it first starts),
``"active"`` (until it finishes), or a window (a timedelta or seconds) after
its creation. See docs/scheduling.md."""


@dataclasses.dataclass(frozen=True, slots=True)
class EnqueueOptions:
    """How a job is enqueued; unset fields fall back to the task's defaults."""

    queue: str | None = None
    priority: int | None = None
    run_at: datetime | None = None
    delay: float | timedelta | None = None
    max_attempts: int | None = None
    timeout: float | timedelta | None = None
    owner: str | None = None
    metadata: Mapping[str, Any] | None = None
    dedupe_key: DedupeKey | None = None
    dedupe_scope: DedupeScope = "pending"
    concurrency_key: DedupeKey | None = None
    concurrency_limit: int = 1


_NO_ARGS = Jsonb({})


def _seconds(value: float | timedelta | None, field: str, *, allow_zero: bool) -> timedelta | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | timedelta):
        raise InvalidJobError(f"{field} must be seconds or a timedelta, not {value!r}", field=field)
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidJobError(
            f"{field} must be a finite number of seconds, not {value!r}", field=field
        )
    try:
        delta = value if isinstance(value, timedelta) else timedelta(seconds=value)
    except OverflowError:
        raise InvalidJobError(f"{field} is too large: {value!r}", field=field) from None
    if delta < timedelta(0) or (delta == timedelta(0) and not allow_zero):
        raise InvalidJobError(
            f"{field} must be {'>= 0' if allow_zero else 'positive'}, not {value!r}", field=field
        )
    return delta


DEFAULT_MAX_PAYLOAD_BYTES = 1_048_576
"""Largest JSON text accepted for a job's arguments, metadata or result."""


_ENCODER = json.JSONEncoder(allow_nan=False)  # what json.dumps(allow_nan=False) builds per call


class PayloadRefused(ValueError):
    """A JSON value pgqueue will not store: a NUL character, over the size
    limit, or nested too deeply to encode."""


def json_text(value: Any, what: str, limit: int) -> str:
    """``value`` as JSON text. Raises ``ValueError`` naming ``what`` for NaN,
    Infinity (jsonb has neither), NUL characters or a text over ``limit``
    bytes; ``TypeError`` for values JSON cannot represent."""
    try:
        text = _ENCODER.encode(value)
    except RecursionError:
        raise PayloadRefused(f"{what} is nested too deeply to encode as JSON") from None
    # The text is ASCII (ensure_ascii) and escapes NUL as \u0000: look there
    # first, and walk the value only to tell a NUL from a literal "\u0000".
    if "\\u0000" in text and _has_nul(value):
        raise PayloadRefused(
            f"{what} contains a NUL character (\\u0000), which PostgreSQL cannot store"
        )
    size = len(text)
    if size > limit:
        raise PayloadRefused(f"{what} is {size:,} bytes of JSON, over the limit of {limit:,}")
    return text


def encode_json(value: Any, what: str, limit: int) -> Jsonb:
    """``value`` as a jsonb parameter, encoded once (the text is reused when the
    query is sent); errors as :func:`json_text`."""
    text = json_text(value, what, limit)
    return Jsonb(value, dumps=lambda _value: text)


def _json_object_text(
    value: Mapping[str, Any],
    what: str,
    limit: int = DEFAULT_MAX_PAYLOAD_BYTES,
    *,
    field: str | None = None,
) -> str:
    """Check that ``value`` is a JSON object within ``limit`` bytes, naming the
    offending key if it is not JSON; return its JSON text. Refusals are
    :class:`InvalidJobError` about ``field``."""
    if not isinstance(value, Mapping):
        raise InvalidJobError(
            f"{what} must be a mapping of names to JSON values, not {value!r}", field=field
        )
    try:
        return json_text(value if type(value) is dict else dict(value), what, limit)
    except PayloadRefused as exc:
        raise InvalidJobError(str(exc), field=field) from None
    except (TypeError, ValueError) as exc:
        for key, item in value.items():
            try:
                json.dumps(item, allow_nan=False)
            except (TypeError, ValueError):
                raise InvalidJobError(
                    f"{what}: {key!r} is not JSON-serialisable ({type(item).__name__}): {exc}",
                    field=field,
                ) from None
        raise InvalidJobError(f"{what} is not JSON-serialisable: {exc}", field=field) from None


def _json_object(
    value: Mapping[str, Any],
    what: str,
    limit: int = DEFAULT_MAX_PAYLOAD_BYTES,
    *,
    field: str | None = None,
) -> Jsonb:
    """:func:`_json_object_text` as a jsonb parameter (of a plain dict copy)."""
    text = _json_object_text(value, what, limit, field=field)
    return Jsonb(value if type(value) is dict else dict(value), dumps=lambda _value: text)


def _dedupe_scope(scope: object) -> tuple[str, timedelta | None]:
    """The SQL scope name and window of a :data:`DedupeScope`."""
    if scope in ("pending", "active"):
        return str(scope), None
    if isinstance(scope, str):
        raise InvalidJobError(
            f"dedupe_scope must be 'pending', 'active' or a window (seconds or a timedelta), "
            f"not {scope!r}",
            field="dedupe_scope",
        )
    window = _seconds(scope, "dedupe_scope window", allow_zero=False)  # type: ignore[arg-type]
    return "window", window


def _dedupe_key(
    key: DedupeKey | None, args: Mapping[str, Any], field: str = "dedupe_key"
) -> str | None:
    """The key of one job: ``key`` itself, or what it returns for ``args``
    (also used for ``concurrency_key``, named by ``field``)."""
    if key is None:
        return None
    if callable(key):
        try:
            key = key(args)
        except Exception as exc:
            raise InvalidJobError(f"{field} function failed: {exc!r}", field=field) from exc
        if key is None:
            return None
    if not isinstance(key, str) or not 1 <= len(key) <= _MAX_DEDUPE_KEY or "\x00" in key:
        raise InvalidJobError(
            f"{field} must be 1 to {_MAX_DEDUPE_KEY} characters, not {key!r}", field=field
        )
    return key


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, Mapping):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_nul(v) for v in value)
    return False


class Task(Generic[R]):
    """A function registered on a :class:`Queue` with ``@queue.task``.

    Call ``await task.enqueue(**args)`` (or ``task.enqueue_sync(**args)``) to
    enqueue a job; pass ``conn=`` to enqueue inside your own transaction. Use
    ``task.options(delay=..., priority=...)`` to override defaults per call.
    Calling the task object runs the function directly (handy in tests).
    """

    def __init__(
        self,
        queue: Queue,
        fn: Callable[..., R],
        *,
        name: str,
        queue_name: str,
        max_attempts: int,
        timeout: float | None,
        priority: int,
        retry_delay: float | None,
    ) -> None:
        self._queue = queue
        self.fn = fn
        self.name = name
        self.queue_name = queue_name
        self.max_attempts = max_attempts
        self.timeout = timeout
        self.priority = priority
        self.retry_delay = retry_delay
        self.is_async = inspect.iscoroutinefunction(fn)
        self._signature = inspect.signature(fn)
        # For the fast argument check of check_args (bulk enqueues check many).
        params = list(self._signature.parameters.values())
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        named = [p for p in params[1:] if p.kind in kinds]
        self._first = params[0].name if params else ""
        self._allowed = frozenset(p.name for p in named)
        self._required = frozenset(p.name for p in named if p.default is p.empty)
        self._any_keyword = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
        self._simple = all(
            p.kind is not inspect.Parameter.POSITIONAL_ONLY or p.default is not p.empty
            for p in params[1:]
        )
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", name)

    def __call__(self, ctx: JobContext, /, **kwargs: Any) -> R:
        return self.fn(ctx, **kwargs)

    def __repr__(self) -> str:
        return f"<Task {self.name!r} queue={self.queue_name!r}>"

    def check_args(self, args: Mapping[str, Any]) -> None:
        """Raise :class:`InvalidJobError` if ``args`` do not fit the function."""
        keys = args.keys()
        if (
            self._simple
            and self._required <= keys
            and (keys <= self._allowed or (self._any_keyword and self._first not in keys))
        ):
            return  # what Signature.bind would accept, checked with two set operations
        try:
            self._signature.bind(None, **args)
        except TypeError as exc:
            raise InvalidJobError(f"task {self.name!r}: {exc}", field="args") from None

    def options(self, **options: Any) -> BoundTask[R]:
        """This task with per-call options (``queue``, ``priority``, ``run_at``,
        ``delay``, ``max_attempts``, ``timeout``, ``owner``, ``metadata``,
        ``dedupe_key``, ``dedupe_scope``, ``concurrency_key``, ``concurrency_limit``)."""
        try:
            return BoundTask(self, EnqueueOptions(**options))
        except TypeError as exc:
            raise InvalidJobError(f"task {self.name!r}: {exc}") from None

    async def enqueue(self, conn: psycopg.AsyncConnection[Any] | None = None, **args: Any) -> int:
        """Enqueue one job of this task; returns its id."""
        return await self._queue.enqueue(self, args, conn=conn)

    def enqueue_sync(self, conn: psycopg.Connection[Any] | None = None, **args: Any) -> int:
        """Blocking form of :meth:`enqueue`, for synchronous applications."""
        return self._queue.enqueue_sync(self, args, conn=conn)


class BoundTask(Generic[R]):
    """A :class:`Task` with per-call enqueue options (from ``task.options()``)."""

    def __init__(self, task: Task[R], options: EnqueueOptions) -> None:
        self.task = task
        self.opts = options

    async def enqueue(self, conn: psycopg.AsyncConnection[Any] | None = None, **args: Any) -> int:
        return await self.task._queue.enqueue(self.task, args, conn=conn, options=self.opts)

    def enqueue_sync(self, conn: psycopg.Connection[Any] | None = None, **args: Any) -> int:
        return self.task._queue.enqueue_sync(self.task, args, conn=conn, options=self.opts)


class Queue:
    """The entry point: registers tasks and talks to PostgreSQL.

    ``Queue()`` takes its DSN from ``PGQUEUE_DSN`` (or ``DATABASE_URL``) and
    otherwise starts an embedded PostgreSQL under ``./.pgqueue``. Connection
    pools open on first use; close them with ``await queue.close()`` (or use
    ``async with queue``).

    Every operation on jobs, batches, queues and schedules reaches PostgreSQL
    through :attr:`database`, an instance of ``database``
    (:class:`pgqueue._database.ClientDatabase`; a test passes a subclass to
    inject faults, as ``Worker(database=...)`` does). LISTEN sessions (the
    waits) and migrations open connections of their own.
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        pool_size: int = 5,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        listen_dsn: str | None = None,
        database: type[ClientDatabase] = ClientDatabase,
    ) -> None:
        if (
            isinstance(max_payload_bytes, bool)
            or not isinstance(max_payload_bytes, int)
            or (max_payload_bytes < 1)
        ):
            raise ConfigurationError(
                f"max_payload_bytes must be a positive integer, not {max_payload_bytes!r}"
            )
        self._dsn_given = dsn
        self._listen_dsn_given = listen_dsn
        self.max_payload_bytes = max_payload_bytes
        """Largest JSON text accepted for a job's arguments, metadata or result."""
        self._dsn: str | None = None
        self._database = database(lambda: self.dsn, pool_size=pool_size)
        self.tasks: dict[str, Task[Any]] = {}
        self.periodic_tasks: dict[str, Periodic] = {}
        """The schedules registered with :meth:`periodic`, by name."""

    # -- configuration ---------------------------------------------------------------

    @property
    def dsn(self) -> str:
        """The resolved DSN (resolving it may start the embedded PostgreSQL)."""
        if self._dsn is None:
            self._dsn = resolve_dsn(self._dsn_given)
        return self._dsn

    @property
    def listen_dsn(self) -> str:
        """The DSN of connections that need a session of their own (LISTEN,
        the worker's vacuum pass): ``listen_dsn`` if given, else
        ``PGQUEUE_LISTEN_DSN``, else :attr:`dsn`. Behind a pooler in
        transaction mode, point it at the database directly."""
        if self._listen_dsn_given:
            return _connect.normalize_dsn(self._listen_dsn_given)
        return _connect.listen_dsn(self.dsn)

    @overload
    def task(self, fn: Callable[..., R]) -> Task[R]: ...

    @overload
    def task(
        self,
        *,
        name: str | None = None,
        queue: str = "default",
        max_attempts: int = 1,
        timeout: float | None = None,
        priority: int = 0,
        retry_delay: float | None = None,
    ) -> Callable[[Callable[..., R]], Task[R]]: ...

    def task(
        self,
        fn: Callable[..., Any] | None = None,
        *,
        name: str | None = None,
        queue: str = "default",
        max_attempts: int = 1,
        timeout: float | None = None,
        priority: int = 0,
        retry_delay: float | None = None,
    ) -> Any:
        """Register a task. Use bare (``@queue.task``) or with options.

        - ``name``: the name jobs carry (default: the function's ``__name__``).
        - ``queue``: the queue its jobs go to by default.
        - ``max_attempts``: total attempts including the first (1 = no retries).
        - ``timeout``: seconds an attempt may run before it is cancelled.
        - ``priority``: higher runs first.
        - ``retry_delay``: fixed seconds between attempts (default: exponential
          backoff 1 s, 2 s, 4 s... with jitter, capped at one hour).

        The function takes a :class:`JobContext` first, then keyword arguments
        that must be JSON-serialisable. It may be ``async def`` (run on the
        worker's event loop) or plain ``def`` (run in a worker thread).
        """

        def register(func: Callable[..., Any]) -> Task[Any]:
            task_name = name or func.__name__
            if task_name in self.tasks:
                raise ConfigurationError(f"a task named {task_name!r} is already registered")
            _check_queue_name(queue)
            _check_task_options(task_name, max_attempts, timeout, priority, retry_delay)
            params = list(inspect.signature(func).parameters.values())
            if not params or params[0].kind not in (
                inspect.Parameter.POSITIONAL_ONLY,
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
            ):
                raise ConfigurationError(
                    f"task {task_name!r} must take a JobContext as its first positional parameter"
                )
            clash = RESERVED_ARGUMENTS & {p.name for p in params[1:]}
            if clash:
                raise ConfigurationError(
                    f"task {task_name!r}: parameter name {sorted(clash)[0]!r} is reserved"
                )
            task = Task(
                self,
                func,
                name=task_name,
                queue_name=queue,
                max_attempts=max_attempts,
                timeout=timeout,
                priority=priority,
                retry_delay=retry_delay,
            )
            self.tasks[task_name] = task
            return task

        if fn is not None:
            return register(fn)
        return register

    def periodic(
        self,
        cron: str,
        *,
        timezone: str | tzinfo = "UTC",
        catch_up: int = 0,
        name: str | None = None,
        args: Mapping[str, Any] | None = None,
        **task_options: Any,
    ) -> Callable[[Callable[..., R] | Task[R]], Task[R]]:
        """Run a task on a cron schedule; decorate a function (registered as a
        task with ``task_options``, as by :meth:`task`) or a :class:`Task`.

        - ``cron``: five fields (minute hour day month weekday) or six with
          seconds last, read in ``timezone`` (an IANA name or a tzinfo).
        - ``catch_up``: after downtime, how many missed ticks to enqueue
          besides the latest due one (0, the default: skip them).
        - ``name``: the schedule's key (default: the task's name); give one
          per schedule to run a task on several.
        - ``args``: the arguments of every job of the schedule.

        Workers of the app enqueue each tick exactly once between them, by
        the database's clock (docs/scheduling.md).
        """

        def register(target: Callable[..., R] | Task[R]) -> Task[R]:
            if isinstance(target, Task):
                if task_options:
                    raise ConfigurationError(
                        "periodic: give task options to @queue.task, not to @queue.periodic"
                    )
                task = target
                if task._queue is not self:
                    raise ConfigurationError(f"task {task.name!r} belongs to another Queue")
            else:
                task = self.task(**task_options)(target)
            periodic = make_periodic(
                task,
                cron=cron,
                timezone=timezone,
                catch_up=catch_up,
                name=name,
                args=args,
                max_payload_bytes=self.max_payload_bytes,
            )
            if periodic.name in self.periodic_tasks:
                raise ConfigurationError(
                    f"a periodic schedule named {periodic.name!r} is already registered"
                )
            self.periodic_tasks[periodic.name] = periodic
            return task

        return register

    def get_task(self, name: str) -> Task[Any]:
        """The registered task ``name``; :class:`UnknownTaskError` lists the known ones."""
        try:
            return self.tasks[name]
        except KeyError:
            known = ", ".join(sorted(self.tasks)) or "none"
            raise UnknownTaskError(
                f"unknown task {name!r} (registered: {known})", field="task"
            ) from None

    @property
    def queue_names(self) -> list[str]:
        """The queues this app's tasks enqueue into by default."""
        return sorted({t.queue_name for t in self.tasks.values()}) or ["default"]

    def migrate(self) -> None:
        """Create or upgrade the pgqueue schema (same as ``pgqueue migrate``)."""
        _migrate.upgrade(self.dsn)

    # -- connections -----------------------------------------------------------------

    @property
    def database(self) -> ClientDatabase:
        """The queue's seam to PostgreSQL (:class:`pgqueue._database.ClientDatabase`):
        every operation the methods below perform, with typed rows."""
        return self._database

    async def pool(self) -> AsyncConnectionPool:
        """The async pool (autocommit connections), opened on first use."""
        return await self._database.pool()

    @property
    def pool_timeout(self) -> float | None:
        """Seconds a call waits for a pooled connection before it fails (None:
        psycopg_pool's default, 30 s). A web process sets it short, so that
        during an outage a request fails fast instead of hanging."""
        return self._database.pool_timeout

    @pool_timeout.setter
    def pool_timeout(self, seconds: float | None) -> None:
        self._database.pool_timeout = seconds

    async def schema_status(self, release: str, *, timeout: float = 2.0) -> tuple[str | None, bool]:
        """The schema's revision (None: pgqueue is not installed), and whether
        it serves the release whose head revision is ``release``: it is at
        that revision, or newer and says so (``pgqueue.served_revisions``, a
        rolling deploy). Raises if no connection comes within ``timeout``."""
        return await self._database.schema_status(release, timeout)

    def sync_pool(self) -> ConnectionPool:
        """The blocking pool used by the ``*_sync`` methods, opened on first use."""
        return self._database.sync_pool()

    async def listen_connection(
        self, *, connect_timeout: int | None = None
    ) -> psycopg.AsyncConnection[Any]:
        """A new autocommit connection to :attr:`listen_dsn`, for LISTEN (or
        anything else that needs a session of its own); the caller closes it."""
        dsn = await asyncio.to_thread(lambda: self.listen_dsn)
        extra = {} if connect_timeout is None else {"connect_timeout": connect_timeout}
        return await _connect.connect(dsn, **extra)

    async def close(self) -> None:
        """Close the pools this queue opened."""
        await self._database.close()

    async def __aenter__(self) -> Queue:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A connection of the queue's pool (autocommit), passing over any the
        server has ended: for reads of your own beside pgqueue's. Its errors
        are psycopg's;
        ``pgqueue.errors.translate(exc, ours=False)`` turns a lost connection
        into :class:`DatabaseUnavailable` and leaves the rest as they are."""
        async with self._database.connection() as conn:
            yield conn

    # -- enqueue ---------------------------------------------------------------------

    def _row(
        self,
        task: Task[Any] | str,
        args: Mapping[str, Any] | None,
        options: EnqueueOptions,
    ) -> NewJob:
        """Validate one job and resolve its defaults; raises :class:`InvalidJobError`."""
        resolved = self.get_task(task) if isinstance(task, str) else task
        template = self._resolve(resolved, options)
        args = {} if args is None else args
        return dataclasses.replace(
            template,
            args=self._args(resolved, args),
            dedupe_key=_dedupe_key(options.dedupe_key, args),
            concurrency_key=_dedupe_key(options.concurrency_key, args, "concurrency_key"),
        )

    def _args(self, task: Task[Any], args: Mapping[str, Any] | None) -> Jsonb:
        """The arguments of one job of ``task``, checked and encoded."""
        args = {} if args is None else args
        text = self._args_text(task, args)
        return Jsonb(args if type(args) is dict else dict(args), dumps=lambda _value: text)

    def _args_text(self, task: Task[Any], args: Mapping[str, Any]) -> str:
        """The JSON text of one job's arguments, checked against ``task``."""
        text = _json_object_text(
            args, f"arguments of task {task.name!r}", self.max_payload_bytes, field="args"
        )
        task.check_args(args)
        return text

    def _resolve(self, resolved: Task[Any], options: EnqueueOptions) -> NewJob:
        """A job of ``resolved`` with ``options`` applied and checked, but no
        arguments yet (bulk enqueues resolve this once for all their items)."""
        if resolved._queue is not self:
            raise InvalidJobError(f"task {resolved.name!r} belongs to another Queue", field="task")
        queue_name = resolved.queue_name if options.queue is None else options.queue
        _check_queue_name(queue_name, InvalidJobError)
        delay = _seconds(options.delay, "delay", allow_zero=True)
        if options.run_at is not None and delay is not None:
            raise InvalidJobError("give run_at or delay, not both")  # neither field alone
        run_at = options.run_at
        if run_at is not None:
            if run_at.tzinfo is None:
                raise InvalidJobError(
                    f"run_at must be timezone-aware, not {run_at!r}", field="run_at"
                )
            _check_run_at(run_at, "run_at")
        if delay:
            try:
                run_at = datetime.now().astimezone() + delay
            except OverflowError:
                raise InvalidJobError(
                    f"delay is too large: {options.delay!r}", field="delay"
                ) from None
            _check_run_at(run_at, "delay")
        max_attempts = (
            resolved.max_attempts if options.max_attempts is None else options.max_attempts
        )
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise InvalidJobError(
                f"max_attempts must be an integer >= 1, not {max_attempts!r}", field="max_attempts"
            )
        priority = resolved.priority if options.priority is None else options.priority
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise InvalidJobError(
                f"priority must be an integer, not {priority!r}", field="priority"
            )
        if not -(2**31) <= priority < 2**31:
            raise InvalidJobError(
                f"priority must fit in 32 bits, not {priority!r}", field="priority"
            )
        timeout = _seconds(
            options.timeout if options.timeout is not None else resolved.timeout,
            "timeout",
            allow_zero=False,
        )
        metadata = _json_object(
            {} if options.metadata is None else options.metadata,
            "metadata",
            self.max_payload_bytes,
            field="metadata",
        )
        owner = options.owner
        if owner is not None and (
            not isinstance(owner, str) or not 1 <= len(owner) <= 256 or "\x00" in owner
        ):
            raise InvalidJobError(
                f"owner must be 1 to 256 characters, not {owner!r}", field="owner"
            )
        if options.dedupe_key is not None and not (
            isinstance(options.dedupe_key, str) or callable(options.dedupe_key)
        ):
            raise InvalidJobError(
                f"dedupe_key must be a string or a function of the arguments, "
                f"not {options.dedupe_key!r}",
                field="dedupe_key",
            )
        dedupe_scope, dedupe_window = _dedupe_scope(options.dedupe_scope)
        if options.concurrency_key is not None and not (
            isinstance(options.concurrency_key, str) or callable(options.concurrency_key)
        ):
            raise InvalidJobError(
                f"concurrency_key must be a string or a function of the arguments, "
                f"not {options.concurrency_key!r}",
                field="concurrency_key",
            )
        limit = options.concurrency_limit
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit < 2**31:
            raise InvalidJobError(
                f"concurrency_limit must be an integer >= 1, not {limit!r}",
                field="concurrency_limit",
            )
        return NewJob(
            task=resolved.name,
            args=_NO_ARGS,
            queue=queue_name,
            priority=priority,
            run_at=run_at,
            max_attempts=max_attempts,
            timeout=timeout,
            owner=owner,
            metadata=metadata,
            dedupe_scope=dedupe_scope,
            dedupe_window=dedupe_window,
            concurrency_limit=limit,
        )

    async def enqueue(
        self,
        task: Task[Any] | str,
        args: Mapping[str, Any] | None = None,
        *,
        conn: psycopg.AsyncConnection[Any] | None = None,
        options: EnqueueOptions | None = None,
        **option_values: Any,
    ) -> int:
        """Enqueue one job and return its id.

        ``task`` is a :class:`Task` or a registered name; ``args`` its keyword
        arguments. With ``conn`` the job is written inside that connection's
        current transaction, so it exists iff the transaction commits. Options
        (``queue``, ``priority``, ``run_at``, ``delay``, ``max_attempts``,
        ``timeout``, ``owner``, ``metadata``) override the task's defaults.

        With ``dedupe_key`` the job is unique: while a job of the same task
        holds that key (for ``dedupe_scope``: ``"pending"``, the default, until
        it starts; ``"active"`` until it finishes; a window in seconds or a
        timedelta after its creation), no job is created and that job's id is
        returned. ``dedupe_key`` may be a function of the arguments.

        With ``concurrency_key`` (a string or a function of the arguments) at
        most ``concurrency_limit`` (default 1) jobs of that key run at once,
        taken in claim order within the key (docs/scheduling.md).
        """
        return await self._database.enqueue(
            self._row(task, args, _options(options, option_values)), conn
        )

    def enqueue_sync(
        self,
        task: Task[Any] | str,
        args: Mapping[str, Any] | None = None,
        *,
        conn: psycopg.Connection[Any] | None = None,
        options: EnqueueOptions | None = None,
        **option_values: Any,
    ) -> int:
        """Blocking form of :meth:`enqueue`."""
        return self._database.enqueue_sync(
            self._row(task, args, _options(options, option_values)), conn
        )

    def _many(
        self,
        task: Task[Any] | str,
        args_list: Iterable[Mapping[str, Any]],
        options: EnqueueOptions,
    ) -> NewJobs:
        """Validate the items of a bulk enqueue (or a batch's children) and
        resolve their shared options once; raises :class:`InvalidJobError`."""
        try:
            resolved = self.get_task(task) if isinstance(task, str) else task
            template = self._resolve(resolved, options)
        except InvalidJobError as exc:  # keep the class: UnknownTaskError stays one
            raise type(exc)(f"{exc}; nothing was enqueued", field=exc.field) from None
        encoded: list[str] = []
        keys: list[str | None] = []
        ckeys: list[str | None] = []
        for index, args in enumerate(args_list):
            try:
                encoded.append(self._args_text(resolved, {} if args is None else args))
                if options.dedupe_key is not None:
                    keys.append(_dedupe_key(options.dedupe_key, args))
                if options.concurrency_key is not None:
                    ckeys.append(_dedupe_key(options.concurrency_key, args, "concurrency_key"))
            except InvalidJobError as exc:
                raise type(exc)(
                    f"item {index}: {exc}; nothing was enqueued", field=exc.field
                ) from None
        # Every item shares the options: they are sent once, with the items'
        # arguments as JSON texts (encoded once, above) and their keys, if any.
        return NewJobs(
            template,
            encoded,
            dedupe_keys=keys if any(key is not None for key in keys) else None,
            concurrency_keys=ckeys if any(key is not None for key in ckeys) else None,
        )

    async def enqueue_many(
        self,
        task: Task[Any] | str,
        args_list: Iterable[Mapping[str, Any]],
        *,
        conn: psycopg.AsyncConnection[Any] | None = None,
        options: EnqueueOptions | None = None,
        **option_values: Any,
    ) -> list[int]:
        """Enqueue many jobs of one task in one statement: all or nothing.

        Returns the ids in the order of ``args_list``. An invalid item raises
        :class:`InvalidJobError` naming its index, and nothing is written.
        With ``dedupe_key`` (usually a function of each item's arguments) items
        whose key is held get the holder's id, and items sharing a key get
        one job between them (see :meth:`enqueue`).
        """
        jobs = self._many(task, args_list, _options(options, option_values))
        return await self._database.enqueue_bulk(jobs, conn) if jobs.args else []

    def enqueue_many_sync(
        self,
        task: Task[Any] | str,
        args_list: Iterable[Mapping[str, Any]],
        *,
        conn: psycopg.Connection[Any] | None = None,
        options: EnqueueOptions | None = None,
        **option_values: Any,
    ) -> list[int]:
        """Blocking form of :meth:`enqueue_many`."""
        jobs = self._many(task, args_list, _options(options, option_values))
        return self._database.enqueue_bulk_sync(jobs, conn) if jobs.args else []

    # -- inspect and act -------------------------------------------------------------

    async def get_job(self, job_id: int) -> Job | None:
        """The job's current row, or None if there is no such job."""
        return await self._database.get_job(job_id)

    async def list_jobs(
        self,
        *,
        status: JobStatus | str | Sequence[JobStatus | str] | None = None,
        queue: str | None = None,
        task: str | None = None,
        owner: str | None = None,
        before_id: int | None = None,
        limit: int = 50,
    ) -> list[Job]:
        """Jobs, newest first, filtered; page with ``before_id`` = the last id seen.
        With ``owner``, only that owner's jobs (read through the owner index)."""
        _check_limit(limit)
        statuses = _job_statuses(status)
        return await self._database.list_jobs(statuses, queue, task, owner, before_id, limit)

    async def attempts(self, job_id: int) -> list[Attempt]:
        """The finished attempts of a job, oldest first."""
        return await self._database.attempts(job_id)

    async def cancel(self, job_id: int) -> JobStatus:
        """Cancel a pending, retrying or running job (a running task is told to stop)."""
        return await self._database.cancel(job_id)

    async def retry(self, job_id: int, *, extra_attempts: int = 1) -> JobStatus:
        """Replay a job that ended without success (failed, timeout, zombie,
        dead_letter, cancelled), giving it ``extra_attempts`` more attempts."""
        return await self._database.replay(job_id, extra_attempts)

    async def pause_queue(self, name: str) -> None:
        """Stop workers from claiming jobs of queue ``name`` (running jobs finish)."""
        _check_queue_name(name, InvalidJobError)
        await self._database.pause_queue(name)

    async def resume_queue(self, name: str) -> None:
        """Let workers claim jobs of queue ``name`` again."""
        _check_queue_name(name, InvalidJobError)
        await self._database.resume_queue(name)

    async def set_rate_limit(
        self, name: str, limit: int | None, *, per: float | timedelta = 1.0
    ) -> None:
        """Start at most ``limit`` jobs of queue ``name`` in any window of ``per``
        seconds, across all workers; ``limit=None`` removes the limit."""
        _check_queue_name(name, InvalidJobError)
        period = None
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise InvalidJobError(
                    f"rate limit must be an integer >= 1, not {limit!r}", field="rate_limit"
                )
            period = _seconds(per, "per", allow_zero=False)
        await self._database.set_rate_limit(name, limit, period)

    async def queue_stats(self) -> list[dict[str, Any]]:
        """Per queue: paused flag, job counts by state, age in seconds of the
        oldest job waiting to run, and its rate limit (``rate_limit`` jobs per
        ``rate_per`` seconds, None without one; ``rate_used``: jobs started in
        the last ``rate_per`` seconds)."""
        return await self._database.queue_stats()

    async def rescue(self, stale_after: float = 20.0) -> list[tuple[int, JobStatus]]:
        """Rescue running jobs whose worker stopped heartbeating (workers do this
        on their own; this is for operators and tests)."""
        return await self._database.rescue(timedelta(seconds=stale_after))

    async def wait(self, job_id: int, timeout: float | None = None) -> Any:
        """Wait for a job to end; return its result, or raise :class:`JobFailed`
        with its error if it ended any other way. Woken by NOTIFY, with a
        slow re-check as backstop. Raises ``TimeoutError`` after ``timeout`` s."""

        async def check() -> tuple[bool, Any]:
            outcome = await self._database.job_outcome(job_id)
            if outcome is None:
                raise JobNotFound(f"job {job_id} does not exist")
            if outcome.status is JobStatus.COMPLETED:
                return True, outcome.result
            if outcome.status.is_terminal:
                raise JobFailed(job_id, outcome.status.value, outcome.error)
            return False, outcome.status.value

        return await self._wait_for(
            "pgqueue_job",
            lambda payload: _notified_id(payload) == job_id,
            check,
            f"job {job_id}",
            timeout,
        )

    async def wait_batch(self, batch_id: int, timeout: float | None = None) -> list[Any]:
        """Wait for a batch to finish; return its children's results in the
        order they were enqueued, or raise :class:`BatchFailed` (naming the
        children that did not complete) if it finished with errors or was
        cancelled. Woken by NOTIFY on the batch's status change, not by polling.
        Raises ``TimeoutError`` after ``timeout`` s."""

        async def check() -> tuple[bool, Any]:
            batch = await self._database.get_batch(batch_id)
            if batch is None:
                raise BatchNotFound(f"batch {batch_id} does not exist")
            if batch.status is BatchStatus.COMPLETED:
                return True, await self._database.batch_results(batch_id)
            if batch.is_final:
                raise BatchFailed(
                    batch_id,
                    batch.status.value,
                    batch.finished - batch.counts["completed"],
                    await self._database.batch_errors(batch_id),
                )
            return False, batch.status.value

        return await self._wait_for(  # type: ignore[no-any-return]
            "pgqueue_batch",
            lambda payload: _notified_id(payload) == batch_id,
            check,
            f"batch {batch_id}",
            timeout,
        )

    async def _wait_for(
        self,
        channel: LiteralString,
        relevant: Callable[[str], bool],
        check: Callable[[], Awaitable[tuple[bool, Any]]],
        what: str,
        timeout: float | None,
        *,
        recheck: float = 5.0,
    ) -> Any:
        """Run ``check`` until it says done: at once, on every relevant
        notification on ``channel``, each time LISTEN is (again) in place, and
        every ``recheck`` seconds as a backstop. The first LISTEN session
        failing to open fails the wait; a session lost later is reopened.
        LISTEN runs through the notifier every part of pgqueue uses
        (:func:`listen_forever`: one reconnect policy) on :attr:`listen_dsn`;
        through a pooler in transaction mode without one, notifications may
        never come and the backstop alone ends the wait."""
        deadline = None if timeout is None else time.monotonic() + timeout
        done, value = await check()
        if done:
            return value
        # The first session is opened here, so that a listen DSN that cannot
        # be reached fails the wait at once; later sessions are the notifier's.
        try:
            first: psycopg.AsyncConnection[Any] | None = await self.listen_connection()
        except psycopg.Error as exc:
            raise translate(exc) from exc

        async def connect() -> psycopg.AsyncConnection[Any]:
            nonlocal first
            conn, first = first, None
            return conn if conn is not None else await self.listen_connection()

        wake = asyncio.Event()

        def on_notify(_channel: str, payload: str) -> None:
            if relevant(payload):
                wake.set()

        listener = asyncio.create_task(
            listen_forever(connect, [channel], on_notify, on_connect=wake.set),
            name=f"pgqueue-wait-{channel}",
        )
        try:
            while True:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"{what} is still {value} after {timeout} s")
                await wait_event(wake, recheck if remaining is None else min(recheck, remaining))
                wake.clear()  # before the check: a change during it wakes the next wait
                done, value = await check()
                if done:
                    return value
        finally:
            listener.cancel()
            try:
                await listener
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # the wait itself is being cancelled
            finally:
                if first is not None:  # the wait ended before the listener took it
                    await first.close()

    # -- batches -----------------------------------------------------------------------

    def _batch(
        self,
        task: Task[Any] | str,
        args_list: Iterable[Mapping[str, Any]],
        options: EnqueueOptions,
        metadata: Mapping[str, Any] | None,
        on_complete: Task[Any] | str | None,
        on_complete_args: Mapping[str, Any] | None,
    ) -> NewBatch:
        """Validate a batch: its children, metadata and follow-up task."""
        if options.dedupe_key is not None:
            raise InvalidJobError("children of a batch cannot have a dedupe_key")
        if options.concurrency_key is not None:
            raise InvalidJobError("children of a batch cannot have a concurrency_key")
        children = self._many(task, args_list, dataclasses.replace(options, metadata=None))
        if not children.args:
            raise InvalidJobError("a batch needs at least one item; nothing was enqueued")
        batch_metadata = _json_object(
            {} if metadata is None else metadata,
            "batch metadata",
            self.max_payload_bytes,
            field="metadata",
        )
        follow_up = None
        if on_complete is not None:
            # Checked like any enqueue, with the arguments the batch will add.
            extra = {"batch_id": 0, "batch_status": BatchStatus.COMPLETED.value}
            try:
                row = self._row(
                    on_complete,
                    {**(on_complete_args or {}), **extra},
                    EnqueueOptions(queue=options.queue),
                )
            except InvalidJobError as exc:
                raise type(exc)(
                    f"on_complete: {exc}; nothing was enqueued", field="on_complete"
                ) from None
            user_args = dict(on_complete_args or {})  # JSON-checked by _row above
            follow_up = Jsonb(
                {
                    "task": row.task,
                    "args": user_args,
                    "queue": row.queue,
                    "priority": row.priority,
                    "max_attempts": row.max_attempts,
                    "timeout": None if row.timeout is None else row.timeout.total_seconds(),
                }
            )
        return NewBatch(children, batch_metadata, follow_up)

    async def enqueue_batch(
        self,
        task: Task[Any] | str,
        args_list: Iterable[Mapping[str, Any]],
        *,
        metadata: Mapping[str, Any] | None = None,
        on_complete: Task[Any] | str | None = None,
        on_complete_args: Mapping[str, Any] | None = None,
        conn: psycopg.AsyncConnection[Any] | None = None,
        options: EnqueueOptions | None = None,
        **option_values: Any,
    ) -> Batch:
        """Create a batch: one child job of ``task`` per item of ``args_list``,
        all in one statement (all or nothing; an invalid item raises
        :class:`InvalidJobError` naming its index, and nothing is written).

        Options (``queue``, ``priority``, ``owner``...) apply to every child;
        ``owner`` also owns the batch, and ``metadata`` is the batch's own.
        ``on_complete`` is a task enqueued exactly once when the batch finishes
        by itself (completed or completed_with_errors, not cancelled), with
        ``on_complete_args`` plus ``batch_id`` and ``batch_status``.
        With ``conn`` the batch is written inside that connection's transaction.
        """
        batch = self._batch(
            task,
            args_list,
            _options(options, option_values),
            metadata,
            on_complete,
            on_complete_args,
        )
        return await self._database.enqueue_batch(batch, conn)

    def enqueue_batch_sync(
        self,
        task: Task[Any] | str,
        args_list: Iterable[Mapping[str, Any]],
        *,
        metadata: Mapping[str, Any] | None = None,
        on_complete: Task[Any] | str | None = None,
        on_complete_args: Mapping[str, Any] | None = None,
        conn: psycopg.Connection[Any] | None = None,
        options: EnqueueOptions | None = None,
        **option_values: Any,
    ) -> Batch:
        """Blocking form of :meth:`enqueue_batch`."""
        batch = self._batch(
            task,
            args_list,
            _options(options, option_values),
            metadata,
            on_complete,
            on_complete_args,
        )
        return self._database.enqueue_batch_sync(batch, conn)

    async def get_batch(self, batch_id: int) -> Batch | None:
        """The batch's current row (counters included), or None if there is none."""
        return await self._database.get_batch(batch_id)

    async def list_batches(
        self,
        *,
        status: BatchStatus | str | Sequence[BatchStatus | str] | None = None,
        owner: str | None = None,
        before_id: int | None = None,
        limit: int = 50,
    ) -> list[Batch]:
        """Batches, newest first; page with ``before_id`` = the last id seen."""
        _check_limit(limit)
        statuses: list[str] | None = None
        if status is not None:
            items = [status] if isinstance(status, str) else list(status)
            statuses = [BatchStatus(s).value for s in items]
        return await self._database.list_batches(statuses, owner, before_id, limit)

    async def batch_jobs(
        self,
        batch_id: int,
        *,
        status: JobStatus | str | Sequence[JobStatus | str] | None = None,
        after_id: int | None = None,
        limit: int = 100,
    ) -> list[Job]:
        """A batch's children in enqueue order; page with ``after_id`` = the last id seen."""
        _check_limit(limit)
        statuses = _job_statuses(status)
        return await self._database.batch_children(batch_id, statuses, after_id, limit)

    async def pause_batch(self, batch_id: int) -> BatchStatus:
        """Stop workers from claiming the batch's children (running ones finish)."""
        return await self._database.pause_batch(batch_id)

    async def resume_batch(self, batch_id: int) -> BatchStatus:
        """Let workers claim a paused batch's children again."""
        return await self._database.resume_batch(batch_id)

    async def cancel_batch(self, batch_id: int) -> BatchStatus:
        """Cancel the batch: pending children end cancelled, running ones are
        told to stop (their late results are refused); no ``on_complete``."""
        return await self._database.cancel_batch(batch_id)

    # -- periodic tasks ----------------------------------------------------------------

    async def enqueue_due_ticks(self) -> SchedulePass | None:
        """One scheduler pass: enqueue the due ticks of every periodic task
        that no worker has enqueued yet (workers do this on their own every
        few seconds). None if no task is periodic."""
        return await schedule_due(
            list(self.periodic_tasks.values()), self._database.scheduler_query
        )

    async def periodic_status(self) -> list[dict[str, Any]]:
        """Each periodic schedule: name, task, queue, cron, timezone, catch_up,
        args, ``last_tick`` and ``last_job_id`` (the latest recorded tick;
        a null job marks where a new schedule started) and ``next_tick``, by
        the database's clock (``now``)."""
        return await schedule_status(
            list(self.periodic_tasks.values()), self._database.scheduler_query
        )

    # -- progress and retention ----------------------------------------------------------

    async def progress_history(
        self,
        job_id: int,
        *,
        since: datetime | None = None,
        after_id: int | None = None,
        limit: int = 100,
    ) -> list[ProgressEntry]:
        """A job's progress reports, oldest first: those at or after ``since``;
        page with ``after_id`` = the id of the last report seen."""
        _check_limit(limit)
        return await self._database.progress_history(job_id, since, after_id, limit)

    async def prune(
        self,
        *,
        completed_after: float | timedelta = 86400.0,
        failed_after: float | timedelta = 7 * 86400.0,
        chunk: int = 1000,
    ) -> int:
        """Delete finished jobs older than their retention age (completed jobs
        after ``completed_after``, the rest after ``failed_after``), with their
        attempts and progress history, and finished batches with their
        children, in chunks of ``chunk`` jobs (one short transaction each).
        Returns how many jobs were deleted. Workers do this on their own."""
        completed = _seconds(completed_after, "completed_after", allow_zero=True)
        failed = _seconds(failed_after, "failed_after", allow_zero=True)
        total = 0
        while True:
            deleted = await self._database.prune(completed, failed, chunk)
            total += deleted
            if deleted < chunk:
                return total


def _notified_id(payload: str) -> int | None:
    try:
        value = json.loads(payload).get("id")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, int) else None


def _check_limit(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
        raise ValueError(f"limit must be between 1 and 1000, not {limit!r}")


def _job_statuses(status: JobStatus | str | Sequence[JobStatus | str] | None) -> list[str] | None:
    if status is None:
        return None
    items = [status] if isinstance(status, str) else list(status)
    return [JobStatus(s).value for s in items]


def _options(options: EnqueueOptions | None, values: Mapping[str, Any]) -> EnqueueOptions:
    if options is not None and values:
        raise InvalidJobError("pass options= or option keywords, not both")
    if options is not None:
        return options
    unknown = sorted(set(values) - _OPTION_NAMES)
    if unknown:
        raise InvalidJobError(
            f"enqueue() got unknown option(s) {', '.join(map(repr, unknown))}; the options are "
            f"{', '.join(sorted(_OPTION_NAMES))}",
            field=unknown[0],
        )
    return EnqueueOptions(**values)


_OPTION_NAMES = frozenset(f.name for f in dataclasses.fields(EnqueueOptions))


def _valid_seconds(value: object, *, allow_zero: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and (value >= 0 if allow_zero else value > 0)


def _check_task_options(
    name: str, max_attempts: object, timeout: object, priority: object, retry_delay: object
) -> None:
    """Registration-time checks, so a bad option fails at import, not mid-job."""
    if not isinstance(max_attempts, int) or isinstance(max_attempts, bool) or max_attempts < 1:
        raise ConfigurationError(
            f"task {name!r}: max_attempts must be an integer >= 1, not {max_attempts!r}"
        )
    if timeout is not None and not _valid_seconds(timeout, allow_zero=False):
        raise ConfigurationError(
            f"task {name!r}: timeout must be a positive number of seconds, not {timeout!r}"
        )
    if (
        not isinstance(priority, int)
        or isinstance(priority, bool)
        or not -(2**31) <= priority < 2**31
    ):
        raise ConfigurationError(
            f"task {name!r}: priority must be a 32-bit integer, not {priority!r}"
        )
    if retry_delay is not None and not _valid_seconds(retry_delay, allow_zero=True):
        raise ConfigurationError(
            f"task {name!r}: retry_delay must be a number of seconds >= 0, not {retry_delay!r}"
        )


# A day inside Python's datetime range at both ends: a time stored in UTC must
# read back in any session time zone, or every read of the job would fail.
_EARLIEST_RUN_AT = datetime(1, 1, 2, tzinfo=UTC)
_LATEST_RUN_AT = datetime(9999, 12, 30, tzinfo=UTC)


def _check_run_at(run_at: datetime, field: str) -> None:
    try:
        in_range = _EARLIEST_RUN_AT <= run_at.astimezone(UTC) <= _LATEST_RUN_AT
    except OverflowError:
        in_range = False
    if not in_range:
        raise InvalidJobError(
            f"{field}: the job's run_at must lie between 0001-01-02 and 9999-12-30 UTC, "
            f"not {run_at.isoformat()}",
            field=field,
        )


def _check_queue_name(name: object, error: type[Exception] = ConfigurationError) -> None:
    if not isinstance(name, str) or not 1 <= len(name) <= _MAX_QUEUE_NAME or "\x00" in name:
        message = f"queue name must be 1 to {_MAX_QUEUE_NAME} characters, not {name!r}"
        if error is InvalidJobError:
            raise InvalidJobError(message, field="queue")
        raise error(message)
