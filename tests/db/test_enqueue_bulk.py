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

from ._helpers import BAD_INPUT, Conn, claim, db_now, job, new_queue, rows, scalar

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
@pytest.mark.parametrize(
    "keys",
    [{}, {"dedupe_keys": ["a", None]}, {"concurrency_keys": [None, "k"]}],
    ids=["plain", "dedupe", "concurrency"],
)
def test_a_bad_option_is_named_and_nothing_is_written(
    conn: Conn, option: dict[str, Any], problem: str, keys: dict[str, Any]
) -> None:
    """Options are checked once, before any item, on the plain and keyed paths alike."""
    with pytest.raises(psycopg.Error) as exc:
        bulk(conn, [{}, {}], **option, **keys)
    assert exc.value.sqlstate == BAD_INPUT
    assert f"enqueue_bulk: {problem}; nothing was enqueued" in str(exc.value)
    assert count_jobs(conn) == 0


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        (
            {"dedupe_keys": ["a"], "dedupe_scope": "forever"},
            "dedupe_scope must be pending, active or window",
        ),
        (
            {"dedupe_keys": ["a"], "dedupe_scope": None},
            "dedupe_scope must be pending, active or window",
        ),
        (
            {"dedupe_keys": ["a"], "dedupe_scope": "window"},
            "dedupe_scope window needs a positive window",
        ),
        (
            {"dedupe_keys": ["a"], "dedupe_scope": "window", "dedupe_window": timedelta(0)},
            "dedupe_scope window needs a positive window",
        ),
        (
            {"concurrency_keys": ["k"], "concurrency_limit": 0},
            "concurrency_limit must be at least 1",
        ),
        (
            {"concurrency_keys": ["k"], "concurrency_limit": None},
            "concurrency_limit must be at least 1",
        ),
    ],
)
def test_a_bad_key_option_is_named_and_nothing_is_written(
    conn: Conn, options: dict[str, Any], problem: str
) -> None:
    with pytest.raises(psycopg.Error) as exc:
        bulk(conn, [{}], **options)
    assert exc.value.sqlstate == BAD_INPUT
    assert f"enqueue_bulk: {problem}; nothing was enqueued" in str(exc.value)
    assert count_jobs(conn) == 0


def test_dedupe_options_do_not_apply_to_concurrency_keys_alone(conn: Conn) -> None:
    """Without dedupe keys the dedupe scope is not passed on: a bad
    concurrency key is named for what it is."""
    with pytest.raises(psycopg.Error, match="item 0: concurrency_key must be 1 to 512") as exc:
        bulk(conn, [{}], concurrency_keys=[""], dedupe_scope="window", dedupe_window=None)
    assert exc.value.sqlstate == BAD_INPUT
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


def test_a_window_dedupe_scope_uses_the_given_window(conn: Conn) -> None:
    window = timedelta(minutes=5)
    (first,) = bulk(conn, [{}], dedupe_keys=["w"], dedupe_scope="window", dedupe_window=window)
    assert bulk(conn, [{}], dedupe_keys=["w"], dedupe_scope="window", dedupe_window=window) == [
        first
    ]
    assert job(conn, first)["dedupe_scope"] == "window"
    # Created longer ago than the window: no longer a duplicate.
    conn.execute(
        "UPDATE pgqueue.jobs SET created_at = created_at - interval '6 minutes',"
        " run_at = run_at - interval '6 minutes' WHERE id = %s",
        (first,),
    )
    (later,) = bulk(conn, [{}], dedupe_keys=["w"], dedupe_scope="window", dedupe_window=window)
    assert later != first


def test_an_active_dedupe_scope_holds_the_key_while_the_job_runs(conn: Conn) -> None:
    queue = new_queue()
    (first,) = bulk(conn, [{}], queue=queue, dedupe_keys=["x"], dedupe_scope="active")
    assert [r["id"] for r in claim(conn, "w1", [queue])] == [first]
    assert bulk(conn, [{}], queue=queue, dedupe_keys=["x"], dedupe_scope="active") == [first]
    # The pending scope lets a key go once its job starts.
    (pending,) = bulk(conn, [{}], queue=queue, dedupe_keys=["y"])
    assert [r["id"] for r in claim(conn, "w1", [queue])] == [pending]
    assert bulk(conn, [{}], queue=queue, dedupe_keys=["y"]) != [pending]


def test_concurrency_keys_and_the_shared_limit_land_on_keyed_items_only(conn: Conn) -> None:
    ids = bulk(conn, [{}, {}, {}], concurrency_keys=["k", None, "k"], concurrency_limit=2)
    keyed = [(job(conn, i)["concurrency_key"], job(conn, i)["concurrency_limit"]) for i in ids]
    assert keyed == [("k", 2), (None, None), ("k", 2)]


def test_a_bad_keyed_item_is_named_as_enqueue_many_names_it(conn: Conn) -> None:
    with pytest.raises(psycopg.Error, match="item 1: dedupe_key must be 1 to 512") as exc:
        bulk(conn, [{}, {}], dedupe_keys=["a", ""])
    assert exc.value.sqlstate == BAD_INPUT
    assert count_jobs(conn) == 0


@pytest.mark.parametrize(
    "keys",
    [
        {"dedupe_keys": ["a", "b"]},
        {"concurrency_keys": ["a", "b"]},
        {"dedupe_keys": ["a", "b", "c"], "concurrency_keys": ["a", "b"]},
    ],
)
def test_key_arrays_must_have_one_key_per_item(conn: Conn, keys: dict[str, Any]) -> None:
    with pytest.raises(psycopg.Error, match=r"need one key per item of args \(3\)") as exc:
        bulk(conn, [{}, {}, {}], **keys)
    assert exc.value.sqlstate == BAD_INPUT
    assert count_jobs(conn) == 0


def test_no_items_with_keys_write_nothing(conn: Conn) -> None:
    assert bulk(conn, [], dedupe_keys=[], concurrency_keys=[]) == []
    assert count_jobs(conn) == 0


def test_due_jobs_wake_their_queue_and_future_jobs_do_not(db_dsn: str) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as listener:
        listener.execute("LISTEN pgqueue_enqueue")
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            later = db_now(conn) + timedelta(hours=1)
            bulk(conn, [{}] * 20, queue="later", run_at=later)
            bulk(conn, [{}] * 20, queue="now")
        woken = [n.payload for n in listener.notifies(timeout=1.0, stop_after=5)]
    assert woken == ["now"]
