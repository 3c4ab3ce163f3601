"""The scheduler: the due ticks of periodic tasks are enqueued, by the
database's clock; a primary key on (schedule, tick) lets one worker enqueue
each tick however many run the scheduler (:mod:`pgqueue._periodic`)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from typing import Any

from .._database import WorkerDatabase
from .._periodic import Periodic, schedule_due
from . import Tally, jitter, log

DUTY = "periodic"


async def run(
    db: WorkerDatabase,
    tally: Tally,
    periodics: Sequence[Periodic],
    *,
    interval: float,
    stopping: Callable[[], bool],
) -> None:
    """Enqueue due ticks, then sleep until the next one (by the database's
    clock, plus a little jitter so workers do not all hit the same row at
    once), at most ``interval`` seconds; until the worker stops."""

    async def fetch(name: str, params: dict[str, Any]) -> list[Any]:
        return await db.scheduler_query(name, params, give_up=interval)

    while not stopping():
        delay = jitter(interval)
        tally.passes[DUTY] += 1
        try:
            done = await schedule_due(list(periodics), fetch)
        except Exception as exc:
            tally.failed(DUTY, exc)
        else:
            if done is not None:
                if done.enqueued:
                    log.info("enqueued periodic jobs %s", done.enqueued)
                if done.next_due is not None:
                    until = (done.next_due - done.now).total_seconds()
                    delay = min(delay, max(0.0, until) + random.uniform(0.01, 0.2))
        await asyncio.sleep(delay)
