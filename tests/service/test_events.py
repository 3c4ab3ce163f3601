"""``/api/v1/events``: a stream starts with a snapshot of the caller's active
jobs, then carries the caller's job changes only; ``Last-Event-ID`` replays
exactly the missed events while this process still holds them, else the
stream starts again with a snapshot."""

from __future__ import annotations

from aiohttp import ClientResponse

from pgqueue_service import Settings

from .conftest import Api
from .sse import Event, EventReader

SHARED_DATABASE = True


async def _stream(api: Api, owner: str, *, admin: bool = False, **kw: object) -> EventReader:
    response: ClientResponse = await api.call("GET", "/api/v1/events", owner, admin=admin, **kw)
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"].startswith("text/event-stream")
    return EventReader(response)


def _job(event: Event, job_id: int, **fields: object) -> bool:
    return (
        event.event == "job"
        and event.data["id"] == job_id
        and all(event.data.get(k) == v for k, v in fields.items())
    )


async def test_a_stream_starts_with_a_snapshot_of_the_callers_active_jobs(api: Api) -> None:
    mine = await api.enqueue("alice", queue="waiting")
    await api.enqueue("bob", queue="waiting")
    reader = await _stream(api, "alice")
    first = await reader.next()
    assert first.event == "snapshot"
    assert [j["id"] for j in first.data["jobs"]] == [mine]
    assert first.data["truncated"] is False
    assert first.id is not None


async def test_each_owner_sees_progress_of_its_own_jobs_and_none_of_the_others(api: Api) -> None:
    alice = await _stream(api, "alice")
    bob = await _stream(api, "bob")
    admin = await _stream(api, "root", admin=True)
    for reader in (alice, bob, admin):
        assert (await reader.next()).event == "snapshot"

    a = await api.enqueue("alice")
    b = await api.enqueue("bob")
    leases = {a: await api.claim(a), b: await api.claim(b)}
    for pct in (25, 50, 100):
        for job_id, attempt in leases.items():
            await api.progress(job_id, attempt, pct)
    await api.complete(a, leases[a])
    await api.complete(b, leases[b])

    seen_by_alice = await alice.until(lambda e: _job(e, a, status="completed"))
    seen_by_bob = await bob.until(lambda e: _job(e, b, status="completed"))
    assert {e.data["id"] for e in seen_by_alice} == {a}
    assert {e.data["id"] for e in seen_by_bob} == {b}
    assert [e.data["progress"] for e in seen_by_alice if e.data["status"] == "running"] == [
        0, 25, 50, 100,
    ]  # fmt: skip
    assert seen_by_alice[-1].data == {"id": a, "status": "completed", "progress": 100,
                                      "queue": "api"}  # fmt: skip
    # Nothing of bob's reaches alice later either; the admin sees both.
    assert all(e.data["id"] == a for e in await alice.quiet(0.5) if e.event == "job")
    everything = await admin.until(lambda e: _job(e, b, status="completed"))
    assert {e.data["id"] for e in everything} == {a, b}


async def test_last_event_id_replays_exactly_the_missed_events(api: Api) -> None:
    job_id = await api.enqueue("alice")
    reader = await _stream(api, "alice")
    await reader.next()  # snapshot
    admin = await _stream(api, "root", admin=True)  # shows when the server has numbered events
    await admin.next()
    attempt = await api.claim(job_id)
    running = (await reader.until(lambda e: _job(e, job_id, status="running")))[-1]
    reader.response.close()

    # Changes while the client is away; one of another owner's in between.
    other = await api.enqueue("bob")
    for pct in (30, 60):
        await api.progress(job_id, attempt, pct)
    await api.claim(other)
    await api.complete(job_id, attempt)

    await admin.until(lambda e: _job(e, job_id, status="completed"))

    again = await _stream(api, "alice", headers={"Last-Event-ID": running.id})
    replayed = await again.until(lambda e: _job(e, job_id, status="completed"))
    assert [(e.event, e.data["status"], e.data["progress"]) for e in replayed] == [
        ("job", "running", 30),
        ("job", "running", 60),
        ("job", "completed", 100),
    ]
    ids = [e.id for e in replayed]
    assert len(set(ids)) == 3 and running.id not in ids


async def test_an_unknown_last_event_id_gets_a_snapshot(api: Api) -> None:
    job_id = await api.enqueue("alice", queue="waiting")
    for stale in ("deadbeef-12", "garbage", "0"):
        reader = await _stream(api, "alice", headers={"Last-Event-ID": stale})
        first = await reader.next()
        assert first.event == "snapshot"
        assert [j["id"] for j in first.data["jobs"]] == [job_id]
        reader.response.close()


async def test_an_idle_stream_gets_keepalive_comments(api: Api, settings: Settings) -> None:
    reader = await _stream(api, "alice")
    await reader.next()
    await reader.quiet(settings.keepalive * 3)
    assert reader.comments >= 2


async def test_the_token_may_come_as_access_token_on_events(api: Api) -> None:
    from .conftest import auth

    token = auth("alice")["Authorization"].removeprefix("Bearer ")
    response = await api.call("GET", f"/api/v1/events?access_token={token}", owner=None)
    assert response.status == 200
    reader = EventReader(response)
    assert (await reader.next()).event == "snapshot"


async def test_the_owner_comes_from_the_notification_and_one_without_reaches_admins_only(
    api: Api,
) -> None:
    """Every pgqueue_job payload names the job's owner (the trigger writes it)
    and the stream routes on it. A payload without one (not pgqueue's
    trigger) is shown to admins only, never to an owner."""
    alice = await _stream(api, "alice")
    admin = await _stream(api, "root", admin=True)
    for reader in (alice, admin):
        assert (await reader.next()).event == "snapshot"
    mine = await api.enqueue("alice")
    pool = await api.queue.pool()
    async with pool.connection() as conn:
        await conn.execute(
            "SELECT pg_notify('pgqueue_job', %s)",
            ['{"id": 999999, "status": "pending", "progress": 0, "queue": "api"}'],
        )
    await api.claim(mine)  # announced after the owner-less payload
    assert [
        e.data["id"] for e in await admin.until(lambda e: _job(e, mine)) if e.event == "job"
    ] == [
        999999,
        mine,
    ]
    seen_by_alice = await alice.until(lambda e: _job(e, mine, status="running"))
    assert [e.data["id"] for e in seen_by_alice if e.event == "job"] == [mine]
