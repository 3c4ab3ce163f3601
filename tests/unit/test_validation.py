"""Input helpers of the client (_json_object, _seconds) and WorkerSettings (no database)."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from datetime import timedelta
from typing import Any

import pytest
from psycopg.types.json import Jsonb

import pgqueue
from pgqueue import InvalidJobError, WorkerSettings
from pgqueue._queue import _json_object, _seconds

# -- _json_object ---------------------------------------------------------------------------


def test_json_object_returns_a_jsonb_copy() -> None:
    source = OrderedDict(a=1, b=[1, "x", None], c={"d": True})
    wrapped = _json_object(source, "args")
    assert isinstance(wrapped, Jsonb)
    assert wrapped.obj == {"a": 1, "b": [1, "x", None], "c": {"d": True}}
    assert type(wrapped.obj) is dict
    source["a"] = 2  # later changes to the caller's mapping do not leak in
    assert wrapped.obj["a"] == 1


def test_json_object_accepts_empty_mapping() -> None:
    assert _json_object({}, "metadata").obj == {}


@pytest.mark.parametrize("value", [[1, 2], "text", None, 3, (("a", 1),)])
def test_json_object_rejects_non_mappings(value: Any) -> None:
    with pytest.raises(InvalidJobError, match="args must be a mapping of names to JSON values"):
        _json_object(value, "args")


@pytest.mark.parametrize(
    ("value", "key", "type_name"),
    [
        ({"ok": 1, "when": {1, 2}}, "when", "set"),
        ({"blob": b"\x00"}, "blob", "bytes"),
        ({"nested": {"deep": object()}}, "nested", "dict"),
        ({"fn": print}, "fn", "builtin_function_or_method"),
    ],
)
def test_json_object_names_the_offending_key(value: Any, key: str, type_name: str) -> None:
    with pytest.raises(InvalidJobError) as info:
        _json_object(value, "arguments of task 'x'")
    message = str(info.value)
    assert message.startswith("arguments of task 'x': ")
    assert repr(key) in message
    assert f"({type_name})" in message


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    inner = value
    for _ in range(depth):
        inner["a"] = {}
        inner = inner["a"]
    return value


def test_json_object_refuses_nesting_too_deep_to_encode() -> None:
    with pytest.raises(InvalidJobError, match="args is nested too deeply"):
        _json_object(_nested(5000), "args")


def test_json_object_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        _json_object({"x": {1}}, "args")


# -- _seconds -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, timedelta(seconds=1)),
        (0.25, timedelta(milliseconds=250)),
        (timedelta(minutes=2), timedelta(minutes=2)),
        (3600, timedelta(hours=1)),
    ],
)
def test_seconds_converts(value: Any, expected: timedelta) -> None:
    assert _seconds(value, "timeout", allow_zero=False) == expected
    assert _seconds(value, "delay", allow_zero=True) == expected


def test_seconds_none_is_none() -> None:
    assert _seconds(None, "timeout", allow_zero=False) is None


def test_seconds_zero_only_when_allowed() -> None:
    assert _seconds(0, "delay", allow_zero=True) == timedelta(0)
    assert _seconds(timedelta(0), "delay", allow_zero=True) == timedelta(0)
    with pytest.raises(InvalidJobError, match="timeout must be positive, not 0"):
        _seconds(0, "timeout", allow_zero=False)
    with pytest.raises(InvalidJobError, match="timeout must be positive"):
        _seconds(timedelta(0), "timeout", allow_zero=False)


@pytest.mark.parametrize("value", [-1, -0.001, timedelta(seconds=-1)])
def test_seconds_negative_is_refused(value: Any) -> None:
    with pytest.raises(InvalidJobError, match="delay must be >= 0"):
        _seconds(value, "delay", allow_zero=True)
    with pytest.raises(InvalidJobError, match="timeout must be positive"):
        _seconds(value, "timeout", allow_zero=False)


@pytest.mark.parametrize("value", [True, False, "5", [5], object()])
def test_seconds_wrong_type_is_refused(value: Any) -> None:
    with pytest.raises(InvalidJobError, match="delay must be seconds or a timedelta"):
        _seconds(value, "delay", allow_zero=True)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_seconds_non_finite_is_invalid_job_error(value: float) -> None:
    with pytest.raises(InvalidJobError):
        _seconds(value, "delay", allow_zero=True)


# -- WorkerSettings -------------------------------------------------------------------------


def test_worker_settings_defaults_are_consistent() -> None:
    s = WorkerSettings()
    assert s.concurrency >= 1
    assert s.stale_after > 2 * s.heartbeat_interval
    assert s.pool_size >= 2
    assert s.listen is True


def test_worker_settings_are_frozen() -> None:
    s = WorkerSettings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.concurrency = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"stale_after": 10.0, "heartbeat_interval": 5.0}, "stale_after must exceed two"),
        ({"stale_after": 9.0, "heartbeat_interval": 5.0}, "stale_after must exceed two"),
        ({"concurrency": 0}, "concurrency must be at least 1"),
        ({"concurrency": -3}, "concurrency must be at least 1"),
        ({"pool_size": 1}, "pool_size must be at least 2"),
        ({"shutdown_grace": -1}, "shutdown_grace must not be negative"),
        ({"poll_interval": 0}, "poll_interval must be positive"),
        ({"heartbeat_interval": -1}, "heartbeat_interval must be positive"),
        ({"stale_after": 0}, "stale_after must be positive"),
        ({"rescue_interval": 0}, "rescue_interval must be positive"),
        ({"progress_interval": 0}, "progress_interval must be positive"),
    ],
)
def test_worker_settings_refuse_bad_values(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WorkerSettings(**overrides)


def test_worker_settings_accept_edge_values() -> None:
    s = WorkerSettings(stale_after=10.01, heartbeat_interval=5.0, concurrency=1, pool_size=2)
    assert s.stale_after == 10.01
    assert WorkerSettings(shutdown_grace=0).shutdown_grace == 0


def test_worker_overrides_are_validated_too() -> None:
    queue = pgqueue.Queue("postgresql://nobody@127.0.0.1:1/nowhere")
    with pytest.raises(ValueError, match="stale_after must exceed two"):
        pgqueue.Worker(queue, heartbeat_interval=1.0, stale_after=1.5)
    with pytest.raises(ValueError, match="concurrency"):
        pgqueue.Worker(queue, settings=WorkerSettings(concurrency=4), concurrency=0)
    worker = pgqueue.Worker(queue, settings=WorkerSettings(concurrency=4), poll_interval=0.5)
    assert (worker.settings.concurrency, worker.settings.poll_interval) == (4, 0.5)
    with pytest.raises(TypeError):
        pgqueue.Worker(queue, no_such_setting=1)


def test_worker_defaults_to_the_apps_queues() -> None:
    queue = pgqueue.Queue("postgresql://nobody@127.0.0.1:1/nowhere")

    @queue.task(queue="mail")
    def send(ctx: Any) -> None: ...

    @queue.task(queue="images")
    def resize(ctx: Any) -> None: ...

    assert pgqueue.Worker(queue).queues == ["images", "mail"]
    assert pgqueue.Worker(queue, queues=["x"]).queues == ["x"]
    a, b = pgqueue.Worker(queue), pgqueue.Worker(queue)
    assert a.worker_id != b.worker_id
    named = pgqueue.Worker(queue, worker_id="w-1").worker_id
    assert named.startswith("w-1:") and len(named) == len("w-1:") + 6  # unique suffix


@pytest.mark.parametrize(
    "run_at", ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00", "9999-12-30T12:00:00Z"]
)
def test_run_at_that_could_not_be_read_back_is_refused_naming_it(run_at: str) -> None:
    from datetime import datetime

    queue = pgqueue.Queue("postgresql://unused/")

    @queue.task
    def t(ctx: pgqueue.JobContext) -> None: ...

    when = datetime.fromisoformat(run_at)
    with pytest.raises(InvalidJobError, match="between 0001-01-02 and 9999-12-30 UTC") as raised:
        queue._row(t, {}, pgqueue.EnqueueOptions(run_at=when))
    assert raised.value.field == "run_at"


def test_a_delay_past_the_readable_range_is_refused_naming_it() -> None:
    queue = pgqueue.Queue("postgresql://unused/")

    @queue.task
    def t(ctx: pgqueue.JobContext) -> None: ...

    from datetime import UTC, datetime

    last_day = datetime(9999, 12, 31, 12, tzinfo=UTC) - datetime.now(UTC)
    for delay in (last_day, timedelta(days=365 * 7990)):  # readable range, then overflow
        with pytest.raises(InvalidJobError) as raised:
            queue._row(t, {}, pgqueue.EnqueueOptions(delay=delay))
        assert raised.value.field == "delay"


@pytest.mark.parametrize(
    ("args", "options", "field"),
    [
        ({"x": 1}, {"queue": ""}, "queue"),
        ({"x": 1}, {"priority": 2**40}, "priority"),
        ({"x": 1}, {"max_attempts": 0}, "max_attempts"),
        ({"x": 1}, {"delay": -1}, "delay"),
        ({"x": 1}, {"timeout": float("nan")}, "timeout"),
        ({"x": 1}, {"owner": ""}, "owner"),
        ({"x": 1}, {"metadata": {"a": object()}}, "metadata"),
        ({"x": 1}, {"dedupe_key": ""}, "dedupe_key"),
        ({"x": 1}, {"dedupe_scope": "forever"}, "dedupe_scope"),
        ({"x": 1}, {"concurrency_key": "k", "concurrency_limit": 0}, "concurrency_limit"),
        ({"x": "a\x00b"}, {}, "args"),
        ({"y": 1}, {}, "args"),
    ],
)
def test_a_refused_enqueue_names_its_field(
    args: dict[str, Any], options: dict[str, Any], field: str
) -> None:
    """Callers (the API among them) read the field from the error, not its text."""
    queue = pgqueue.Queue("postgresql://unused/")

    @queue.task
    def t(ctx: pgqueue.JobContext, x: Any) -> None: ...

    with pytest.raises(InvalidJobError) as raised:
        queue._row(t, args, pgqueue.EnqueueOptions(**options))
    assert raised.value.field == field, raised.value


def test_an_unknown_task_names_the_task_field() -> None:
    queue = pgqueue.Queue("postgresql://unused/")
    with pytest.raises(pgqueue.UnknownTaskError) as raised:
        queue._row("nope", {}, pgqueue.EnqueueOptions())
    assert raised.value.field == "task"
