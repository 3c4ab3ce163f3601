"""Concurrency keys across real worker processes: the task bodies record their
start and end (``acceptance_runs``), and no key ever has more bodies running
at once than its limit, while other keys and jobs without a key keep flowing."""

from __future__ import annotations

from datetime import datetime

import pgqueue

from .helpers import rows, wait_for_status

LIMITS = {"one": 1, "two": 2, "three": 3}
PER_KEY = 8
PLAIN = 12
SECONDS = 0.15


def _peak(spans: list[tuple[datetime, datetime]]) -> int:
    """The most spans open at one instant (an end at t closes before a start at t)."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak


def test_limit_never_exceeded_across_worker_processes(
    runs_dsn: str, procs, client: pgqueue.Queue
) -> None:
    # every worker is up before the jobs arrive, so they share them
    for i in range(3):
        procs.worker(runs_dsn, "--worker-id", f"w{i}", concurrency=6, name=f"w{i}")
    for key, limit in LIMITS.items():
        client.enqueue_many_sync(
            "slow",
            [{"seconds": SECONDS}] * PER_KEY,
            concurrency_key=key,
            concurrency_limit=limit,
        )
    client.enqueue_many_sync("slow", [{"seconds": SECONDS}] * PLAIN)

    total = PER_KEY * len(LIMITS) + PLAIN
    wait_for_status(runs_dsn, {"completed": total}, timeout=60)

    runs = rows(
        runs_dsn,
        "SELECT j.concurrency_key, r.started, r.ended, r.pid FROM acceptance_runs r"
        " JOIN pgqueue.jobs j ON j.id = r.job_id",
    )
    assert len(runs) == total
    assert all(ended is not None for _, _, ended, _ in runs)
    assert len({pid for *_, pid in runs}) > 1, "one worker process ran everything"
    for key, limit in LIMITS.items():
        spans = [(s, e) for k, s, e, _ in runs if k == key]
        assert len(spans) == PER_KEY
        assert _peak(spans) <= limit, (key, sorted(spans))
    # the key with limit 1 takes PER_KEY * SECONDS; everything else is done well before
    last_one_start = max(s for k, s, _, _ in runs if k == "one")
    plain_done = max(e for k, _, e, _ in runs if k is None)
    assert plain_done < last_one_start
    assert _peak([(s, e) for k, s, e, _ in runs if k == "three"]) >= 2
