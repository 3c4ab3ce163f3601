"""The procrastinate bridge at the database level: every procrastinate function's
effect on a job's mirror in pgqueue.jobs (sql/procrastinate.sql), and pgqueue's
own operations on mirrors (revision 0013).

Each case calls procrastinate's own stored functions as its worker, CLI and
admin do, and reads the mirror back. The timestamp rule
``created_at <= started_at <= completed_at`` is checked after every case.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import timedelta
from importlib import resources
from typing import Any

import psycopg
import pytest

from tests.db._helpers import WRONG_STATE, Conn, rows, scalar


@pytest.fixture
def pc(bridged_db: str) -> Iterator[Conn]:
    """A session on a fresh database with procrastinate's schema and the bridge."""
    with psycopg.connect(bridged_db, autocommit=True) as conn:
        yield conn
        bad = rows(
            conn,
            "SELECT id, status, created_at, started_at, completed_at FROM pgqueue.jobs"
            " WHERE NOT (created_at <= COALESCE(started_at, created_at)"
            "        AND COALESCE(started_at, created_at) <= COALESCE(completed_at, 'infinity'))",
        )
        assert bad == []


class Procrastinate:
    """procrastinate's stored functions, called as its worker and CLI call them."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self.worker = scalar(conn, "SELECT worker_id FROM procrastinate_register_worker_v1()")

    def defer(self, task: str = "t", args: dict[str, Any] | None = None, **extra: Any) -> int:
        return int(
            scalar(
                self.conn,
                "SELECT unnest(procrastinate_defer_jobs_v1(ARRAY[ROW(%s, %s, %s, %s, NULL,"
                " %s::jsonb, %s::timestamptz)]::procrastinate_job_to_defer_v1[]))",
                (
                    extra.get("queue", "default"),
                    task,
                    extra.get("priority", 0),
                    extra.get("lock"),
                    json.dumps(args or {}),
                    extra.get("scheduled_at"),
                ),
            )
        )

    def fetch(self) -> int:
        job = scalar(
            self.conn, "SELECT id FROM procrastinate_fetch_job_v2(NULL, %s)", (self.worker,)
        )
        assert job is not None, "nothing to fetch"
        return int(job)

    def stage(self, job: int, result: Any = None, error: str | None = None) -> None:
        self.conn.execute(
            "SELECT pgqueue_procrastinate.stage(%s, %s, %s::jsonb, %s)",
            (job, self.worker, None if result is None else json.dumps(result), error),
        )

    def finish(self, job: int, status: str, delete: bool = False) -> None:
        self.conn.execute("SELECT procrastinate_finish_job_v1(%s, %s, %s)", (job, status, delete))

    def retry(self, job: int, at_in: timedelta = timedelta(0)) -> None:
        self.conn.execute(
            "SELECT procrastinate_retry_job_v2(%s, now() + %s, NULL, NULL, NULL)", (job, at_in)
        )

    def cancel(self, job: int, abort: bool = False, delete: bool = False) -> None:
        self.conn.execute("SELECT procrastinate_cancel_job_v1(%s, %s, %s)", (job, abort, delete))

    def status(self, job: int) -> str | None:
        found = rows(
            self.conn, "SELECT status::text AS s FROM procrastinate_jobs WHERE id = %s", (job,)
        )
        return found[0]["s"] if found else None


def mirror(conn: Conn, job: int) -> dict[str, Any]:
    found = rows(
        conn,
        "SELECT * FROM pgqueue.jobs WHERE executor = 'procrastinate' AND external_id = %s",
        (job,),
    )
    assert len(found) == 1, f"procrastinate job {job} has {len(found)} mirrors"
    return found[0]


def outcomes(conn: Conn, mirror_id: int) -> list[str]:
    return [
        r["outcome"]
        for r in rows(
            conn,
            "SELECT outcome FROM pgqueue.attempts WHERE job_id = %s ORDER BY attempt",
            (mirror_id,),
        )
    ]


# --- every procrastinate transition, one row each --------------------------------


def _succeeded(p: Procrastinate) -> int:
    job = p.defer()
    p.fetch()
    p.stage(job, result={"sum": 3})
    p.finish(job, "succeeded")
    return job


def _succeeded_unstaged(p: Procrastinate) -> int:
    job = p.defer()
    p.fetch()
    p.finish(job, "succeeded")
    return job


def _succeeded_and_deleted(p: Procrastinate) -> int:
    job = p.defer()
    p.fetch()
    p.stage(job, result=[1, 2])
    p.finish(job, "succeeded", delete=True)
    return job


def _deleted_unstaged(p: Procrastinate) -> int:
    job = p.defer()
    p.fetch()
    p.finish(job, "succeeded", delete=True)
    return job


def _failed_once(p: Procrastinate) -> int:
    job = p.defer()
    p.fetch()
    p.stage(job, error="ValueError: bad")
    p.finish(job, "failed")
    return job


def _failed_after_retries(p: Procrastinate) -> int:
    job = p.defer()
    for n in range(2):
        p.fetch()
        p.stage(job, error=f"ValueError: try {n + 1}")
        p.retry(job)
    p.fetch()
    p.stage(job, error="ValueError: try 3")
    p.finish(job, "failed")
    return job


def _retrying(p: Procrastinate) -> int:
    job = p.defer()
    p.fetch()
    p.stage(job, error="TimeoutError: later")
    p.retry(job, at_in=timedelta(minutes=5))
    return job


def _cancelled_before_running(p: Procrastinate) -> int:
    job = p.defer()
    p.cancel(job)
    return job


def _deleted_before_running(p: Procrastinate) -> int:
    job = p.defer()
    p.cancel(job, delete=True)
    return job


def _abort_requested(p: Procrastinate) -> int:
    job = p.defer()
    p.fetch()
    p.cancel(job, abort=True)
    return job


def _aborted(p: Procrastinate) -> int:
    job = _abort_requested(p)
    p.stage(job, error="JobAborted: aborted")
    p.finish(job, "aborted")
    return job


def _retried_by_hand(p: Procrastinate) -> int:
    job = _failed_once(p)
    p.retry(job)
    return job


def _fetched(p: Procrastinate) -> int:
    job = p.defer()
    p.fetch()
    return job


def _deferred_for_later(p: Procrastinate) -> int:
    return p.defer(scheduled_at="2999-01-01T00:00:00Z")


CASES: list[tuple[str, Callable[[Procrastinate], int], dict[str, Any], list[str], str | None]] = [
    # name, scenario, mirror fields, attempts' outcomes, procrastinate status after
    ("deferred", lambda p: p.defer(), {"status": "pending", "attempts": 0}, [], "todo"),
    ("scheduled", _deferred_for_later, {"status": "pending", "attempts": 0}, [], "todo"),
    ("fetched", _fetched, {"status": "running", "attempts": 1}, [], "doing"),
    (
        "succeeded",
        _succeeded,
        {"status": "completed", "result": {"sum": 3}, "progress": 100},
        ["completed"],
        "succeeded",
    ),
    (
        "succeeded, nothing staged",
        _succeeded_unstaged,
        {"status": "completed", "result": None},
        ["completed"],
        "succeeded",
    ),
    (
        "succeeded, deleted",
        _succeeded_and_deleted,
        {"status": "completed", "result": [1, 2]},
        ["completed"],
        None,
    ),
    (
        "deleted while running, nothing staged",
        _deleted_unstaged,
        {"status": "failed"},
        ["error"],
        None,
    ),
    (
        "failed once",
        _failed_once,
        {"status": "failed", "error": "ValueError: bad"},
        ["error"],
        "failed",
    ),
    (
        "failed after retries",
        _failed_after_retries,
        {"status": "dead_letter", "error": "ValueError: try 3", "attempts": 3},
        ["error", "error", "error"],
        "failed",
    ),
    (
        "retrying",
        _retrying,
        {"status": "retrying", "error": "TimeoutError: later"},
        ["error"],
        "todo",
    ),
    (
        "cancelled before running",
        _cancelled_before_running,
        {"status": "cancelled"},
        [],
        "cancelled",
    ),
    ("deleted before running", _deleted_before_running, {"status": "cancelled"}, [], None),
    ("abort requested", _abort_requested, {"status": "cancelled"}, ["cancelled"], "doing"),
    ("aborted", _aborted, {"status": "cancelled"}, ["cancelled"], "aborted"),
    (
        "retried by hand",
        _retried_by_hand,
        {"status": "pending", "completed_at": None, "attempts": 1},
        ["error"],
        "todo",
    ),
]


@pytest.mark.parametrize(
    ("scenario", "expected", "history", "procrastinate_status"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_each_procrastinate_transition_moves_the_mirror(
    pc: Conn,
    scenario: Callable[[Procrastinate], int],
    expected: dict[str, Any],
    history: list[str],
    procrastinate_status: str | None,
) -> None:
    p = Procrastinate(pc)
    job = scenario(p)
    m = mirror(pc, job)
    assert {k: m[k] for k in expected} == expected
    assert outcomes(pc, m["id"]) == history
    assert p.status(job) == procrastinate_status
    # never claimable by pgqueue, and no outcome left behind for an ended attempt
    assert m["paused"] is True
    if procrastinate_status != "doing":
        assert (
            scalar(
                pc, "SELECT count(*) FROM pgqueue_procrastinate.outcomes WHERE job_id = %s", (job,)
            )
            == 0
        )
    assert scalar(pc, "SELECT count(*) FROM pgqueue_procrastinate.errors") == 0


def test_a_running_mirror_names_the_procrastinate_worker_as_its_holder(pc: Conn) -> None:
    p = Procrastinate(pc)
    job = _fetched(p)
    m = mirror(pc, job)
    assert m["worker_id"] == f"procrastinate:{p.worker}"
    assert m["created_at"] <= m["started_at"] <= m["leased_at"] <= m["heartbeat_at"]


def test_progress_goes_through_pgqueue_progress_with_history_for_the_holder_only(pc: Conn) -> None:
    p = Procrastinate(pc)
    job = _fetched(p)
    for pct in (10, 55):
        assert (
            scalar(
                pc,
                "SELECT pgqueue_procrastinate.progress(%s, %s, %s, 'step')",
                (job, p.worker, pct),
            )
            == pct
        )
    # another worker (or a late report after the job moved on) is dropped, not an error
    assert (
        scalar(pc, "SELECT pgqueue_procrastinate.progress(%s, %s, 90, NULL)", (job, p.worker + 1))
        is None
    )
    m = mirror(pc, job)
    assert (m["progress"], m["progress_message"]) == (55, "step")
    history = rows(
        pc, "SELECT pct FROM pgqueue.progress_history WHERE job_id = %s ORDER BY id", (m["id"],)
    )
    assert [h["pct"] for h in history] == [10, 55]


def test_an_outcome_staged_by_another_worker_is_not_this_attempts(pc: Conn) -> None:
    p = Procrastinate(pc)
    job = _fetched(p)
    pc.execute("SELECT pgqueue_procrastinate.stage(%s, %s, '\"stale\"', NULL)", (job, p.worker + 7))
    p.finish(job, "succeeded")
    assert mirror(pc, job)["result"] is None


def test_defer_with_owner_and_batch_settings_joins_the_batch(pc: Conn) -> None:
    p = Procrastinate(pc)
    with pc.transaction():
        batch = scalar(pc, "SELECT pgqueue_procrastinate.open_batch('alice', '{}', 't', 'default')")
        pc.execute("SELECT set_config('pgqueue_procrastinate.batch', %s, true)", (str(batch),))
        jobs = [p.defer(), p.defer()]
        pc.execute("SELECT set_config('pgqueue_procrastinate.batch', '', true)")
        loose = p.defer()
    assert [(mirror(pc, j)["owner"], mirror(pc, j)["batch_id"]) for j in jobs] == [
        ("alice", batch)
    ] * 2
    assert (mirror(pc, loose)["owner"], mirror(pc, loose)["batch_id"]) == (None, None)
    counts = (
        "SELECT status::text, total, pending, running, completed FROM pgqueue.batches WHERE id = %s"
    )
    assert pc.execute(counts, (batch,)).fetchone() == ("pending", 2, 2, 0, 0)
    for j in jobs:
        assert p.fetch() == j
        p.finish(j, "succeeded")
    assert pc.execute(counts, (batch,)).fetchone() == ("completed", 2, 0, 0, 2)


def test_a_defer_naming_a_missing_batch_fails_and_leaves_nothing(pc: Conn) -> None:
    p = Procrastinate(pc)
    with pytest.raises(psycopg.Error) as info, pc.transaction():
        pc.execute("SELECT set_config('pgqueue_procrastinate.batch', '424242', true)")
        p.defer()
    assert info.value.sqlstate == "PQ004"
    assert scalar(pc, "SELECT count(*) FROM procrastinate_jobs") == 0
    assert scalar(pc, "SELECT count(*) FROM pgqueue.jobs") == 0


def test_a_rolled_back_defer_leaves_neither_row(pc: Conn) -> None:
    p = Procrastinate(pc)

    class Rollback(Exception):
        pass

    with pytest.raises(Rollback), pc.transaction():
        p.defer()
        assert scalar(pc, "SELECT count(*) FROM pgqueue.jobs") == 1
        raise Rollback
    assert scalar(pc, "SELECT count(*) FROM procrastinate_jobs") == 0
    assert scalar(pc, "SELECT count(*) FROM pgqueue.jobs") == 0


def test_pgqueue_never_claims_or_rescues_a_mirror(pc: Conn) -> None:
    p = Procrastinate(pc)
    running = _fetched(p)
    waiting = p.defer(queue="default")
    native = scalar(pc, "SELECT pgqueue.enqueue('t', '{}'::jsonb, 'default')")
    claimed = rows(
        pc, "SELECT id FROM pgqueue.claim('w1', ARRAY['default'], 10, '30 seconds', NULL)"
    )
    assert [c["id"] for c in claimed] == [native]
    pc.execute(
        "UPDATE pgqueue.jobs SET heartbeat_at = heartbeat_at - interval '1 hour'"
        " WHERE executor = 'procrastinate'"
    )
    assert rows(pc, "SELECT * FROM pgqueue.rescue('1 second')") == []
    assert mirror(pc, running)["status"] == "running"
    assert mirror(pc, waiting)["status"] == "pending"


def test_a_mirror_must_stay_unclaimable(pc: Conn) -> None:
    p = Procrastinate(pc)
    job = p.defer()
    with pytest.raises(psycopg.errors.CheckViolation):
        pc.execute("UPDATE pgqueue.jobs SET paused = false WHERE external_id = %s", (job,))


def test_cancel_through_pgqueue_cancels_or_aborts_in_procrastinate(pc: Conn) -> None:
    p = Procrastinate(pc)
    running = _fetched(p)
    waiting = p.defer()
    for job in (waiting, running):
        assert (
            scalar(pc, "SELECT pgqueue.cancel(%s)::text", (mirror(pc, job)["id"],)) == "cancelled"
        )
    assert p.status(waiting) == "cancelled"
    assert pc.execute(
        "SELECT status::text, abort_requested FROM procrastinate_jobs WHERE id = %s", (running,)
    ).fetchone() == ("doing", True)
    assert mirror(pc, running)["status"] == "cancelled"
    # the late end of the aborted attempt changes nothing
    p.finish(running, "aborted")
    assert outcomes(pc, mirror(pc, running)["id"]) == ["cancelled"]
    # a finished mirror is refused, as a finished pgqueue job is
    with pytest.raises(psycopg.Error) as info:
        pc.execute("SELECT pgqueue.cancel(%s)", (mirror(pc, running)["id"],))
    assert info.value.sqlstate == WRONG_STATE


def test_replay_through_pgqueue_retries_in_procrastinate(pc: Conn) -> None:
    p = Procrastinate(pc)
    job = _failed_once(p)
    m = mirror(pc, job)
    assert scalar(pc, "SELECT pgqueue.replay(%s)::text", (m["id"],)) == "pending"
    assert p.status(job) == "todo"
    assert p.fetch() == job
    p.finish(job, "succeeded")
    assert mirror(pc, job)["status"] == "completed"
    assert outcomes(pc, m["id"]) == ["error", "completed"]


def test_replay_is_refused_when_procrastinate_cannot_retry(pc: Conn) -> None:
    p = Procrastinate(pc)
    job = _cancelled_before_running(p)
    with pytest.raises(psycopg.Error) as info:
        pc.execute("SELECT pgqueue.replay(%s)", (mirror(pc, job)["id"],))
    assert info.value.sqlstate == WRONG_STATE
    assert "procrastinate retries only failed jobs" in str(info.value)


def test_a_batch_of_mirrors_cannot_be_paused_and_cancels_through_procrastinate(pc: Conn) -> None:
    p = Procrastinate(pc)
    with pc.transaction():
        batch = scalar(pc, "SELECT pgqueue_procrastinate.open_batch(NULL, NULL, 't', 'default')")
        pc.execute("SELECT set_config('pgqueue_procrastinate.batch', %s, true)", (str(batch),))
        jobs = [p.defer(), p.defer()]
    assert p.fetch() == jobs[0]
    with pytest.raises(psycopg.Error) as info:
        pc.execute("SELECT pgqueue.pause_batch(%s)", (batch,))
    assert info.value.sqlstate == WRONG_STATE
    assert scalar(pc, "SELECT pgqueue.cancel_batch(%s)::text", (batch,)) == "cancelled"
    assert [p.status(j) for j in jobs] == ["doing", "cancelled"]
    assert scalar(pc, "SELECT abort_requested FROM procrastinate_jobs WHERE id = %s", (jobs[0],))
    assert pc.execute(
        "SELECT status::text, cancelled, total FROM pgqueue.batches WHERE id = %s", (batch,)
    ).fetchone() == ("cancelled", 2, 2)


def test_recover_stalled_retries_or_fails_through_procrastinate(pc: Conn) -> None:
    p = Procrastinate(pc)
    first, second = p.defer(), p.defer()
    p.fetch()
    p.fetch()
    pc.execute("UPDATE procrastinate_workers SET last_heartbeat = now() - interval '10 minutes'")
    assert rows(
        pc, "SELECT * FROM pgqueue_procrastinate.recover_stalled('1 minute', 'retry', 2)"
    ) == [
        {"job_id": first, "action": "retried"},
        {"job_id": second, "action": "retried"},
    ]
    assert mirror(pc, first)["status"] == "retrying"
    assert "sent no heartbeat" in mirror(pc, first)["error"]
    # the retry limit reached: failed
    p.fetch()
    pc.execute("DELETE FROM procrastinate_workers")  # pruned as stalled: its jobs lost their worker
    recovered = rows(
        pc, "SELECT * FROM pgqueue_procrastinate.recover_stalled('1 minute', 'retry', 2)"
    )
    assert [r["action"] for r in recovered] == ["failed"]
    assert mirror(pc, recovered[0]["job_id"])["status"] == "dead_letter"
    assert "is gone" in mirror(pc, recovered[0]["job_id"])["error"]
    with pytest.raises(psycopg.Error):
        pc.execute("SELECT * FROM pgqueue_procrastinate.recover_stalled('1 minute', 'wait')")


def test_the_trigger_never_raises_into_fetch_or_finish(pc: Conn) -> None:
    """A mirror that cannot move (here a constraint forbids it) must not stop
    procrastinate: the error is recorded, and the next change mirrors afresh."""
    p = Procrastinate(pc)
    job = p.defer()
    pc.execute(
        "ALTER TABLE pgqueue.jobs ADD CONSTRAINT test_no_running"
        " CHECK (status <> 'running' OR executor IS NULL) NOT VALID"
    )
    assert p.fetch() == job  # no error reached procrastinate
    assert mirror(pc, job)["status"] == "pending"
    errors = rows(pc, "SELECT operation, sqlstate FROM pgqueue_procrastinate.errors")
    assert errors == [{"operation": "update todo -> doing", "sqlstate": "23514"}]
    pc.execute("ALTER TABLE pgqueue.jobs DROP CONSTRAINT test_no_running")
    p.stage(job, result="ok")
    p.finish(job, "succeeded")
    m = mirror(pc, job)
    assert (m["status"], m["result"], outcomes(pc, m["id"])) == ("completed", "ok", ["completed"])


def test_jobs_deferred_before_install_are_mirrored_by_install(procrastinate_dsn: str) -> None:
    with psycopg.connect(procrastinate_dsn, autocommit=True) as conn:
        p = Procrastinate(conn)
        waiting, running = p.defer(), p.defer()
        assert p.fetch() == waiting
        assert scalar(conn, "SELECT count(*) FROM pgqueue.jobs") == 0
        install_procrastinate_and_bridge_only = (
            resources.files("pgqueue.sql").joinpath("procrastinate.sql").read_text()
        )
        for _ in range(2):  # idempotent
            conn.execute(install_procrastinate_and_bridge_only)  # type: ignore[arg-type]
        assert [mirror(conn, j)["status"] for j in (waiting, running)] == ["running", "pending"]
        p.finish(waiting, "succeeded")
        assert mirror(conn, waiting)["status"] == "completed"


def test_cancel_of_a_mirror_without_the_bridge_says_so(pc: Conn) -> None:
    p = Procrastinate(pc)
    job = p.defer()
    m = mirror(pc, job)
    pc.execute(resources.files("pgqueue.sql").joinpath("procrastinate_uninstall.sql").read_text())  # type: ignore[arg-type]
    # uninstall deleted the unfinished mirror; a finished one stays
    assert rows(pc, "SELECT id FROM pgqueue.jobs WHERE id = %s", (m["id"],)) == []
    pc.execute(
        "INSERT INTO pgqueue.jobs (task, status, completed_at, paused, executor, external_id)"
        " VALUES ('t', 'failed', now(), true, 'procrastinate', 99)"
    )
    kept = scalar(pc, "SELECT id FROM pgqueue.jobs WHERE external_id = 99")
    with pytest.raises(psycopg.Error) as info:
        pc.execute("SELECT pgqueue.replay(%s)", (kept,))
    assert info.value.sqlstate == WRONG_STATE
    assert "bridge for procrastinate is not installed" in str(info.value)
    # procrastinate works on, untouched
    p.defer()
    assert scalar(pc, "SELECT count(*) FROM procrastinate_jobs") == 2


def test_the_bridges_own_recovery_task_is_not_mirrored(pc: Conn) -> None:
    p = Procrastinate(pc)
    job = p.defer(task="pgqueue.recover_stalled")
    assert p.fetch() == job
    p.finish(job, "succeeded")
    assert scalar(pc, "SELECT count(*) FROM pgqueue.jobs") == 0
    assert scalar(pc, "SELECT count(*) FROM pgqueue_procrastinate.errors") == 0


def test_procrastinates_retry_of_a_finished_batchs_job_takes_it_out_of_the_batch(pc: Conn) -> None:
    p = Procrastinate(pc)
    with pc.transaction():
        batch = scalar(pc, "SELECT pgqueue_procrastinate.open_batch(NULL, NULL, 't', 'default')")
        pc.execute("SELECT set_config('pgqueue_procrastinate.batch', %s, true)", (str(batch),))
        job = p.defer()
    p.fetch()
    p.finish(job, "failed")
    counts = "SELECT status::text, total, failed FROM pgqueue.batches WHERE id = %s"
    assert pc.execute(counts, (batch,)).fetchone() == ("completed_with_errors", 1, 1)
    p.retry(job)  # procrastinate's own retry (its admin, its CLI)
    m = mirror(pc, job)
    assert (m["status"], m["batch_id"]) == ("pending", None)
    assert p.fetch() == job
    p.finish(job, "succeeded")
    assert mirror(pc, job)["status"] == "completed"
    # the finished batch stays as it finished
    assert pc.execute(counts, (batch,)).fetchone() == ("completed_with_errors", 1, 1)
    assert scalar(pc, "SELECT count(*) FROM pgqueue_procrastinate.errors") == 0


def test_reinstalling_draws_no_job_ids_and_a_mirror_wakes_no_pgqueue_worker(pc: Conn) -> None:
    p = Procrastinate(pc)
    p.defer()
    pc.execute(resources.files("pgqueue.sql").joinpath("procrastinate.sql").read_text())  # type: ignore[arg-type]
    native = scalar(pc, "SELECT pgqueue.enqueue('t', '{}'::jsonb, 'other')")
    assert native == 2  # the reinstall took no id
    pc.execute("LISTEN pgqueue_enqueue")
    p.defer()
    pc.execute("SELECT pgqueue.enqueue('t', '{}'::jsonb, 'native')")
    heard = [n.payload for n in pc.notifies(timeout=1.0, stop_after=2)]
    assert heard == ["native"]


def test_replay_of_a_job_cancelled_while_it_ran_then_failed_by_its_retry_strategy(
    pc: Conn,
) -> None:
    """procrastinate fails (rather than aborts) a job with a retry strategy that
    was asked to abort, and keeps the abort request; a replay clears it."""
    p = Procrastinate(pc)
    job = _abort_requested(p)
    p.retry(job)  # procrastinate's retry of an aborting job: failed
    assert p.status(job) == "failed"
    m = mirror(pc, job)
    assert m["status"] == "cancelled"
    assert scalar(pc, "SELECT pgqueue.replay(%s)::text", (m["id"],)) == "pending"
    assert pc.execute(
        "SELECT status::text, abort_requested FROM procrastinate_jobs WHERE id = %s", (job,)
    ).fetchone() == ("todo", False)
    assert p.fetch() == job
    p.finish(job, "succeeded")
    assert mirror(pc, job)["status"] == "completed"
