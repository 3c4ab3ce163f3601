"""``/api/v1/jobs``: per-owner isolation (another owner's job is a 404), the
active view, filters and keyset pages, enqueue, cancel and retry through the
library, and validation errors that name the field."""

from __future__ import annotations

from datetime import timedelta

import pytest

from .conftest import Api

SHARED_DATABASE = True


# -- isolation ---------------------------------------------------------------------------


async def test_post_creates_a_job_owned_by_the_caller(api: Api) -> None:
    response = await api.call(
        "POST", "/api/v1/jobs", "alice",
        json={"task": "echo", "args": {"value": 7}, "priority": 3, "max_attempts": 2,
              "metadata": {"from": "api"}},
    )  # fmt: skip
    assert response.status == 201, await response.text()
    job = await response.json()
    assert response.headers["Location"] == f"/api/v1/jobs/{job['id']}"
    assert job["owner"] == "alice"
    assert (job["task"], job["args"], job["status"]) == ("echo", {"value": 7}, "pending")
    assert (job["priority"], job["max_attempts"], job["queue"]) == (3, 2, "api")
    stored = await api.queue.get_job(job["id"])
    assert stored is not None and stored.owner == "alice"


async def test_another_owners_job_is_404_for_every_operation(api: Api) -> None:
    job_id = await api.enqueue("bob")
    missing = job_id + 1000
    for method, path in (
        ("GET", "/api/v1/jobs/{}"),
        ("POST", "/api/v1/jobs/{}/cancel"),
        ("POST", "/api/v1/jobs/{}/retry"),
    ):
        foreign = await api.json(method, path.format(job_id), "alice", status=404)
        absent = await api.json(method, path.format(missing), "alice", status=404)
        # The same answer as for a job that does not exist: nothing is revealed.
        assert foreign["error"] == absent["error"] == "not_found"
        assert foreign["message"].replace(str(job_id), "N") == absent["message"].replace(
            str(missing), "N"
        )
    job = await api.queue.get_job(job_id)
    assert job is not None and job.status.value == "pending"  # alice's cancel did nothing


async def test_jobs_without_an_owner_are_for_admins_only(api: Api) -> None:
    job_id = await api.enqueue(None)
    await api.json("GET", f"/api/v1/jobs/{job_id}", "alice", status=404)
    job = await api.json("GET", f"/api/v1/jobs/{job_id}", "root", admin=True)
    assert job["owner"] is None


async def test_admin_sees_and_acts_on_every_owners_jobs(api: Api) -> None:
    job_id = await api.enqueue("bob")
    detail = await api.json("GET", f"/api/v1/jobs/{job_id}", "root", admin=True)
    assert detail["owner"] == "bob" and detail["attempt_history"] == []
    cancelled = await api.json("POST", f"/api/v1/jobs/{job_id}/cancel", "root", admin=True)
    assert cancelled["status"] == "cancelled"


async def test_list_shows_only_the_callers_jobs(api: Api) -> None:
    mine = {await api.enqueue("alice") for _ in range(3)}
    theirs = {await api.enqueue("bob") for _ in range(2)}
    page = await api.json("GET", "/api/v1/jobs", "alice")
    assert {j["id"] for j in page["items"]} == mine
    everyone = await api.json("GET", "/api/v1/jobs", "root", admin=True)
    assert {j["id"] for j in everyone["items"]} == mine | theirs
    only_bob = await api.json("GET", "/api/v1/jobs?owner=bob", "root", admin=True)
    assert {j["id"] for j in only_bob["items"]} == theirs
    # A user may name itself, never another owner.
    assert len((await api.json("GET", "/api/v1/jobs?owner=alice", "alice"))["items"]) == 3
    await api.json("GET", "/api/v1/jobs?owner=bob", "alice", status=403)


# -- active view -------------------------------------------------------------------------


async def test_active_lists_unfinished_and_recently_finished_jobs_with_errors(api: Api) -> None:
    pending = await api.enqueue("alice", queue="waiting")
    running = await api.enqueue("alice")
    attempt = await api.claim(running)
    failed = await api.enqueue("alice")
    await api.fail(failed, await api.claim(failed), "disk full")
    old = await api.enqueue("alice")
    await api.complete(old, await api.claim(old))
    await api.age(old, timedelta(minutes=10))
    bobs = await api.enqueue("bob", queue="waiting")
    await api.progress(running, attempt, 40)

    page = await api.json("GET", "/api/v1/jobs/active", "alice")
    by_id = {j["id"]: j for j in page["items"]}
    assert list(by_id) == sorted(by_id, reverse=True)  # newest first
    assert set(by_id) == {pending, running, failed}
    assert by_id[running]["status"] == "running" and by_id[running]["progress"] == 40
    assert by_id[failed]["status"] == "failed" and by_id[failed]["error"] == "disk full"
    assert page["next_cursor"] is None

    admin = await api.json("GET", "/api/v1/jobs/active", "root", admin=True)
    assert {j["id"] for j in admin["items"]} == {pending, running, failed, bobs}


async def test_active_pages_with_a_cursor(api: Api) -> None:
    ids = [await api.enqueue("alice", queue="waiting") for _ in range(5)]
    seen: list[int] = []
    cursor = None
    for _ in range(5):
        query = "limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = await api.json("GET", f"/api/v1/jobs/active?{query}", "alice")
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(ids, reverse=True)


# -- filters and pages -------------------------------------------------------------------


async def test_list_pages_through_every_job_once(api: Api) -> None:
    ids = [await api.enqueue("alice") for _ in range(7)]
    seen: list[int] = []
    page = await api.json("GET", "/api/v1/jobs?limit=3", "alice")
    while True:
        assert len(page["items"]) <= 3
        seen += [j["id"] for j in page["items"]]
        if page["next_cursor"] is None:
            break
        page = await api.json("GET", f"/api/v1/jobs?limit=3&cursor={page['next_cursor']}", "alice")
    assert seen == sorted(ids, reverse=True)


async def test_list_filters_by_status_queue_and_task(api: Api) -> None:
    a = await api.enqueue("alice")
    b = await api.enqueue("alice", queue="waiting")
    await api.fail(a, await api.claim(a))
    failed = await api.json("GET", "/api/v1/jobs?status=failed,dead_letter", "alice")
    assert [j["id"] for j in failed["items"]] == [a]
    waiting = await api.json("GET", "/api/v1/jobs?queue=waiting&task=echo", "alice")
    assert [j["id"] for j in waiting["items"]] == [b]
    none = await api.json("GET", "/api/v1/jobs?task=steps", "alice")
    assert none["items"] == []


# -- actions -----------------------------------------------------------------------------


async def test_cancel_then_cancel_again_is_a_conflict(api: Api) -> None:
    job_id = await api.enqueue("alice")
    job = await api.json("POST", f"/api/v1/jobs/{job_id}/cancel", "alice")
    assert job["status"] == "cancelled" and job["completed_at"] is not None
    again = await api.json("POST", f"/api/v1/jobs/{job_id}/cancel", "alice", status=409)
    assert again["error"] == "conflict" and "cancelled" in again["message"]


async def test_a_job_handed_back_at_shutdown_shows_the_attempt_it_was_not_charged(
    api: Api,
) -> None:
    job_id = await api.enqueue("alice")
    attempt = await api.claim(job_id)
    await api.sql("SELECT pgqueue.release(%(id)s, %(a)s)", {"id": job_id, "a": attempt})
    job = await api.json("GET", f"/api/v1/jobs/{job_id}", "alice")
    assert (job["status"], job["attempts"], job["max_attempts"], job["released"]) == (
        "pending",
        1,
        2,
        1,
    )


async def test_retry_replays_a_failed_job_and_refuses_a_pending_one(api: Api) -> None:
    job_id = await api.enqueue("alice")
    await api.fail(job_id, await api.claim(job_id), "first try failed")
    job = await api.json(
        "POST", f"/api/v1/jobs/{job_id}/retry", "alice", json={"extra_attempts": 2}
    )
    assert job["status"] == "pending" and job["max_attempts"] == 3
    detail = await api.json("GET", f"/api/v1/jobs/{job_id}", "alice")
    assert [a["outcome"] for a in detail["attempt_history"]] == ["error"]
    assert detail["attempt_history"][0]["error"] == "first try failed"
    conflict = await api.json("POST", f"/api/v1/jobs/{job_id}/retry", "alice", status=409)
    assert conflict["error"] == "conflict"


# -- validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "task"),
        ({"task": ""}, "task"),
        ({"task": "nope"}, "task"),
        ({"task": "echo", "args": {"unknown": 1}}, "args"),
        ({"task": "echo", "args": []}, "args"),
        ({"task": "echo", "delay": -1}, "delay"),
        ({"task": "echo", "priority": 2**40}, "priority"),
        ({"task": "echo", "max_attempts": 0}, "max_attempts"),
        ({"task": "echo", "max_attempts": "3"}, "max_attempts"),
        ({"task": "echo", "run_at": "2030-01-01T00:00:00"}, "run_at"),
        ({"task": "echo", "run_at": "2030-01-01T00:00:00Z", "delay": 1}, "body"),
        ({"task": "echo", "surprise": True}, "surprise"),
        ({"task": "echo", "args": {"value": "a\u0000b"}}, "args"),
        ({"task": "echo", "queue": "x" * 129}, "queue"),
    ],
)
async def test_a_bad_job_is_422_naming_the_field(api: Api, body: object, field: str) -> None:
    error = await api.json("POST", "/api/v1/jobs", "alice", json=body, status=422)
    assert error["error"] == "invalid_request"
    assert field in [d["field"] for d in error["detail"]], error
    assert await api.queue.list_jobs() == []


async def test_a_body_that_is_not_json_is_400_and_a_wrong_type_415(api: Api) -> None:
    bad = await api.json("POST", "/api/v1/jobs", "alice", data=b"{task: echo}",
                         headers={"Content-Type": "application/json"}, status=400)  # fmt: skip
    assert bad["error"] == "invalid_json"
    nan = await api.json("POST", "/api/v1/jobs", "alice", data=b'{"task":"echo","delay":NaN}',
                         headers={"Content-Type": "application/json"}, status=400)  # fmt: skip
    assert nan["error"] == "invalid_json"
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    await api.json("POST", "/api/v1/jobs", "alice", data=b"task=echo", headers=form, status=415)
    array = await api.json("POST", "/api/v1/jobs", "alice", json=[1], status=422)
    assert array["detail"][0]["field"] == "body"


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=ten", "limit"),
        ("status=finished", "status"),
        ("status=failed,", "status"),
        ("cursor=bm9wZQ", "cursor"),
        ("cursor=%%%", "cursor"),
        ("queue=a%00b", "queue"),
    ],
)
async def test_bad_list_parameters_are_422_naming_the_field(
    api: Api, query: str, field: str
) -> None:
    error = await api.json("GET", f"/api/v1/jobs?{query}", "alice", status=422)
    assert [d["field"] for d in error["detail"]] == [field]


@pytest.mark.parametrize("job_id", ["0", "-1", "abc", str(2**63), "1.5"])
async def test_a_bad_job_id_is_422(api: Api, job_id: str) -> None:
    error = await api.json("GET", f"/api/v1/jobs/{job_id}", "alice", status=422)
    assert error["detail"][0]["field"] == "id"
