"""Periodic tasks: cron schedules whose ticks are enqueued exactly once.

Design notes (the what is in docs/scheduling.md):

- Every worker of an app runs the scheduler; none is special. Each tick is
  written by ``pgqueue.enqueue_tick``, whose primary key ``(name, tick)`` lets
  one writer win, so workers may race freely.
- What is due is computed from the **database's** clock (one
  ``clock_timestamp()`` per pass), never the worker's: workers with skewed
  clocks compute the same ticks, and the function refuses a tick in the
  database's future.
- Missed ticks are counted from the schedule's latest recorded tick. A new
  schedule starts from the latest due tick, enqueued only if it is recent
  (``FIRST_TICK_GRACE``), so deploying a daily 03:00 task at 15:00 does not
  run it at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from psycopg.types.json import Jsonb

from .errors import ConfigurationError, InvalidJobError

if TYPE_CHECKING:
    from ._queue import Task

FIRST_TICK_GRACE = timedelta(seconds=60)
"""A new schedule's latest due tick is enqueued if it is at most this old;
an older one only marks where the schedule starts."""

Fetch = Callable[[str, dict[str, Any]], Awaitable[Sequence[Sequence[Any]]]]
"""Runs a named query of sql/queries.sql and returns its rows as tuples."""


@dataclasses.dataclass(frozen=True, eq=False)
class Periodic:
    """A cron schedule of a task, registered with ``@queue.periodic``."""

    name: str
    """The schedule's key in ``pgqueue.periodic_ticks`` (default: the task's name)."""
    task: Task[Any]
    cron: str
    """Five fields (minute hour day month weekday), or six with seconds last."""
    timezone: tzinfo
    """The zone the cron fields are read in (daylight saving time included)."""
    catch_up: int
    """Missed ticks enqueued after downtime besides the latest (0: skip them)."""
    args: Mapping[str, Any]
    """The arguments of every job of the schedule."""

    def due_ticks(self, last: datetime | None, now: datetime) -> list[datetime]:
        """The ticks to enqueue at ``now`` (the database's clock), oldest first:
        those after ``last`` up to ``now``, at most ``catch_up + 1`` of them,
        the latest always included. With no ``last``, only the latest due tick."""
        # croniter's get_prev is strictly before its start: a tick at exactly
        # ``now`` is due, so start just after it.
        ticks = croniter(self.cron, now.astimezone(self.timezone) + timedelta(microseconds=1))
        limit = 1 if last is None else self.catch_up + 1
        due: list[datetime] = []
        while len(due) < limit:
            tick = ticks.get_prev(datetime).astimezone(UTC)
            if last is not None and tick <= last:
                break
            due.append(tick)
        return due[::-1]

    def next_tick(self, after: datetime) -> datetime:
        """The first tick strictly after ``after``."""
        ticks = croniter(self.cron, after.astimezone(self.timezone))
        return ticks.get_next(datetime).astimezone(UTC)

    def describe(self) -> dict[str, Any]:
        """The schedule as JSON-friendly values."""
        return {
            "name": self.name,
            "task": self.task.name,
            "queue": self.task.queue_name,
            "cron": self.cron,
            "timezone": str(self.timezone),
            "catch_up": self.catch_up,
            "args": dict(self.args),
        }


def make_periodic(
    task: Task[Any],
    *,
    cron: str,
    timezone: str | tzinfo,
    catch_up: int,
    name: str | None,
    args: Mapping[str, Any] | None,
    max_payload_bytes: int,
) -> Periodic:
    """Check a schedule at registration (so a typo fails at import)."""
    from ._queue import _json_object

    label = name or task.name
    if not isinstance(label, str) or not 1 <= len(label) <= 256:
        raise ConfigurationError(f"periodic name must be 1 to 256 characters, not {label!r}")
    if not isinstance(cron, str) or not croniter.is_valid(cron):
        raise ConfigurationError(f"periodic {label!r}: invalid cron expression {cron!r}")
    if isinstance(timezone, str):
        try:
            zone: tzinfo = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigurationError(f"periodic {label!r}: unknown timezone {timezone!r}") from None
    elif isinstance(timezone, tzinfo):
        zone = timezone
    else:
        raise ConfigurationError(f"periodic {label!r}: timezone must be a name or a tzinfo")
    if isinstance(catch_up, bool) or not isinstance(catch_up, int) or not 0 <= catch_up <= 1000:
        raise ConfigurationError(
            f"periodic {label!r}: catch_up must be an integer from 0 to 1000, not {catch_up!r}"
        )
    values = dict(args or {})
    try:
        _json_object(values, f"arguments of periodic {label!r}", max_payload_bytes)
        task.check_args(values)
    except InvalidJobError as exc:
        raise ConfigurationError(f"periodic {label!r}: {exc}") from None
    return Periodic(label, task, cron, zone, catch_up, values)


@dataclasses.dataclass(frozen=True)
class SchedulePass:
    """What one scheduler pass did."""

    now: datetime
    """The database's clock at the start of the pass."""
    enqueued: list[int]
    """Ids of the jobs this pass enqueued (ticks other workers won are not here)."""
    next_due: datetime | None
    """The earliest next tick of any schedule, by the database's clock."""


async def schedule_due(periodics: Sequence[Periodic], fetch: Fetch) -> SchedulePass | None:
    """One scheduler pass: enqueue every due tick of ``periodics`` not yet
    recorded. Safe to run in any number of workers at once. None if there is
    no schedule."""
    if not periodics:
        return None
    rows = await fetch("periodic_state", {"names": [p.name for p in periodics]})
    now: datetime = rows[0][0]
    last_ticks: dict[str, datetime | None] = {row[1]: row[2] for row in rows}
    enqueued: list[int] = []
    for periodic in periodics:
        last = last_ticks.get(periodic.name)
        task = periodic.task
        for tick in periodic.due_ticks(last, now):
            params = {
                "name": periodic.name,
                "tick": tick,
                "task": task.name,
                "args": Jsonb(dict(periodic.args)),
                "queue": task.queue_name,
                "priority": task.priority,
                "max_attempts": task.max_attempts,
                "timeout": None if task.timeout is None else timedelta(seconds=task.timeout),
                "enqueue": last is not None or now - tick <= FIRST_TICK_GRACE,
            }
            (row,) = await fetch("enqueue_tick", params)
            if row[0] is not None:
                enqueued.append(int(row[0]))
    next_due = min(p.next_tick(now) for p in periodics)
    return SchedulePass(now, enqueued, next_due)


async def schedule_status(periodics: Sequence[Periodic], fetch: Fetch) -> list[dict[str, Any]]:
    """Each schedule, by name, with its latest recorded tick and its next run
    (by the database's clock)."""
    if not periodics:
        return []
    rows = await fetch("periodic_state", {"names": [p.name for p in periodics]})
    now: datetime = rows[0][0]
    state = {row[1]: (row[2], row[3]) for row in rows}
    result = []
    for periodic in sorted(periodics, key=lambda p: p.name):
        last_tick, last_job_id = state.get(periodic.name, (None, None))
        result.append(
            {
                **periodic.describe(),
                "last_tick": last_tick,
                "last_job_id": last_job_id,
                "next_tick": periodic.next_tick(now),
                "now": now,
            }
        )
    return result
