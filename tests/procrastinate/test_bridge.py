"""The bridge's Python side against the real SQL: a procrastinate App and
worker in the test's loop, jobs deferred through pgqueue.procrastinate, their
mirrors read from pgqueue.jobs. (Real `procrastinate worker` processes are
the acceptance tests' business.)"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

import pgqueue.procrastinate as bridge
from pgqueue.errors import BatchNotFound, ConfigurationError, InvalidJobError

from .conftest import run_worker

WAIT = 10.0  # upper bound for what should happen "soon"
_ACTIVE = ("todo", "doing", "pending", "running", "retrying")


def _rows(dsn: str, query: str, params: Any = ()) -> list[dict[str, Any]]:
    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params)
        return cur.fetchall()


def _mirror(dsn: str, job_id: int) -> dict[str, Any]:
    (row,) = _rows(dsn, "SELECT * FROM pgqueue.jobs WHERE id = %s", (job_id,))
    return row


def _history(dsn: str, job_id: int) -> list[tuple[int, str | None]]:
    rows = _rows(
        dsn,
        "SELECT pct, message FROM pgqueue.progress_history WHERE job_id = %s ORDER BY id",
        (job_id,),
    )
    return [(r["pct"], r["message"]) for r in rows]


def _count(dsn: str, table: str) -> int:
    return int(_rows(dsn, f"SELECT count(*) AS n FROM {table}")[0]["n"])


# -- a job's life ---------------------------------------------------------------------------


async def test_async_task_progress_result_and_owner(app: Any, bridged_dsn: str) -> None:
    bridge.attach(app, progress_interval=0.05, stalled_after=0)

    @app.task(name="count")
    async def count(n: int) -> dict[str, int]:
        bridge.progress(10, "started")
        await asyncio.sleep(0.15)
        for pct in range(20, 90, 10):
            bridge.progress(pct)  # coalesced: a few of these are written
        bridge.progress(90, "almost")
        return {"n": n}

    job_id = await bridge.defer_async(count, owner="alice", n=3)
    mirror = _mirror(bridged_dsn, job_id)
    assert (mirror["status"], mirror["owner"], mirror["executor"]) == (
        "pending",
        "alice",
        "procrastinate",
    )
    assert mirror["task"] == "count" and mirror["args"] == {"n": 3}

    await run_worker(app)

    mirror = _mirror(bridged_dsn, job_id)
    assert (mirror["status"], mirror["result"], mirror["attempts"]) == ("completed", {"n": 3}, 1)
    history = _history(bridged_dsn, job_id)
    assert history[0] == (10, "started")
    assert history[-1] == (90, "almost")  # the last report, written before the outcome
    assert len(history) < 9


async def test_sync_task_progress_and_a_result_json_cannot_hold(app: Any, bridged_dsn: str) -> None:
    bridge.attach(app, progress_interval=0.0, stalled_after=0)
    threads = []

    @app.task(name="shapes")
    def shapes() -> Any:
        threads.append(threading.current_thread())
        bridge.progress(50, "half")
        return {1, 2}

    job_id = await bridge.defer_async(shapes)
    await run_worker(app, delete_jobs="always")

    assert threads and threads[0] is not threading.main_thread()
    assert _count(bridged_dsn, "procrastinate_jobs") == 0  # deleted by procrastinate...
    mirror = _mirror(bridged_dsn, job_id)
    assert (mirror["status"], mirror["result"]) == ("completed", "{1, 2}")  # ...its outcome kept
    assert _history(bridged_dsn, job_id) == [(50, "half")]


@pytest.mark.parametrize("delete_jobs", ["never", "always"])
async def test_a_failure_keeps_its_error(app: Any, bridged_dsn: str, delete_jobs: str) -> None:
    bridge.attach(app, stalled_after=0)

    @app.task(name="boom")
    async def boom() -> None:
        raise ValueError("boom")

    job_id = await bridge.defer_async(boom)
    await run_worker(app, delete_jobs=delete_jobs)

    mirror = _mirror(bridged_dsn, job_id)
    assert mirror["status"] in ("failed", "dead_letter")
    assert mirror["error"].splitlines()[-1] == "ValueError: boom"
    assert mirror["error"].splitlines()[0].endswith(", in boom")


async def test_none_with_rows_kept_completes_without_staging(app: Any, bridged_dsn: str) -> None:
    bridge.attach(app, stalled_after=0)

    @app.task(name="nothing")
    async def nothing() -> None:
        return None

    job_id = await bridge.defer_async(nothing)
    await run_worker(app)  # delete_jobs never: nothing staged, success read from the status
    mirror = _mirror(bridged_dsn, job_id)
    assert (mirror["status"], mirror["result"]) == ("completed", None)
    assert _count(bridged_dsn, "pgqueue_procrastinate.outcomes") == 0


async def test_a_retried_job_completes_on_its_second_attempt(app: Any, bridged_dsn: str) -> None:
    bridge.attach(app, stalled_after=0)
    calls = []

    @app.task(name="flaky", retry=1)
    async def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first time")
        return "second"

    job_id = await bridge.defer_async(flaky)
    await run_worker(app)
    assert len(calls) == 2
    mirror = _mirror(bridged_dsn, job_id)
    assert (mirror["status"], mirror["result"], mirror["attempts"]) == ("completed", "second", 2)


async def test_an_aborted_async_task_is_cancelled(app: Any, bridged_dsn: str) -> None:
    bridge.attach(app, stalled_after=0)
    started = asyncio.Event()

    @app.task(name="long")
    async def long() -> None:
        bridge.progress(5, "waiting")
        started.set()
        await asyncio.sleep(60)

    job_id = await bridge.defer_async(long)
    worker = asyncio.create_task(run_worker(app, abort_job_polling_interval=0.1))
    await asyncio.wait_for(started.wait(), WAIT)
    external = _mirror(bridged_dsn, job_id)["external_id"]
    assert await app.job_manager.cancel_job_by_id_async(external, abort=True)
    await asyncio.wait_for(worker, WAIT)

    mirror = _mirror(bridged_dsn, job_id)
    assert mirror["status"] == "cancelled"
    assert _history(bridged_dsn, job_id) == [(5, "waiting")]


async def test_a_replay_is_not_aborted_by_the_abort_of_the_attempt_before_it(
    app: Any, bridged_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from procrastinate import worker as pworker

    bridge.attach(app, stalled_after=0)
    started = asyncio.Event()

    @app.task(name="long_then_quick", pass_context=True, retry=1)
    async def long_then_quick(context: Any) -> str:
        started.set()
        if context.job.attempts == 0:
            await asyncio.sleep(60)
        await asyncio.sleep(0.3)  # a few of the worker's abort polls
        return "replayed" if not context.should_abort() else "asked to abort"

    # procrastinate's race, made certain: an abort poll that read the job
    # while its first attempt ran is handled after that attempt's abort
    # request was cleared, while the attempt is still among the running ones
    persist = pworker.Worker._persist_job_status

    async def persist_then_late_poll(self: Any, *, job: Any, **kwargs: Any) -> None:
        await persist(self, job=job, **kwargs)
        if job.attempts == 0:
            self._handle_abort_jobs_requested([job.id])

    monkeypatch.setattr(pworker.Worker, "_persist_job_status", persist_then_late_poll)

    job_id = await bridge.defer_async(long_then_quick)
    worker = asyncio.create_task(
        run_worker(app, wait=True, abort_job_polling_interval=0.05, fetch_job_polling_interval=0.05)
    )
    try:
        await asyncio.wait_for(started.wait(), WAIT)
        external = _mirror(bridged_dsn, job_id)["external_id"]
        assert await app.job_manager.cancel_job_by_id_async(external, abort=True)

        async def ended(query: str, params: Any) -> str:
            for _ in range(int(WAIT / 0.05)):
                if (status := _rows(bridged_dsn, query, params)[0]["s"]) not in _ACTIVE:
                    return str(status)
                await asyncio.sleep(0.05)
            raise AssertionError(f"{query} {params}: still {status} after {WAIT}s")

        procrastinate_status = "SELECT status::text AS s FROM procrastinate_jobs WHERE id = %s"
        mirror_status = "SELECT status::text AS s FROM pgqueue.jobs WHERE id = %s"
        # its retry strategy makes procrastinate fail the aborted attempt
        assert await ended(procrastinate_status, (external,)) == "failed"
        assert _mirror(bridged_dsn, job_id)["status"] == "cancelled"
        started.clear()
        replayed = _rows(bridged_dsn, "SELECT pgqueue.replay(%s)::text AS s", (job_id,))
        assert replayed[0]["s"] == "pending"
        await asyncio.wait_for(started.wait(), WAIT)
        assert await ended(mirror_status, (job_id,)) == "completed"
        assert _mirror(bridged_dsn, job_id)["result"] == "replayed"
    finally:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker


async def test_a_task_defers_another_from_its_thread(app: Any, bridged_dsn: str) -> None:
    bridge.attach(app, stalled_after=0)

    @app.task(name="child")
    def child(x: int) -> int:
        return x * 2

    @app.task(name="parent")
    def parent() -> int:
        # a sync task in procrastinate's thread: the app's async pool, through asgiref
        return bridge.defer(child, owner="kid", x=21)

    parent_id = await bridge.defer_async(parent)
    await run_worker(app)
    child_id = _mirror(bridged_dsn, parent_id)["result"]
    mirror = _mirror(bridged_dsn, child_id)
    assert (mirror["task"], mirror["owner"], mirror["status"], mirror["result"]) == (
        "child",
        "kid",
        "completed",
        42,
    )


# -- defer in the caller's transaction ------------------------------------------------------


async def test_defer_in_a_transaction_is_kept_only_if_it_commits(
    app: Any, bridged_dsn: str
) -> None:
    @app.task(name="t")
    async def t(x: int) -> int:
        return x

    async with await psycopg.AsyncConnection.connect(bridged_dsn) as conn:
        await bridge.defer_async(t, conn=conn, owner="alice", x=1)
        await conn.rollback()
        assert _count(bridged_dsn, "procrastinate_jobs") == 0
        assert _count(bridged_dsn, "pgqueue.jobs") == 0

        job_id = await bridge.defer_async(t, conn=conn, owner="alice", x=2)
        # a plain defer later in the same transaction does not inherit the owner
        plain = await t.configure(connection=conn).defer_async(x=3)
        assert _count(bridged_dsn, "pgqueue.jobs") == 0  # not committed yet
        await conn.commit()

    assert _mirror(bridged_dsn, job_id)["owner"] == "alice"
    (other,) = _rows(bridged_dsn, "SELECT owner FROM pgqueue.jobs WHERE external_id = %s", (plain,))
    assert other["owner"] is None


def test_sync_defer_on_an_autocommit_connection(app: Any, bridged_dsn: str) -> None:
    @app.task(name="t")
    def t(x: int) -> int:
        return x

    with psycopg.connect(bridged_dsn, autocommit=True) as conn:
        job_id = bridge.defer(t, conn=conn, owner="bob", options={"queue": "other"}, x=1)
    mirror = _mirror(bridged_dsn, job_id)
    assert (mirror["owner"], mirror["queue"], mirror["args"]) == ("bob", "other", {"x": 1})


def test_sync_defer_on_a_sync_app_uses_its_pool(bridged_dsn: str) -> None:
    from procrastinate import App, SyncPsycopgConnector

    sync_app = App(connector=SyncPsycopgConnector(conninfo=bridged_dsn, min_size=1, max_size=2))

    @sync_app.task(name="t")
    def t(x: int) -> int:
        return x

    with pytest.raises(ConfigurationError, match="not open"):
        bridge.defer(t, x=1)
    with sync_app.open():
        job_id = bridge.defer(t, owner="carol", x=1)
        batch = bridge.defer_batch(t, [{"x": 1}, {"x": 2}], owner="carol")
    assert _mirror(bridged_dsn, job_id)["owner"] == "carol"
    assert len(batch.job_ids) == 2


async def test_an_unknown_batch_is_refused_and_nothing_is_kept(app: Any, bridged_dsn: str) -> None:
    @app.task(name="t")
    async def t() -> None: ...

    with pytest.raises(BatchNotFound):
        await bridge.defer_async(t, batch=999_999)
    assert _count(bridged_dsn, "procrastinate_jobs") == 0


async def test_a_bad_owner_is_refused_before_the_database(app: Any) -> None:
    @app.task(name="t")
    async def t() -> None: ...

    with pytest.raises(InvalidJobError):
        await bridge.defer_async(t, owner="")


async def test_defer_where_the_bridge_is_not_installed(procrastinate_dsn: str) -> None:
    from procrastinate import App, PsycopgConnector

    plain = App(connector=PsycopgConnector(conninfo=procrastinate_dsn, min_size=1, max_size=2))

    @plain.task(name="t")
    async def t() -> None: ...

    async with plain.open_async():
        with pytest.raises(ConfigurationError, match="pgqueue procrastinate install"):
            await bridge.defer_async(t)
    assert _count(procrastinate_dsn, "procrastinate_jobs") == 0


# -- batches -------------------------------------------------------------------------------


async def test_a_batch_is_one_pgqueue_batch_followed_to_its_end(app: Any, bridged_dsn: str) -> None:
    bridge.attach(app, stalled_after=0)

    @app.task(name="square", queue="maths")
    async def square(x: int) -> int:
        return x * x

    batch = await bridge.defer_batch_async(
        square, [{"x": i} for i in range(3)], owner="dana", metadata={"kind": "squares"}
    )
    (row,) = _rows(bridged_dsn, "SELECT * FROM pgqueue.batches WHERE id = %s", (batch.id,))
    assert (row["total"], row["pending"], row["owner"], row["task"], row["queue"]) == (
        3,
        3,
        "dana",
        "square",
        "maths",
    )
    assert row["metadata"] == {"kind": "squares"}
    children = [_mirror(bridged_dsn, j) for j in batch.job_ids]
    assert [c["args"] for c in children] == [{"x": 0}, {"x": 1}, {"x": 2}]
    assert {(c["batch_id"], c["owner"]) for c in children} == {(batch.id, "dana")}

    await run_worker(app, queues=["maths"])
    (row,) = _rows(bridged_dsn, "SELECT * FROM pgqueue.batches WHERE id = %s", (batch.id,))
    assert (row["status"], row["completed"]) == ("completed", 3)
    assert [_mirror(bridged_dsn, j)["result"] for j in batch.job_ids] == [0, 1, 4]


async def test_a_batch_rolled_back_leaves_nothing(app: Any, bridged_dsn: str) -> None:
    @app.task(name="t")
    async def t(x: int) -> int:
        return x

    async with await psycopg.AsyncConnection.connect(bridged_dsn) as conn:
        batch = await bridge.defer_batch_async(t, [{"x": 1}, {"x": 2}], conn=conn)
        assert len(batch.job_ids) == 2
        await conn.rollback()
    assert _count(bridged_dsn, "pgqueue.batches") == 0
    assert _count(bridged_dsn, "pgqueue.jobs") == 0
    assert _count(bridged_dsn, "procrastinate_jobs") == 0


async def test_defer_joins_a_batch_it_names(app: Any, bridged_dsn: str) -> None:
    @app.task(name="t")
    async def t(x: int) -> int:
        return x

    batch = await bridge.defer_batch_async(t, [{"x": 1}])
    job_id = await bridge.defer_async(t, batch=batch.id, x=2)
    assert _mirror(bridged_dsn, job_id)["batch_id"] == batch.id
    (row,) = _rows(bridged_dsn, "SELECT total FROM pgqueue.batches WHERE id = %s", (batch.id,))
    assert row["total"] == 2


# -- stalled workers -----------------------------------------------------------------------


def _stalled_job(dsn: str) -> tuple[int, int]:
    """A job left 'doing' by a worker whose heartbeat stopped an hour ago:
    (its mirror id, its procrastinate id)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT procrastinate_defer_jobs_v1(ARRAY[ROW('default', 'stuck', 0, NULL, NULL,"
            " '{}'::jsonb, NULL)::procrastinate_job_to_defer_v1])"
        ).fetchone()
        assert row is not None
        (external,) = row[0]
        row = conn.execute(
            "INSERT INTO procrastinate_workers (last_heartbeat)"
            " VALUES (now() - interval '1 hour') RETURNING id"
        ).fetchone()
        assert row is not None
        conn.execute("SELECT procrastinate_fetch_job_v2(NULL, %s)", (row[0],))
        row = conn.execute("SELECT pgqueue_procrastinate.mirror_of(%s)", (external,)).fetchone()
    assert row is not None
    job_id = row[0]
    assert _mirror(dsn, job_id)["status"] == "running"
    return job_id, external


@pytest.mark.parametrize(
    ("policy", "procrastinate_status"), [("retry", "todo"), ("fail", "failed")]
)
async def test_recover_stalled(
    app: Any, bridged_dsn: str, policy: Any, procrastinate_status: str
) -> None:
    job_id, external = _stalled_job(bridged_dsn)
    assert await bridge.recover_stalled(app, stalled_after=7200, policy=policy) == []
    recovered = await bridge.recover_stalled(app, stalled_after=60, policy=policy)
    assert recovered == [(external, "retried" if policy == "retry" else "failed")]
    (row,) = _rows(bridged_dsn, "SELECT status FROM procrastinate_jobs WHERE id = %s", (external,))
    assert row["status"] == procrastinate_status
    mirror = _mirror(bridged_dsn, job_id)
    assert mirror["status"] != "running"
    assert "by pgqueue's recovery" in (mirror["error"] or "")


async def test_the_periodic_recovery_task(app: Any, bridged_dsn: str) -> None:
    bridge.attach(app, stalled_after=60, on_stalled="fail")
    _, external = _stalled_job(bridged_dsn)
    result = await app.tasks[bridge.RECOVERY_TASK].func(timestamp=0)
    assert result == {"recovered": [{"job_id": external, "action": "failed"}]}


def test_cli_recover(bridged_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    from pgqueue import cli

    _, external = _stalled_job(bridged_dsn)
    code = cli.main(
        ["--dsn", bridged_dsn, "procrastinate", "recover", "--stalled-after", "60", "--json"]
    )
    assert code == 0
    assert json.loads(capsys.readouterr().out) == {
        "recovered": [{"job_id": external, "action": "retried"}]
    }
    (row,) = _rows(bridged_dsn, "SELECT status FROM procrastinate_jobs WHERE id = %s", (external,))
    assert row["status"] == "todo"


def test_cli_recover_fails_a_job_that_used_its_attempts(
    bridged_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from pgqueue import cli

    _, external = _stalled_job(bridged_dsn)
    argv = ["--dsn", bridged_dsn, "procrastinate", "recover", "--stalled-after", "60"]
    assert cli.main([*argv, "--max-attempts", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "recovered": [{"job_id": external, "action": "failed"}]
    }
    assert cli.main([*argv, "--max-attempts", "0"]) != 0  # refused, naming the option
    assert "max_attempts must be an integer >= 1" in capsys.readouterr().err


async def test_attach_passes_its_attempt_limit_to_the_periodic_recovery(
    app: Any, bridged_dsn: str
) -> None:
    bridge.attach(app, stalled_after=60, stalled_max_attempts=1)
    _, external = _stalled_job(bridged_dsn)
    result = await app.tasks[bridge.RECOVERY_TASK].func(timestamp=0)
    assert result == {"recovered": [{"job_id": external, "action": "failed"}]}


async def test_pgqueues_reads_cover_mirrors_wait_wait_batch_and_gauges(
    app: Any, bridged_dsn: str
) -> None:
    """Queue.wait and wait_batch return a mirror's result as for pgqueue's own
    jobs, and the gauges behind /metrics count mirrors by queue and state."""
    import pgqueue

    bridge.attach(app, stalled_after=0)

    @app.task(name="double", queue="reads")
    async def double(x: int) -> int:
        return 2 * x

    @app.task(name="refuse", queue="reads")
    def refuse() -> None:
        raise ValueError("refused on purpose")

    single = await bridge.defer_async(double, owner="erin", x=21)
    failing = await bridge.defer_async(refuse, owner="erin")
    batch = await bridge.defer_batch_async(double, [{"x": 1}, {"x": 2}], owner="erin")
    from pgqueue_service._reads import Reads  # the status API's gauges

    queue = pgqueue.Queue(bridged_dsn)
    reads = Reads(queue)
    try:
        gauges = {g["queue"]: g["counts"] for g in await reads.queue_gauges()}
        assert gauges["reads"] == {"pending": 4}
        waiters = asyncio.gather(
            queue.wait(single, timeout=WAIT), queue.wait_batch(batch.id, timeout=WAIT)
        )
        await run_worker(app, queues=["reads"])
        assert await waiters == [42, [2, 4]]
        with pytest.raises(pgqueue.JobFailed) as info:
            await queue.wait(failing, timeout=WAIT)
        assert info.value.status == "failed"
        assert "refused on purpose" in (info.value.error or "")
        job = await queue.get_job(single)
        assert job is not None and (job.executor, job.owner) == ("procrastinate", "erin")
        gauges = {g["queue"]: g["counts"] for g in await reads.queue_gauges()}
        assert gauges.get("reads", {}) == {}  # nothing unfinished
    finally:
        await queue.close()
