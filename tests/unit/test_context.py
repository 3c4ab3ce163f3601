"""pgqueue.JobContext: progress reports, coalescing and stop requests (no database)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

import pgqueue


def make_ctx(**overrides: Any) -> pgqueue.JobContext:
    values: dict[str, Any] = {
        "job_id": 42,
        "attempt": 1,
        "max_attempts": 3,
        "task_name": "resize",
        "queue": "images",
        "args": {"image_id": 7},
    }
    values.update(overrides)
    return pgqueue.JobContext(**values)


def test_context_exposes_the_lease_and_job() -> None:
    ctx = make_ctx()
    assert (ctx.job_id, ctx.attempt, ctx.max_attempts) == (42, 1, 3)
    assert (ctx.task_name, ctx.queue, ctx.args) == ("resize", "images", {"image_id": 7})
    assert "job_id=42" in repr(ctx) and "'resize'" in repr(ctx)


def test_is_last_attempt() -> None:
    assert make_ctx(attempt=1, max_attempts=3).is_last_attempt is False
    assert make_ctx(attempt=3, max_attempts=3).is_last_attempt is True
    assert make_ctx(attempt=1, max_attempts=1).is_last_attempt is True


@pytest.mark.parametrize("bad", [float("nan"), "50", None, [50], {"pct": 1}, complex(1, 0)])
def test_progress_rejects_nan_and_non_numbers(bad: Any) -> None:
    calls: list[pgqueue.JobContext] = []
    ctx = make_ctx(on_progress=calls.append)
    with pytest.raises(ValueError, match="progress must be a number"):
        ctx.progress(bad)
    assert ctx.take_progress() is None
    assert calls == []


@pytest.mark.parametrize(("pct", "expected"), [(0, 0.0), (30, 30.0), (99.5, 99.5), (100, 100.0)])
def test_progress_records_numbers(pct: float, expected: float) -> None:
    ctx = make_ctx()
    ctx.progress(pct)
    assert ctx.take_progress() == (expected, None)


def test_progress_out_of_range_is_left_to_the_database() -> None:
    """Clamping to 0..100 is the database's job (pgqueue.progress); the context
    keeps the number as given."""
    ctx = make_ctx()
    ctx.progress(150, "over")
    assert ctx.take_progress() == (150.0, "over")
    ctx.progress(-5)
    assert ctx.take_progress() == (-5.0, None)


def test_take_progress_coalesces_to_the_latest_report() -> None:
    ctx = make_ctx()
    assert ctx.take_progress() is None
    ctx.progress(10, "start")
    ctx.progress(20)
    ctx.progress(35, "resizing")
    assert ctx.take_progress() == (35.0, "resizing")
    assert ctx.take_progress() is None  # taken once
    ctx.progress(40)
    assert ctx.take_progress() == (40.0, None)  # message of a new report replaces the old


def test_progress_wakes_the_worker_once_per_unwritten_report() -> None:
    """Reports coalesce until the worker takes them: a chatty task does not
    wake the worker's loop (across threads) on every call."""
    calls: list[pgqueue.JobContext] = []
    ctx = make_ctx(on_progress=calls.append)
    ctx.progress(1)
    ctx.progress(2)
    assert calls == [ctx]
    assert ctx.take_progress() == (2.0, None)
    ctx.progress(3)
    assert calls == [ctx, ctx]


def test_progress_from_many_threads_keeps_a_consistent_pair() -> None:
    ctx = make_ctx()
    barrier = threading.Barrier(8)

    def report(n: int) -> None:
        barrier.wait()
        for _ in range(200):
            ctx.progress(n, f"thread {n}")
            ctx.take_progress()
        ctx.progress(n, f"thread {n}")

    threads = [threading.Thread(target=report, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    taken = ctx.take_progress()
    assert taken is not None
    pct, message = taken
    assert message == f"thread {int(pct)}"  # never the number of one and message of another


def test_request_stop_keeps_the_first_reason() -> None:
    ctx = make_ctx()
    assert ctx.should_stop is False
    assert ctx.stop_reason is None
    ctx.request_stop("cancelled")
    ctx.request_stop("shutdown")
    ctx.request_stop("timeout")
    assert ctx.should_stop is True
    assert ctx.stop_reason == "cancelled"


def test_stop_is_visible_across_threads() -> None:
    ctx = make_ctx()
    seen = threading.Event()

    def task() -> None:
        while not ctx.should_stop:
            seen.wait(0.005)
        seen.set()

    t = threading.Thread(target=task)
    t.start()
    ctx.request_stop("lost")
    t.join(timeout=5)
    assert seen.is_set() and not t.is_alive()
    assert ctx.stop_reason == "lost"
