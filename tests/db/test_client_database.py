"""The client's seam to PostgreSQL (``pgqueue._database.ClientDatabase``): faults
injected through it, as ``Queue(database=...)`` lets a test do, and what the
library does with them."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, LiteralString

import psycopg
import pytest

import pgqueue
from pgqueue._database import AsyncConn, ClientDatabase
from pgqueue._sql import query

from ._helpers import Conn, scalar

SHARED_DATABASE = True  # one database per module, emptied before each test (conftest.py)


class LostReply(ClientDatabase):
    """Runs ``failing`` statements, then loses their reply, as a connection
    that breaks between the server's commit and the client's read does."""

    failing: tuple[str, ...] = ()
    calls: list[tuple[str, bool]]
    """Each failed statement's name, and whether it ran on the caller's connection."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls = []

    async def fetch(
        self,
        statement: LiteralString,
        params: Mapping[str, Any],
        conn: AsyncConn | None = None,
    ) -> list[dict[str, Any]]:
        rows = await super().fetch(statement, params, conn)
        names = [name for name in self.failing if query(name) == statement]
        self.calls.extend((name, conn is not None) for name in names)
        if names:
            raise pgqueue.DatabaseUnavailable("the connection was lost before the reply")
        return rows


class LostEnqueueReply(LostReply):
    failing = ("enqueue",)


class LostBatchReadBack(LostReply):
    failing = ("get_batch",)


def count(conn: Conn, table: str) -> int:
    return int(scalar(conn, f"SELECT count(*) FROM pgqueue.{table}"))


async def test_an_enqueue_whose_reply_was_lost_is_not_sent_again(db_dsn: str, conn: Conn) -> None:
    # The job was committed; the caller is told the database was unavailable
    # and decides (a dedupe_key makes a second try safe). A client that
    # re-sent the call by itself would write the job twice.
    async with pgqueue.Queue(db_dsn, database=LostEnqueueReply) as queue:

        @queue.task
        async def t(ctx: pgqueue.JobContext, x: int) -> int:
            return x

        with pytest.raises(pgqueue.DatabaseUnavailable, match="before the reply"):
            await t.enqueue(x=1)
        assert isinstance(queue.database, LostEnqueueReply)
        assert queue.database.calls == [("enqueue", False)]
    assert count(conn, "jobs") == 1


async def test_a_batch_read_back_failing_in_the_callers_transaction_leaves_nothing(
    db_dsn: str, conn: Conn
) -> None:
    # enqueue_batch writes the batch, then reads it back on the same
    # connection: a failure between the two, inside the caller's
    # transaction, takes the whole batch with it.
    async with pgqueue.Queue(db_dsn, database=LostBatchReadBack) as queue:

        @queue.task
        async def t(ctx: pgqueue.JobContext, x: int) -> int:
            return x

        async with await psycopg.AsyncConnection.connect(db_dsn) as aconn:
            with pytest.raises(pgqueue.DatabaseUnavailable):
                async with aconn.transaction():
                    await queue.enqueue_batch(t, [{"x": 1}, {"x": 2}], conn=aconn)
        assert isinstance(queue.database, LostBatchReadBack)
        assert queue.database.calls == [("get_batch", True)]  # read back in the transaction
    assert (count(conn, "jobs"), count(conn, "batches")) == (0, 0)


class Refused(Exception):
    """Raised by the seam's one way in, so a test sees which calls went through it."""


async def test_every_operation_of_a_queue_runs_through_its_seam(db_dsn: str) -> None:
    # The seam's one way in refuses every statement, and its pools refuse to
    # open with another error: an operation that ran SQL by any other route
    # (its own connection, or the pool without fetch) fails differently or
    # not at all.
    class Refusing(ClientDatabase):
        async def fetch(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
            raise Refused

        def fetch_sync(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
            raise Refused

        async def pool(self) -> Any:
            raise AssertionError("a pooled connection taken outside fetch")

        def sync_pool(self) -> Any:
            raise AssertionError("a pooled connection taken outside fetch_sync")

    async with pgqueue.Queue(db_dsn, database=Refusing) as queue:

        @queue.task
        async def t(ctx: pgqueue.JobContext) -> None:
            return None

        queue.periodic("* * * * *", name="every-minute")(t)
        operations = {
            "enqueue": lambda: t.enqueue(),
            "enqueue_many": lambda: queue.enqueue_many(t, [{}]),
            "enqueue_batch": lambda: queue.enqueue_batch(t, [{}]),
            "get_job": lambda: queue.get_job(1),
            "list_jobs": lambda: queue.list_jobs(),
            "list_jobs of an owner": lambda: queue.list_jobs(owner="o"),
            "attempts": lambda: queue.attempts(1),
            "progress_history": lambda: queue.progress_history(1),
            "cancel": lambda: queue.cancel(1),
            "retry": lambda: queue.retry(1),
            "pause_queue": lambda: queue.pause_queue("q"),
            "resume_queue": lambda: queue.resume_queue("q"),
            "set_rate_limit": lambda: queue.set_rate_limit("q", 1),
            "queue_stats": lambda: queue.queue_stats(),
            "rescue": lambda: queue.rescue(),
            "prune": lambda: queue.prune(),
            "wait": lambda: queue.wait(1, timeout=1),
            "wait_batch": lambda: queue.wait_batch(1, timeout=1),
            "get_batch": lambda: queue.get_batch(1),
            "list_batches": lambda: queue.list_batches(),
            "batch_jobs": lambda: queue.batch_jobs(1),
            "pause_batch": lambda: queue.pause_batch(1),
            "resume_batch": lambda: queue.resume_batch(1),
            "cancel_batch": lambda: queue.cancel_batch(1),
            "enqueue_due_ticks": lambda: queue.enqueue_due_ticks(),
            "periodic_status": lambda: queue.periodic_status(),
        }
        blocking = {
            "enqueue_sync": lambda: t.enqueue_sync(),
            "enqueue_many_sync": lambda: queue.enqueue_many_sync(t, [{}]),
            "enqueue_batch_sync": lambda: queue.enqueue_batch_sync(t, [{}]),
        }
        elsewhere = {}
        for name, operation in {**operations, **blocking}.items():
            try:
                called = operation()
                if inspect.isawaitable(called):
                    await called
            except Refused:
                continue
            except BaseException as exc:
                elsewhere[name] = repr(exc)
            else:
                elsewhere[name] = "ran"
        assert elsewhere == {}
