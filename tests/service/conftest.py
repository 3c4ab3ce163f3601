"""Fixtures of the status API tests: the app (pytest-aiohttp's ``aiohttp_client``)
on the test's real database, tokens, and helpers that move jobs between states
by calling the stored functions (what a worker would do), so a test reads as
the transitions it makes.

- ``api``: an :class:`Api` around the test client, its queue and tokens.
- ``SECRET``: the token secret of every app built here.
- ``live_server``: the app served from a thread, for tests that make blocking calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

import pgqueue
from pgqueue_service import Settings, create_app, mint_token, running

SECRET = "service-tests-" + "s" * 60
WORKER = "tests:api"


def register_tasks(queue: pgqueue.Queue) -> None:
    """The tasks the API tests enqueue through ``POST /api/v1/jobs``."""

    @queue.task(queue="api")
    async def echo(ctx: pgqueue.JobContext, value: Any = None) -> Any:
        return value

    @queue.task(queue="api")
    async def steps(ctx: pgqueue.JobContext, n: int = 5, pause: float = 0.3) -> int:
        for i in range(1, n + 1):
            await asyncio.sleep(pause)
            ctx.progress(100 * i / n, f"step {i}/{n}")
        return n

    # A schedule for GET /api/v1/periodic that never fires during a test run.
    @queue.periodic("0 0 29 2 *", timezone="Europe/Paris", queue="api")
    async def leap_day_report(ctx: pgqueue.JobContext) -> str:
        return "leap day"

    @queue.task(queue="api")
    async def fails_once(ctx: pgqueue.JobContext) -> str:
        if ctx.attempt == 1:
            raise pgqueue.NonRetryableError("the first attempt always fails")
        return f"fine on attempt {ctx.attempt}"


def auth(owner: str, *, admin: bool = False) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(SECRET, owner, admin=admin)}"}


class Api:
    """The test client with the caller's tokens at hand, and job helpers."""

    def __init__(self, client: TestClient[Any, Any], queue: pgqueue.Queue) -> None:
        self.client = client
        self.queue = queue
        self.leases: dict[int, int] = {}

    async def call(
        self, method: str, path: str, owner: str | None = "alice", *, admin: bool = False, **kw: Any
    ) -> ClientResponse:
        headers = dict(kw.pop("headers", {}))
        if owner is not None:
            headers.update(auth(owner, admin=admin))
        return await self.client.request(method, path, headers=headers, **kw)

    async def json(
        self, method: str, path: str, owner: str | None = "alice", *, status: int = 200, **kw: Any
    ) -> Any:
        response = await self.call(method, path, owner, **kw)
        text = await response.text()
        assert response.status == status, f"{method} {path}: {response.status} {text}"
        return json.loads(text)

    # -- jobs in given states, through the stored functions -----------------------------

    async def enqueue(self, owner: str | None, task: str = "echo", **options: Any) -> int:
        return await self.queue.enqueue(task, {}, owner=owner, **options)

    async def sql(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        pool = await self.queue.pool()
        async with pool.connection() as conn:
            cur = await conn.execute(sql, params)  # type: ignore[arg-type]
            return await cur.fetchall() if cur.description else []

    async def claim(self, job_id: int) -> int:
        """Lease ``job_id``: its attempt number. A claim takes every due job of
        queue ``api``; the leases of the others are kept for later calls."""
        if job_id not in self.leases:
            rows = await self.sql(
                "SELECT id, attempts FROM pgqueue.claim(%(w)s, ARRAY['api'], 100)", {"w": WORKER}
            )
            self.leases.update({int(r[0]): int(r[1]) for r in rows})
        assert job_id in self.leases, f"job {job_id} was not claimable"
        return self.leases.pop(job_id)

    async def progress(self, job_id: int, attempt: int, pct: float) -> None:
        await self.sql(
            "SELECT pgqueue.progress(%(id)s, %(a)s, %(p)s::numeric)",
            {"id": job_id, "a": attempt, "p": pct},
        )

    async def fail(self, job_id: int, attempt: int, error: str = "boom") -> None:
        await self.sql(
            "SELECT pgqueue.fail(%(id)s, %(a)s, %(e)s, false)",
            {"id": job_id, "a": attempt, "e": error},
        )

    async def complete(self, job_id: int, attempt: int) -> None:
        await self.sql(
            "SELECT pgqueue.complete(%(id)s, %(a)s, '1'::jsonb)", {"id": job_id, "a": attempt}
        )

    async def age(self, job_id: int, by: timedelta) -> None:
        """Move every timestamp of a job back by ``by`` (keeps the CHECKs true)."""
        await self.sql(
            "UPDATE pgqueue.jobs SET created_at = created_at - %(by)s, run_at = run_at - %(by)s,"
            " started_at = started_at - %(by)s, leased_at = leased_at - %(by)s,"
            " completed_at = completed_at - %(by)s WHERE id = %(id)s",
            {"id": job_id, "by": by},
        )


@pytest.fixture
def settings() -> Settings:
    return Settings(secret=SECRET, keepalive=0.5)


@pytest.fixture
async def api(aiohttp_client: Any, queue: pgqueue.Queue, settings: Settings) -> AsyncIterator[Api]:
    register_tasks(queue)
    client = await aiohttp_client(create_app(queue, settings, close_queue=False))
    yield Api(client, queue)


@contextlib.contextmanager
def live_server(dsn: str) -> Iterator[str]:
    """The app on ``dsn`` served on 127.0.0.1 from a thread of its own (for
    blocking clients), with three jobs each of alice and bob; yields its URL."""
    started = threading.Event()
    state: dict[str, Any] = {}

    async def serve() -> None:
        queue = pgqueue.Queue(dsn)
        register_tasks(queue)
        for owner in ("alice", "bob"):
            for _ in range(3):
                await queue.enqueue("echo", {"value": owner}, owner=owner)
        stop = asyncio.Event()
        state["stop"] = (asyncio.get_running_loop(), stop)
        async with running(queue, Settings(secret=SECRET), host="127.0.0.1", port=0) as url:
            state["url"] = url
            started.set()
            await stop.wait()

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    assert started.wait(30), "the server did not start"
    try:
        yield state["url"]
    finally:
        loop, stop = state["stop"]
        loop.call_soon_threadsafe(stop.set)
        thread.join(15)
