"""``/api/v1/batches`` and ``/api/v1/jobs/{id}/progress``: isolation (another
owner's batch or progress is a 404, like a missing one), counters as the
database keeps them, pause/resume/cancel through the library, keyset pages."""

from __future__ import annotations

from datetime import datetime, timedelta

from .conftest import Api

SHARED_DATABASE = True


async def _batch(api: Api, owner: str | None, n: int = 3) -> int:
    batch = await api.queue.enqueue_batch("echo", [{"value": i} for i in range(n)], owner=owner)
    return batch.id


async def test_batch_is_visible_to_its_owner_and_admins_only(api: Api) -> None:
    batch_id = await _batch(api, "alice")
    mine = await api.json("GET", f"/api/v1/batches/{batch_id}", "alice")
    assert (mine["id"], mine["total"], mine["status"], mine["owner"]) == (
        batch_id, 3, "pending", "alice",
    )  # fmt: skip
    assert mine["counts"]["pending"] == 3 and mine["progress"] == 0
    admin = await api.json("GET", f"/api/v1/batches/{batch_id}", "root", admin=True)
    assert admin["id"] == batch_id

    missing = await api.json("GET", f"/api/v1/batches/{batch_id + 1000}", "bob", status=404)
    foreign = await api.json("GET", f"/api/v1/batches/{batch_id}", "bob", status=404)
    assert foreign == {**missing, "message": foreign["message"]}
    assert str(batch_id) in foreign["message"] and "bob" not in foreign["message"]
    for action in ("pause", "resume", "cancel"):
        await api.json("POST", f"/api/v1/batches/{batch_id}/{action}", "bob", status=404)
    batch = await api.queue.get_batch(batch_id)
    assert batch is not None and batch.status.value == "pending"  # bob changed nothing

    listed = await api.json("GET", "/api/v1/batches", "bob")
    assert listed["items"] == []
    listed = await api.json("GET", "/api/v1/batches", "alice")
    assert [b["id"] for b in listed["items"]] == [batch_id]


async def test_no_token_is_401_for_batches(api: Api) -> None:
    for method, path in (("GET", "/api/v1/batches"), ("GET", "/api/v1/batches/1"),
                         ("POST", "/api/v1/batches/1/pause")):  # fmt: skip
        response = await api.call(method, path, None)
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_pause_resume_cancel_follow_the_database(api: Api) -> None:
    batch_id = await _batch(api, "alice", n=2)
    paused = await api.json("POST", f"/api/v1/batches/{batch_id}/pause", "alice")
    assert (paused["status"], paused["paused"]) == ("paused", True)
    rows = await api.sql("SELECT id FROM pgqueue.claim('w', ARRAY['api'], 10)")
    assert rows == []  # paused children are not claimed
    resumed = await api.json("POST", f"/api/v1/batches/{batch_id}/resume", "alice")
    assert (resumed["status"], resumed["paused"]) == ("pending", False)
    cancelled = await api.json("POST", f"/api/v1/batches/{batch_id}/cancel", "alice")
    assert cancelled["status"] == "cancelled"
    assert cancelled["counts"]["cancelled"] == 2 and cancelled["progress"] == 100
    again = await api.json("POST", f"/api/v1/batches/{batch_id}/cancel", "alice", status=409)
    assert "cancelled" in again["message"]


async def test_batch_list_pages_with_a_cursor_and_filters_by_status(api: Api) -> None:
    ids = [await _batch(api, "carol", n=1) for _ in range(5)]
    await api.queue.cancel_batch(ids[0])
    first = await api.json("GET", "/api/v1/batches?limit=2", "carol")
    assert [b["id"] for b in first["items"]] == ids[::-1][:2]
    second = await api.json(
        "GET", f"/api/v1/batches?limit=2&cursor={first['next_cursor']}", "carol"
    )
    assert [b["id"] for b in second["items"]] == ids[::-1][2:4]
    done = await api.json("GET", "/api/v1/batches?status=cancelled", "carol")
    assert [b["id"] for b in done["items"]] == [ids[0]]
    bad = await api.json("GET", "/api/v1/batches?status=finished", "carol", status=422)
    assert "status" in str(bad)


async def test_progress_history_pages_filters_and_isolation(api: Api) -> None:
    job_id = await api.enqueue("alice")
    attempt = await api.claim(job_id)
    for pct in (10, 150, 40.4, -3):
        await api.progress(job_id, attempt, pct)
    page = await api.json("GET", f"/api/v1/jobs/{job_id}/progress?limit=3", "alice")
    assert [e["pct"] for e in page["items"]] == [10, 100, 40]  # clamped, oldest first
    rest = await api.json(
        "GET", f"/api/v1/jobs/{job_id}/progress?cursor={page['next_cursor']}", "alice"
    )
    assert [e["pct"] for e in rest["items"]] == [0]
    assert rest["next_cursor"] is None
    future = (datetime.now().astimezone() + timedelta(hours=1)).isoformat()
    later = await api.json(
        "GET", f"/api/v1/jobs/{job_id}/progress", "alice", params={"since": future}
    )
    assert later["items"] == []
    await api.json("GET", f"/api/v1/jobs/{job_id}/progress", "bob", status=404)
    await api.json("GET", f"/api/v1/jobs/{job_id}/progress?limit=0", "alice", status=422)
    naive = await api.json(
        "GET", f"/api/v1/jobs/{job_id}/progress", "alice", params={"since": "2026-01-01T00:00:00"},
        status=422,
    )  # fmt: skip
    assert "since" in str(naive)
