"""Keyed and rate-limited drains (pgqueue only): whether a limit's capacity
is used, next to the plain drains of the main table.

- keyed: jobs of ``HOLD_MS`` each on one concurrency key at limit
  ``KEY_LIMIT``, drained by one ``pgqueue worker`` with more slots than the
  limit. The figure is the share of the time the key's slots were busy,
  from the first start to the last end: 1.0 means a freed slot was taken at
  once, while a key that advanced only at each poll would score far lower;
- rate-limited: no-op jobs on a queue limited to ``RATE_LIMIT`` starts per
  second. Each window starts ``RATE_LIMIT`` jobs at once as it opens; the
  figure is the rate of the starts after the first window, against the
  limit (the job count is a multiple of the limit, so the last window is full).

Each task body records when it started and ended (``_probe.held``).
"""

from __future__ import annotations

import asyncio
import glob
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

from .._queue import Queue
from ._app import HOLD_QUEUE, RATED_QUEUE, hold

HOLD_MS = 50
KEY_LIMIT = 2
RATE_LIMIT = 50
KEY_GOAL = 0.9


@dataclass(frozen=True)
class Sizes:
    keyed_jobs: int
    rated_jobs: int


FULL = Sizes(keyed_jobs=40, rated_jobs=200)
QUICK = Sizes(keyed_jobs=8, rated_jobs=100)


def _spans(out: str) -> list[tuple[float, float]]:
    spans: list[tuple[float, float]] = []
    for path in glob.glob(os.path.join(out, "held-*.txt")):
        with open(path) as f:
            for line in f:
                start, end = line.split()
                spans.append((float(start), float(end)))
    return spans


def _drain(dsn: str, queue_name: str, out: str, concurrency: int) -> None:
    command = [sys.executable, "-m", "pgqueue.cli", "worker"]
    command += ["--app", "pgqueue.bench._app:queue", "--queues", queue_name]
    command += ["--concurrency", str(concurrency), "--until-idle"]
    env = {**os.environ, "PGQUEUE_DSN": dsn, "PGQUEUE_BENCH_OUT": out}
    done = subprocess.run(command, env=env, capture_output=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"bench worker on {queue_name} failed ({done.returncode}): "
            f"{done.stderr.decode(errors='replace')[-2000:]}"
        )


def keyed_busy(spans: list[tuple[float, float]], limit: int) -> float:
    """Share of the key's slot time in use, from the first start to the last end."""
    first = min(start for start, _ in spans)
    last = max(end for _, end in spans)
    held = sum(end - start for start, end in spans)
    return held / (limit * max(last - first, 1e-6))


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The most spans running at the same moment (a key's limit, if it held)."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = most = 0
    for _, step in edges:  # at a tie an end (-1) sorts before a start: not overlapping
        running += step
        most = max(most, running)
    return most


def rate_after_first_window(starts: list[float], limit: int) -> float:
    """Starts per second after the first window's ``limit`` starts."""
    ordered = sorted(starts)
    return (len(ordered) - limit) / max(ordered[-1] - ordered[0], 1e-6)


async def measure(dsn: str, sizes: Sizes) -> dict[str, Any]:
    """Both drains in the (migrated, empty) database ``dsn``."""
    if sizes.rated_jobs % RATE_LIMIT or sizes.rated_jobs < 2 * RATE_LIMIT:
        raise ValueError(f"rated_jobs must be a multiple of {RATE_LIMIT}, at least two windows")
    queue = Queue(dsn)
    queue.task(queue=HOLD_QUEUE)(hold.fn)
    try:
        await queue.enqueue_many(
            "hold",
            [{"ms": HOLD_MS}] * sizes.keyed_jobs,
            queue=HOLD_QUEUE,
            concurrency_key="bench",
            concurrency_limit=KEY_LIMIT,
        )
        await queue.set_rate_limit(RATED_QUEUE, RATE_LIMIT, per=1.0)
        await queue.enqueue_many("hold", [{"ms": 0}] * sizes.rated_jobs, queue=RATED_QUEUE)
    finally:
        await queue.close()
    with tempfile.TemporaryDirectory(prefix="pgqueue-bench-") as out:
        await asyncio.to_thread(_drain, dsn, HOLD_QUEUE, out, 4 * KEY_LIMIT)
        keyed = _spans(out)
    with tempfile.TemporaryDirectory(prefix="pgqueue-bench-") as out:
        await asyncio.to_thread(_drain, dsn, RATED_QUEUE, out, 100)
        rated = _spans(out)
    drains = (("keyed", keyed, sizes.keyed_jobs), ("rated", rated, sizes.rated_jobs))
    for name, spans, jobs in drains:
        if len(spans) != jobs:
            raise RuntimeError(f"{name} drain: {jobs} jobs enqueued, {len(spans)} ran")
    at_once = most_at_once(keyed)
    if at_once > KEY_LIMIT:
        raise RuntimeError(f"the key ran {at_once} jobs at once, over {KEY_LIMIT}")
    rate = rate_after_first_window([start for start, _ in rated], RATE_LIMIT)
    return {
        "keyed": {
            "jobs": sizes.keyed_jobs,
            "hold_ms": HOLD_MS,
            "limit": KEY_LIMIT,
            "worker_concurrency": 4 * KEY_LIMIT,
            "slots_busy": keyed_busy(keyed, KEY_LIMIT),
            "most_at_once": at_once,
        },
        "rate_limited": {
            "jobs": sizes.rated_jobs,
            "limit_per_s": RATE_LIMIT,
            "jobs_per_s": rate,
            "of_limit": rate / RATE_LIMIT,
        },
    }
