"""The bridge's Python side without a database: argument checks, the progress
throttle, how results and errors are encoded, what attach() registers."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from typing import Any

import pytest

import pgqueue
import pgqueue.procrastinate as bridge
from pgqueue import cli
from pgqueue.errors import ConfigurationError, InvalidJobError
from pgqueue.procrastinate import _defer, _middleware, _progress
from pgqueue.procrastinate._progress import ProgressThrottle

procrastinate = pytest.importorskip("procrastinate")


# -- the throttle --------------------------------------------------------------------------


def test_first_report_starts_a_writer_and_is_due_at_once() -> None:
    t = ProgressThrottle(0.5)
    assert t.offer(10, None) is True
    assert t.due_in(100.0) == 0.0
    assert t.take(100.0) == (10, None)


def test_reports_while_a_writer_runs_do_not_start_another() -> None:
    t = ProgressThrottle(0.5)
    assert t.offer(10, None) is True
    assert t.offer(20, None) is False
    assert t.offer(30, "x") is False
    assert t.take(0.0) == (30, "x")  # only the latest is written


def test_next_write_waits_for_the_interval_and_keeps_the_latest() -> None:
    t = ProgressThrottle(0.5)
    t.offer(10, None)
    t.take(100.0)
    t.offer(20, None)
    t.offer(25, "later")
    assert t.due_in(100.2) == pytest.approx(0.3)
    assert t.due_in(100.6) == 0.0
    assert t.take(100.6) == (25, "later")


def test_writer_ends_when_nothing_is_new_and_the_next_offer_starts_one() -> None:
    t = ProgressThrottle(0.5)
    t.offer(10, None)
    t.take(0.0)
    assert t.due_in(0.1) is None  # the writer ends
    assert t.offer(10, None) is True  # a new writer...
    assert t.due_in(0.2) is None  # ...finds the same report already written
    assert t.offer(11, None) is True
    assert t.due_in(0.2) == pytest.approx(0.3)


def test_same_percent_with_another_message_is_new() -> None:
    t = ProgressThrottle(0.0)
    t.offer(50, "a")
    t.take(0.0)
    t.offer(50, "b")
    assert t.due_in(0.0) == 0.0
    assert t.take(0.0) == (50, "b")


def test_close_returns_the_unwritten_report_once_and_refuses_more() -> None:
    t = ProgressThrottle(10.0)
    t.offer(10, None)
    t.take(0.0)
    t.offer(90, "almost")
    assert t.close() == (90, "almost")
    assert t.offer(100, None) is False
    assert t.close() is None


def test_close_after_everything_was_written_has_nothing() -> None:
    t = ProgressThrottle(10.0)
    t.offer(10, None)
    t.take(0.0)
    assert t.close() is None


def test_offers_from_many_threads_start_exactly_one_writer() -> None:
    t = ProgressThrottle(1.0)
    started = []
    barrier = threading.Barrier(8)

    def report(n: int) -> None:
        barrier.wait()
        for i in range(200):
            if t.offer(float(n * 1000 + i), None):
                started.append(n)

    threads = [threading.Thread(target=report, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(started) == 1


# -- the writer on a loop (a fake connector) ----------------------------------------------


class FakeConnector:
    def __init__(self, *, lost_after: int | None = None, fail: bool = False) -> None:
        self.progress: list[tuple[float, str | None]] = []
        self.staged: list[dict[str, Any]] = []
        self.lost_after = lost_after
        self.fail = fail

    async def execute_query_one_async(self, query: str, **kwargs: Any) -> dict[str, Any]:
        assert "pgqueue_procrastinate.progress" in query
        if self.fail:
            raise RuntimeError("database down")
        self.progress.append((kwargs["pct"], kwargs["message"]))
        await asyncio.sleep(0)
        if self.lost_after is not None and len(self.progress) > self.lost_after:
            return {"written": None}
        return {"written": int(kwargs["pct"])}

    async def execute_query_async(self, query: str, **kwargs: Any) -> None:
        assert "pgqueue_procrastinate.stage" in query
        if self.fail:
            raise RuntimeError("database down")
        self.staged.append(kwargs)


async def test_writer_throttles_and_flush_writes_the_last_report() -> None:
    connector = FakeConnector()
    job = _progress.RunningJob(1, 7, connector, asyncio.get_running_loop(), interval=0.2)
    for pct in range(0, 101, 10):
        job.report(float(pct), None)
        await asyncio.sleep(0.01)
    await job.flush()
    assert connector.progress[0] == (0.0, None)
    assert connector.progress[-1] == (100.0, None)
    assert len(connector.progress) <= 3  # 0, maybe one in the 0.1 s, then 100 at the flush


async def test_writer_takes_reports_from_a_thread() -> None:
    connector = FakeConnector()
    job = _progress.RunningJob(1, 7, connector, asyncio.get_running_loop(), interval=0.0)
    await asyncio.to_thread(job.report, 42.0, "from a thread")
    for _ in range(100):
        if connector.progress:
            break
        await asyncio.sleep(0.01)
    assert connector.progress == [(42.0, "from a thread")]
    await job.flush()
    assert connector.progress == [(42.0, "from a thread")]


async def test_writer_stops_when_the_job_is_no_longer_held() -> None:
    connector = FakeConnector(lost_after=1)
    job = _progress.RunningJob(1, 7, connector, asyncio.get_running_loop(), interval=0.0)
    for pct in (1.0, 2.0, 3.0, 4.0):
        job.report(pct, None)
        await asyncio.sleep(0.02)
    await job.flush()
    assert job.lost
    assert [p for p, _ in connector.progress] == [1.0, 2.0]


async def test_a_failing_write_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    connector = FakeConnector(fail=True)
    job = _progress.RunningJob(1, 7, connector, asyncio.get_running_loop(), interval=0.0)
    job.report(5.0, None)
    await job.flush()
    assert "could not record progress" in caplog.text


# -- progress() ----------------------------------------------------------------------------


def test_progress_outside_a_job_says_how_to_get_one() -> None:
    with pytest.raises(RuntimeError, match=r"outside a procrastinate job.*attach\(app\)"):
        bridge.progress(10)


@pytest.mark.parametrize(
    ("percent", "message", "error"),
    [
        ("50", None, TypeError),
        (None, None, TypeError),
        (True, None, TypeError),
        (float("nan"), None, ValueError),
        (float("inf"), None, ValueError),
        (10**400, None, ValueError),
        (50, 3, TypeError),
        (50, "a\x00b", ValueError),
    ],
)
def test_progress_refuses_bad_values_before_anything(
    percent: Any, message: Any, error: type[Exception]
) -> None:
    with pytest.raises(error):
        bridge.progress(percent, message)


async def test_progress_inside_a_job_reaches_its_writer() -> None:
    connector = FakeConnector()
    job = _progress.RunningJob(3, 7, connector, asyncio.get_running_loop(), interval=0.0)
    token = _progress._current.set(job)
    try:
        bridge.progress(12, "twelve")
        await asyncio.to_thread(bridge.progress, 13.5)  # to_thread copies the context too
    finally:
        _progress._current.reset(token)
    await job.flush()
    assert connector.progress[-1] == (13.5, None)


# -- results and errors --------------------------------------------------------------------


def test_result_json_keeps_json_values() -> None:
    assert _middleware.result_json({"a": [1, "b"]}, "t") == '{"a": [1, "b"]}'
    assert _middleware.result_json(None, "t") == "null"


@pytest.mark.parametrize("value", [object(), {1, 2}, float("nan"), {"s": "a\x00b"}, b"bytes"])
def test_result_json_falls_back_to_repr(value: Any, caplog: pytest.LogCaptureFixture) -> None:
    import json

    text = _middleware.result_json(value, "t")
    assert isinstance(json.loads(text), str)
    assert "\x00" not in json.loads(text)
    assert "is not stored as JSON" in caplog.text


def test_result_json_bounds_a_huge_repr() -> None:
    import json

    text = _middleware.result_json({"big": "x" * 2_000_000}, "t")
    assert len(json.loads(text)) <= _middleware.MAX_REPR_CHARS + 3


def test_result_json_survives_a_broken_repr() -> None:
    class Broken:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    assert "Broken" in _middleware.result_json(Broken(), "t")


def test_error_text_ends_with_the_exception_after_where_it_was_raised() -> None:
    def deep() -> None:
        raise ValueError("boom")

    try:
        deep()
    except ValueError as exc:
        text = _middleware.error_text(exc)
    lines = text.splitlines()
    assert lines[-1] == "ValueError: boom"
    assert lines[0].startswith('File "') and lines[0].endswith(", in deep")


def test_error_text_of_a_bare_exception() -> None:
    assert _middleware.error_text(asyncio.CancelledError()) == "CancelledError"


# -- the middleware with fakes ------------------------------------------------------------


class Fake:
    def __init__(self, **attrs: Any) -> None:
        self.__dict__.update(attrs)


def _context(connector: FakeConnector) -> Any:
    return Fake(job=Fake(id=11, task_name="t"), app=Fake(connector=connector))


def _worker(delete_jobs: str = "never") -> Any:
    from procrastinate.jobs import DeleteJobCondition

    return Fake(worker_id=5, delete_jobs=DeleteJobCondition(delete_jobs))


async def test_middleware_stages_a_result_after_the_last_progress() -> None:
    connector = FakeConnector()

    async def task() -> Any:
        bridge.progress(99, "last")
        return {"ok": True}

    assert await bridge.middleware(task, _context(connector), _worker()) == {"ok": True}
    assert connector.progress == [(99.0, "last")]
    assert connector.staged == [{"job": 11, "worker": 5, "result": '{"ok": true}', "error": None}]


async def test_middleware_skips_staging_none_only_when_rows_are_kept() -> None:
    async def task() -> None:
        return None

    kept = FakeConnector()
    await bridge.middleware(task, _context(kept), _worker("never"))
    assert kept.staged == []
    deleted = FakeConnector()
    await bridge.middleware(task, _context(deleted), _worker("successful"))
    assert deleted.staged == [{"job": 11, "worker": 5, "result": None, "error": None}]


@pytest.mark.parametrize("error", [ValueError("bad"), asyncio.CancelledError()])
async def test_middleware_stages_the_error_and_reraises_it_unchanged(error: BaseException) -> None:
    connector = FakeConnector()

    async def task() -> None:
        raise error

    with pytest.raises(type(error)) as info:
        await bridge.middleware(task, _context(connector), _worker())
    assert info.value is error
    (staged,) = connector.staged
    assert staged["result"] is None
    assert staged["error"].splitlines()[-1] == _middleware.error_text(error).splitlines()[-1]


async def test_middleware_outcome_stands_when_staging_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def task() -> int:
        return 3

    assert await bridge.middleware(task, _context(FakeConnector(fail=True)), _worker()) == 3
    assert "could not stage the outcome of procrastinate job 11" in caplog.text


async def test_middleware_resets_the_job_after_it() -> None:
    async def task() -> int:
        assert _progress.current_job() is not None
        return 1

    await bridge.middleware(task, _context(FakeConnector()), _worker())
    assert _progress.current_job() is None


async def test_a_cancel_while_staging_does_not_change_the_outcome() -> None:
    staging = asyncio.Event()
    release = asyncio.Event()

    class SlowConnector(FakeConnector):
        async def execute_query_async(self, query: str, **kwargs: Any) -> None:
            staging.set()
            await release.wait()
            await super().execute_query_async(query, **kwargs)

    connector = SlowConnector()

    async def task() -> str:
        return "done"

    job = asyncio.create_task(bridge.middleware(task, _context(connector), _worker()))
    await staging.wait()
    job.cancel()
    await asyncio.sleep(0.01)
    release.set()
    assert await job == "done"
    assert connector.staged and connector.staged[0]["result"] == '"done"'


def test_middleware_is_a_valid_procrastinate_worker_middleware() -> None:
    from procrastinate import middleware as mw

    assert mw.is_async_middleware(bridge.middleware)


# -- defer's checks (before any database) -------------------------------------------------


@pytest.fixture
def app() -> Any:
    from procrastinate import App, testing

    application = App(connector=testing.InMemoryConnector())

    @application.task(name="t", queue="q")
    def t(x: int) -> int:
        return x

    return application


@pytest.mark.parametrize("owner", ["", "x" * 257, 5, "a\x00b"])
def test_defer_refuses_a_bad_owner(app: Any, owner: Any) -> None:
    with pytest.raises(InvalidJobError) as info:
        bridge.defer(app.tasks["t"], owner=owner, x=1)
    assert info.value.field == "owner"


@pytest.mark.parametrize("batch", [0, -1, True, "3", 2.0])
async def test_defer_refuses_a_bad_batch(app: Any, batch: Any) -> None:
    with pytest.raises(InvalidJobError) as info:
        await bridge.defer_async(app.tasks["t"], batch=batch, x=1)
    assert info.value.field == "batch"


def test_defer_refuses_what_is_not_a_task() -> None:
    with pytest.raises(TypeError, match="procrastinate Task"):
        bridge.defer(lambda: None)


def test_defer_refuses_a_connection_in_options(app: Any) -> None:
    with pytest.raises(TypeError, match="conn="):
        bridge.defer(app.tasks["t"], options={"connection": object()}, x=1)


def test_defer_refuses_a_connection_of_the_wrong_kind(app: Any) -> None:
    with pytest.raises(TypeError, match="psycopg Connection"):
        bridge.defer(app.tasks["t"], conn=object(), x=1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("items", "match"),
    [([], "at least one"), ("ab", "sequence"), ({"x": 1}, "sequence"), ([{"x": 1}, 2], "items")],
)
def test_defer_batch_refuses_bad_items(app: Any, items: Any, match: str) -> None:
    with pytest.raises(InvalidJobError, match=match) as info:
        bridge.defer_batch(app.tasks["t"], items)
    assert info.value.field == "items"


@pytest.mark.parametrize("metadata", [[1], {"x": object()}, {"x": float("nan")}])
def test_defer_batch_refuses_bad_metadata(app: Any, metadata: Any) -> None:
    with pytest.raises(InvalidJobError) as info:
        bridge.defer_batch(app.tasks["t"], [{"x": 1}], metadata=metadata)
    assert info.value.field == "metadata"


def test_a_batch_takes_the_task_queue_unless_options_name_one(app: Any) -> None:
    plan = _defer._batch_plan(app.tasks["t"], [{"x": 1}], "o", None, None)
    assert plan.open_batch == ("o", "{}", "t", "q")
    plan = _defer._batch_plan(app.tasks["t"], [{"x": 1}], None, {"k": 1}, {"queue": "other"})
    assert plan.open_batch == (None, '{"k": 1}', "t", "other")


def test_defer_without_conn_needs_a_psycopg_connector(app: Any) -> None:
    with pytest.raises(ConfigurationError, match="PsycopgConnector"):
        bridge.defer(app.tasks["t"], x=1)


# -- attach --------------------------------------------------------------------------------


def test_attach_adds_the_middleware_first_and_the_recovery_task(app: Any) -> None:
    async def mine(call_next: Any, context: Any, worker: Any) -> Any:
        return await call_next()

    app.worker_defaults["worker_middleware"] = [mine]
    assert bridge.attach(app, progress_interval=0.1, stalled_after=30) is app
    middlewares = app.worker_defaults["worker_middleware"]
    assert isinstance(middlewares[0], bridge.Middleware)
    assert middlewares[0].progress_interval == 0.1
    assert middlewares[1:] == [mine]
    assert bridge.RECOVERY_TASK in app.tasks
    (periodic,) = [
        p
        for p in app.periodic_registry.periodic_tasks.values()
        if p.task.name == "pgqueue.recover_stalled"
    ]
    assert periodic.cron == "* * * * *"

    bridge.attach(app, progress_interval=0.3)  # again: replaced, not added
    middlewares = app.worker_defaults["worker_middleware"]
    assert [type(m) for m in middlewares] == [bridge.Middleware, type(mine)]
    assert middlewares[0].progress_interval == 0.3


def test_attach_without_recovery(app: Any) -> None:
    bridge.attach(app, stalled_after=0)
    assert bridge.RECOVERY_TASK not in app.tasks
    assert not app.periodic_registry.periodic_tasks


def test_the_worker_gets_the_middleware_from_the_defaults(app: Any) -> None:
    bridge.attach(app)
    worker = app._worker()
    assert isinstance(worker.worker_middleware[0], bridge.Middleware)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"stalled_after": -1},
        {"stalled_after": float("nan")},
        {"on_stalled": "ignore"},
        {"progress_interval": -0.1},
        {"recover_every": "every minute"},
    ],
)
def test_attach_refuses_bad_settings(app: Any, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        bridge.attach(app, **kwargs)


async def test_recover_stalled_refuses_bad_settings_before_the_database() -> None:
    with pytest.raises(ValueError, match="> 0"):
        await bridge.recover_stalled(object(), stalled_after=0)
    with pytest.raises(ValueError, match="'retry' or 'fail'"):
        await bridge.recover_stalled(object(), stalled_after=1, policy="later")  # type: ignore[arg-type]


# -- CLI and imports -----------------------------------------------------------------------


def test_cli_has_the_procrastinate_actions() -> None:
    parser = cli.build_parser()
    for argv in (["install"], ["uninstall"], ["check"], ["recover"]):
        args = parser.parse_args(["procrastinate", *argv, "--json"])
        assert args.handler is cli.cmd_procrastinate
        assert args.json
    args = parser.parse_args(
        ["procrastinate", "recover", "--stalled-after", "5", "--policy", "fail"]
    )
    assert (args.stalled_after, args.policy) == (5.0, "fail")


def test_cli_recover_refuses_a_bad_stalled_after(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["procrastinate", "recover", "--stalled-after", "0"]) == 1
    assert "stalled_after must be seconds > 0" in capsys.readouterr().err


def test_the_bridge_and_the_cli_import_without_procrastinate() -> None:
    code = (
        "import sys\n"
        "sys.modules['procrastinate'] = None  # import procrastinate -> ImportError\n"
        "import pgqueue.cli, pgqueue.procrastinate as b\n"
        "try:\n"
        "    b.require()\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.startswith("ConfigurationError ")
    assert "pip install 'pgqueue[procrastinate]'" in out


def _wrapped(cause: Exception) -> Exception:
    """An error as procrastinate raises it: its own exception over psycopg's."""
    wrapper = RuntimeError("procrastinate's ConnectorException")
    wrapper.__cause__ = cause
    return wrapper


def test_a_refusal_under_procrastinates_error_is_pgqueues_its_missing_objects_its_own() -> None:
    from tests.unit.test_connect_sql_errors import db_error

    refused = _wrapped(db_error("PQ004", "pgqueue: no batch 7"))
    assert isinstance(_defer._unwrap(refused), pgqueue.PgQueueError)
    # procrastinate's own statement: its schema, not the bridge, is behind it
    missing = _wrapped(db_error("42883", "function procrastinate_defer_jobs_v2() does not exist"))
    assert _defer._unwrap(missing) is missing
