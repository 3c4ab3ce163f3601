"""Shared pieces of the chaos scenarios: real worker processes, the recorded
task's bookkeeping, and the invariants every scenario must leave intact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg

import pgqueue

ROOT = Path(__file__).resolve().parents[2]

FAST = ("--heartbeat-interval", "0.3", "--stale-after", "1.5", "--rescue-interval", "0.5")
"""Worker flags for scenarios that need rescues within seconds."""


STOP_TIMEOUT = 20.0
"""Seconds a worker may take to exit after SIGTERM (its grace is at most 3 s)."""

_logs: dict[int, Path] = {}  # each started worker's log, by pid


def start_worker(dsn: str, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pgqueue.cli",
            "worker",
            "--app",
            "tests.chaos.app:queue",
            "--concurrency",
            "20",
            "--poll-interval",
            "0.2",
            "--heartbeat-interval",
            "1",
            "--stale-after",
            "5",
            *extra,
        ],
        cwd=ROOT,
        env={**os.environ, "PGQUEUE_DSN": dsn},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    _logs[worker.pid] = log
    return worker


def wait_started(worker: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    """Wait for the worker's "started" line, as a deploy waits for readiness."""
    deadline = time.monotonic() + timeout
    while " started: queues=" not in log.read_text(errors="replace"):
        if worker.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"worker did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


def counts(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        rows = conn.execute("SELECT status::text, count(*) FROM pgqueue.jobs GROUP BY 1").fetchall()
    return {status: n for status, n in rows}


def wait_all_completed(dsn: str, total: int, timeout: float, log: Path) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    seen: dict[str, int] = {}
    while time.monotonic() < deadline:
        try:
            seen = counts(dsn)
        except psycopg.OperationalError:
            seen = {}
        if seen.get("completed") == total:
            return seen
        time.sleep(0.2)
    raise AssertionError(
        f"jobs not all completed after {timeout}s: {seen}\n{log.read_text()[-4000:]}"
    )


def stop(worker: subprocess.Popen[bytes], timeout: float | None = None) -> int:
    """SIGTERM the worker and wait for it to exit; one that does not exit in
    time has every thread's stack dumped into its log (SIGUSR1), is killed,
    and the error shows where it was stuck."""
    if worker.poll() is None:
        sent = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        try:
            return worker.wait(timeout=STOP_TIMEOUT if timeout is None else timeout)
        except subprocess.TimeoutExpired:
            worker.send_signal(signal.SIGUSR1)
            time.sleep(1)
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
            log = _logs.get(worker.pid)
            tail = log.read_text(errors="replace")[-12_000:] if log else "(no log)"
            raise AssertionError(
                f"worker {worker.pid} did not exit within {time.monotonic() - sent:.0f}s"
                f" of SIGTERM; its log ends:\n{tail}"
            ) from None
    return worker.returncode


def enqueue(dsn: str, n: int, pause: float) -> None:
    q = pgqueue.Queue(dsn)
    q.task(name="tick", queue="chaos", max_attempts=5)(lambda ctx, n, pause=0.0: n)
    q.enqueue_many_sync("tick", [{"n": i, "pause": pause} for i in range(n)])


def prepare_recorded(dsn: str, total: int, pause: float) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE chaos_runs (job_id bigint, attempt int, pid int,"
            " started_at timestamptz, ended_at timestamptz, PRIMARY KEY (job_id, attempt))"
        )
    q = pgqueue.Queue(dsn)
    q.task(name="recorded", queue="chaos", max_attempts=10)(lambda ctx, n, pause=0.0: n)
    # Half the jobs are children of batches of 100, so every scenario also
    # checks that batch counters survive the faults (invariant 4).
    in_batches = total // 2
    for start in range(0, in_batches, 100):
        items = range(start, min(start + 100, in_batches))
        q.enqueue_batch_sync("recorded", [{"n": i, "pause": pause} for i in items])
    q.enqueue_many_sync("recorded", [{"n": i, "pause": pause} for i in range(in_batches, total)])


def check_invariants(dsn: str, total: int) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        by_status = dict(
            conn.execute("SELECT status::text, count(*) FROM pgqueue.jobs GROUP BY 1").fetchall()
        )
        over = conn.execute(
            "SELECT count(*) FROM pgqueue.jobs WHERE attempts > max_attempts"
        ).fetchone()
        # A later attempt's body may only start after the earlier body ended
        # (or its process was killed, leaving ended_at NULL).
        overlaps = conn.execute(
            """
            SELECT count(*) FROM chaos_runs a JOIN chaos_runs b
              ON a.job_id = b.job_id AND b.attempt > a.attempt
             WHERE a.ended_at IS NOT NULL AND b.started_at < a.ended_at
            """
        ).fetchone()
        unrun = conn.execute(
            "SELECT count(*) FROM pgqueue.jobs j WHERE status = 'completed'"
            " AND NOT EXISTS (SELECT 1 FROM chaos_runs r WHERE r.job_id = j.id"
            " AND r.attempt = j.attempts AND r.ended_at IS NOT NULL)"
        ).fetchone()
        lost = conn.execute(
            "SELECT count(*) FROM pgqueue.attempts WHERE outcome = 'lost'"
        ).fetchone()
        interrupted = conn.execute(
            "SELECT count(*) FROM pgqueue.attempts WHERE outcome = 'interrupted'"
        ).fetchone()
        # Batches whose counters differ from a recount of their children, and
        # finished batches that are not in a final state (or the reverse).
        miscounted = conn.execute(
            """
            SELECT count(*) FROM pgqueue.batches b,
                   LATERAL (SELECT count(*) FILTER (WHERE status = 'pending') AS pending,
                                   count(*) FILTER (WHERE status = 'running') AS running,
                                   count(*) FILTER (WHERE status = 'retrying') AS retrying,
                                   count(*) FILTER (WHERE status = 'completed') AS completed,
                                   count(*) AS total
                              FROM pgqueue.jobs j WHERE j.batch_id = b.id) AS r
             WHERE (b.pending, b.running, b.retrying, b.completed, b.total)
                   <> (r.pending, r.running, r.retrying, r.completed, r.total)
                OR (b.completed_at IS NOT NULL)
                   <> (r.pending + r.running + r.retrying = 0)
            """
        ).fetchone()
    report = {
        "jobs": total,
        **by_status,
        "attempts_over_max": over[0] if over else -1,
        "overlapping_bodies": overlaps[0] if overlaps else -1,
        "completed_without_a_finished_body": unrun[0] if unrun else -1,
        "rescued_attempts": lost[0] if lost else -1,
        "handed_back_attempts": interrupted[0] if interrupted else -1,
        "miscounted_batches": miscounted[0] if miscounted else -1,
    }
    print(f"\n[chaos] {report}")
    return report
