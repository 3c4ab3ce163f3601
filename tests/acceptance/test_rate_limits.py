"""Rate limits across real worker processes: three workers share one queue
limited to 5 jobs per second, and no one-second window ever holds more than
5 starts, whichever process made them."""

from __future__ import annotations

from datetime import datetime, timedelta

import pgqueue

from .helpers import rows, scalar, wait_for_status

LIMIT = 5
JOBS = 20


def _most_in_any_second(starts: list[datetime]) -> int:
    """The most starts in any half-open window [t, t + 1 s), t a start."""
    ordered = sorted(starts)
    return max(
        sum(1 for s in ordered[i:] if s < first + timedelta(seconds=1))
        for i, first in enumerate(ordered)
    )


def test_rate_limit_holds_across_worker_processes(
    runs_dsn: str, procs, client: pgqueue.Queue
) -> None:
    scalar(runs_dsn, "SELECT pgqueue.set_rate_limit('default', %s, interval '1 second')", (LIMIT,))
    for i in range(3):
        procs.worker(runs_dsn, "--worker-id", f"w{i}", concurrency=4, name=f"w{i}")
    client.enqueue_many_sync("record", [{}] * JOBS)
    wait_for_status(runs_dsn, {"completed": JOBS}, timeout=60)

    leased = [r[0] for r in rows(runs_dsn, "SELECT leased_at FROM pgqueue.jobs")]
    assert len(leased) == JOBS
    # the claims, by the database's clock: exact
    assert _most_in_any_second(leased) <= LIMIT, sorted(leased)
    # 20 jobs at 5 per second need at least three more windows after the first
    assert max(leased) - min(leased) >= timedelta(seconds=JOBS / LIMIT - 1.05)
    # every job ran once (which worker wins each window's claims is up to chance)
    assert scalar(runs_dsn, "SELECT count(DISTINCT job_id) FROM acceptance_runs") == JOBS
