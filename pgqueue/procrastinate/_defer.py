"""Deferring procrastinate jobs with a pgqueue owner or batch, returning the
ids of their pgqueue mirrors.

The bridge's insert trigger reads the owner and batch from two
transaction-local settings; each defer sets them, inserts through
procrastinate's own query, reads the mirrors' ids and resets the settings, in
one transaction: the caller's with ``conn=``, else one of the app's pool.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, LiteralString, NamedTuple

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import tuple_row

from .._extras import procrastinate as require
from .._queue import DEFAULT_MAX_PAYLOAD_BYTES, PayloadRefused, json_text
from ..errors import MISSING_OBJECT, ConfigurationError, InvalidJobError, PgQueueError, translate
from ._install import bridge_error

OWNER_SETTING = "pgqueue_procrastinate.owner"
BATCH_SETTING = "pgqueue_procrastinate.batch"

# installed_version() fails at once, with a clear error, where the bridge is not installed
_SET: LiteralString = (
    "SELECT set_config('pgqueue_procrastinate.owner', %s, true),"
    " set_config('pgqueue_procrastinate.batch', %s, true),"
    " pgqueue_procrastinate.installed_version()"
)
_OPEN_BATCH: LiteralString = (
    "SELECT set_config('pgqueue_procrastinate.owner', %s, true),"
    " set_config('pgqueue_procrastinate.batch',"
    " pgqueue_procrastinate.open_batch(%s, %s::jsonb, %s, %s)::text, true)"
)
_RESET: LiteralString = (
    "SELECT set_config('pgqueue_procrastinate.owner', '', true),"
    " set_config('pgqueue_procrastinate.batch', '', true)"
)
_MIRRORS_AND_RESET: LiteralString = (
    "SELECT ARRAY(SELECT pgqueue_procrastinate.mirror_of(t.id)"
    " FROM unnest(%s::bigint[]) WITH ORDINALITY AS t(id, n) ORDER BY t.n),"
    " set_config('pgqueue_procrastinate.owner', '', true),"
    " set_config('pgqueue_procrastinate.batch', '', true)"
)


class DeferredBatch(NamedTuple):
    """A batch deferred by :func:`defer_batch`: the pgqueue batch's id and its
    children's pgqueue job ids, in the order of the items."""

    id: int
    job_ids: list[int]


@dataclasses.dataclass(frozen=True)
class _Plan:
    """One defer: what to set before, what to insert."""

    task: Any
    options: dict[str, Any]
    owner: str
    kwargs: list[dict[str, Any]]
    batch: int | None = None  # join this existing batch
    open_batch: tuple[str | None, str, str, str] | None = None  # owner, metadata, task, queue
    single: bool = True

    def setup(self) -> tuple[LiteralString, tuple[Any, ...]]:
        if self.open_batch is not None:
            return _OPEN_BATCH, (self.owner, *self.open_batch)
        return _SET, (self.owner, "" if self.batch is None else str(self.batch))


# -- validation ----------------------------------------------------------------------------


def _check_owner(owner: object) -> str:
    if owner is None:
        return ""
    if not isinstance(owner, str) or not 1 <= len(owner) <= 256 or "\x00" in owner:
        raise InvalidJobError(f"owner must be 1 to 256 characters, not {owner!r}", field="owner")
    return owner


def _check_batch(batch: object) -> int | None:
    if batch is None:
        return None
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise InvalidJobError(
            f"batch must be a batch id (an integer >= 1), not {batch!r}", field="batch"
        )
    return batch


def _check_task(task: object) -> None:
    if not callable(getattr(task, "configure", None)) or not isinstance(
        getattr(task, "name", None), str
    ):
        raise TypeError(f"task must be a procrastinate Task (an @app.task function), not {task!r}")


def _check_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise TypeError(f"options must be a mapping of Task.configure arguments, not {options!r}")
    if "connection" in options:
        raise TypeError("pass the connection as conn=, not in options")
    return dict(options)


def _check_items(items: object) -> list[dict[str, Any]]:
    if isinstance(items, str | bytes | Mapping) or not isinstance(items, Sequence):
        raise InvalidJobError(
            f"items must be a sequence of argument mappings, not {type(items).__name__}",
            field="items",
        )
    checked = []
    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise InvalidJobError(
                f"items[{index}] must be a mapping of task arguments, not {item!r}", field="items"
            )
        checked.append(dict(item))
    if not checked:
        raise InvalidJobError("a batch needs at least one item", field="items")
    return checked


def _metadata_json(metadata: object) -> str:
    if metadata is None:
        return "{}"
    if not isinstance(metadata, Mapping):
        raise InvalidJobError(f"metadata must be a mapping, not {metadata!r}", field="metadata")
    try:
        return json_text(dict(metadata), "metadata", DEFAULT_MAX_PAYLOAD_BYTES)
    except (PayloadRefused, TypeError, ValueError) as exc:
        raise InvalidJobError(f"metadata: {exc}", field="metadata") from None


def _batch_plan(
    task: Any,
    items: object,
    owner: object,
    metadata: object,
    options: Mapping[str, Any] | None,
) -> _Plan:
    _check_task(task)
    checked_owner = _check_owner(owner)
    opts = _check_options(options)
    kwargs = _check_items(items)
    queue = opts.get("queue") or task.queue
    opened = (checked_owner or None, _metadata_json(metadata), task.name, queue)
    return _Plan(task, opts, checked_owner, kwargs, open_batch=opened, single=False)


def _single_plan(
    task: Any, owner: object, batch: object, options: Mapping[str, Any] | None, kwargs: Any
) -> _Plan:
    _check_task(task)
    return _Plan(task, _check_options(options), _check_owner(owner), [kwargs], _check_batch(batch))


# -- procrastinate's side ------------------------------------------------------------------


def _json_settings(connector: Any) -> dict[str, Any]:
    return {
        "json_dumps": getattr(connector, "_json_dumps", None),
        "json_loads": getattr(connector, "_json_loads", None),
    }


def _deferrer(plan: _Plan, conn: Any, *, is_async: bool) -> Any:
    """``task.configure(connection=conn, **options)``, its job manager
    matching ``conn``: procrastinate runs a given connection through its
    connector, and an async connector cannot use a sync connection (nor the
    reverse), so a connector of the right kind is lent for this call."""
    require()
    from procrastinate import manager, psycopg_connector, sync_psycopg_connector

    deferrer = plan.task.configure(**plan.options, connection=conn)
    connector = deferrer.job_manager.connector
    if is_async and not isinstance(connector, psycopg_connector.PsycopgConnector):
        lent: Any = psycopg_connector.PsycopgConnector(**_json_settings(connector))
        deferrer.job_manager = manager.JobManager(connector=lent)
    elif not is_async and not isinstance(connector, sync_psycopg_connector.SyncPsycopgConnector):
        lent = sync_psycopg_connector.SyncPsycopgConnector(**_json_settings(connector))
        deferrer.job_manager = manager.JobManager(connector=lent)
    return deferrer


def _app_connector(task: Any) -> Any:
    blueprint = getattr(task, "blueprint", None)
    connector = getattr(blueprint, "connector", None)
    if connector is None:
        raise ConfigurationError(
            f"task {task.name!r} is not registered on a procrastinate App: pass conn="
        )
    return connector


def _unwrap(exc: Exception) -> Exception:
    """procrastinate wraps database errors in ConnectorException: the trigger's
    refusals (an unknown batch, an invalid owner) are told apart by pgqueue's
    translation of the database error underneath."""
    cause = exc.__cause__
    # procrastinate's own statement: a missing object is procrastinate's to
    # report (its schema, say, older than its code), not the bridge's
    if isinstance(cause, psycopg.Error) and not isinstance(cause, MISSING_OBJECT):
        translated = translate(cause)
        if isinstance(translated, PgQueueError):
            return translated
    return exc


def _mirrors(row: tuple[Any, ...] | None, procrastinate_ids: list[int]) -> list[int]:
    mirrors: list[int | None] = list(row[0]) if row else []
    if len(mirrors) != len(procrastinate_ids) or any(m is None for m in mirrors):
        missing = [p for p, m in zip(procrastinate_ids, mirrors, strict=False) if m is None]
        raise ConfigurationError(
            f"procrastinate jobs {missing or procrastinate_ids} have no pgqueue mirror: "
            "is the bridge installed and enabled? (`pgqueue procrastinate check`)"
        )
    return [int(m) for m in mirrors if m is not None]


# -- one transaction -----------------------------------------------------------------------


def _run_sync(conn: psycopg.Connection[Any], plan: _Plan) -> tuple[int | None, list[int]]:
    if conn.autocommit:  # the settings and the insert need one transaction
        with conn.transaction():
            return _steps_sync(conn, plan)
    return _steps_sync(conn, plan)


def _steps_sync(conn: psycopg.Connection[Any], plan: _Plan) -> tuple[int | None, list[int]]:
    with conn.cursor(row_factory=tuple_row) as cur:
        query, params = plan.setup()
        try:
            cur.execute(query, params)
        except psycopg.Error as exc:
            raise bridge_error(exc) from exc
        row = cur.fetchone()
        batch_id = int(row[1]) if plan.open_batch is not None and row else None
        try:
            deferrer = _deferrer(plan, conn, is_async=False)
            if plan.single:
                ids = [deferrer.defer(**plan.kwargs[0])]
            else:
                ids = list(deferrer.batch_defer(*plan.kwargs))
        except Exception as exc:
            # Refused before reaching the database (arguments JSON cannot
            # hold...): the caller's transaction goes on, without our settings.
            if conn.info.transaction_status == TransactionStatus.INTRANS:
                cur.execute(_RESET)
            raise _unwrap(exc) from exc
        try:
            cur.execute(_MIRRORS_AND_RESET, (ids,))
        except psycopg.Error as exc:
            raise bridge_error(exc) from exc
        return batch_id, _mirrors(cur.fetchone(), ids)


async def _run_async(
    conn: psycopg.AsyncConnection[Any], plan: _Plan
) -> tuple[int | None, list[int]]:
    if conn.autocommit:
        async with conn.transaction():
            return await _steps_async(conn, plan)
    return await _steps_async(conn, plan)


async def _steps_async(
    conn: psycopg.AsyncConnection[Any], plan: _Plan
) -> tuple[int | None, list[int]]:
    async with conn.cursor(row_factory=tuple_row) as cur:
        query, params = plan.setup()
        try:
            await cur.execute(query, params)
        except psycopg.Error as exc:
            raise bridge_error(exc) from exc
        row = await cur.fetchone()
        batch_id = int(row[1]) if plan.open_batch is not None and row else None
        try:
            deferrer = _deferrer(plan, conn, is_async=True)
            if plan.single:
                ids = [await deferrer.defer_async(**plan.kwargs[0])]
            else:
                ids = list(await deferrer.batch_defer_async(*plan.kwargs))
        except Exception as exc:
            if conn.info.transaction_status == TransactionStatus.INTRANS:
                await cur.execute(_RESET)
            raise _unwrap(exc) from exc
        try:
            await cur.execute(_MIRRORS_AND_RESET, (ids,))
        except psycopg.Error as exc:
            raise bridge_error(exc) from exc
        return batch_id, _mirrors(await cur.fetchone(), ids)


def _sync_conn(conn: object) -> psycopg.Connection[Any]:
    if isinstance(conn, psycopg.AsyncConnection):
        raise TypeError("conn is an async connection: use the async twin (defer_async...)")
    if not isinstance(conn, psycopg.Connection):
        raise TypeError(f"conn must be a psycopg Connection, not {type(conn).__name__}")
    return conn


def _async_conn(conn: object) -> psycopg.AsyncConnection[Any]:
    if isinstance(conn, psycopg.Connection):
        raise TypeError("conn is a sync connection: use the sync twin (defer...)")
    if not isinstance(conn, psycopg.AsyncConnection):
        raise TypeError(f"conn must be a psycopg AsyncConnection, not {type(conn).__name__}")
    return conn


def _execute_sync(plan: _Plan, conn: object) -> tuple[int | None, list[int]]:
    if conn is not None:
        return _run_sync(_sync_conn(conn), plan)
    require()
    from procrastinate import exceptions, psycopg_connector, sync_psycopg_connector, utils

    connector = _app_connector(plan.task)
    sync = connector.get_sync_connector()
    if isinstance(sync, sync_psycopg_connector.SyncPsycopgConnector):
        try:
            pool = sync.pool
        except exceptions.AppNotOpen:
            raise ConfigurationError(
                "the procrastinate app is not open: open it (app.open() or `with app.open():`) "
                "or pass conn="
            ) from None
        with pool.connection() as own:  # commits when the block ends, or rolls back
            return _run_sync(own, plan)
    if isinstance(connector, psycopg_connector.PsycopgConnector):
        # The app was opened async (a worker, an async web app): its pool
        # lives on that loop, where procrastinate's own sync defer runs too.
        result: tuple[int | None, list[int]] = utils.async_to_sync(_execute_async, plan, None)
        return result
    raise ConfigurationError(
        f"the app's connector is a {type(connector).__name__}: without conn=, the bridge "
        "needs a PsycopgConnector or SyncPsycopgConnector (or pass conn=)"
    )


async def _execute_async(plan: _Plan, conn: object) -> tuple[int | None, list[int]]:
    if conn is not None:
        return await _run_async(_async_conn(conn), plan)
    require()
    from procrastinate import exceptions, psycopg_connector

    connector = _app_connector(plan.task)
    if not isinstance(connector, psycopg_connector.PsycopgConnector):
        raise ConfigurationError(
            f"the app's connector is a {type(connector).__name__}: without conn=, the bridge "
            "needs a PsycopgConnector (or pass conn=)"
        )
    try:
        pool = connector.pool
    except exceptions.AppNotOpen:
        raise ConfigurationError(
            "the procrastinate app is not open: open it (`async with app.open_async():`) "
            "or pass conn="
        ) from None
    async with pool.connection() as own:
        return await _run_async(own, plan)


# -- public --------------------------------------------------------------------------------


def defer(
    task: Any,
    *,
    owner: str | None = None,
    batch: int | None = None,
    conn: psycopg.Connection[Any] | None = None,
    options: Mapping[str, Any] | None = None,
    **task_kwargs: Any,
) -> int:
    """Defer a job of procrastinate ``task`` and return its pgqueue job id.

    ``owner`` is who may see it through pgqueue's API; ``batch`` adds it to an
    existing pgqueue batch (one :func:`defer_batch` opened). With ``conn``
    (a psycopg Connection) the job is written in that connection's
    transaction, which the caller commits; without it, in a transaction of
    its own on the app's pool. ``options`` are :meth:`Task.configure`'s
    (queue, priority, lock, schedule_in...).
    """
    plan = _single_plan(task, owner, batch, options, task_kwargs)
    return _execute_sync(plan, conn)[1][0]


async def defer_async(
    task: Any,
    *,
    owner: str | None = None,
    batch: int | None = None,
    conn: psycopg.AsyncConnection[Any] | None = None,
    options: Mapping[str, Any] | None = None,
    **task_kwargs: Any,
) -> int:
    """:func:`defer` for async code (``conn``: a psycopg AsyncConnection)."""
    plan = _single_plan(task, owner, batch, options, task_kwargs)
    return (await _execute_async(plan, conn))[1][0]


def defer_batch(
    task: Any,
    items: Sequence[Mapping[str, Any]],
    *,
    owner: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    conn: psycopg.Connection[Any] | None = None,
    options: Mapping[str, Any] | None = None,
) -> DeferredBatch:
    """Defer one job of ``task`` per item (its arguments) as one pgqueue batch,
    all or nothing, in one transaction (the caller's with ``conn``). Returns
    the batch's id and its jobs' pgqueue ids, in the order of ``items``."""
    plan = _batch_plan(task, items, owner, metadata, options)
    batch_id, job_ids = _execute_sync(plan, conn)
    assert batch_id is not None
    return DeferredBatch(batch_id, job_ids)


async def defer_batch_async(
    task: Any,
    items: Sequence[Mapping[str, Any]],
    *,
    owner: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    conn: psycopg.AsyncConnection[Any] | None = None,
    options: Mapping[str, Any] | None = None,
) -> DeferredBatch:
    """:func:`defer_batch` for async code (``conn``: a psycopg AsyncConnection)."""
    plan = _batch_plan(task, items, owner, metadata, options)
    batch_id, job_ids = await _execute_async(plan, conn)
    assert batch_id is not None
    return DeferredBatch(batch_id, job_ids)
