"""Prometheus exposition (text format 0.0.4), written by hand: a handful of
families, no global registry to share between app instances.

Where each number comes from, so a scrape never scans the jobs table:

- gauges of unfinished jobs and the oldest waiting age: one query over the
  unfinished rows only (the partial claim index holds pending and retrying,
  the running index holds running), cached for ``metrics_cache`` seconds so
  many scrapers cost one query;
- finished jobs and retries: counters since this process started, fed by the
  ``pgqueue_job`` notifications the API already listens to (use ``rate()``).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterable
from typing import Any

from ._events import Broadcaster
from ._reads import Reads

UNFINISHED = ("pending", "retrying", "running")


class GaugeCache:
    """The last ``queue_gauges()`` result, reused for ``ttl`` seconds; one
    query at a time however many scrapes arrive together."""

    def __init__(self, reads: Reads, ttl: float) -> None:
        self._reads = reads
        self._ttl = ttl
        self._rows: list[dict[str, Any]] = []
        self._at = -math.inf
        self._lock = asyncio.Lock()

    def invalidate(self) -> None:
        self._at = -math.inf

    async def rows(self) -> list[dict[str, Any]]:
        async with self._lock:
            if time.monotonic() - self._at > self._ttl:
                self._rows = await self._reads.queue_gauges()
                self._at = time.monotonic()
            return self._rows


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: str) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return "{" + inner + "}"


class _Family:
    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        self.name = name

    def add(self, value: float, **labels: str) -> None:
        self.lines.append(f"{self.name}{_labels(**labels)} {_number(value)}")


def _number(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def render(
    rows: Iterable[dict[str, Any]], broadcaster: Broadcaster, extra_queues: Iterable[str] = ()
) -> str:
    """The exposition text for ``/metrics``."""
    by_queue = {r["queue"]: r for r in rows}
    queues = sorted(set(by_queue) | set(extra_queues) | broadcaster.queues_seen)

    jobs = _Family("pgqueue_jobs", "gauge", "Unfinished jobs by queue and state.")
    oldest = _Family(
        "pgqueue_queue_oldest_waiting_seconds",
        "gauge",
        "Age of the oldest job that is due and not yet claimed (0 when none).",
    )
    paused = _Family("pgqueue_queue_paused", "gauge", "1 if the queue is paused.")
    rate_limit = _Family(
        "pgqueue_queue_rate_limit",
        "gauge",
        "Jobs the queue may start per rate period (only queues with a rate limit).",
    )
    rate_used = _Family(
        "pgqueue_queue_rate_used",
        "gauge",
        "Jobs started within the queue's current rate period (only queues with a rate limit).",
    )
    for name in queues:
        row = by_queue.get(name, {})
        counts = row.get("counts") or {}
        for state in UNFINISHED:
            jobs.add(counts.get(state, 0), queue=name, state=state)
        oldest.add(max(0.0, row.get("oldest_pending_age") or 0.0), queue=name)
        paused.add(1 if row.get("paused") else 0, queue=name)
        if row.get("rate_limit") is not None:
            rate_limit.add(row["rate_limit"], queue=name)
            rate_used.add(row.get("rate_used") or 0, queue=name)

    finished = _Family(
        "pgqueue_jobs_finished_total",
        "counter",
        "Jobs that reached a terminal state, by queue and state, since this API process "
        "started (completed is throughput; the others are failures).",
    )
    for (queue, state), n in sorted(broadcaster.finished.items()):
        finished.add(n, queue=queue, state=state)
    retries = _Family(
        "pgqueue_job_retries_total",
        "counter",
        "Attempts that ended badly and were scheduled again, since this API process started.",
    )
    for queue, n in sorted(broadcaster.retries.items()):
        retries.add(n, queue=queue)
    notes = _Family(
        "pgqueue_api_job_notifications_total",
        "counter",
        "pgqueue_job notifications received by this API process.",
    )
    notes.add(broadcaster.notifications)
    streams = _Family("pgqueue_api_event_streams", "gauge", "Open /api/v1/events streams.")
    streams.add(broadcaster.subscribers)
    up = _Family(
        "pgqueue_api_listener_up", "gauge", "1 while the LISTEN connection is established."
    )
    up.add(1 if broadcaster.connected else 0)

    families = (jobs, oldest, paused, rate_limit, rate_used, finished, retries, notes, streams, up)
    return "\n".join(line for f in families for line in f.lines) + "\n"
