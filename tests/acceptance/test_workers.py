"""Acceptance: real ``pgqueue worker`` processes against a real PostgreSQL.

Each test enqueues through ``client`` (a Queue with the app's tasks), runs
workers as subprocesses (``procs``) and judges the outcome from the database
only: ``pgqueue.jobs``, ``pgqueue.attempts`` and ``acceptance_runs`` (one row
per task body that started; ``ended`` set when it ran to completion).
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections import Counter

import psycopg
import pytest

import pgqueue

from .helpers import (
    attempt_outcomes,
    cli_env,
    rows,
    run_cli,
    scalar,
    status_counts,
    wait_for_status,
    wait_until,
)

pytestmark = pytest.mark.timeout(120)


def _started_bodies(dsn: str) -> dict[int, int]:
    """Per job id, how many of its task bodies started."""
    return dict(rows(dsn, "SELECT job_id, count(*) FROM acceptance_runs GROUP BY job_id"))


def _finished_bodies(dsn: str) -> dict[int, int]:
    """Per job id, how many of its task bodies ran to completion."""
    return dict(
        rows(
            dsn,
            "SELECT job_id, count(*) FROM acceptance_runs WHERE ended IS NOT NULL GROUP BY job_id",
        )
    )


def _jobs(dsn: str) -> dict[int, tuple[str, int, int]]:
    """Per job id: (status, attempts, max_attempts)."""
    return {
        job_id: (status, attempts, max_attempts)
        for job_id, status, attempts, max_attempts in rows(
            dsn, "SELECT id, status::text, attempts, max_attempts FROM pgqueue.jobs"
        )
    }


def test_each_job_runs_exactly_once_across_worker_processes(
    runs_dsn: str, procs, client: pgqueue.Queue
) -> None:
    total = 1500
    workers = [
        procs.worker(
            runs_dsn, "--worker-id", f"w{i}", concurrency=20, name=f"w{i}", wait_started=False
        )
        for i in range(1, 4)
    ]
    pid_of = {worker.name: worker.pid for worker in workers}
    for worker in workers:
        worker.wait_for_log(" started: queues=")

    ids = client.enqueue_many_sync("record", [{"tag": f"job-{i}"} for i in range(total)])
    assert len(set(ids)) == total

    wait_for_status(runs_dsn, {"completed": total}, timeout=90)
    for worker in workers:
        assert worker.poll() is None, f"{worker.name} died while working"

    # The task body of every job ran exactly once, across all three processes.
    runs = rows(runs_dsn, "SELECT job_id, attempt, pid FROM acceptance_runs")
    per_job = Counter(job_id for job_id, _, _ in runs)
    duplicates = {job_id: n for job_id, n in per_job.items() if n != 1}
    assert duplicates == {}
    assert set(per_job) == set(ids)
    assert {attempt for _, attempt, _ in runs} == {1}

    # Every job completed on its first attempt, with one 'completed' attempt row
    # written by the process that actually ran the body.
    assert {v for v in _jobs(runs_dsn).values()} == {("completed", 1, 1)}
    history = rows(runs_dsn, "SELECT job_id, attempt, worker_id, outcome FROM pgqueue.attempts")
    assert len(history) == total
    assert {(attempt, outcome) for _, attempt, _, outcome in history} == {(1, "completed")}
    body_pid = {job_id: pid for job_id, _, pid in runs}
    wrong_worker = [
        (job_id, worker_id)
        for job_id, _, worker_id, _ in history
        if pid_of.get(worker_id.rsplit(":", 1)[0]) != body_pid[job_id]  # id = prefix:random
    ]
    assert wrong_worker == []

    # The load really was shared (else this test would not test concurrency).
    assert len({pid for _, _, pid in runs}) >= 2
    assert {pid for _, _, pid in runs} <= {w.pid for w in workers}

    for worker in workers:
        worker.send(signal.SIGTERM)
    for worker in workers:
        assert worker.wait(timeout=30) == 0


def test_sigterm_mid_run_leaves_no_job_running(runs_dsn: str, procs, client: pgqueue.Queue) -> None:
    # Four long jobs first (priority 10), two sync (threads) and two async: they
    # fill the worker's four slots. On a later attempt they take 0.2 s, so the
    # re-run below is quick. Short jobs of both kinds queue behind them.
    long_args = {"seconds": 30, "then_seconds": 0.2}
    sync_ids = client.enqueue_many_sync("slow_sync", [long_args] * 2, priority=10)
    async_ids = client.enqueue_many_sync("slow", [long_args] * 2, priority=10)
    short_ids = client.enqueue_many_sync("slow", [{"seconds": 0.2}] * 4)
    fast_ids = client.enqueue_many_sync("record", [{}] * 10)
    long_ids = set(sync_ids + async_ids)
    all_ids = long_ids | set(short_ids + fast_ids)

    worker = procs.worker(runs_dsn, "--shutdown-grace", "1", concurrency=4)
    running = wait_until(
        lambda: len(_started_bodies(runs_dsn)) == 4 and set(_started_bodies(runs_dsn)),
        timeout=30,
        what="the four long jobs to start",
    )
    assert running == long_ids
    assert status_counts(runs_dsn) == {"running": 4, "pending": 14}

    worker.send(signal.SIGTERM)
    try:
        code = worker.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail("the worker did not exit within 15 s of SIGTERM (shutdown grace 1 s)")
    assert code == 0

    # Nothing is left running: the interrupted jobs were handed back.
    jobs = _jobs(runs_dsn)
    assert {job_id for job_id, (status, _, _) in jobs.items() if status != "pending"} == set()
    outcomes = attempt_outcomes(runs_dsn)
    assert outcomes == {job_id: ["interrupted"] for job_id in running}
    for job_id in running:
        _, attempts, max_attempts = jobs[job_id]
        # Handed back without being charged: the full budget (1 attempt) remains.
        assert attempts == 1
        assert max_attempts - attempts == 1
    for job_id in all_ids - running:
        assert jobs[job_id] == ("pending", 0, 1)
    assert _finished_bodies(runs_dsn) == {}, "a 30 s body cannot have finished"

    # A new worker completes everything, the interrupted jobs on their second attempt.
    rerun = procs.worker(runs_dsn, "--until-idle", concurrency=4, wait_started=False)
    assert rerun.wait(timeout=60) == 0
    assert status_counts(runs_dsn) == {"completed": len(all_ids)}
    outcomes = attempt_outcomes(runs_dsn)
    for job_id in all_ids:
        expected = ["interrupted", "completed"] if job_id in running else ["completed"]
        assert outcomes[job_id] == expected, job_id
    # Each body ran to completion exactly once; only the long ones started twice.
    assert _finished_bodies(runs_dsn) == dict.fromkeys(all_ids, 1)
    started = _started_bodies(runs_dsn)
    assert {job_id: started[job_id] for job_id in all_ids - long_ids} == dict.fromkeys(
        all_ids - long_ids, 1
    )


def test_sigterm_lets_short_jobs_finish_within_grace(
    runs_dsn: str, procs, client: pgqueue.Queue
) -> None:
    sync_ids = client.enqueue_many_sync("slow_sync", [{"seconds": 2}] * 2)
    async_ids = client.enqueue_many_sync("slow", [{"seconds": 2}] * 6)
    worker = procs.worker(runs_dsn, "--shutdown-grace", "10", concurrency=4)
    wait_until(lambda: len(_started_bodies(runs_dsn)) >= 4, timeout=30, what="four jobs to start")
    worker.send(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0

    started = set(_started_bodies(runs_dsn))
    assert len(started) >= 4
    assert set(sync_ids) <= started
    jobs = _jobs(runs_dsn)
    # Every job that was running at SIGTERM finished within the grace period...
    assert {job_id: jobs[job_id] for job_id in started} == dict.fromkeys(
        started, ("completed", 1, 1)
    )
    assert _finished_bodies(runs_dsn) == dict.fromkeys(started, 1)
    assert attempt_outcomes(runs_dsn) == {job_id: ["completed"] for job_id in started}
    # ...and nothing new was claimed after it.
    rest = set(sync_ids + async_ids) - started
    assert {job_id: jobs[job_id] for job_id in rest} == dict.fromkeys(rest, ("pending", 0, 1))


def test_sigkilled_worker_jobs_are_rescued_and_completed_by_another(
    runs_dsn: str, procs, client: pgqueue.Queue
) -> None:
    # Worker A gets four 3 s jobs; the rescued re-runs take 0.5 s.
    ids = client.enqueue_many_sync(
        "slow", [{"seconds": 3, "then_seconds": 0.5}] * 6, max_attempts=2
    )
    worker_a = procs.worker(
        runs_dsn, "--worker-id", "A", concurrency=4, name="worker_a", quick_rescue=True
    )
    held = wait_until(
        lambda: len(_started_bodies(runs_dsn)) == 4 and set(_started_bodies(runs_dsn)),
        timeout=30,
        what="worker A to start four jobs",
    )
    worker_a.kill()  # SIGKILL: no handing back, no outcome written
    assert worker_a.poll() == -signal.SIGKILL
    assert status_counts(runs_dsn) == {"running": 4, "pending": 2}

    worker_b = procs.worker(
        runs_dsn, "--worker-id", "B", concurrency=4, name="worker_b", quick_rescue=True
    )
    # B's own rescuer must notice the stale leases (stale_after 2 s, a rescue
    # pass every ~1 s) and B must then run them: well within 30 s.
    wait_for_status(runs_dsn, {"completed": 6}, timeout=30)
    assert worker_b.poll() is None

    jobs = _jobs(runs_dsn)
    outcomes = attempt_outcomes(runs_dsn)
    for job_id in ids:
        if job_id in held:
            assert outcomes[job_id] == ["lost", "completed"], job_id
            assert jobs[job_id] == ("completed", 2, 2)
        else:
            assert outcomes[job_id] == ["completed"], job_id
            assert jobs[job_id] == ("completed", 1, 2)
    # No body ran to completion twice; the killed attempts never finished.
    assert _finished_bodies(runs_dsn) == dict.fromkeys(ids, 1)
    killed_runs = rows(
        runs_dsn,
        "SELECT job_id, attempt, pid, ended FROM acceptance_runs WHERE pid = %s",
        (worker_a.pid,),
    )
    assert sorted((job_id, attempt, ended) for job_id, attempt, _, ended in killed_runs) == sorted(
        (job_id, 1, None) for job_id in held
    )
    by_worker = rows(
        runs_dsn,
        "SELECT outcome, array_agg(job_id ORDER BY job_id),"
        " array_agg(DISTINCT split_part(worker_id, ':', 1)) "  # id = prefix:random
        "FROM pgqueue.attempts GROUP BY outcome",
    )
    assert {outcome: (set(job_ids), workers) for outcome, job_ids, workers in by_worker} == {
        "lost": (held, ["A"]),
        "completed": (set(ids), ["B"]),
    }


def test_job_that_kills_its_worker_ends_zombie_and_the_rest_complete(
    runs_dsn: str, procs, client: pgqueue.Queue
) -> None:
    crash_id = client.enqueue_sync("crash", {})  # max_attempts 1, queue "crash"
    record_ids = client.enqueue_many_sync("record", [{}] * 5)
    worker_a = procs.worker(
        runs_dsn, "--queues", "crash", "--worker-id", "crasher", concurrency=1,
        name="worker_a", quick_rescue=True,
    )  # fmt: skip
    assert worker_a.wait(timeout=30) == 1  # os._exit(1) inside the task
    assert status_counts(runs_dsn) == {"running": 1, "pending": 5}

    # Worker B does not serve the crash queue, but its rescuer covers every queue.
    procs.worker(runs_dsn, "--queues", "default", concurrency=2, name="worker_b", quick_rescue=True)
    wait_for_status(runs_dsn, {"completed": 5, "zombie": 1}, timeout=30)
    jobs = _jobs(runs_dsn)
    assert jobs[crash_id] == ("zombie", 1, 1)
    assert attempt_outcomes(runs_dsn) == {
        crash_id: ["lost"],
        **{job_id: ["completed"] for job_id in record_ids},
    }
    error = scalar(runs_dsn, "SELECT error FROM pgqueue.jobs WHERE id = %s", (crash_id,))
    assert "crasher" in error  # names the vanished worker
    assert _started_bodies(runs_dsn) == {crash_id: 1, **dict.fromkeys(record_ids, 1)}


@pytest.mark.parametrize(
    ("app_path", "expected"),
    [
        ("tests.acceptance.nonexistent:queue", "ModuleNotFoundError"),
        ("tests.acceptance.broken_app:queue", "RuntimeError: broken on purpose"),
        ("tests.acceptance.app:build_queue", "is not a pgqueue.Queue"),
    ],
)
def test_worker_exits_nonzero_when_app_import_fails(
    db_dsn: str, app_path: str, expected: str
) -> None:
    try:
        result = run_cli("worker", "--app", app_path, dsn=db_dsn, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("the worker kept running (or hung) although its app cannot be loaded")
    assert result.returncode == 1
    assert len(result.stderr_lines) == 1, result.stderr
    line = result.stderr_lines[0]
    assert line.startswith("pgqueue: error: ")
    assert expected in line
    assert app_path.split(":")[0] in line or "is not a pgqueue.Queue" in line
    assert result.stdout == ""


def test_sigterm_with_an_uncooperative_sync_task_does_not_outlive_the_grace(
    runs_dsn: str, procs, client: pgqueue.Queue
) -> None:
    job_id = client.enqueue_sync("slow_sync", {"seconds": 20, "cooperative": False})
    worker = procs.worker(runs_dsn, "--shutdown-grace", "1", concurrency=2)
    wait_until(lambda: _started_bodies(runs_dsn), timeout=30, what="the job to start")
    worker.send(signal.SIGTERM)
    wait_for_status(runs_dsn, {"pending": 1}, timeout=15)  # handed back: this part works
    assert attempt_outcomes(runs_dsn) == {job_id: ["interrupted"]}
    try:
        worker.wait(timeout=8)
    except subprocess.TimeoutExpired:
        pytest.fail(
            "the worker was still running 8 s after SIGTERM with --shutdown-grace 1, "
            "its task body still going although the job was handed back"
        )
    # Once the process is gone, the handed-back body cannot have finished.
    assert _finished_bodies(runs_dsn) == {}


def test_worker_started_while_the_database_is_down_connects_when_it_is_back(
    runs_dsn: str, procs, client: pgqueue.Queue, db_proxy
) -> None:
    job_id = client.enqueue_sync("record", {})
    db_proxy.down()
    worker = procs.worker(db_proxy.dsn(runs_dsn), concurrency=2, wait_started=False)
    # Bring the database back once the worker has tried and failed to connect
    # (the pool logs the refusal; should it stop logging it, wait 10 s instead).
    with contextlib.suppress(AssertionError):
        wait_until(
            lambda: worker.poll() is not None or "Connection refused" in worker.log(),
            timeout=10,
        )
    db_proxy.up()
    wait_until(
        lambda: worker.poll() is not None or status_counts(runs_dsn) == {"completed": 1},
        timeout=15,
        what="the worker to connect and run the job",
    )
    assert worker.poll() is None, "the worker gave up although the database is back"
    assert attempt_outcomes(runs_dsn) == {job_id: ["completed"]}


def test_sigterm_during_a_database_outage_still_exits_promptly(
    runs_dsn: str, procs, client: pgqueue.Queue, db_proxy
) -> None:
    """A worker whose database has vanished must still stop when told: it may
    not hang in its reconnect loop. Its jobs are rescued once the database is back."""
    job_id = client.enqueue_sync("slow", {"seconds": 30, "then_seconds": 0.1})
    worker = procs.worker(db_proxy.dsn(runs_dsn), "--shutdown-grace", "1")
    wait_until(
        lambda: status_counts(runs_dsn).get("running") == 1,
        timeout=15,
        what="the slow job to start",
    )
    db_proxy.down()
    time.sleep(1.0)  # the worker notices: its calls start failing
    worker.send(signal.SIGTERM)
    started = time.monotonic()
    code = worker.wait(timeout=60)
    took = time.monotonic() - started
    assert took < 25, f"shutdown during the outage took {took:.0f}s\n{worker.log()}"
    assert code == 0, worker.log()
    # The hand-back could not be written: the lease stays until it is rescued.
    with psycopg.connect(runs_dsn) as conn:
        row = conn.execute(
            "SELECT status::text FROM pgqueue.jobs WHERE id = %s", (job_id,)
        ).fetchone()
    assert row is not None and row[0] in ("running", "pending")


def test_a_leaking_job_fails_its_attempts_and_ends_dead_letter(
    runs_dsn: str, procs, client: pgqueue.Queue
) -> None:
    """--max-memory: the worker over its limit fails the running attempt
    (charged, like an OOM kill), exits 1 to be restarted, and the poison job
    ends dead_letter after its attempts instead of taking down every worker."""
    leak_id = client.enqueue_sync("leak", {})  # max_attempts 2, queue "crash"
    for attempt in (1, 2):
        worker = procs.worker(
            runs_dsn, "--queues", "crash", "--max-memory", "300", concurrency=1,
            name=f"worker{attempt}",
        )  # fmt: skip
        assert worker.wait(timeout=60) == 1
        assert "exceeded its memory limit of 300 MiB" in worker.log()
        # the exit names the worker's limit; only the attempt's error blames the attempt
        last = worker.log().strip().splitlines()[-1]
        assert last.startswith("pgqueue: error: worker ") and "while" not in last
    jobs = _jobs(runs_dsn)
    assert jobs[leak_id] == ("dead_letter", 2, 2)
    outcomes = attempt_outcomes(runs_dsn)
    assert outcomes == {leak_id: ["error", "error"]}
    error = scalar(runs_dsn, "SELECT error FROM pgqueue.jobs WHERE id = %s", (leak_id,))
    assert "exceeded its memory limit of 300 MiB" in error
    assert error.endswith("while this attempt ran")
    # nothing left for a fresh worker: it goes idle and exits cleanly
    idle = procs.worker(runs_dsn, "--queues", "crash", "--until-idle", name="idle")
    assert idle.wait(timeout=30) == 0


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_worker_runs_jobs_on_the_event_loop_it_was_given(
    runs_dsn: str, procs, client: pgqueue.Queue, loop: str
) -> None:
    """``--loop`` picks the worker's event loop (uvloop is what ``auto`` picks
    where it is installed); async bodies, sync bodies in threads, their
    progress and their results work the same on both."""
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    async_ids = client.enqueue_many_sync("record", [{"tag": f"a{i}"} for i in range(20)])
    sync_ids = client.enqueue_many_sync("slow_sync", [{"seconds": 0.05}] * 4)
    step_ids = client.enqueue_many_sync("steps", [{"count": 3, "pause": 0.05}] * 2)
    worker = procs.worker(runs_dsn, "--loop", loop, "--until-idle", concurrency=8)
    assert worker.wait(timeout=60) == 0
    assert f"concurrency=8 loop={loop}" in worker.log()
    jobs = _jobs(runs_dsn)
    assert jobs == dict.fromkeys(async_ids + sync_ids + step_ids, ("completed", 1, 1))
    # the last progress report of each job is written before its outcome
    last_steps = rows(
        runs_dsn,
        "SELECT job_id, message FROM pgqueue.progress_history WHERE pct = 100 ORDER BY job_id",
    )
    assert last_steps == [(job_id, "step 3/3") for job_id in sorted(step_ids)]
    assert _finished_bodies(runs_dsn) == dict.fromkeys(async_ids + sync_ids, 1)
    results = dict(rows(runs_dsn, "SELECT id, result FROM pgqueue.jobs"))
    assert {results[i]["tag"] for i in async_ids} == {f"a{i}" for i in range(20)}
    assert {results[i] for i in sync_ids} == {"slept 0.05"}


def test_worker_refuses_an_unknown_event_loop_in_the_environment(db_dsn: str) -> None:
    env = cli_env(db_dsn, PGQUEUE_LOOP="trio")
    result = run_cli("worker", "--app", "tests.acceptance.app:queue", dsn=db_dsn, env=env)
    assert result.returncode == 1
    assert result.stderr_lines == [
        "pgqueue: error: --loop (or PGQUEUE_LOOP) must be one of auto, uvloop, asyncio, not 'trio'"
    ]
