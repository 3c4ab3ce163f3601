"""The vacuumer: VACUUM of pgqueue's tables when they hold many dead rows.

Every claim, completion and prune leaves dead row versions, and autovacuum
visits a database about once a minute: under heavy load the tables would
bloat in between and claims slow down. So a worker checks every
``vacuum_interval`` seconds, under an advisory lock that lets one worker at a
time do it, and VACUUMs each table with at least :data:`MIN_DEAD` dead rows
(and a tenth of its live rows). It runs on a session of its own (the lock,
``SET``, and VACUUM outside a transaction): on the direct DSN
(``PGQUEUE_LISTEN_DSN``) when the main one goes through a pooler. When a
VACUUM cannot remove the dead rows (an old transaction or a replication slot
still needs them), the checks back off, up to :data:`MAX_BACKOFF`; a role
that does not own the tables leaves them to autovacuum.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import psycopg

from .._sql import query
from . import Tally, jitter, log

DUTY = "vacuum"

MIN_DEAD = 10_000
"""Dead rows a pgqueue table must hold before a worker VACUUMs it."""

MAX_BACKOFF = 300.0
"""Longest wait between vacuum checks while dead rows cannot be removed."""

PARAMS = {"min_dead": MIN_DEAD, "fraction": 0.1}

Outcome = Literal["clean", "vacuumed", "stuck", "busy", "not owner"]


async def run(
    connect: Callable[[], Awaitable[psycopg.AsyncConnection[Any]]],
    tally: Tally,
    *,
    interval: float,
    stopping: Callable[[], bool],
) -> None:
    """Check about every ``interval`` seconds (longer while stuck) until the
    worker stops or the role turns out not to own the tables."""
    delay = interval
    while not stopping():
        await asyncio.sleep(jitter(delay))
        if stopping():
            return
        tally.passes[DUTY] += 1
        try:
            conn = await connect()
            async with conn:
                outcome = await vacuum_pass(conn)
        except Exception as exc:
            tally.failed(DUTY, exc)
            continue
        if outcome == "not owner":
            log.info("this role does not own pgqueue's tables: vacuuming is left to autovacuum")
            return
        if outcome == "stuck":
            delay = min(delay * 2, MAX_BACKOFF)
            log.warning(
                "VACUUM left pgqueue's dead rows in place (an old transaction or a "
                "replication slot holds them back); next check in %.0fs",
                delay,
            )
        else:
            delay = interval


async def vacuum_pass(
    conn: psycopg.AsyncConnection[Any], params: dict[str, Any] = PARAMS
) -> Outcome:
    """One check under the vacuum lock, and VACUUM of each table over the
    threshold: ``vacuumed``, ``stuck`` (still over it afterwards), ``clean``
    (nothing to do), ``busy`` (another worker holds the lock) or ``not
    owner`` (this role may not vacuum them)."""
    cur = await conn.execute(query("vacuum_lock"))
    row = await cur.fetchone()
    if not (row and row[0]):
        return "busy"
    try:
        # VACUUM must not be cut short by a statement_timeout of the DSN or role
        await conn.execute(query("vacuum_session"))
        cur = await conn.execute(query("vacuum_candidates"), params)
        rows = await cur.fetchall()
        if not rows:
            return "clean"
        if not all(owned for _, _, owned in rows):
            return "not owner"
        started = time.monotonic()
        for name, _, _ in rows:
            await conn.execute(query(f"vacuum_{name}"))
        log.info(
            "vacuumed %s (dead rows before: %s) in %.2fs",
            ", ".join(f"pgqueue.{name}" for name, _, _ in rows),
            ", ".join(f"{dead:,}" for _, dead, _ in rows),
            time.monotonic() - started,
        )
        cur = await conn.execute(query("vacuum_candidates"), params)
        left = {name for name, _, _ in await cur.fetchall()}
        return "stuck" if left & {name for name, _, _ in rows} else "vacuumed"
    finally:
        # explicit: behind a pooler, closing the connection may not end the session
        await conn.execute(query("vacuum_unlock"))
