"""SIGKILL random workers while jobs drain: nothing is lost, attempts stay
within max_attempts, and no job's body ever ran under two live leases."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import psycopg
import pytest

from tests.chaos._scenario import (
    FAST,
    check_invariants,
    counts,
    prepare_recorded,
    start_worker,
    stop,
)


def _run(
    dsn: str, tmp_path: Path, *, total: int, workers: int, kills: int, every: float, pause: float
) -> None:
    prepare_recorded(dsn, total, pause=pause)
    logs = [tmp_path / f"worker{i}.log" for i in range(workers)]
    procs = [start_worker(dsn, logs[i], *FAST) for i in range(workers)]
    rng = random.Random(7)
    killed = 0
    try:
        while killed < kills and counts(dsn).get("completed", 0) < total:
            time.sleep(every)
            victim = rng.randrange(workers)
            os.killpg(procs[victim].pid, signal.SIGKILL)
            procs[victim].wait()
            killed += 1
            procs[victim] = start_worker(dsn, logs[victim], *FAST)
        deadline = time.monotonic() + 180
        while counts(dsn).get("completed", 0) < total and time.monotonic() < deadline:
            time.sleep(0.3)
    finally:
        for proc in procs:
            stop(proc)
    report = check_invariants(dsn, total)
    tail = "\n".join(log.read_text()[-1500:] for log in logs)
    assert killed >= 1, "no worker was killed: the scenario did not run"
    assert report.get("completed") == total, f"{report}\n{tail}"
    assert report["attempts_over_max"] == 0
    assert report["overlapping_bodies"] == 0
    assert report["completed_without_a_finished_body"] == 0
    assert report["miscounted_batches"] == 0
    assert "CheckViolation" not in tail and "violates check constraint" not in tail


def test_sigkill_random_workers_short(db_dsn: str, tmp_path: Path) -> None:
    """The short version run by `make test`: 3 workers, 3 kills."""
    # ~2.5 s of work at full capacity, so the kills land mid-drain.
    _run(db_dsn, tmp_path, total=1500, workers=3, kills=3, every=0.7, pause=0.1)


@pytest.mark.soak
@pytest.mark.timeout(1200)
def test_sigkill_random_workers_soak(db_dsn: str, tmp_path: Path) -> None:
    """20,000 jobs through 4 workers, one SIGKILLed every 2 s (make soak)."""
    _run(db_dsn, tmp_path, total=20_000, workers=4, kills=15, every=2.0, pause=0.002)


def test_stopped_then_resumed_worker_result_is_refused(db_dsn: str, tmp_path: Path) -> None:
    """A worker frozen with SIGSTOP past its lease is rescued; another worker
    re-runs the job; when the frozen one resumes, its late result is refused."""
    prepare_recorded(db_dsn, 1, pause=3.0)
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    a = start_worker(db_dsn, log_a, *FAST)
    b = None
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with psycopg.connect(db_dsn) as conn:
                row = conn.execute("SELECT count(*) FROM chaos_runs").fetchone()
            if row and row[0] == 1:
                break
            time.sleep(0.05)
        os.killpg(a.pid, signal.SIGSTOP)
        b = start_worker(db_dsn, log_b, *FAST)
        deadline = time.monotonic() + 30
        while counts(db_dsn).get("completed", 0) < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert counts(db_dsn).get("completed") == 1, log_b.read_text()[-3000:]
        query = "SELECT status::text, attempts, worker_id, completed_at, result FROM pgqueue.jobs"
        with psycopg.connect(db_dsn) as conn:
            before = conn.execute(query).fetchone()
        os.killpg(a.pid, signal.SIGCONT)
        time.sleep(4.0)  # a's body (3 s) finishes; nothing it reports may land
        with psycopg.connect(db_dsn) as conn:
            after = conn.execute(query).fetchone()
            runs = conn.execute("SELECT attempt, pid FROM chaos_runs ORDER BY attempt").fetchall()
        assert before is not None and before[0] == "completed" and before[1] == 2
        assert after == before, "the stale worker changed the job after resuming"
        assert [r[0] for r in runs] == [1, 2] and runs[0][1] == a.pid
        log = log_a.read_text()
        assert "lease lost" in log or "discarded" in log, log[-3000:]
    finally:
        os.killpg(a.pid, signal.SIGCONT)
        stop(a)
        if b is not None:
            stop(b)
