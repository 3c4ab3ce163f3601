"""pgqueue.enqueue_bulk: many jobs of one task, their options given once.

The library's ``enqueue_many`` calls it; these tests call the function
directly, as another client would, and read the rows back.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from ._helpers import BAD_INPUT, Conn, db_now, job, rows, scalar

SHARED_DATABASE = True

BULK = (
    "SELECT id FROM pgqueue.enqueue_bulk(%(task)s, %(args)s::jsonb[], %(queue)s, %(priority)s,"
    " %(run_at)s, %(max_attempts)s, %(timeout)s, %(owner)s, %(metadata)s::jsonb,"
    " %(dedupe_keys)s::text[], %(dedupe_scope)s, %(dedupe_window)s,"
    " %(concurrency_keys)s::text[], %(concurrency_limit)s) AS id"
)


def bulk(conn: Conn, args: list[Any] | None, **options: Any) -> list[int]:
    params: dict[str, Any] = {
        "task": "t",
        "args": None if args is None else [None if a is None else Jsonb(a) for a in args],
        "queue": "default",
        "priority": 0,
        "run_at": None,
        "max_attempts": 1,
        "timeout": None,
        "owner": None,
        "metadata": Jsonb({}),
        "dedupe_keys": None,
        "dedupe_scope": "pending",
        "dedupe_window": None,
        "concurrency_keys": None,
        "concurrency_limit": 1,
    }
    params.update(options)
    return [int(r["id"]) for r in rows(conn, BULK, params)]


def count_jobs(conn: Conn) -> int:
    return int(scalar(conn, "SELECT count(*) FROM pgqueue.jobs"))


def test_each_item_gets_a_job_with_the_shared_options_in_item_order(conn: Conn) -> None:
    before = db_now(conn)
    ids = bulk(
        conn,
        [{"i": i} for i in range(50)],
        task="resize",
        queue="images",
        priority=7,
        max_attempts=3,
        timeout=timedelta(seconds=30),
        owner="alice",
        metadata=Jsonb({"source": "upload"}),
    )
    assert len(ids) == len(set(ids)) == 50
    assert ids == sorted(ids)
    for index, job_id in enumerate(ids):
        row = job(conn, job_id)
        assert row["args"] == {"i": index}
        assert (row["task"], row["queue"], row["priority"]) == ("resize", "images", 7)
        assert (row["max_attempts"], row["timeout"]) == (3, timedelta(seconds=30))
        assert (row["owner"], row["metadata"]) == ("alice", {"source": "upload"})
        assert (row["status"], row["attempts"]) == ("pending", 0)
        assert before <= row["run_at"] <= db_now(conn)


def test_a_future_run_at_is_kept_and_null_priority_means_zero(conn: Conn) -> None:
    later = db_now(conn) + timedelta(hours=1)
    (job_id,) = bulk(conn, [{}], run_at=later, priority=None)
    row = job(conn, job_id)
    assert (row["run_at"], row["priority"]) == (later, 0)


def test_no_items_write_nothing(conn: Conn) -> None:
    assert bulk(conn, []) == []
    assert count_jobs(conn) == 0


def test_null_args_are_refused(conn: Conn) -> None:
    with pytest.raises(psycopg.Error, match="args must not be null") as exc:
        bulk(conn, None)
    assert exc.value.sqlstate == BAD_INPUT


@pytest.mark.parametrize("bad", [[1, 2], "text", None])
def test_an_item_that_is_not_an_object_is_named_and_nothing_is_written(
    conn: Conn, bad: Any
) -> None:
    items: list[Any] = [{"i": i} for i in range(6)]
    items[4] = bad
    items[5] = [3]  # a later bad item: the first one is named
    with pytest.raises(psycopg.Error, match="item 4: args must be a JSON object") as exc:
        bulk(conn, items)
    assert exc.value.sqlstate == BAD_INPUT
    assert "nothing was enqueued" in str(exc.value)
    assert count_jobs(conn) == 0


@pytest.mark.parametrize(
    ("option", "problem"),
    [
        ({"task": ""}, "task must be 1 to 256 characters"),
        ({"task": "x" * 257}, "task must be 1 to 256 characters"),
        ({"task": None}, "task must be 1 to 256 characters"),
        ({"queue": ""}, "queue must be 1 to 128 characters"),
        ({"queue": "q" * 129}, "queue must be 1 to 128 characters"),
        ({"queue": None}, "queue must be 1 to 128 characters"),
        ({"max_attempts": 0}, "max_attempts must be at least 1"),
        ({"max_attempts": None}, "max_attempts must be at least 1"),
        ({"timeout": timedelta(0)}, "timeout must be positive"),
        ({"owner": ""}, "owner must be 1 to 256 characters"),
        ({"owner": "o" * 257}, "owner must be 1 to 256 characters"),
        ({"metadata": Jsonb([1])}, "metadata must be a JSON object"),
        ({"metadata": None}, "metadata must be a JSON object"),
    ],
)
def test_a_bad_option_is_named_and_nothing_is_written(
    conn: Conn, option: dict[str, Any], problem: str
) -> None:
    with pytest.raises(psycopg.Error) as exc:
        bulk(conn, [{}, {}], **option)
    assert exc.value.sqlstate == BAD_INPUT
    assert f"enqueue_bulk: {problem}; nothing was enqueued" in str(exc.value)
    assert count_jobs(conn) == 0


def test_dedupe_keys_follow_enqueue_many_rules(conn: Conn) -> None:
    """Items sharing a key get one job; a held key returns its holder; items
    without a key get jobs of their own."""
    (held,) = bulk(conn, [{"n": 0}], dedupe_keys=["a"])
    ids = bulk(conn, [{"n": 1}, {"n": 2}, {"n": 3}, {"n": 4}], dedupe_keys=["b", "a", None, "b"])
    assert ids[1] == held
    assert ids[0] == ids[3] != ids[2]
    assert job(conn, ids[0])["args"] == {"n": 1}  # made from the key's first item
    assert (job(conn, ids[0])["dedupe_key"], job(conn, ids[2])["dedupe_key"]) == ("b", None)
    assert count_jobs(conn) == 3


def test_a_window_dedupe_scope_applies_to_every_keyed_item(conn: Conn) -> None:
    first = bulk(
        conn, [{}], dedupe_keys=["w"], dedupe_scope="window", dedupe_window=timedelta(minutes=5)
    )
    again = bulk(
        conn, [{}], dedupe_keys=["w"], dedupe_scope="window", dedupe_window=timedelta(minutes=5)
    )
    assert first == again
    assert job(conn, first[0])["dedupe_scope"] == "window"


def test_concurrency_keys_and_the_shared_limit_land_on_keyed_items_only(conn: Conn) -> None:
    ids = bulk(conn, [{}, {}, {}], concurrency_keys=["k", None, "k"], concurrency_limit=2)
    keyed = [(job(conn, i)["concurrency_key"], job(conn, i)["concurrency_limit"]) for i in ids]
    assert keyed == [("k", 2), (None, None), ("k", 2)]


def test_a_bad_keyed_item_is_named_as_enqueue_many_names_it(conn: Conn) -> None:
    with pytest.raises(psycopg.Error, match="item 1: dedupe_key must be 1 to 512") as exc:
        bulk(conn, [{}, {}], dedupe_keys=["a", ""])
    assert exc.value.sqlstate == BAD_INPUT
    assert count_jobs(conn) == 0


@pytest.mark.parametrize("arrays", ["dedupe_keys", "concurrency_keys"])
def test_key_arrays_must_have_one_key_per_item(conn: Conn, arrays: str) -> None:
    with pytest.raises(psycopg.Error, match="key arrays must have 3 items") as exc:
        bulk(conn, [{}, {}, {}], **{arrays: ["a", "b"]})
    assert exc.value.sqlstate == BAD_INPUT
    assert count_jobs(conn) == 0


def test_one_statement_wakes_workers_once_per_queue(db_dsn: str) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as listener:
        listener.execute("LISTEN pgqueue_enqueue")
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            bulk(conn, [{}] * 20, queue="wake")
        woken = [n.payload for n in listener.notifies(timeout=1.0, stop_after=5)]
    assert woken == ["wake"]
