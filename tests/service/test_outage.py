"""The API survives losing the database, on the real server (issue 5, item 4):
after ``pg_terminate_backend`` of all its connections, and through an outage
(a TCP proxy in front of PostgreSQL taken down and brought back), requests
answer ``503`` with a JSON body while the database is gone (never ``500``,
never a hang), succeed again once it is back, ``/readyz`` follows, and the
LISTEN connection comes back so SSE clients resume, without restarting the
app and without silently missing a change made while LISTEN was down.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

import pgqueue
from pgqueue_service import Settings, _keys, create_app
from pgqueue_service._events import Broadcaster
from tests.acceptance.helpers import TcpProxy

from .conftest import Api, register_tasks
from .sse import Event, EventReader

# Every request of these tests gives up after this long: a hang fails the test.
REQUEST_TIMEOUT = 5.0

AT_HEAD = {
    "schema_at_head": True,
    "schema_serves_release": True,
    "schema_revision": pgqueue.head_revision(),
}


def _timeout() -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)


class EventSource:
    """An SSE client that behaves like a browser's ``EventSource``: when a stream
    ends (or cannot be opened) it reconnects, sending ``Last-Event-ID``. It keeps
    the client's view of job statuses: a ``snapshot`` replaces it, ``job``
    events update it."""

    def __init__(self, api: Api, owner: str) -> None:
        self.api = api
        self.owner = owner
        self.last_id: str | None = None
        self.reader: EventReader | None = None
        self.connects = 0
        self.refused: list[int] = []  # statuses of failed (re)connects
        self.view: dict[int, str] = {}
        self.seen: list[Event] = []

    async def _connect(self) -> None:
        headers = {"Last-Event-ID": self.last_id} if self.last_id else {}
        self.connects += 1
        response = await asyncio.wait_for(
            self.api.call("GET", "/api/v1/events", self.owner, headers=headers), REQUEST_TIMEOUT
        )
        if response.status != 200:
            self.refused.append(response.status)
            response.close()
            return
        self.reader = EventReader(response)

    def close(self) -> None:
        if self.reader is not None:
            self.reader.response.close()
            self.reader = None

    async def until(self, predicate: Callable[[EventSource], bool], timeout: float) -> None:
        """Read (reconnecting as needed) until ``predicate(self)`` holds."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"the SSE client's view {self.view} never matched within {timeout} s;"
                    f" {self.connects} connects, refused: {self.refused}, last events:"
                    f" {self.seen[-5:]}"
                )
            if self.reader is None:
                try:
                    await self._connect()
                except (aiohttp.ClientError, TimeoutError):
                    self.refused.append(0)
                if self.reader is None:
                    await asyncio.sleep(0.2)
                continue
            try:
                event = await self.reader.next(timeout=min(left, 1.0))
            except TimeoutError:
                continue
            except (EOFError, aiohttp.ClientError):
                self.close()  # the server ended the stream: reconnect
                continue
            self.seen.append(event)
            if event.id:
                self.last_id = event.id
            if event.event == "snapshot":
                self.view = {j["id"]: j["status"] for j in event.data["jobs"]}
            elif event.event == "job":
                self.view[event.data["id"]] = event.data["status"]


async def _fresh_snapshot(source: EventSource) -> None:
    """Wait until the client has reconnected and read a new snapshot."""
    connects = source.connects
    await source.until(
        lambda s: s.connects > connects and s.reader is not None and s.seen[-1].event == "snapshot",
        timeout=5,
    )


def _live(source: EventSource, broadcaster: Broadcaster) -> bool:
    """The client's stream is open and on the listener's current LISTEN session."""
    return (
        broadcaster.connected
        and source.reader is not None
        and (source.last_id or "").startswith(f"{broadcaster.epoch}-")
    )


async def _get(api: Api, path: str) -> tuple[int, Any, float]:
    """Status, JSON body and seconds taken of one GET (failing on a hang)."""
    started = time.monotonic()
    try:
        response = await api.call("GET", path, "alice", timeout=_timeout())
        text = await response.text()
    except TimeoutError:
        raise AssertionError(f"GET {path} hung for more than {REQUEST_TIMEOUT} s") from None
    body = json.loads(text) if text else None
    return response.status, body, time.monotonic() - started


async def _until_ok(api: Api, path: str, within: float) -> list[int]:
    """GET ``path`` until it answers 200; every answer before must be a JSON 503."""
    statuses: list[int] = []
    deadline = time.monotonic() + within
    while True:
        status, body, _ = await _get(api, path)
        statuses.append(status)
        if status == 200:
            return statuses
        assert status == 503, f"GET {path} answered {status} {body} (statuses: {statuses})"
        assert body is not None and body["error"] == "unavailable", body
        assert time.monotonic() < deadline, f"GET {path} still failing after {within} s"
        await asyncio.sleep(0.1)


def _terminate_backends(dsn: str) -> int:
    """``pg_terminate_backend`` of every other connection to the test database."""
    dbname = conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (dbname,),
        ).fetchone()
    return int(row[0]) if row else 0


async def _start_job(dsn: str, owner: str) -> tuple[int, int]:
    """Enqueue a job of ``owner`` and claim it, on connections of the test's own
    (not the app's pool): the job id and its attempt."""
    async with pgqueue.Queue(dsn) as queue:
        register_tasks(queue)
        job_id = await queue.enqueue("echo", {}, owner=owner)
        helper = Api(None, queue)  # type: ignore[arg-type]
        return job_id, await helper.claim(job_id)


async def _complete_job(dsn: str, job_id: int, attempt: int) -> None:
    async with pgqueue.Queue(dsn) as queue:
        await Api(None, queue).complete(job_id, attempt)  # type: ignore[arg-type]


async def test_the_api_recovers_after_its_connections_are_terminated(api: Api, db_dsn: str) -> None:
    broadcaster = api.client.app[_keys.BROADCASTER]
    # Several pooled connections, the LISTEN connection, an open SSE stream.
    await asyncio.gather(*(api.json("GET", "/api/v1/jobs/active") for _ in range(4)))
    assert (await _get(api, "/readyz"))[0] == 200
    source = EventSource(api, "alice")
    await source.until(lambda s: bool(s.seen), timeout=5)
    assert source.seen[0].event == "snapshot"

    assert _terminate_backends(db_dsn) >= 2  # the pool's and the listener's
    statuses = await _until_ok(api, "/api/v1/jobs/active", within=5)

    # The client's stream ended with the LISTEN connection; it reconnects and
    # gets a snapshot while the API is not listening yet (it waits before
    # reconnecting). A change then reaches no LISTEN connection: the client must
    # still learn it (from a new snapshot once LISTEN is back), not miss it.
    await _fresh_snapshot(source)
    assert not broadcaster.connected, "LISTEN came back too soon for this test"
    job_id, attempt = await _start_job(db_dsn, "alice")
    await source.until(lambda s: s.view.get(job_id) == "running", timeout=8)

    deadline = time.monotonic() + 5
    while (ready := await _get(api, "/readyz"))[0] != 200:
        assert ready[0] == 503, ready
        assert time.monotonic() < deadline, f"/readyz still {ready} 5 s after the outage"
        await asyncio.sleep(0.1)
    assert ready[1] == {"status": "ready", "database": True, "listener": True, **AT_HEAD}

    # A change after the outage arrives as an event on the resumed stream.
    await source.until(lambda s: _live(s, broadcaster), timeout=5)
    await _complete_job(db_dsn, job_id, attempt)
    await source.until(lambda s: s.view.get(job_id) == "completed", timeout=5)
    assert source.seen[-1].event == "job"
    assert source.connects >= 2, "the stream was not restarted when LISTEN was lost"
    assert 500 not in source.refused
    source.close()
    print(f"statuses until recovered: {statuses}")


@pytest.fixture
def proxy(db_dsn: str) -> Iterator[TcpProxy]:
    params = conninfo_to_dict(db_dsn)
    host = str(params.get("host") or "")
    if not host or host.startswith("/"):
        pytest.skip("the test server is reached through a Unix socket, not TCP")
    tcp = TcpProxy(host, int(params.get("port") or 5432))
    tcp.up()
    try:
        yield tcp
    finally:
        tcp.down()


@pytest.fixture
async def proxied(
    aiohttp_client: Any, db_dsn: str, proxy: TcpProxy, settings: Settings
) -> AsyncIterator[Api]:
    """The app on a queue that reaches the database through ``proxy`` only."""
    queue = pgqueue.Queue(proxy.dsn(db_dsn))
    register_tasks(queue)
    client = await aiohttp_client(create_app(queue, settings))
    yield Api(client, queue)


async def test_the_api_answers_503_during_an_outage_and_resumes_after_it(
    proxied: Api, proxy: TcpProxy, db_dsn: str
) -> None:
    api = proxied
    broadcaster = api.client.app[_keys.BROADCASTER]
    assert (await _get(api, "/readyz"))[0] == 200
    source = EventSource(api, "alice")
    await source.until(lambda s: bool(s.seen), timeout=5)

    proxy.down()
    down_since = time.monotonic()
    answers: list[tuple[str, int, float]] = []
    # A change the API cannot hear of (made on a direct connection).
    job_id, attempt = await _start_job(db_dsn, "alice")
    paths = ("/api/v1/jobs/active", "/readyz", f"/api/v1/jobs/{job_id}", "/metrics")
    while time.monotonic() - down_since < 3 or len(answers) < 2 * len(paths):
        got = await asyncio.gather(*(_get(api, path) for path in paths))
        for path, (status, body, took) in zip(paths, got, strict=True):
            answers.append((path, status, took))
            if path == "/metrics" and status == 200:
                continue  # its database gauges are cached for a moment
            assert status == 503, f"GET {path} answered {status} {body} during the outage"
            if path == "/readyz":
                assert body == {
                    "status": "unavailable",
                    "database": False,
                    "listener": False,
                    "schema_at_head": False,
                    "schema_serves_release": False,
                    "schema_revision": None,
                }
            elif path != "/metrics":
                assert body["error"] == "unavailable", body
        await asyncio.sleep(0.2)
    assert not broadcaster.connected
    # The open stream was ended (LISTEN lost); reconnects during the outage fail
    # cleanly (an ended stream or a 503), never a 500.
    await source.until(lambda s: s.connects >= 2, timeout=5)
    assert 500 not in source.refused
    proxy.up()

    statuses = await _until_ok(api, "/api/v1/jobs/active", within=5)
    # Another change once the database answers, likely before LISTEN is back.
    await _fresh_snapshot(source)
    second, _ = await _start_job(db_dsn, "alice")
    await source.until(
        lambda s: s.view.get(job_id) == "running" and s.view.get(second) == "running",
        timeout=10,
    )
    await source.until(lambda s: _live(s, broadcaster), timeout=10)
    assert (await _get(api, "/readyz"))[1] == {
        "status": "ready", "database": True, "listener": True, **AT_HEAD,
    }  # fmt: skip
    await _complete_job(db_dsn, job_id, attempt)
    await source.until(lambda s: s.view.get(job_id) == "completed", timeout=5)
    assert source.seen[-1].event == "job"
    assert 500 not in source.refused
    source.close()
    slowest = max(took for _, _, took in answers)
    # Bounded by the pool's wait for a connection, not psycopg_pool's 30 s.
    assert slowest < api.client.app[_keys.SETTINGS].db_timeout + 1
    print(f"{len(answers)} answers during the outage, slowest {slowest:.2f} s;"
          f" after it: {statuses}")  # fmt: skip
