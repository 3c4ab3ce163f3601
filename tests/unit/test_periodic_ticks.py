"""Which ticks a periodic schedule enqueues: pure computations from the
database's clock and the latest recorded tick (no database needed)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

import pgqueue
from pgqueue._periodic import Periodic


def schedule(cron: str, *, timezone: str = "UTC", catch_up: int = 0) -> Periodic:
    queue = pgqueue.Queue("postgresql://unused")

    @queue.periodic(cron, timezone=timezone, catch_up=catch_up)
    async def report(ctx: pgqueue.JobContext) -> None: ...

    return queue.periodic_tasks["report"]


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_a_tick_is_due_at_its_exact_time() -> None:
    p = schedule("*/5 * * * *")
    assert p.due_ticks(at("2026-01-01T09:55:00"), at("2026-01-01T10:00:00")) == [
        at("2026-01-01T10:00:00")
    ]
    assert p.due_ticks(at("2026-01-01T10:00:00"), at("2026-01-01T10:04:59.999")) == []


def test_skip_enqueues_only_the_latest_missed_tick() -> None:
    p = schedule("*/5 * * * *")
    assert p.due_ticks(at("2026-01-01T08:00:00"), at("2026-01-01T10:02:00")) == [
        at("2026-01-01T10:00:00")
    ]


def test_catch_up_enqueues_a_bounded_number_of_missed_ticks_oldest_first() -> None:
    p = schedule("*/5 * * * *", catch_up=3)
    assert p.due_ticks(at("2026-01-01T08:00:00"), at("2026-01-01T10:02:00")) == [
        at("2026-01-01T09:45:00"),
        at("2026-01-01T09:50:00"),
        at("2026-01-01T09:55:00"),
        at("2026-01-01T10:00:00"),
    ]
    # fewer missed than allowed: all of them, none before the last recorded one
    assert p.due_ticks(at("2026-01-01T09:50:00"), at("2026-01-01T10:02:00")) == [
        at("2026-01-01T09:55:00"),
        at("2026-01-01T10:00:00"),
    ]


def test_a_new_schedule_starts_at_its_latest_due_tick_without_catching_up() -> None:
    p = schedule("*/5 * * * *", catch_up=10)
    assert p.due_ticks(None, at("2026-01-01T10:02:00")) == [at("2026-01-01T10:00:00")]


def test_cron_fields_are_read_in_the_schedule_timezone_across_dst() -> None:
    p = schedule("0 9 * * *", timezone="America/New_York")
    assert p.next_tick(at("2026-01-10T00:00:00")) == at("2026-01-10T14:00:00")  # EST
    assert p.next_tick(at("2026-07-10T00:00:00")) == at("2026-07-10T13:00:00")  # EDT


def test_seconds_field_is_supported() -> None:
    p = schedule("* * * * * */10")
    assert p.next_tick(at("2026-01-01T10:00:01")) == at("2026-01-01T10:00:10")


def test_many_missed_ticks_are_not_walked_one_by_one() -> None:
    """A year of missed minutely ticks costs catch_up + 1 steps, not 500,000."""
    p = schedule("* * * * *", catch_up=2)
    now = at("2026-06-01T12:00:30")
    assert p.due_ticks(now - timedelta(days=365), now) == [
        at("2026-06-01T11:58:00"),
        at("2026-06-01T11:59:00"),
        at("2026-06-01T12:00:00"),
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cron": "61 * * * *"}, "invalid cron"),
        ({"cron": "* * * * *", "timezone": "Mars/Olympus"}, "unknown timezone"),
        ({"cron": "* * * * *", "catch_up": -1}, "catch_up"),
        ({"cron": "* * * * *", "args": {"nope": 1}}, "unexpected keyword"),
    ],
)
def test_bad_schedules_fail_at_registration(kwargs: dict[str, object], message: str) -> None:
    queue = pgqueue.Queue("postgresql://unused")
    with pytest.raises(pgqueue.ConfigurationError, match=message):

        @queue.periodic(**kwargs)  # type: ignore[arg-type]
        async def report(ctx: pgqueue.JobContext) -> None: ...


def test_a_registered_task_can_be_scheduled_twice_under_two_names() -> None:
    queue = pgqueue.Queue("postgresql://unused")

    @queue.task(queue="reports")
    async def report(ctx: pgqueue.JobContext, kind: str) -> None: ...

    queue.periodic("0 * * * *", name="hourly", args={"kind": "hourly"})(report)
    queue.periodic("0 0 * * *", name="daily", args={"kind": "daily"})(report)

    assert sorted(queue.periodic_tasks) == ["daily", "hourly"]
    assert queue.periodic_tasks["daily"].task is report
    with pytest.raises(pgqueue.ConfigurationError, match="already registered"):
        queue.periodic("0 0 * * *", name="daily", args={"kind": "x"})(report)
