"""Installing, removing and checking the bridge's SQL (``sql/procrastinate.sql``,
``sql/procrastinate_uninstall.sql``), as ``pgqueue procrastinate`` runs them.
Nothing here imports procrastinate: these work on the database alone."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Final, LiteralString

import psycopg
from psycopg.rows import tuple_row

from .. import _sql
from ..errors import MISSING_OBJECT, ConfigurationError, translate

NOT_INSTALLED = (
    "the pgqueue procrastinate bridge is not installed in this database (or the pgqueue "
    "schema under it is outdated): run `pgqueue migrate`, then `pgqueue procrastinate install` "
    "(after `procrastinate schema --apply`); both are idempotent"
)


def bridge_error(exc: psycopg.Error) -> Exception:
    """The error of a statement of the bridge's, as pgqueue reports it."""
    # The bridge's statements name the bridge's objects, which name pgqueue's:
    # a missing one is the bridge not installed, or installed over a pgqueue
    # schema since downgraded; the message says both remedies.
    if isinstance(exc, MISSING_OBJECT):
        return ConfigurationError(NOT_INSTALLED)
    return translate(exc)


@dataclasses.dataclass(frozen=True)
class Catalog:
    """What the bridge relies on in procrastinate's schema: functions by name
    with their argument types, columns of tables with their types, and the
    labels of enums (in order)."""

    functions: Mapping[str, str]
    columns: Mapping[str, Mapping[str, str]]
    enums: Mapping[str, tuple[str, ...]]


# Types as PostgreSQL's format_type() spells them (without a type modifier).
EXPECTED_CATALOG: Final = Catalog(
    functions={
        "procrastinate_fetch_job_v2": "character varying[], bigint",
        "procrastinate_finish_job_v1": "bigint, procrastinate_job_status, boolean",
        "procrastinate_retry_job_v2": (
            "bigint, timestamp with time zone, integer, character varying, character varying"
        ),
        "procrastinate_cancel_job_v1": "bigint, boolean, boolean",
        "procrastinate_defer_jobs_v1": "procrastinate_job_to_defer_v1[]",
    },
    columns={
        "procrastinate_jobs": {
            "id": "bigint",
            "queue_name": "character varying",
            "task_name": "character varying",
            "priority": "integer",
            "lock": "text",
            "queueing_lock": "text",
            "args": "jsonb",
            "status": "procrastinate_job_status",
            "scheduled_at": "timestamp with time zone",
            "attempts": "integer",
            "abort_requested": "boolean",
            "worker_id": "bigint",
        },
        "procrastinate_workers": {
            "id": "bigint",
            "last_heartbeat": "timestamp with time zone",
        },
    },
    # the status trigger maps every label: one it does not know is a difference
    enums={
        "procrastinate_job_status": (
            "todo",
            "doing",
            "succeeded",
            "failed",
            "cancelled",
            "aborting",
            "aborted",
        ),
    },
)

PGQUEUE_COLUMNS: Final = ("executor", "external_id")
"""Columns of pgqueue.jobs the bridge needs (pgqueue's migrations add them)."""

INSTALL_SCRIPT = "procrastinate.sql"
UNINSTALL_SCRIPT = "procrastinate_uninstall.sql"

# One install or uninstall at a time (the scripts are idempotent, not concurrent-safe).
_LOCK: LiteralString = "SELECT pg_advisory_xact_lock(hashtext('pgqueue_procrastinate.install'))"


async def _rows(
    conn: psycopg.AsyncConnection[Any], query: LiteralString, params: Any = None
) -> list[tuple[Any, ...]]:
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(query, params)
        return await cur.fetchall()


async def catalog_differences(
    conn: psycopg.AsyncConnection[Any], expected: Catalog = EXPECTED_CATALOG
) -> list[str]:
    """How procrastinate's schema (as the connection's search_path finds it)
    differs from ``expected``: one sentence per difference, none if it matches."""
    differences: list[str] = []
    found: dict[str, list[str]] = {}
    for name, args in await _rows(
        conn,
        "SELECT p.proname, pg_catalog.oidvectortypes(p.proargtypes) FROM pg_catalog.pg_proc p"
        " WHERE p.proname = ANY(%s) AND pg_catalog.pg_function_is_visible(p.oid)",
        (list(expected.functions),),
    ):
        found.setdefault(name, []).append(args)
    for name, args in expected.functions.items():
        if name not in found:
            differences.append(f"function {name}({args}) is missing")
        elif args not in found[name]:
            have = "; ".join(f"{name}({a})" for a in sorted(found[name]))
            differences.append(f"function {name} takes ({have}), the bridge expects ({args})")

    tables = list(expected.columns)
    present = {
        name
        for (name,) in await _rows(
            conn,
            "SELECT t.name FROM unnest(%s::text[]) AS t(name)"
            " WHERE to_regclass(t.name) IS NOT NULL",
            (tables,),
        )
    }
    columns: dict[str, dict[str, str]] = {}
    for table, column, type_ in await _rows(
        conn,
        "SELECT t.name, a.attname, pg_catalog.format_type(a.atttypid, NULL)"
        " FROM unnest(%s::text[]) AS t(name)"
        " JOIN pg_catalog.pg_attribute a ON a.attrelid = to_regclass(t.name)"
        " WHERE a.attnum > 0 AND NOT a.attisdropped",
        (tables,),
    ):
        columns.setdefault(table, {})[column] = type_
    for table, wanted in expected.columns.items():
        if table not in present:
            differences.append(f"table {table} is missing")
            continue
        have_columns = columns.get(table, {})
        for column, type_ in wanted.items():
            if column not in have_columns:
                differences.append(f"column {table}.{column} ({type_}) is missing")
            elif have_columns[column] != type_:
                differences.append(
                    f"column {table}.{column} is {have_columns[column]}, the bridge expects {type_}"
                )

    for enum, labels in expected.enums.items():
        rows = await _rows(
            conn,
            "SELECT e.enumlabel FROM pg_catalog.pg_enum e"
            " WHERE e.enumtypid = to_regtype(%s) ORDER BY e.enumsortorder",
            (enum,),
        )
        found_labels = tuple(label for (label,) in rows)
        if not found_labels:
            differences.append(f"enum {enum} is missing")
        elif found_labels != labels:
            differences.append(
                f"enum {enum} has labels {', '.join(found_labels)}; "
                f"the bridge expects {', '.join(labels)}"
            )
    return differences


async def installed_version(conn: psycopg.AsyncConnection[Any]) -> int | None:
    """The installed bridge's version, or None if it is not installed."""
    rows = await _rows(
        conn, "SELECT to_regproc('pgqueue_procrastinate.installed_version') IS NOT NULL"
    )
    if not rows[0][0]:
        return None
    rows = await _rows(conn, "SELECT pgqueue_procrastinate.installed_version()")
    return int(rows[0][0])


async def caught_errors(
    conn: psycopg.AsyncConnection[Any], limit: int = 100
) -> list[dict[str, Any]]:
    """What the bridge's triggers caught instead of raising into procrastinate,
    newest first: each a mirror that did not follow its job."""
    rows = await _rows(
        conn,
        "SELECT at, job_id, operation, sqlstate, message FROM pgqueue_procrastinate.errors"
        " ORDER BY id DESC LIMIT %s",
        (limit,),
    )
    names = ("at", "job_id", "operation", "sqlstate", "message")
    return [{**dict(zip(names, row, strict=True)), "at": row[0].isoformat()} for row in rows]


async def prerequisite_problems(conn: psycopg.AsyncConnection[Any]) -> list[str]:
    """Why the bridge cannot be installed here yet (none: it can)."""
    rows = await _rows(
        conn,
        "SELECT to_regclass('procrastinate_jobs') IS NOT NULL,"
        " to_regclass('pgqueue.jobs') IS NOT NULL,"
        " (SELECT count(*) FROM pg_catalog.pg_attribute"
        "   WHERE attrelid = to_regclass('pgqueue.jobs') AND attname = ANY(%s)"
        "     AND NOT attisdropped)",
        (list(PGQUEUE_COLUMNS),),
    )
    has_procrastinate, has_pgqueue, bridge_columns = rows[0]
    problems = []
    if not has_procrastinate:
        problems.append(
            "procrastinate's schema is not in this database (no procrastinate_jobs table "
            "on the search_path): run `procrastinate schema --apply` first"
        )
    if not has_pgqueue:
        problems.append("pgqueue's schema is not in this database: run `pgqueue migrate` first")
    elif bridge_columns != len(PGQUEUE_COLUMNS):
        problems.append(
            "pgqueue's schema predates the procrastinate bridge: run `pgqueue migrate` first"
        )
    return problems


def _script(name: str) -> LiteralString:
    try:
        text = _sql.read(name)
    except FileNotFoundError:
        raise ConfigurationError(f"this pgqueue install lacks sql/{name}") from None
    return text  # shipped with the package, not user input: as literal as a constant


async def install(conn: psycopg.AsyncConnection[Any]) -> int:
    """Install (or re-install: idempotent) the bridge; return its version.
    Refuses, naming what to do, when procrastinate's or pgqueue's schema is
    missing or procrastinate's differs from what the bridge expects."""
    problems = await prerequisite_problems(conn)
    if not problems:
        differences = await catalog_differences(conn)
        if differences:
            problems.append(
                "procrastinate's schema is not the one the bridge was written for "
                f"(procrastinate 3.10): {'; '.join(differences)}"
            )
    if problems:
        raise ConfigurationError("cannot install the procrastinate bridge: " + "; ".join(problems))
    script = _script(INSTALL_SCRIPT)
    async with conn.transaction():
        await conn.execute(_LOCK)
        await conn.execute(script)
    version = await installed_version(conn)
    if version is None:
        raise ConfigurationError(f"sql/{INSTALL_SCRIPT} ran but installed no bridge")
    return version


async def uninstall(conn: psycopg.AsyncConnection[Any]) -> int | None:
    """Remove the bridge (``sql/procrastinate_uninstall.sql``); return the
    version that was installed, None if none was."""
    version = await installed_version(conn)
    script = _script(UNINSTALL_SCRIPT)
    async with conn.transaction():
        await conn.execute(_LOCK)
        await conn.execute(script)
    return version
