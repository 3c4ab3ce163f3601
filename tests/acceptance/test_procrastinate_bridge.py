"""Acceptance: the procrastinate bridge with real ``procrastinate worker``
processes against a real PostgreSQL.

The module builds one database the way a user sets one up: pgqueue migrated
(cloned from the session's template), ``procrastinate schema --apply`` and
``pgqueue procrastinate install`` run as subprocesses. Each test gets a fresh
clone of it, starts its own workers (``python -m procrastinate --app
tests.acceptance.procrastinate_app.app worker``, heartbeat 0.5 s) and, where
it needs one, ``pgqueue serve``. It defers through
``pgqueue.procrastinate.defer``/``defer_batch`` on its own connections and
judges the outcome from the database (mirrors in ``pgqueue.jobs``, their
attempts and progress history, procrastinate's own rows, ``bridge_runs``
written by the task bodies) and through the API.

Every test ends with :meth:`Bridge.finish`: its processes are stopped, and
then no job or batch row ever broke ``created_at <= started_at <=
completed_at`` (a watcher samples them all through the test), the bridge
caught no error (``pgqueue_procrastinate.errors``), no staged outcome is left,
no mirror is running, and every procrastinate job's mirror is in the state
that matches procrastinate's.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.conftest import create_database, drop_database, scratch_database

from . import procrastinate_app as papp
from .helpers import ROOT, WorkerProcess, cli_command, cli_env, run_cli, wait_until

procrastinate = pytest.importorskip("procrastinate")
pgqueue_service = pytest.importorskip("pgqueue_service")

import pgqueue.procrastinate as bridge  # noqa: E402  (after the importorskip)

pytestmark = pytest.mark.timeout(180)

SECRET = "bridge-acceptance-" + "s" * 48
WAIT = 60.0  # generous deadline of every wait: the machine may be loaded

# procrastinate's status -> the mirror states that match it
MATCHING = {
    "todo": {"pending", "retrying"},
    "doing": {"running"},
    "succeeded": {"completed"},
    "failed": {"failed", "dead_letter"},
    "aborted": {"cancelled"},
    "cancelled": {"cancelled"},
}


def _matching(status: str, abort_requested: bool) -> set[str]:
    """The mirror states that match a procrastinate job's. A job whose abort
    was requested (a cancel through pgqueue) is cancelled in pgqueue whatever
    procrastinate ends it as: procrastinate fails, rather than retries, an
    aborted job whose task has a retry strategy."""
    return MATCHING[status] | ({"cancelled"} if abort_requested else set())


TIMESTAMPS_BROKEN = """
SELECT 'job' AS kind, id, status::text, created_at, started_at, completed_at FROM pgqueue.jobs
 WHERE NOT (created_at <= COALESCE(started_at, created_at)
            AND COALESCE(started_at, created_at) <= COALESCE(completed_at, 'infinity'))
UNION ALL
SELECT 'batch', id, status::text, created_at, started_at, completed_at FROM pgqueue.batches
 WHERE NOT (created_at <= COALESCE(started_at, created_at)
            AND COALESCE(started_at, created_at) <= COALESCE(completed_at, 'infinity'))
"""


# -- the database -----------------------------------------------------------------------------


def _procrastinate_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "procrastinate", "--app", papp.APP_PATH, *args]


def _app_env(dsn: str, **extra: str) -> dict[str, str]:
    return cli_env(None, **{papp.DSN_VARIABLE: dsn}, **extra)


@pytest.fixture(scope="module")
def bridge_template(pg_server: str, template_db: str) -> Iterator[str]:
    """A database set up as a user does, once: pgqueue migrated, then
    procrastinate's schema and the bridge applied by their CLIs. Tests clone it."""
    name = f"pgqueue_pbt_{uuid.uuid4().hex[:10]}"
    dsn = create_database(pg_server, name, template=template_db)
    try:
        applied = subprocess.run(
            _procrastinate_command("schema", "--apply"),
            cwd=ROOT, env=_app_env(dsn), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert applied.returncode == 0, applied.stderr
        installed = run_cli("procrastinate", "install", "--json", dsn=dsn, timeout=120)
        assert installed.returncode == 0, installed.stderr
        assert installed.json()["installed"] == 1, installed.stdout
        checked = run_cli("procrastinate", "check", "--json", dsn=dsn, timeout=120)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        report = checked.json()
        assert (report["differences"], report["bridge_version"]) == ([], 1), report
        assert report.get("errors", []) == [], report
        papp.create_tables(dsn)
        yield name
    finally:
        drop_database(pg_server, name)


def _one(dsn: str, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        return conn.execute(sql, params).fetchone()  # type: ignore[arg-type]


def _all(dsn: str, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]


class TimestampWatcher:
    """Samples the timestamp rule of every job and batch row while a test
    runs, so a row that breaks it for a moment is seen too."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.broken: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True, row_factory=dict_row) as conn:
                while not self._stop.wait(0.2):
                    self.broken.extend(conn.execute(TIMESTAMPS_BROKEN).fetchall())
        except Exception as exc:  # the database was dropped under it at teardown
            if not self._stop.is_set():
                self.errors.append(repr(exc))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


# -- processes ------------------------------------------------------------------------------


@dataclass
class Server:
    proc: WorkerProcess
    url: str

    def call(self, method: str, path: str, owner: str, body: Any = None) -> tuple[int, Any]:
        """``(status, JSON body)`` of one API call as ``owner``."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, method=method, data=data, headers=_auth(owner)
        )
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=WAIT) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as error:
            with error:
                return error.code, json.loads(error.read() or b"null")

    def events(self, owner: str) -> EventStream:
        return EventStream(self.url, owner)


def _auth(owner: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {pgqueue_service.mint_token(SECRET, owner)}"}


@dataclass
class Event:
    event: str
    data: Any


class EventStream:
    """``GET /api/v1/events`` read by a thread of its own: events queue up
    until the test takes them with :meth:`until`."""

    def __init__(self, url: str, owner: str) -> None:
        self.owner = owner
        where = urllib.parse.urlsplit(url)
        # keepalive comments come every 15 s: a read never waits this long
        connection = http.client.HTTPConnection(where.hostname, where.port, timeout=120)
        connection.request(
            "GET", "/api/v1/events", headers={**_auth(owner), "Accept": "text/event-stream"}
        )
        # kept to end the stream: closing the response would wait for the
        # reading thread's readline (until the next keepalive)
        self.socket = connection.sock
        self.response = connection.getresponse()
        assert self.response.status == 200, self.response.read()
        self._events: queue.Queue[Event | None] = queue.Queue()
        self.seen: list[Event] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        fields: dict[str, str] = {}
        try:
            while raw := self.response.readline():
                line = raw.decode().rstrip("\r\n")
                if not line:
                    if "data" in fields:
                        data = json.loads(fields["data"])
                        self._events.put(Event(fields.get("event", "message"), data))
                    fields.clear()
                elif not line.startswith(":"):
                    name, _, value = line.partition(":")
                    fields[name] = value.removeprefix(" ")
        except Exception:
            pass
        finally:
            self._events.put(None)

    def until(self, predicate: Callable[[Event], bool], timeout: float = WAIT) -> list[Event]:
        """The events read until one satisfies ``predicate`` (included)."""
        deadline = time.monotonic() + timeout
        taken: list[Event] = []
        while True:
            try:
                event = self._events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"{self.owner}'s stream: no matching event within {timeout} s; saw {taken}"
                ) from None
            if event is None:
                raise AssertionError(f"{self.owner}'s stream ended; saw {taken}")
            taken.append(event)
            self.seen.append(event)
            if predicate(event):
                return taken

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.socket.shutdown(socket.SHUT_RDWR)


def _job_event(job_id: int, status: str | None = None) -> Callable[[Event], bool]:
    def match(event: Event) -> bool:
        return (
            event.event == "job"
            and event.data["id"] == job_id
            and (status is None or event.data["status"] == status)
        )

    return match


class Bridge:
    """One test's database, its processes, and what the test asks of them."""

    def __init__(self, dsn: str, log_dir: Path) -> None:
        self.dsn = dsn
        self.log_dir = log_dir
        self.procs: list[WorkerProcess] = []
        self.streams: list[EventStream] = []
        self.watcher = TimestampWatcher(dsn)
        self.finished = False

    # processes

    def worker(
        self, name: str, *flags: str, concurrency: int = 4, env: dict[str, str] | None = None
    ) -> WorkerProcess:
        """Start a ``procrastinate worker`` (all queues; ``env``: more variables)
        and wait until it runs."""
        argv = _procrastinate_command(
            "--log-level", "info", "worker", "--name", name,
            "--concurrency", str(concurrency), *flags,
        )  # fmt: skip
        proc = WorkerProcess(name, argv, _app_env(self.dsn, **(env or {})), self.log_dir)
        self.procs.append(proc)
        proc.wait_for_log("Starting worker on", timeout=WAIT)
        return proc

    def serve(self) -> Server:
        """Start ``pgqueue serve`` on a free port; return it once it listens."""
        env = cli_env(self.dsn, PGQUEUE_API_SECRET=SECRET)
        proc = WorkerProcess("serve", cli_command("serve", "--port", "0"), env, self.log_dir)
        self.procs.append(proc)

        def url() -> str | None:
            if proc.poll() is not None:
                raise AssertionError(f"pgqueue serve exited: {proc.log()}")
            text = proc.stdout_path.read_text(errors="replace")
            match = re.search(r"listening on (http://\S+)", text)
            return match.group(1) if match else None

        server = Server(proc, wait_until(url, timeout=WAIT, what="pgqueue serve to listen"))

        def ready() -> bool:
            try:
                with urllib.request.urlopen(server.url + "/readyz", timeout=WAIT) as response:
                    return bool(json.load(response).get("listener"))
            except urllib.error.URLError:  # 503 until its LISTEN connection is up
                return False

        # events are only carried once the server listens for them
        wait_until(ready, timeout=WAIT, interval=0.2, what="pgqueue serve to be ready")
        return server

    def events(self, server: Server, owner: str) -> EventStream:
        """``owner``'s event stream, once its snapshot has arrived."""
        stream = server.events(owner)
        self.streams.append(stream)
        first = stream.until(lambda e: True)
        assert first[0].event == "snapshot", first
        return stream

    def stop(self, proc: WorkerProcess) -> int:
        """SIGTERM ``proc``; its exit status."""
        proc.send(signal.SIGTERM)
        try:
            return proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{proc.name} did not exit within {WAIT} s of SIGTERM")

    # the database

    def one(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        return _one(self.dsn, sql, params)

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return _all(self.dsn, sql, params)

    def mirror(self, job_id: int) -> dict[str, Any]:
        row = self.one("SELECT * FROM pgqueue.jobs WHERE id = %s", (job_id,))
        assert row is not None, f"job {job_id} does not exist"
        assert row["executor"] == "procrastinate", row
        return row

    def procrastinate_job(self, job_id: int) -> dict[str, Any]:
        """The procrastinate job mirrored by pgqueue job ``job_id``."""
        row = self.one(
            "SELECT p.*, p.status::text AS status FROM procrastinate_jobs p"
            " JOIN pgqueue.jobs j ON j.external_id = p.id AND j.executor = 'procrastinate'"
            " WHERE j.id = %s",
            (job_id,),
        )
        assert row is not None, f"job {job_id} mirrors no procrastinate job"
        return row

    def wait_status(self, job_id: int, *statuses: str, timeout: float = WAIT) -> dict[str, Any]:
        last: dict[str, Any] = {}

        def reached() -> bool:
            nonlocal last
            last = self.mirror(job_id)
            return last["status"] in statuses

        try:
            wait_until(reached, timeout=timeout, interval=0.1)
        except AssertionError:
            raise AssertionError(
                f"job {job_id} not {'/'.join(statuses)} within {timeout} s: "
                f"{ {k: last.get(k) for k in ('status', 'attempts', 'error', 'worker_id')} }"
            ) from None
        return last

    def wait_procrastinate(self, job_id: int, status: str) -> dict[str, Any]:
        return wait_until(
            lambda: (row := self.procrastinate_job(job_id))["status"] == status and row,
            timeout=WAIT,
            what=f"the procrastinate job of {job_id} to be {status}",
        )

    def attempts(self, job_id: int) -> list[dict[str, Any]]:
        return self.all(
            "SELECT attempt, outcome, error, worker_id, started_at, ended_at"
            " FROM pgqueue.attempts WHERE job_id = %s ORDER BY attempt",
            (job_id,),
        )

    def history(self, job_id: int) -> list[tuple[int, int, str | None]]:
        return [
            (r["attempt"], r["pct"], r["message"])
            for r in self.all(
                "SELECT attempt, pct, message FROM pgqueue.progress_history"
                " WHERE job_id = %s ORDER BY id",
                (job_id,),
            )
        ]

    def runs(self, job_id: int) -> list[dict[str, Any]]:
        """The task bodies that started for pgqueue job ``job_id``, in order."""
        return self.all(
            "SELECT r.attempt, r.pid, r.ended IS NOT NULL AS ended FROM bridge_runs r"
            " JOIN pgqueue.jobs j ON j.external_id = r.procrastinate_id"
            " AND j.executor = 'procrastinate' WHERE j.id = %s ORDER BY r.id",
            (job_id,),
        )

    def wait_started(self, job_id: int, count: int = 1) -> list[dict[str, Any]]:
        """Wait until ``count`` bodies of ``job_id`` started and its mirror runs."""
        runs = wait_until(
            lambda: len(r := self.runs(job_id)) >= count and r,
            timeout=WAIT,
            what=f"{count} bodies of job {job_id} to start",
        )
        self.wait_status(job_id, "running")
        return runs

    # the end of every test

    def finish(self) -> None:
        """Stop every process, then check what must hold after any test."""
        for stream in self.streams:
            stream.close()
        for proc in self.procs:
            if proc.poll() is None:
                assert self.stop(proc) == 0, f"{proc.name} exited non-zero:\n{proc.log()}"
        self.watcher.stop()
        self.finished = True
        assert self.watcher.errors == []
        assert self.watcher.broken == []
        assert self.all(TIMESTAMPS_BROKEN) == []
        assert self.all("SELECT * FROM pgqueue_procrastinate.errors") == []
        assert self.all("SELECT * FROM pgqueue_procrastinate.outcomes") == []
        running = self.all(
            "SELECT id, task FROM pgqueue.jobs WHERE executor = 'procrastinate'"
            " AND status = 'running'"
        )
        assert running == [], "mirrors left running once the workers stopped"
        pairs = self.all(
            "SELECT p.id AS procrastinate_id, p.task_name, p.status::text AS procrastinate,"
            " p.abort_requested,"
            " (SELECT array_agg(j.status::text) FROM pgqueue.jobs j"
            "   WHERE j.executor = 'procrastinate' AND j.external_id = p.id) AS mirrors"
            " FROM procrastinate_jobs p WHERE p.task_name <> %s ORDER BY p.id",
            (bridge.RECOVERY_TASK,),
        )
        mismatched = [
            p
            for p in pairs
            if p["mirrors"] is None
            or len(p["mirrors"]) != 1
            or p["mirrors"][0] not in _matching(p["procrastinate"], p["abort_requested"])
        ]
        assert mismatched == []
        orphans = self.all(
            "SELECT j.id FROM pgqueue.jobs j WHERE j.executor = 'procrastinate'"
            " AND NOT EXISTS (SELECT 1 FROM procrastinate_jobs p WHERE p.id = j.external_id)"
        )
        assert orphans == []

    def close(self) -> None:
        for stream in self.streams:
            stream.close()
        for proc in self.procs:
            proc.kill()
        self.watcher.stop()

    def logs(self) -> str:
        return "\n\n".join(
            f"===== {p.name} (pid {p.pid}, exit {p.poll()})\n{p.log()}" for p in self.procs
        )


@pytest.fixture
def env(
    request: pytest.FixtureRequest, pg_server: str, bridge_template: str, tmp_path: Path
) -> Iterator[Bridge]:
    with scratch_database(pg_server, "pgqueue_pb", template=bridge_template) as dsn:
        log_dir = tmp_path / "logs"
        log_dir.mkdir()
        running = Bridge(dsn, log_dir)
        try:
            yield running
        finally:
            running.close()
            report = getattr(request.node, "rep_call", None)
            if running.procs and (report is None or report.failed):
                print(f"\n[procrastinate bridge] logs of this test's processes ({log_dir}):")
                print(running.logs())
        if report is not None and report.passed:
            assert running.finished, "the test did not end with env.finish()"


def _steps(n: int, attempt: int = 1) -> list[tuple[int, int, str]]:
    return [(attempt, round(100 * i / n), f"step {i}/{n}") for i in range(1, n + 1)]


# -- the tests ------------------------------------------------------------------------------


def test_defer_in_a_rolled_back_transaction_leaves_nothing_and_a_committed_one_runs(
    env: Bridge,
) -> None:
    env.worker("w1")
    with psycopg.connect(env.dsn) as conn:
        undone = bridge.defer(papp.report_async, conn=conn, owner="alice", tag="undone", n=2)
        # written in the caller's transaction, which sees its mirror...
        seen = conn.execute(
            "SELECT owner, executor, external_id FROM pgqueue.jobs WHERE id = %s", (undone,)
        ).fetchone()
        assert seen is not None and seen[:2] == ("alice", "procrastinate")
        undone_external = seen[2]
        conn.rollback()
        # ...and a rollback takes both rows away
        kept = bridge.defer(papp.report_async, conn=conn, owner="alice", tag="kept", n=2)
        conn.commit()

    done = env.wait_status(kept, "completed")
    assert done["owner"] == "alice"
    assert done["result"] == {"tag": "kept", "kind": "async", "steps": 2, "squares": [0, 1]}
    assert (done["attempts"], done["progress"]) == (1, 100)
    assert env.procrastinate_job(kept)["status"] == "succeeded"
    assert [r["ended"] for r in env.runs(kept)] == [True]

    assert env.one("SELECT id FROM pgqueue.jobs WHERE id = %s", (undone,)) is None
    assert env.all("SELECT id FROM procrastinate_jobs WHERE id = %s", (undone_external,)) == []
    assert env.all("SELECT id FROM procrastinate_jobs WHERE args->>'tag' = 'undone'") == []
    assert (
        env.all("SELECT * FROM bridge_runs WHERE procrastinate_id = %s", (undone_external,)) == []
    )
    env.finish()


def test_jobs_of_two_owners_and_a_batch_complete_with_results_progress_and_counters(
    env: Bridge,
) -> None:
    items = [{"tag": f"b{i}", "n": 2} for i in range(5)]
    with psycopg.connect(env.dsn) as conn:
        alice = bridge.defer(papp.report_async, conn=conn, owner="alice", tag="a", n=4)
        bob = bridge.defer(papp.report_sync, conn=conn, owner="bob", tag="b", n=3)
        batch = bridge.defer_batch(
            papp.report_sync, items, owner="carol", metadata={"purpose": "acceptance"}, conn=conn
        )
    assert len(batch.job_ids) == len(items)
    counters = (
        "SELECT status::text, total, pending, running, retrying, completed, failed,"
        " dead_letter, cancelled, owner, metadata, completed_at IS NOT NULL AS ended"
        " FROM pgqueue.batches WHERE id = %s"
    )
    assert env.one(counters, (batch.id,)) == {
        "status": "pending", "total": 5, "pending": 5, "running": 0, "retrying": 0,
        "completed": 0, "failed": 0, "dead_letter": 0, "cancelled": 0, "owner": "carol",
        "metadata": {"purpose": "acceptance"}, "ended": False,
    }  # fmt: skip

    env.worker("w1", concurrency=4)
    for job_id in (alice, bob, *batch.job_ids):
        env.wait_status(job_id, "completed")

    expected = {
        alice: ("alice", None, {"tag": "a", "kind": "async", "steps": 4, "squares": [0, 1, 4, 9]}),
        bob: ("bob", None, {"tag": "b", "kind": "sync", "steps": 3}),
    }
    for job_id, item in zip(batch.job_ids, items, strict=True):
        expected[job_id] = ("carol", batch.id, {"tag": item["tag"], "kind": "sync", "steps": 2})
    for job_id, (owner, batch_id, result) in expected.items():
        m = env.mirror(job_id)
        assert (m["owner"], m["batch_id"], m["result"]) == (owner, batch_id, result), job_id
        assert (m["status"], m["attempts"], m["progress"]) == ("completed", 1, 100)
        assert [a["outcome"] for a in env.attempts(job_id)] == ["completed"]
        assert env.procrastinate_job(job_id)["status"] == "succeeded"
        steps = result["steps"]
        assert env.history(job_id) == _steps(steps), job_id  # every report, in order
        assert len(env.history(job_id)) > 1

    assert env.one(counters, (batch.id,)) == {
        "status": "completed", "total": 5, "pending": 0, "running": 0, "retrying": 0,
        "completed": 5, "failed": 0, "dead_letter": 0, "cancelled": 0, "owner": "carol",
        "metadata": {"purpose": "acceptance"}, "ended": True,
    }  # fmt: skip
    env.finish()


def test_a_failing_sync_task_ends_dead_letter_with_its_error_after_three_attempts(
    env: Bridge,
) -> None:
    with psycopg.connect(env.dsn) as conn:
        job_id = bridge.defer(papp.always_fails, conn=conn, owner="alice", tag="t3")
        batch = bridge.defer_batch(
            papp.always_fails, [{"tag": "x"}, {"tag": "y"}], owner="alice", conn=conn
        )
    env.worker("w1")

    dead = env.wait_status(job_id, "dead_letter", "failed", "completed")
    assert dead["status"] == "dead_letter"
    assert (dead["attempts"], dead["max_attempts"]) == (3, 3)
    assert dead["error"].endswith("ValueError: always fails: t3 (attempt 3)")
    assert "procrastinate_app.py" in dead["error"]  # the frame that raised it
    attempts = env.attempts(job_id)
    assert [(a["attempt"], a["outcome"]) for a in attempts] == [
        (1, "error"), (2, "error"), (3, "error"),
    ]  # fmt: skip
    for a in attempts:
        assert a["error"].endswith(f"ValueError: always fails: t3 (attempt {a['attempt']})")
        assert a["worker_id"].startswith("procrastinate:")
    assert env.procrastinate_job(job_id)["status"] == "failed"
    assert [r["attempt"] for r in env.runs(job_id)] == [1, 2, 3]

    # a batch of failing jobs ends with errors, its counters exact
    for child in batch.job_ids:
        assert env.wait_status(child, "dead_letter", "failed", "completed")["status"] == (
            "dead_letter"
        )
    row = env.one(
        "SELECT status::text, total, dead_letter, pending + running + retrying + completed"
        " + failed + cancelled AS others, completed_at IS NOT NULL AS ended"
        " FROM pgqueue.batches WHERE id = %s",
        (batch.id,),
    )
    assert row == {
        "status": "completed_with_errors", "total": 2, "dead_letter": 2, "others": 0,
        "ended": True,
    }  # fmt: skip
    env.finish()


def test_the_api_shows_a_mirror_to_its_owner_only_and_its_events_carry_its_changes(
    env: Bridge,
) -> None:
    server = env.serve()
    env.worker("w1")
    alice_events = env.events(server, "alice")
    bob_events = env.events(server, "bob")

    with psycopg.connect(env.dsn) as conn:
        job_id = bridge.defer(papp.report_async, conn=conn, owner="alice", tag="api", n=4)
    seen = alice_events.until(_job_event(job_id, "completed"))
    changes = [(e.data["status"], e.data["progress"]) for e in seen if _job_event(job_id)(e)]
    assert changes == [
        ("running", 0), ("running", 25), ("running", 50), ("running", 75), ("running", 100),
        ("completed", 100),
    ]  # fmt: skip

    status, body = server.call("GET", f"/api/v1/jobs/{job_id}", "alice")
    assert status == 200, body
    external = env.mirror(job_id)["external_id"]
    assert {k: body[k] for k in ("id", "status", "owner", "executor", "external_id", "task")} == {
        "id": job_id, "status": "completed", "owner": "alice", "executor": "procrastinate",
        "external_id": external, "task": "report_async",
    }  # fmt: skip
    assert body["result"] == {"tag": "api", "kind": "async", "steps": 4, "squares": [0, 1, 4, 9]}
    status, history = server.call("GET", f"/api/v1/jobs/{job_id}/progress", "alice")
    assert status == 200, history
    assert [(h["pct"], h["message"]) for h in history["items"]] == [
        (pct, msg) for _, pct, msg in _steps(4)
    ]
    for path in (f"/api/v1/jobs/{job_id}", f"/api/v1/jobs/{job_id}/progress"):
        status, body = server.call("GET", path, "bob")
        assert status == 404, body

    # bob's job: bob's stream carries it, and never carried alice's (hers were
    # all announced before his job existed); alice's never carries his.
    with psycopg.connect(env.dsn) as conn:
        bobs = bridge.defer(papp.report_sync, conn=conn, owner="bob", tag="bob", n=2)
    bob_seen = bob_events.until(_job_event(bobs, "completed"))
    assert {e.data["id"] for e in bob_seen if e.event == "job"} == {bobs}
    with psycopg.connect(env.dsn) as conn:
        again = bridge.defer(papp.report_async, conn=conn, owner="alice", tag="again", n=1)
    alice_events.until(_job_event(again, "completed"))
    assert {e.data["id"] for e in alice_events.seen if e.event == "job"} == {job_id, again}
    env.finish()


@pytest.mark.parametrize("recovery", ["cli", "periodic"])
def test_a_sigkilled_workers_job_is_recovered_by_the_policy_and_finished_by_another(
    env: Bridge, recovery: str
) -> None:
    """``cli``: one ``pgqueue procrastinate recover`` pass once the killed
    worker's heartbeat is stale. ``periodic``: the recovery task attach()
    registers, every second on the next worker, with a 5 s threshold (ten
    heartbeats, so a loaded but live worker is never taken for dead)."""
    first = env.worker("doomed", concurrency=1)
    with psycopg.connect(env.dsn) as conn:
        job_id = bridge.defer(papp.long, conn=conn, owner="alice", seconds=120, then_seconds=0.3)
    [run] = env.wait_started(job_id)
    assert run["pid"] == first.pid
    worker_id = env.procrastinate_job(job_id)["worker_id"]
    external = env.mirror(job_id)["external_id"]
    assert env.mirror(job_id)["worker_id"] == f"procrastinate:{worker_id}"

    first.kill()  # SIGKILL: no goodbye, its heartbeat just stops
    if recovery == "cli":
        stalled_after = 2.0
        wait_until(
            lambda: env.one(
                "SELECT 1 FROM procrastinate_workers WHERE id = %s"
                " AND last_heartbeat < now() - make_interval(secs => %s)",
                (worker_id, stalled_after + 1),
            ),
            timeout=WAIT,
            what="the killed worker's heartbeat to go stale",
        )
        # still running as far as anyone can tell, until the recovery pass
        assert env.mirror(job_id)["status"] == "running"
        recovered = run_cli(
            "procrastinate", "recover", "--stalled-after", str(stalled_after),
            "--policy", "retry", "--json", dsn=env.dsn,
        )  # fmt: skip
        assert recovered.returncode == 0, recovered.stderr
        assert recovered.json() == {"recovered": [{"job_id": external, "action": "retried"}]}
        assert env.mirror(job_id)["status"] in ("retrying", "pending")
        second = env.worker("rescuer")
    else:
        second = env.worker(
            "rescuer",
            env={papp.STALLED_VARIABLE: "5", papp.RECOVER_EVERY_VARIABLE: "* * * * * *"},
        )

    done = env.wait_status(job_id, "completed")
    assert done["result"] == {"slept": 0.3, "attempt": 2}
    assert done["attempts"] == 2
    attempts = env.attempts(job_id)
    assert [(a["attempt"], a["outcome"]) for a in attempts] == [(1, "error"), (2, "completed")]
    error = attempts[0]["error"]
    assert f"worker {worker_id} sent no heartbeat since" in error, error
    assert "retried by pgqueue's recovery" in error, error
    assert attempts[0]["worker_id"] == f"procrastinate:{worker_id}"
    assert attempts[1]["worker_id"] != attempts[0]["worker_id"]
    assert [(r["pid"], r["ended"]) for r in env.runs(job_id)] == [
        (first.pid, False), (second.pid, True),
    ]  # fmt: skip
    assert env.procrastinate_job(job_id)["status"] == "succeeded"
    env.finish()


def test_a_cancel_through_the_api_aborts_the_running_procrastinate_job(env: Bridge) -> None:
    server = env.serve()
    env.worker("w1")
    with psycopg.connect(env.dsn) as conn:
        job_id = bridge.defer(papp.long, conn=conn, owner="alice", seconds=120)
        later = bridge.defer(
            papp.long, conn=conn, owner="alice", seconds=120,
            options={"schedule_in": {"hours": 1}},
        )  # fmt: skip
    env.wait_started(job_id)

    # a job that has not started: procrastinate cancels it, and it never runs
    assert env.mirror(later)["status"] == "pending"
    status, body = server.call("POST", f"/api/v1/jobs/{later}/cancel", "alice")
    assert (status, body["status"]) == (200, "cancelled"), body
    assert env.procrastinate_job(later)["status"] == "cancelled"
    assert env.attempts(later) == []

    status, body = server.call("POST", f"/api/v1/jobs/{job_id}/cancel", "bob")
    assert status == 404, body
    assert env.mirror(job_id)["status"] == "running"
    status, body = server.call("POST", f"/api/v1/jobs/{job_id}/cancel", "alice")
    assert status == 200, body
    assert body["status"] == "cancelled"

    # the worker hears the abort and stops the task: procrastinate says aborted
    env.wait_procrastinate(job_id, "aborted")
    cancelled = env.mirror(job_id)
    assert cancelled["status"] == "cancelled"
    assert [a["outcome"] for a in env.attempts(job_id)] == ["cancelled"]
    assert [r["ended"] for r in env.runs(job_id)] == [False]
    status, body = server.call("GET", f"/api/v1/jobs/{job_id}", "alice")
    assert (status, body["status"]) == (200, "cancelled")
    # a cancelled job cannot be cancelled again, nor replayed: procrastinate
    # retries only failed jobs
    status, body = server.call("POST", f"/api/v1/jobs/{job_id}/cancel", "alice")
    assert status == 409, body
    status, body = server.call("POST", f"/api/v1/jobs/{job_id}/retry", "alice")
    assert status == 409, body
    assert "procrastinate retries only failed jobs" in body["message"], body
    assert env.mirror(job_id)["status"] == "cancelled"

    # the worker goes on with other jobs
    with psycopg.connect(env.dsn) as conn:
        after = bridge.defer(papp.report_async, conn=conn, owner="alice", tag="after", n=1)
    assert env.wait_status(after, "completed")["result"]["tag"] == "after"
    assert env.runs(later) == []
    env.finish()


def test_a_replay_through_pgqueue_runs_a_dead_lettered_job_again_in_procrastinate(
    env: Bridge,
) -> None:
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO bridge_flags (name, fail) VALUES ('f7', true)")
    with psycopg.connect(env.dsn) as conn:
        job_id = bridge.defer(papp.flaky, conn=conn, owner="alice", flag="f7")
    env.worker("w1")

    dead = env.wait_status(job_id, "dead_letter", "failed", "completed")
    assert (dead["status"], dead["attempts"]) == ("dead_letter", 2)
    assert dead["error"].endswith("RuntimeError: flag f7 says fail (attempt 2)")
    assert env.procrastinate_job(job_id)["status"] == "failed"

    with psycopg.connect(env.dsn, autocommit=True) as conn:
        conn.execute("UPDATE bridge_flags SET fail = false WHERE name = 'f7'")
    replayed = run_cli("jobs", "retry", str(job_id), "--json", dsn=env.dsn)
    assert replayed.returncode == 0, replayed.stderr

    done = env.wait_status(job_id, "completed")
    assert done["result"]["flag"] == "f7"
    assert done["attempts"] == 3
    assert [a["outcome"] for a in env.attempts(job_id)] == ["error", "error", "completed"]
    assert env.procrastinate_job(job_id)["status"] == "succeeded"
    assert [r["ended"] for r in env.runs(job_id)] == [True, True, True]
    env.finish()


def test_sigterm_of_a_worker_running_long_jobs_leaves_no_mirror_running(env: Bridge) -> None:
    worker = env.worker("w1", "--shutdown-graceful-timeout", "1", concurrency=3)
    with psycopg.connect(env.dsn) as conn:
        aborted = [
            bridge.defer(papp.long, conn=conn, owner="alice", seconds=120),
            bridge.defer(papp.long_sync, conn=conn, owner="alice", seconds=120),
        ]
        retried = bridge.defer(
            papp.long_retried, conn=conn, owner="alice", seconds=120, then_seconds=0.2
        )
    for job_id in (*aborted, retried):
        env.wait_started(job_id)

    assert env.stop(worker) == 0
    for job_id in aborted:
        m = env.mirror(job_id)
        assert m["status"] != "running", m
        # procrastinate aborts what outlives the grace period; the mirror says so
        assert (m["status"], env.procrastinate_job(job_id)["status"]) == ("cancelled", "aborted")
        assert [a["outcome"] for a in env.attempts(job_id)] == ["cancelled"]
        assert [r["ended"] for r in env.runs(job_id)] == [False]
    # a task with a retry strategy is retried instead: the next worker runs it
    m = env.mirror(retried)
    assert (m["status"], env.procrastinate_job(retried)["status"]) == ("retrying", "todo")
    assert [a["outcome"] for a in env.attempts(retried)] == ["error"]

    env.worker("w2")
    done = env.wait_status(retried, "completed")
    assert (done["attempts"], done["result"]) == (2, {"slept": 0.2, "attempt": 2})
    assert [a["outcome"] for a in env.attempts(retried)] == ["error", "completed"]
    assert [r["ended"] for r in env.runs(retried)] == [False, True]
    env.finish()


def test_replaying_a_job_cancelled_while_it_ran_with_a_retry_strategy(env: Bridge) -> None:
    server = env.serve()
    env.worker("w1")
    with psycopg.connect(env.dsn) as conn:
        job_id = bridge.defer(
            papp.long_retried, conn=conn, owner="alice", seconds=120, then_seconds=0.2
        )
    env.wait_started(job_id)
    status, body = server.call("POST", f"/api/v1/jobs/{job_id}/cancel", "alice")
    assert (status, body["status"]) == (200, "cancelled"), body
    # procrastinate fails (rather than retries) an aborted job with a retry strategy
    assert env.wait_procrastinate(job_id, "failed")["abort_requested"] is True
    assert env.mirror(job_id)["status"] == "cancelled"

    status, body = server.call("POST", f"/api/v1/jobs/{job_id}/retry", "alice")
    assert status in (200, 409), (status, body)
    if status == 200:  # replayed: it runs again in procrastinate
        done = env.wait_status(job_id, "completed")
        assert done["result"] == {"slept": 0.2, "attempt": 2}
    else:  # refused: nothing changed
        assert env.mirror(job_id)["status"] == "cancelled"
    env.finish()


def test_cancelling_a_batch_through_the_api_aborts_its_running_jobs_and_cancels_the_rest(
    env: Bridge,
) -> None:
    server = env.serve()
    env.worker("w1", concurrency=2)
    with psycopg.connect(env.dsn) as conn:
        batch = bridge.defer_batch(papp.long, [{"seconds": 120}] * 3, owner="alice", conn=conn)

    # two run (the worker's two slots), the third waits
    def two_started() -> set[int] | None:
        bodies = {j for j in batch.job_ids if env.runs(j)}
        mirrors = {j for j in batch.job_ids if env.mirror(j)["status"] == "running"}
        return bodies if len(bodies) == 2 and bodies == mirrors else None

    started = wait_until(two_started, timeout=WAIT, what="two of the batch's jobs to run")
    [waiting] = set(batch.job_ids) - started

    status, body = server.call("POST", f"/api/v1/batches/{batch.id}/cancel", "bob")
    assert status == 404, body
    status, body = server.call("POST", f"/api/v1/batches/{batch.id}/cancel", "alice")
    assert status == 200, body
    assert (body["status"], body["total"]) == ("cancelled", 3)
    assert body["counts"]["cancelled"] == 3 and sum(body["counts"].values()) == 3

    for job_id in started:
        env.wait_procrastinate(job_id, "aborted")
        assert [a["outcome"] for a in env.attempts(job_id)] == ["cancelled"]
    assert env.procrastinate_job(waiting)["status"] == "cancelled"
    assert env.attempts(waiting) == [] and env.runs(waiting) == []
    assert {env.mirror(j)["status"] for j in batch.job_ids} == {"cancelled"}
    row = env.one(
        "SELECT status::text, total, cancelled, pending + running + retrying AS active,"
        " completed_at IS NOT NULL AS ended FROM pgqueue.batches WHERE id = %s",
        (batch.id,),
    )
    assert row == {"status": "cancelled", "total": 3, "cancelled": 3, "active": 0, "ended": True}
    env.finish()


@pytest.mark.parametrize("task", ["fan_out_async", "fan_out_sync"])
def test_jobs_deferred_from_inside_a_job_through_the_apps_pool_are_mirrored(
    env: Bridge, task: str
) -> None:
    env.worker("w1")
    with psycopg.connect(env.dsn) as conn:
        parent = bridge.defer(getattr(papp, task), conn=conn, owner="dora", who="dora", n=2)
    done = env.wait_status(parent, "completed", "failed", "dead_letter")
    assert done["status"] == "completed", done["error"]
    result = done["result"]
    kind = "async" if task == "fan_out_async" else "sync"
    for child in (*result["children"], result["single"]):
        m = env.wait_status(child, "completed")
        batch_id = None if child == result["single"] else result["batch"]
        assert (m["owner"], m["batch_id"], m["result"]["kind"]) == ("dora", batch_id, kind)
        assert env.history(child) == _steps(2)
    row = env.one(
        "SELECT status::text, total, completed, owner FROM pgqueue.batches WHERE id = %s",
        (result["batch"],),
    )
    assert row == {"status": "completed", "total": 2, "completed": 2, "owner": "dora"}
    env.finish()
