"""Timing probe shared by every queue's bench worker (pgqueue and the peers).

The bench measures every queue the same way, inside its worker processes:

- drains: each process records when its first task body started, when its
  last one ended and how many ran, and writes them to
  ``$PGQUEUE_BENCH_OUT/<pid>.json`` at exit; jobs/s is the total count over
  (latest end - earliest start) across the processes, so process start-up
  and shutdown are excluded alike for all queues;
- sustained load: with ``$PGQUEUE_BENCH_MARK`` = M, every M-th task start
  is also recorded (``marks`` in the JSON), so throughput can be read per
  stretch of the run;
- held slots (keyed and rate-limited drains): a task that holds its slot
  records when it started and ended (:func:`held`), written to
  ``$PGQUEUE_BENCH_OUT/held-<pid>.txt`` at exit;
- latency: a task given ``sample`` appends ``sample wall-clock-time`` to
  ``$PGQUEUE_BENCH_OUT/stamps-<pid>.txt`` as its body starts; the bench
  compares it with the time it called enqueue (same machine, same clock).

Nothing here touches a database: the task bodies are no-ops apart from this
bookkeeping, which costs about a microsecond a job.
"""

from __future__ import annotations

import atexit
import json
import os
import time

_OUT = os.environ.get("PGQUEUE_BENCH_OUT")
_MARK = int(os.environ.get("PGQUEUE_BENCH_MARK") or 0)

_first: float | None = None
_last = 0.0
_count = 0
_marks: list[float] = []
_held: list[tuple[float, float]] = []


def job(sample: int | None = None) -> None:
    """Call at the start of every bench task body."""
    global _first, _last, _count
    now = time.time()
    if _first is None:
        _first = now
    _last = now
    _count += 1
    if _MARK and _count % _MARK == 0:
        _marks.append(now)
    if sample is not None and _OUT:
        with open(os.path.join(_OUT, f"stamps-{os.getpid()}.txt"), "a") as f:
            f.write(f"{sample} {now!r}\n")


def held(start: float, end: float) -> None:
    """Call at the end of a task body that held its slot from ``start``."""
    _held.append((start, end))


def _write() -> None:
    if _OUT and _held:
        with open(os.path.join(_OUT, f"held-{os.getpid()}.txt"), "w") as f:
            f.writelines(f"{start!r} {end!r}\n" for start, end in _held)
    if _OUT and _count:
        path = os.path.join(_OUT, f"{os.getpid()}.json")
        with open(path, "w") as f:
            json.dump({"first": _first, "last": _last, "count": _count, "marks": _marks}, f)


atexit.register(_write)
