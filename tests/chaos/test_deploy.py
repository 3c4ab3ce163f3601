"""Deploys and load: rolling SIGTERM restarts lose nothing and leave nothing
running; more concurrent tasks than pool connections lose no outcome."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import psycopg

import pgqueue
from tests.chaos._scenario import (
    check_invariants,
    counts,
    prepare_recorded,
    start_worker,
    stop,
    wait_started,
)


def test_rolling_sigterm_deploy_loses_nothing(db_dsn: str, tmp_path: Path) -> None:
    """Three workers drain jobs while each is replaced in turn with SIGTERM, half
    of them with no grace at all (so running jobs are handed back)."""
    total = 3000
    # ~5 s of work at full capacity, longer than the restarts, so every
    # restart lands mid-drain.
    prepare_recorded(db_dsn, total, pause=0.1)
    logs = [tmp_path / f"worker{i}.log" for i in range(3)]

    def start(i: int) -> subprocess.Popen[bytes]:
        grace = "0" if i % 2 else "3"
        worker = start_worker(db_dsn, logs[i], "--shutdown-grace", grace)
        wait_started(worker, logs[i])
        return worker

    procs = [start(i) for i in range(3)]
    exits = []
    try:
        for round_ in range(6):
            time.sleep(0.8)
            if counts(db_dsn).get("completed", 0) >= total:
                break
            i = (round_ + 1) % 3  # the no-grace worker (1) goes first
            exits.append(stop(procs[i]))  # SIGTERM, wait for a clean exit
            procs[i] = start(i)
        deadline = time.monotonic() + 120
        while counts(db_dsn).get("completed", 0) < total and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        for proc in procs:
            exits.append(stop(proc))
    report = check_invariants(db_dsn, total)
    tail = "\n".join(log.read_text()[-1500:] for log in logs)
    assert len(exits) >= 4 and set(exits) == {0}, f"exit codes {exits}\n{tail}"
    assert report.get("completed") == total, f"{report}\n{tail}"
    assert report["attempts_over_max"] == 0
    assert report["overlapping_bodies"] == 0
    assert report["completed_without_a_finished_body"] == 0
    assert report["miscounted_batches"] == 0
    assert report["handed_back_attempts"] > 0, "no restart interrupted a job: grace 0 untested"
    assert "running" not in counts(db_dsn)


def test_more_concurrent_tasks_than_pool_connections_lose_no_outcome(
    db_dsn: str, tmp_path: Path
) -> None:
    total = 2000
    q = pgqueue.Queue(db_dsn)
    q.task(name="churn", queue="chaos", max_attempts=2)(lambda ctx, n: n)
    q.enqueue_many_sync("churn", [{"n": i} for i in range(total)])
    log = tmp_path / "worker.log"
    worker = start_worker(db_dsn, log, "--concurrency", "64")  # the pool has 4 connections
    try:
        deadline = time.monotonic() + 120
        while counts(db_dsn).get("completed", 0) < total and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        code = stop(worker)
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert counts(db_dsn) == {"completed": total}, text[-3000:]
    with psycopg.connect(db_dsn) as conn:
        outcomes = dict(
            conn.execute(
                "SELECT outcomes, count(*) FROM (SELECT job_id,"
                " string_agg(outcome, ',' ORDER BY attempt) AS outcomes"
                " FROM pgqueue.attempts GROUP BY job_id) per_job GROUP BY outcomes"
            ).fetchall()
        )
    assert outcomes == {"completed": total // 2, "error,completed": total // 2}
    for trouble in ("could not record", "PoolTimeout", "Traceback"):
        assert trouble not in text, text[-3000:]
