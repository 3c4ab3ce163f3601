"""Acceptance: the ``pgqueue`` command line, run as a subprocess.

Every command gets the database through ``PGQUEUE_DSN`` (or ``--dsn``), as a
user's shell would give it. Reports are checked through ``--json`` and the
database; errors must exit non-zero with exactly one line on stderr,
``pgqueue: error: ...``, and write nothing.
"""

from __future__ import annotations

import json

import pytest

import pgqueue

from .helpers import APP, WORKER_FLAGS, CliResult, rows, run_cli, scalar

pytestmark = pytest.mark.timeout(120)


def _assert_one_error_line(result: CliResult, *expected: str) -> str:
    assert result.returncode != 0, result
    assert len(result.stderr_lines) == 1, result.stderr
    line = result.stderr_lines[0]
    assert line.startswith("pgqueue: error: "), line
    for text in expected:
        assert text in line, line
    assert result.stdout == ""
    return line


def _enqueue(dsn: str, task: str, *options: str) -> int:
    result = run_cli("enqueue", task, "--app", APP, *options, "--json", dsn=dsn)
    assert result.returncode == 0, result.stderr
    return int(result.json()["id"])


def _run_worker_until_idle(dsn: str) -> None:
    result = run_cli("worker", "--app", APP, *WORKER_FLAGS, "--until-idle", dsn=dsn)
    assert result.returncode == 0, result.stderr


@pytest.fixture
def finished(runs_dsn: str) -> dict[str, int]:
    """One completed and one failed job, run by a real worker."""
    ids = {"completed": _enqueue(runs_dsn, "record"), "failed": _enqueue(runs_dsn, "fail")}
    _run_worker_until_idle(runs_dsn)
    assert dict(rows(runs_dsn, "SELECT id, status::text FROM pgqueue.jobs")) == {
        ids["completed"]: "completed",
        ids["failed"]: "failed",
    }
    return ids


# -- enqueue -----------------------------------------------------------------------------


def test_enqueue_prints_the_id_of_the_job_it_wrote(runs_dsn: str) -> None:
    plain = run_cli("enqueue", "slow", "--app", APP, "--args", '{"seconds": 1.5}', dsn=runs_dsn)
    assert plain.returncode == 0, plain.stderr
    assert plain.stderr == ""
    job_id = int(plain.stdout.strip())

    as_json = run_cli(
        "enqueue", "record", "--app", APP, "--args", '{"tag": "x"}', "--queue", "other",
        "--priority", "7", "--max-attempts", "3", "--json", dsn=runs_dsn,
    )  # fmt: skip
    assert as_json.returncode == 0, as_json.stderr
    payload = as_json.json()
    assert set(payload) == {"id"}
    assert isinstance(payload["id"], int)

    jobs = {
        r[0]: r[1:]
        for r in rows(
            runs_dsn,
            "SELECT id, task, args, queue, priority, max_attempts, status::text FROM pgqueue.jobs",
        )
    }
    assert jobs == {
        job_id: ("slow", {"seconds": 1.5}, "default", 0, 1, "pending"),
        payload["id"]: ("record", {"tag": "x"}, "other", 7, 3, "pending"),
    }


# -- jobs list / show / retry / cancel ---------------------------------------------------


def test_jobs_list_json_lists_jobs_newest_first_with_filters(runs_dsn: str) -> None:
    first = _enqueue(runs_dsn, "record")
    second = _enqueue(runs_dsn, "slow", "--args", '{"seconds": 1}')
    third = _enqueue(runs_dsn, "record", "--queue", "other")
    assert run_cli("jobs", "cancel", str(first), dsn=runs_dsn).returncode == 0

    listed = run_cli("jobs", "list", "--json", dsn=runs_dsn)
    assert listed.returncode == 0, listed.stderr
    jobs = listed.json()
    assert [j["id"] for j in jobs] == [third, second, first]
    assert {j["id"]: (j["task"], j["queue"], j["status"]) for j in jobs} == {
        first: ("record", "default", "cancelled"),
        second: ("slow", "default", "pending"),
        third: ("record", "other", "pending"),
    }
    assert jobs[1]["args"] == {"seconds": 1}

    def ids(*filters: str) -> list[int]:
        result = run_cli("jobs", "list", *filters, "--json", dsn=runs_dsn)
        assert result.returncode == 0, result.stderr
        return [j["id"] for j in result.json()]

    assert ids("--status", "pending") == [third, second]
    assert ids("--task", "record") == [third, first]
    assert ids("--queue", "other") == [third]
    assert ids("--limit", "1") == [third]
    assert ids("--before", str(third)) == [second, first]


def test_jobs_show_json_includes_the_attempt_history(
    runs_dsn: str, finished: dict[str, int]
) -> None:
    result = run_cli("jobs", "show", str(finished["failed"]), "--json", dsn=runs_dsn)
    assert result.returncode == 0, result.stderr
    job = result.json()
    assert job["id"] == finished["failed"]
    assert job["task"] == "fail"
    assert job["status"] == "failed"
    assert job["attempts"] == 1
    assert "ValueError: boom" in job["error"]
    [attempt] = job["attempt_history"]
    assert attempt["attempt"] == 1
    assert attempt["outcome"] == "error"
    assert "ValueError: boom" in attempt["error"]
    assert attempt["worker_id"]

    done = run_cli("jobs", "show", str(finished["completed"]), "--json", dsn=runs_dsn).json()
    assert done["status"] == "completed"
    assert done["result"] == {"job_id": finished["completed"], "tag": None}
    assert [a["outcome"] for a in done["attempt_history"]] == ["completed"]

    text = run_cli("jobs", "show", str(finished["failed"]), dsn=runs_dsn)
    assert text.returncode == 0
    assert "ValueError: boom" in text.stdout


def test_jobs_retry_replays_a_failed_job_and_refuses_a_completed_one(
    runs_dsn: str, finished: dict[str, int]
) -> None:
    result = run_cli("jobs", "retry", str(finished["failed"]), "--json", dsn=runs_dsn)
    assert result.returncode == 0, result.stderr
    assert result.json() == {"id": finished["failed"], "status": "pending"}
    assert (
        scalar(
            runs_dsn, "SELECT status::text FROM pgqueue.jobs WHERE id = %s", (finished["failed"],)
        )
        == "pending"
    )

    refused = run_cli("jobs", "retry", str(finished["completed"]), dsn=runs_dsn)
    assert refused.returncode == 1
    _assert_one_error_line(refused, str(finished["completed"]), "completed")
    assert (
        scalar(
            runs_dsn,
            "SELECT status::text FROM pgqueue.jobs WHERE id = %s",
            (finished["completed"],),
        )
        == "completed"
    )

    # The replayed job runs again (and fails again: the task always raises).
    _run_worker_until_idle(runs_dsn)
    history = run_cli("jobs", "show", str(finished["failed"]), "--json", dsn=runs_dsn).json()
    # Terminal again; 'dead_letter' because the replay raised max_attempts to 2
    # (sql/functions.sql: retryable with max_attempts > 1 used up).
    assert history["status"] in ("failed", "dead_letter")
    assert [(a["attempt"], a["outcome"]) for a in history["attempt_history"]] == [
        (1, "error"),
        (2, "error"),
    ]


def test_jobs_cancel_cancels_a_pending_job_once(runs_dsn: str) -> None:
    job_id = _enqueue(runs_dsn, "record")
    result = run_cli("jobs", "cancel", str(job_id), dsn=runs_dsn)
    assert result.returncode == 0, result.stderr
    assert "cancelled" in result.stdout
    assert (
        scalar(runs_dsn, "SELECT status::text FROM pgqueue.jobs WHERE id = %s", (job_id,))
        == "cancelled"
    )

    again = run_cli("jobs", "cancel", str(job_id), "--json", dsn=runs_dsn)
    _assert_one_error_line(again, "cancel", str(job_id))


# -- queues ------------------------------------------------------------------------------


def test_queues_json_counts_jobs_per_state_and_pause_resume(
    runs_dsn: str, finished: dict[str, int]
) -> None:
    _enqueue(runs_dsn, "record", "--queue", "other")
    _enqueue(runs_dsn, "record", "--queue", "other")

    def stats() -> dict[str, tuple[bool, dict[str, int]]]:
        result = run_cli("queues", "--json", dsn=runs_dsn)
        assert result.returncode == 0, result.stderr
        return {q["queue"]: (q["paused"], q["counts"]) for q in result.json()}

    assert stats() == {
        "default": (False, {"completed": 1, "failed": 1}),
        "other": (False, {"pending": 2}),
    }

    paused = run_cli("queues", "pause", "other", dsn=runs_dsn)
    assert paused.returncode == 0, paused.stderr
    assert stats()["other"] == (True, {"pending": 2})
    assert stats()["default"][0] is False

    resumed = run_cli("queues", "resume", "other", "--json", dsn=runs_dsn)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.json() == {"queue": "other", "paused": False}
    assert stats()["other"] == (False, {"pending": 2})


def test_queues_limit_sets_shows_and_removes_a_rate_limit(runs_dsn: str) -> None:
    limited = run_cli("queues", "limit", "other", "10", "--per", "60", dsn=runs_dsn)
    assert limited.returncode == 0, limited.stderr
    assert "at most 10 jobs started per 60s" in limited.stdout

    listing = run_cli("queues", dsn=runs_dsn)
    assert listing.returncode == 0, listing.stderr
    assert "10/60s (0 used)" in listing.stdout
    result = run_cli("queues", "--json", dsn=runs_dsn)
    other = {q["queue"]: q for q in result.json()}["other"]
    assert (other["rate_limit"], other["rate_per"], other["rate_used"]) == (10, 60.0, 0)

    off = run_cli("queues", "limit", "other", "--off", "--json", dsn=runs_dsn)
    assert off.returncode == 0, off.stderr
    assert off.json() == {"queue": "other", "rate_limit": None, "rate_per": None}
    result = run_cli("queues", "--json", dsn=runs_dsn)
    assert {q["queue"]: q for q in result.json()}["other"]["rate_limit"] is None


# -- errors ------------------------------------------------------------------------------

UNREACHABLE = "postgresql://x@127.0.0.1:1/x"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        pytest.param(["enqueue", "no_such_task", "--app", APP], "no_such_task", id="unknown-task"),
        pytest.param(
            ["enqueue", "record", "--app", APP, "--args", "{not json"],
            "not valid JSON",
            id="invalid-args-json",
        ),
        pytest.param(
            ["enqueue", "record", "--app", APP, "--args", "[1, 2]"],
            "JSON object",
            id="args-not-an-object",
        ),
        pytest.param(
            ["enqueue", "slow", "--app", APP, "--args", "{}"],
            "seconds",
            id="missing-task-argument",
        ),
        pytest.param(
            ["enqueue", "record", "--app", APP, "--args", '{"nope": 1}'],
            "nope",
            id="unexpected-task-argument",
        ),
        pytest.param(
            ["--dsn", UNREACHABLE, "enqueue", "record", "--app", APP],
            "127.0.0.1",
            id="unreachable-database-enqueue",
        ),
        pytest.param(
            ["--dsn", UNREACHABLE, "jobs", "list"], "127.0.0.1", id="unreachable-database-list"
        ),
        pytest.param(["--dsn", "this is not a dsn", "jobs", "list"], "DSN", id="malformed-dsn"),
        pytest.param(["jobs", "show", "999999"], "999999", id="show-missing-job"),
        pytest.param(["jobs", "show", "999999", "--json"], "999999", id="show-missing-job-json"),
        pytest.param(["jobs", "cancel", "999999"], "999999", id="cancel-missing-job"),
        pytest.param(["jobs", "retry", "999999"], "999999", id="retry-missing-job"),
        pytest.param(["jobs", "list", "--status", "bogus"], "bogus", id="unknown-status"),
        pytest.param(["queues", "pause"], "NAME", id="pause-without-name"),
        pytest.param(["queues", "pause", "q", "5"], "takes no N", id="pause-with-stray-n"),
        pytest.param(["queues", "resume", "q", "--off"], "takes no N", id="resume-with-off"),
        pytest.param(["queues", "list", "q"], "no queue name", id="list-with-a-name"),
        pytest.param(["queues", "limit", "q"], "--off", id="limit-without-n"),
        pytest.param(["queues", "limit", "q", "0"], "rate limit", id="limit-zero"),
        pytest.param(["queues", "limit", "q", "5", "--per", "0"], "per", id="limit-zero-period"),
    ],
)
def test_cli_errors_exit_nonzero_with_one_line_and_write_nothing(
    runs_dsn: str, argv: list[str], expected: str
) -> None:
    result = run_cli(*argv, dsn=runs_dsn, timeout=60)
    _assert_one_error_line(result, expected)
    assert result.returncode == 1
    assert scalar(runs_dsn, "SELECT count(*) FROM pgqueue.jobs") == 0


def test_enqueue_on_an_unmigrated_database_says_to_run_migrate(empty_db_dsn: str) -> None:
    result = run_cli("enqueue", "record", "--app", APP, dsn=empty_db_dsn)
    _assert_one_error_line(result, "pgqueue migrate")


@pytest.mark.parametrize(
    "argv", [["jobs", "list"], ["jobs", "show", "1"], ["queues"]], ids=" ".join
)
def test_reports_on_an_unmigrated_database_say_to_run_migrate(
    empty_db_dsn: str, argv: list[str]
) -> None:
    _assert_one_error_line(run_cli(*argv, dsn=empty_db_dsn), "pgqueue migrate")


def test_enqueue_refuses_an_empty_queue_name(runs_dsn: str) -> None:
    result = run_cli("enqueue", "record", "--app", APP, "--queue", "", dsn=runs_dsn)
    _assert_one_error_line(result, "queue")
    # Refused, not silently sent to the task's default queue.
    assert scalar(runs_dsn, "SELECT count(*) FROM pgqueue.jobs") == 0


# -- migrate and demo --------------------------------------------------------------------


def test_migrate_json_installs_the_schema_once(empty_db_dsn: str) -> None:
    head = pgqueue.head_revision()
    first = run_cli("migrate", "--json", dsn=empty_db_dsn)
    assert first.returncode == 0, first.stderr
    assert first.json() == {"before": None, "after": head, "head": head}
    assert scalar(empty_db_dsn, "SELECT count(*) FROM pgqueue.jobs") == 0
    assert pgqueue.current_revision(empty_db_dsn) == head

    second = run_cli("migrate", "--json", dsn=empty_db_dsn)
    assert second.returncode == 0, second.stderr
    assert second.json() == {"before": head, "after": head, "head": head}

    # The installed schema works end to end through the CLI.
    enqueued = run_cli("enqueue", "record", "--app", APP, "--json", dsn=empty_db_dsn)
    assert enqueued.returncode == 0, enqueued.stderr


def test_migrate_on_an_unreachable_database_is_one_error_line() -> None:
    result = run_cli("--dsn", UNREACHABLE, "migrate", "--json", dsn=None)
    _assert_one_error_line(result, "127.0.0.1")


def test_demo_once_runs_the_example_jobs_to_the_end(db_dsn: str) -> None:
    result = run_cli("demo", "--once", dsn=db_dsn, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all 12 example jobs finished" in result.stdout
    # The demo's jobs really ran: one always fails, the flaky one needed two
    # attempts, everything else completed.
    states = dict(
        rows(
            db_dsn,
            "SELECT task, array_agg(DISTINCT status::text) FROM pgqueue.jobs "
            "WHERE queue = 'demo' GROUP BY task",
        )
    )
    assert states == {
        "resize_image": ["completed"],
        "send_email": ["completed"],
        "flaky": ["completed"],
        "always_fails": ["failed"],
    }
    assert scalar(db_dsn, "SELECT count(*) FROM pgqueue.jobs") == 12
    assert scalar(db_dsn, "SELECT attempts FROM pgqueue.jobs WHERE task = 'flaky'") == 2


def test_json_reports_are_valid_json_on_an_empty_database(db_dsn: str) -> None:
    for argv in (["jobs", "list", "--json"], ["queues", "--json"]):
        result = run_cli(*argv, dsn=db_dsn)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == []


# -- batches, progress, retention ------------------------------------------------------------


def test_batches_create_show_wait_and_list(runs_dsn: str) -> None:
    created = run_cli(
        "batches", "create", "record", "--app", APP, "--owner", "ann",
        "--items", '[{"tag": "a"}, {"tag": "b"}, {"tag": "c"}]', "--json", dsn=runs_dsn,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    batch = created.json()
    assert (batch["total"], batch["status"], batch["owner"]) == (3, "pending", "ann")
    assert batch["counts"]["pending"] == 3
    children = rows(
        runs_dsn, "SELECT owner, status::text FROM pgqueue.jobs WHERE batch_id = %s", [batch["id"]]
    )
    assert sorted(children) == [("ann", "pending")] * 3

    _run_worker_until_idle(runs_dsn)

    shown = run_cli("batches", "show", str(batch["id"]), "--wait", "--json", dsn=runs_dsn)
    assert shown.returncode == 0, shown.stderr
    final = shown.json()
    assert final["status"] == "completed"
    assert final["counts"]["completed"] == 3 and final["progress"] == 100

    listed = run_cli("batches", "list", "--status", "completed", "--json", dsn=runs_dsn)
    assert [b["id"] for b in listed.json()] == [batch["id"]]


def test_batches_create_with_one_bad_item_writes_nothing(runs_dsn: str) -> None:
    result = run_cli(
        "batches", "create", "record", "--app", APP,
        "--items", '[{"tag": "a"}, {"unknown": 1}]', dsn=runs_dsn,
    )  # fmt: skip
    _assert_one_error_line(result, "item 1", "nothing was enqueued")
    assert scalar(runs_dsn, "SELECT count(*) FROM pgqueue.batches") == 0
    assert scalar(runs_dsn, "SELECT count(*) FROM pgqueue.jobs") == 0


def test_batches_pause_resume_cancel_and_refusals(runs_dsn: str) -> None:
    created = run_cli(
        "batches", "create", "record", "--app", APP, "--items", "[{}, {}]", "--json", dsn=runs_dsn
    )
    batch_id = str(created.json()["id"])
    paused = run_cli("batches", "pause", batch_id, "--json", dsn=runs_dsn)
    assert paused.json() == {"id": int(batch_id), "status": "paused"}
    _run_worker_until_idle(runs_dsn)  # paused children do not keep it waiting
    assert scalar(runs_dsn, "SELECT count(*) FROM pgqueue.jobs WHERE status = 'pending'") == 2
    resumed = run_cli("batches", "resume", batch_id, "--json", dsn=runs_dsn)
    assert resumed.json()["status"] == "pending"
    cancelled = run_cli("batches", "cancel", batch_id, "--json", dsn=runs_dsn)
    assert cancelled.json()["status"] == "cancelled"
    assert scalar(runs_dsn, "SELECT count(*) FROM pgqueue.jobs WHERE status = 'cancelled'") == 2
    _assert_one_error_line(run_cli("batches", "cancel", batch_id, dsn=runs_dsn), "cancelled")
    _assert_one_error_line(run_cli("batches", "pause", "999", dsn=runs_dsn), "does not exist")


def test_jobs_show_wait_and_progress_history(runs_dsn: str) -> None:
    job_id = _enqueue(runs_dsn, "steps", "--args", '{"count": 3}')
    _run_worker_until_idle(runs_dsn)
    shown = run_cli("jobs", "show", str(job_id), "--wait", "--json", dsn=runs_dsn)
    assert shown.returncode == 0, shown.stderr
    assert shown.json()["status"] == "completed"
    history = run_cli("jobs", "progress", str(job_id), "--json", dsn=runs_dsn)
    assert history.returncode == 0, history.stderr
    entries = history.json()
    assert [(e["pct"], e["message"]) for e in entries] == [
        (33, "step 1/3"),
        (67, "step 2/3"),
        (100, "step 3/3"),
    ]
    assert [e["id"] for e in entries] == sorted(e["id"] for e in entries)
    assert all(0 <= e["pct"] <= 100 and e["job_id"] == job_id for e in entries)
    page = run_cli(
        "jobs", "progress", str(job_id), "--after", str(entries[0]["id"]), "--json", dsn=runs_dsn
    )
    assert [e["id"] for e in page.json()] == [e["id"] for e in entries[1:]]


def test_jobs_show_wait_exits_nonzero_for_a_failed_job(
    finished: dict[str, int], runs_dsn: str
) -> None:
    result = run_cli("jobs", "show", str(finished["failed"]), "--wait", dsn=runs_dsn)
    assert result.returncode == 1
    assert result.stderr_lines[-1] == f"pgqueue: error: job {finished['failed']} ended failed"


def test_prune_deletes_old_finished_jobs_only(finished: dict[str, int], runs_dsn: str) -> None:
    pending = _enqueue(runs_dsn, "record")
    kept = run_cli("prune", "--json", dsn=runs_dsn)  # default ages: nothing is old enough
    assert kept.json() == {"deleted": 0}
    pruned = run_cli("prune", "--completed-after", "0", "--json", dsn=runs_dsn)
    assert pruned.json() == {"deleted": 1}  # the failed job is kept longer
    remaining = dict(rows(runs_dsn, "SELECT id, status::text FROM pgqueue.jobs"))
    assert remaining == {finished["failed"]: "failed", pending: "pending"}


# -- unique jobs and concurrency keys ----------------------------------------------------------


def test_enqueue_with_a_dedupe_key_returns_the_existing_job(runs_dsn: str) -> None:
    first = _enqueue(runs_dsn, "record", "--dedupe-key", "report-7")
    again = _enqueue(runs_dsn, "record", "--dedupe-key", "report-7", "--dedupe-scope", "active")
    other = _enqueue(runs_dsn, "record", "--dedupe-key", "report-8", "--dedupe-scope", "60")
    assert again == first and other != first
    assert scalar(runs_dsn, "SELECT count(*) FROM pgqueue.jobs") == 2
    bad = run_cli(
        "enqueue", "record", "--app", APP, "--dedupe-key", "k", "--dedupe-scope", "soon",
        dsn=runs_dsn,
    )  # fmt: skip
    _assert_one_error_line(bad, "--dedupe-scope")
    assert scalar(runs_dsn, "SELECT count(*) FROM pgqueue.jobs") == 2


def test_enqueue_with_a_concurrency_key_stores_key_and_limit(runs_dsn: str) -> None:
    job_id = _enqueue(
        runs_dsn, "record", "--concurrency-key", "customer-1", "--concurrency-limit", "2"
    )
    assert rows(
        runs_dsn,
        "SELECT concurrency_key, concurrency_limit FROM pgqueue.jobs WHERE id = %s",
        [job_id],
    ) == [("customer-1", 2)]
