"""A long transaction holds back the xmin horizon during a drain: dead rows
cannot be cleaned, so throughput degrades. It must keep flowing and recover
once the transaction ends. Reports its figures (make soak)."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest

import pgqueue
from tests.chaos._scenario import counts, start_worker, stop


def _completed(dsn: str) -> int:
    return counts(dsn).get("completed", 0)


def _rate(dsn: str, seconds: float) -> float:
    before, started = _completed(dsn), time.monotonic()
    time.sleep(seconds)
    return (_completed(dsn) - before) / (time.monotonic() - started)


@pytest.mark.soak
@pytest.mark.timeout(900)
def test_drain_survives_a_transaction_holding_back_xmin(db_dsn: str, tmp_path: Path) -> None:
    total = 300_000  # enough that every measuring window has work at ~10k jobs/s
    q = pgqueue.Queue(db_dsn)
    q.task(name="tick", queue="chaos", max_attempts=5)(lambda ctx, n, pause=0.0: n)
    for offset in range(0, total, 10_000):
        q.enqueue_many_sync("tick", [{"n": i} for i in range(offset, offset + 10_000)])
    log = tmp_path / "worker.log"
    worker = start_worker(db_dsn, log, "--concurrency", "100")
    try:
        time.sleep(2)  # warm up
        before = _rate(db_dsn, 3)
        with psycopg.connect(db_dsn) as holder:
            holder.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            holder.execute("SELECT count(*) FROM pgqueue.jobs")  # takes the snapshot
            during = _rate(db_dsn, 10)
            holder.rollback()
        after = _rate(db_dsn, 4)
        deadline = time.monotonic() + 600
        while _completed(db_dsn) < total and time.monotonic() < deadline:
            time.sleep(1)
    finally:
        code = stop(worker)
    figures = {
        "before (jobs/s)": round(before),
        "during a held snapshot (jobs/s)": round(during),
        "after it ends (jobs/s)": round(after),
        "during / before": round(during / before, 2),
        "after / before": round(after / before, 2),
    }
    print(f"\n[chaos xmin] {figures}")
    assert code == 0, log.read_text()[-3000:]
    assert counts(db_dsn) == {"completed": total}
    assert during > 0.1 * before, f"the drain nearly stopped under a held snapshot: {figures}"
    assert after > 0.5 * before, f"throughput did not recover: {figures}"
