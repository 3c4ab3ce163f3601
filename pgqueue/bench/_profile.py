"""``pgqueue bench --profile``: where the time of one enqueue and of one idle
claim goes, client and server.

Every part is timed on its own in a scratch database and reported as the
median of its samples, in microseconds per call:

- the client's parts of ``Queue.enqueue`` (the whole call, its Python checks
  and JSON, the pool checkout with its live-connection check, a bare round
  trip, the statement alone) and, when asyncpg is installed, the same round
  trip and statement through asyncpg (PgQueuer's client, which prepares
  every statement; pgqueue's connections prepare none unless
  ``PGQUEUE_PREPARE_THRESHOLD`` asks);
- the server's parts of one enqueue, each timed in a PL/pgSQL loop (no round
  trip, no commit): an INSERT of the same row into a bare copy of
  ``pgqueue.jobs``, then the copy with its CHECK constraints, with its
  indexes, ``pgqueue.jobs`` itself without and with its triggers, and the
  ``pgqueue.enqueue`` call; and each CHECK constraint alone;
- the commit: the WAL flush (``synchronous_commit`` on against off) and a
  NOTIFY in the committing transaction;
- one idle claim as a worker makes it: one job enqueued 20 ms before, then
  the worker's claim (limit 100) and completion through its database seam,
  the claim statement alone, and the server's execution time of the claim
  (``EXPLAIN ANALYZE``).

The parts overlap (the whole call contains the statement, which contains the
round trip and the server's share); docs/performance.md reads them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import re
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import Jsonb

from .. import _migrate
from .._connect import connect, live_connection, resolve_dsn
from .._context import JobContext
from .._database import Lease, WorkerDatabase
from .._queue import Queue, _options
from .._sql import query
from ._run import _machine, _scratch, _versions

# The row every server-side variant inserts: what pgqueue.enqueue inserts for
# a no-op task without options.
_COLUMNS = "task, args, queue, priority, run_at, max_attempts, timeout, owner, metadata"
_VALUES = "'noop', '{}'::jsonb, 'profile', 0, now(), 1, NULL, NULL, '{}'::jsonb"
_ENQUEUE_CALL = (
    "pgqueue.enqueue('noop', '{}'::jsonb, 'profile', 0, NULL, 1, NULL, NULL, '{}'::jsonb,"
    " NULL, NULL, NULL, NULL, NULL)"
)
_PLACEHOLDER = re.compile(r"%\((\w+)\)s")


def _numbered(statement: str, params: Mapping[str, Any]) -> tuple[str, list[Any]]:
    """A named query in asyncpg's form: ``$1, $2…`` placeholders in the order
    they appear, and the values in that order (JSON as its text)."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        names.append(match.group(1))
        return f"${len(names)}"

    numbered = _PLACEHOLDER.sub(number, statement)
    values = [params[name] for name in names]
    return numbered, [json.dumps(v.obj) if isinstance(v, Jsonb) else v for v in values]


async def _medians_us(
    n: int, calls: Mapping[str, Callable[[], Awaitable[Any]]]
) -> dict[str, float]:
    """Median microseconds per call of each of ``calls``, timed in turns (one
    call of each per round, so a slow moment of the machine spreads over all
    of them alike), after 20 untimed rounds."""
    for _ in range(20):
        for call in calls.values():
            await call()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(n):
        for name, call in calls.items():
            t0 = time.perf_counter()
            await call()
            samples[name].append(time.perf_counter() - t0)
    return {name: statistics.median(values) * 1e6 for name, values in samples.items()}


# -- the server's parts ------------------------------------------------------------------

_SETUP = """
CREATE SCHEMA profile;
CREATE TABLE profile.bare (LIKE pgqueue.jobs INCLUDING DEFAULTS INCLUDING IDENTITY
                                             INCLUDING GENERATED);
CREATE TABLE profile.checked (LIKE pgqueue.jobs INCLUDING DEFAULTS INCLUDING IDENTITY
                                                INCLUDING GENERATED INCLUDING CONSTRAINTS);
CREATE TABLE profile.indexed (LIKE pgqueue.jobs INCLUDING DEFAULTS INCLUDING IDENTITY
                                                INCLUDING GENERATED INCLUDING CONSTRAINTS
                                                INCLUDING INDEXES);
"""


def _loop_function(name: str, statement: str) -> sql.Composed:
    """A function running ``statement`` n times in one transaction, returning
    the microseconds per run (a static statement: its plan is cached, as in
    pgqueue's own functions)."""
    return sql.SQL(
        "CREATE FUNCTION profile.{}(n int) RETURNS float8 LANGUAGE plpgsql AS $f$\n"
        "DECLARE t0 timestamptz := clock_timestamp();\n"
        "BEGIN\n"
        "    FOR i IN 1..n LOOP\n"
        "        {};\n"
        "    END LOOP;\n"
        "    RETURN extract(epoch FROM clock_timestamp() - t0) * 1e6 / n;\n"
        "END $f$"
    ).format(sql.Identifier(name), sql.SQL(statement))


def _insert(table: str) -> str:
    return f"INSERT INTO {table} ({_COLUMNS}) VALUES ({_VALUES})"


def _server_parts(dsn: str, n: int, rounds: int) -> dict[str, Any]:
    """Microseconds per INSERT of each variant, and per CHECK constraint."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        checks = conn.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE conrelid = 'pgqueue.jobs'::regclass AND contype = 'c' ORDER BY conname"
        ).fetchall()
        variants = {
            "bare": _insert("profile.bare"),
            "checks": _insert("profile.checked"),
            "indexes": _insert("profile.indexed"),
            "jobs_untriggered": _insert("pgqueue.jobs"),
            "jobs": _insert("pgqueue.jobs"),
            "function": f"PERFORM {_ENQUEUE_CALL}",
        }
        for i, (name, definition) in enumerate(checks):
            table = f"profile.check_{i}"
            conn.execute(
                sql.SQL(
                    "CREATE TABLE {table} (LIKE profile.bare INCLUDING DEFAULTS INCLUDING IDENTITY"
                    " INCLUDING GENERATED); ALTER TABLE {table} ADD CONSTRAINT {name} {definition}"
                ).format(
                    table=sql.SQL(table), name=sql.Identifier(name), definition=sql.SQL(definition)
                )
            )
            variants[f"check:{name}"] = _insert(table)
        names = {variant: f"loop_{i}" for i, variant in enumerate(variants)}
        for variant, statement in variants.items():
            conn.execute(_loop_function(names[variant], statement))

        samples: dict[str, list[float]] = {variant: [] for variant in variants}
        for _ in range(rounds):  # alternated, so a slow moment spreads over every variant
            for variant in variants:
                with conn.transaction(force_rollback=True):
                    if variant == "jobs_untriggered":
                        conn.execute("ALTER TABLE pgqueue.jobs DISABLE TRIGGER USER")
                    call = sql.SQL("SELECT profile.{}(%s)").format(sql.Identifier(names[variant]))
                    row = conn.execute(call, (n,)).fetchone()
                    assert row is not None
                    samples[variant].append(float(row[0]))
    return {variant: statistics.median(values) for variant, values in samples.items()}


# -- the client's parts and the commit ---------------------------------------------------


async def _client_parts(dsn: str, n: int) -> dict[str, float | None]:
    """The parts of ``Queue.enqueue`` on the client, the same round trip and
    statement through asyncpg (if installed), and the commit: an autocommit
    INSERT into the bare copy with ``synchronous_commit`` on and off, and with
    a NOTIFY beside it. All timed in turns."""
    queue = Queue(dsn)

    @queue.task(name="noop", queue="profile")
    async def noop(ctx: JobContext) -> None:
        """Never run: only enqueued."""

    insert = _insert("profile.bare")
    notify = f"WITH i AS ({insert} RETURNING 1) SELECT pg_notify('pgqueue_profile', 'x') FROM i"
    statement = query("enqueue")
    params = queue._row(noop, {}, _options(None, {})).params()
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(queue.close)
        pool = await queue.pool()
        held = await stack.enter_async_context(live_connection(pool))
        synced = await stack.enter_async_context(await connect(dsn))
        unsynced = await stack.enter_async_context(await connect(dsn))
        await unsynced.execute("SET synchronous_commit = off")

        async def prepare() -> None:
            queue._row(noop, {}, _options(None, {})).params()

        async def checkout() -> None:
            async with live_connection(pool):
                pass

        calls: dict[str, Callable[[], Awaitable[Any]]] = {
            "whole": noop.enqueue,
            "python": prepare,
            "checkout": checkout,
            "round_trip": lambda: held.execute("SELECT 1"),
            "statement": lambda: held.execute(statement, params),
            "insert": lambda: synced.execute(insert),
            "insert_notify": lambda: synced.execute(notify),
            "insert_unsynced": lambda: unsynced.execute(insert),
        }
        asyncpg_conn = await _asyncpg_connect(dsn)
        if asyncpg_conn is not None:
            stack.push_async_callback(asyncpg_conn.close)
            numbered, args = _numbered(statement, params)
            calls["asyncpg_round_trip"] = lambda: asyncpg_conn.execute("SELECT 1")
            calls["asyncpg_statement"] = lambda: asyncpg_conn.fetch(numbered, *args)
        parts: dict[str, float | None] = {"asyncpg_round_trip": None, "asyncpg_statement": None}
        parts.update(await _medians_us(n, calls))
    return parts


async def _asyncpg_connect(dsn: str) -> Any:
    """An asyncpg connection to ``dsn``, or None if asyncpg is not installed
    or cannot take the DSN as given (its rows are then n/a)."""
    try:
        import asyncpg
    except ImportError:
        return None
    info = conninfo_to_dict(dsn)
    try:
        return await asyncpg.connect(
            host=info.get("host"),
            port=int(info.get("port") or 5432),
            user=info.get("user"),
            password=info.get("password"),
            database=info.get("dbname"),
        )
    except Exception as exc:
        print(f"bench --profile: asyncpg could not connect ({exc}): n/a", file=sys.stderr)
        return None


async def _idle_claim(dsn: str, rounds: int) -> dict[str, float]:
    """One job enqueued, 20 ms of quiet, then the worker's claim and completion
    (through its database seam); the claim statement alone; its server time."""
    database = WorkerDatabase(dsn, pool_size=2, name="pgqueue-profile")
    await database.open()
    claim = query("claim")
    params = {
        "worker_id": "profile",
        "queues": ["profile"],
        "limit": 100,
        "lease_timeout": timedelta(seconds=30),
        "tasks": ["noop"],
    }
    explain = sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) {}").format(sql.SQL(claim))
    samples: dict[str, list[float]] = {"claim": [], "complete": [], "statement": [], "server": []}
    try:
        # connections as the worker makes them (prepared statements as it does)
        async with await connect(dsn) as producer, await connect(dsn) as conn:
            for i in range(rounds):
                await producer.execute(f"SELECT {_ENQUEUE_CALL}")
                await asyncio.sleep(0.02)
                t0 = time.perf_counter()
                if i % 2 == 0:
                    jobs = await database.claim(
                        "profile", ["profile"], 100, timedelta(seconds=30), ["noop"]
                    )
                    t1 = time.perf_counter()
                    await database.complete_many([(job.lease, Jsonb(None)) for job in jobs])
                    samples["claim"].append(t1 - t0)
                    samples["complete"].append(time.perf_counter() - t1)
                    continue
                await (await conn.execute(claim, params)).fetchall()
                samples["statement"].append(time.perf_counter() - t0)
                await producer.execute(f"SELECT {_ENQUEUE_CALL}")
                await asyncio.sleep(0.02)
                plan = await (await conn.execute(explain, params)).fetchone()
                assert plan is not None
                samples["server"].append(float(plan[0][0]["Execution Time"]) / 1e3)
                running = await (
                    await conn.execute(
                        "SELECT id, attempts FROM pgqueue.jobs WHERE status = 'running'"
                    )
                ).fetchall()
                await database.complete_many(
                    [(Lease(job_id, attempt), Jsonb(None)) for job_id, attempt in running]
                )
    finally:
        await database.close()
    return {part: statistics.median(values) * 1e6 for part, values in samples.items() if values}


# -- the report --------------------------------------------------------------------------


async def run_profile(*, dsn: str | None, calls: int | None, as_json: bool) -> int:
    server = resolve_dsn(dsn)
    n = calls or 2000
    with _scratch(server, "profile") as scratch:
        await asyncio.to_thread(_migrate.upgrade, scratch)
        with psycopg.connect(scratch, autocommit=True) as conn:
            conn.execute(_SETUP)
        # in this order: the claim on a table without dead rows, then the
        # client's parts, then the server's loops (rolled back, so dead rows)
        claim = await _idle_claim(scratch, max(20, n // 20))
        client = await _client_parts(scratch, n)
        server_parts = await asyncio.to_thread(_server_parts, scratch, n, 9)
    report = {
        "date": datetime.date.today().isoformat(),
        "machine": await asyncio.to_thread(_machine, server),
        "versions": _versions(),
        "calls": n,
        "enqueue_client": client,
        "enqueue_server": server_parts,
        "commit": {k: client.pop(k) for k in ("insert", "insert_notify", "insert_unsynced")},
        "idle_claim": claim,
    }
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        _print(report)
    return 0


def _row(label: str, value: float | None, note: str = "") -> None:
    figure = "n/a" if value is None else f"{value:,.1f}"
    print(f"  {label:<46} {figure:>9}  {note}")


def _print(report: dict[str, Any]) -> None:
    machine = report["machine"]
    settings = ", ".join(f"{k}={v}" for k, v in machine.get("settings", {}).items())
    print(f"PostgreSQL {machine.get('postgresql')}, {machine.get('cpus')} CPUs; {settings}")
    print(f"median microseconds per call, {report['calls']:,} calls each")
    c, s, k, i = (
        report["enqueue_client"],
        report["enqueue_server"],
        report["commit"],
        report["idle_claim"],
    )
    print("\none enqueue, client (Queue.enqueue of a task without options)")
    _row("the whole call", c["whole"])
    _row("Python: argument checks and JSON", c["python"])
    _row("pool checkout and return (live check)", c["checkout"])
    _row("round trip of SELECT 1", c["round_trip"], "psycopg")
    _row("the enqueue statement, commit included", c["statement"], "psycopg")
    _row("round trip of SELECT 1", c["asyncpg_round_trip"], "asyncpg")
    _row("the enqueue statement, commit included", c["asyncpg_statement"], "asyncpg, prepared")
    print("\none enqueue, server (in a PL/pgSQL loop: no round trip, no commit)")
    _row("INSERT of the row into a bare copy", s["bare"])
    _row("+ the CHECK constraints", s["checks"] - s["bare"])
    _row("+ the indexes", s["indexes"] - s["checks"])
    _row("+ the rest of pgqueue.jobs (foreign keys)", s["jobs_untriggered"] - s["indexes"])
    _row("+ the triggers (the announcement's NOTIFY)", s["jobs"] - s["jobs_untriggered"])
    _row("+ the pgqueue.enqueue function around it", s["function"] - s["jobs"])
    _row("= pgqueue.enqueue", s["function"])
    print("  each CHECK constraint (over the bare copy), costliest first:")
    checks = {
        k.removeprefix("check:"): v - s["bare"] for k, v in s.items() if k.startswith("check:")
    }
    for name, cost in sorted(checks.items(), key=lambda item: -item[1]):
        _row(f"  {name}", cost)
    print("\nthe commit (an autocommit INSERT into the bare copy, client-timed)")
    _row("with synchronous_commit off", k["insert_unsynced"])
    _row("+ the WAL flush (synchronous_commit on)", k["insert"] - k["insert_unsynced"])
    _row("+ a NOTIFY in the same transaction", k["insert_notify"] - k["insert"])
    print("\none idle claim (one job enqueued 20 ms before; claim limit 100)")
    _row("the worker's claim call (seam, Python included)", i.get("claim"))
    _row("the claim statement alone", i.get("statement"))
    _row("the claim's server execution (EXPLAIN ANALYZE)", i.get("server"))
    _row("the worker's completion call", i.get("complete"))
