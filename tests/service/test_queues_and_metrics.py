"""``/api/v1/queues`` (unfinished work per queue; pause/resume for admins) and
``/metrics`` (gauges from the unfinished rows, counters from NOTIFY)."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client.parser import text_string_to_metric_families

import pgqueue
from pgqueue_service import _keys

from .conftest import Api

SHARED_DATABASE = True


async def test_queues_count_the_callers_unfinished_jobs(api: Api) -> None:
    for _ in range(2):
        await api.enqueue("alice", queue="waiting")
    running = await api.enqueue("alice")
    await api.claim(running)
    await api.enqueue("bob", queue="waiting")
    await api.enqueue("bob", queue="bobs")

    mine = await api.json("GET", "/api/v1/queues", "alice")
    assert {q["queue"]: q["counts"] for q in mine["items"]} == {
        "api": {"pending": 0, "retrying": 0, "running": 1},
        "waiting": {"pending": 2, "retrying": 0, "running": 0},
    }
    everyone = await api.json("GET", "/api/v1/queues", "root", admin=True)
    counts = {q["queue"]: q["counts"]["pending"] for q in everyone["items"]}
    assert counts == {"api": 0, "bobs": 1, "waiting": 3}
    waiting = next(q for q in everyone["items"] if q["queue"] == "waiting")
    assert waiting["oldest_pending_age"] >= 0 and waiting["paused"] is False


async def test_queues_page_by_name(api: Api) -> None:
    for name in ("q1", "q2", "q3"):
        await api.enqueue(None, queue=name)
    names: list[str] = []
    page = await api.json("GET", "/api/v1/queues?limit=2", "root", admin=True)
    names += [q["queue"] for q in page["items"]]
    page = await api.json(
        "GET", f"/api/v1/queues?limit=2&cursor={page['next_cursor']}", "root", admin=True
    )
    names += [q["queue"] for q in page["items"]]
    assert names == ["q1", "q2", "q3"] and page["next_cursor"] is None


async def test_admin_pauses_and_resumes_a_queue(api: Api) -> None:
    paused = await api.json("POST", "/api/v1/queues/api/pause", "root", admin=True)
    assert paused == {"queue": "api", "paused": True}
    listed = await api.json("GET", "/api/v1/queues", "root", admin=True)
    assert {q["queue"]: q["paused"] for q in listed["items"]}["api"] is True
    resumed = await api.json("POST", "/api/v1/queues/api/resume", "root", admin=True)
    assert resumed == {"queue": "api", "paused": False}


@pytest.mark.parametrize("name", ["a%00b", "x" * 129])
async def test_a_bad_queue_name_is_422(api: Api, name: str) -> None:
    error = await api.json("POST", f"/api/v1/queues/{name}/pause", "root", admin=True, status=422)
    assert error["detail"][0]["field"] == "name"


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def test_metrics_gauges_and_counters(api: Api) -> None:
    await api.enqueue(None, queue="waiting")
    done = await api.enqueue(None)
    await api.complete(done, await api.claim(done))
    failed = await api.enqueue(None)
    await api.fail(failed, await api.claim(failed))

    # The counters follow the NOTIFY stream: wait until both ends were heard.
    async def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        response = await api.call("GET", "/metrics", owner=None)
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return _samples(await response.text())

    for _ in range(50):
        samples = await scrape()
        if samples.get(("pgqueue_jobs_finished_total", (("queue", "api"), ("state", "failed")))):
            break
        await asyncio.sleep(0.1)
    assert samples[("pgqueue_jobs", (("queue", "waiting"), ("state", "pending")))] == 1
    assert samples[("pgqueue_jobs", (("queue", "api"), ("state", "running")))] == 0
    finished = "pgqueue_jobs_finished_total"
    assert samples[(finished, (("queue", "api"), ("state", "completed")))] == 1
    assert samples[(finished, (("queue", "api"), ("state", "failed")))] == 1
    assert samples[("pgqueue_api_listener_up", ())] == 1
    assert samples[("pgqueue_queue_paused", (("queue", "waiting"),))] == 0
    assert ("pgqueue_queue_oldest_waiting_seconds", (("queue", "waiting"),)) in samples


async def test_metrics_queries_read_only_unfinished_rows(queue: pgqueue.Queue) -> None:
    """The gauge query must not scan the history: with sequential scans made
    expensive, its plan reads pgqueue.jobs through the partial indexes only."""
    from pgqueue_service._reads import query

    async with queue.connection() as conn:
        await conn.execute("SET enable_seqscan = off")
        cur = await conn.execute("EXPLAIN " + query("queue_gauges"), {"after": None, "limit": None})
        await conn.execute("RESET enable_seqscan")
        plan = "\n".join(r[0] for r in await cur.fetchall())
    assert "Seq Scan on jobs" not in plan, plan
    # unfinished rows only: the claim index, or the status index on its
    # (pending, retrying) prefix, which also holds children of paused batches
    assert "jobs_claim_idx" in plan or "jobs_status_idx" in plan, plan


async def test_queues_and_metrics_show_rate_limits(api: Api) -> None:
    await api.queue.set_rate_limit("limited", 10, per=60)
    await api.enqueue(None)  # queue "api", no limit
    for _ in range(3):
        await api.enqueue(None, queue="limited")
    claimed = await api.sql("SELECT id FROM pgqueue.claim('w', ARRAY['limited'], 2)")
    assert len(claimed) == 2
    page = await api.json("GET", "/api/v1/queues", "root", admin=True)
    limited = next(q for q in page["items"] if q["queue"] == "limited")
    assert (limited["rate_limit"], limited["rate_per"], limited["rate_used"]) == (10, 60.0, 2)
    plain = next(q for q in page["items"] if q["queue"] != "limited")
    assert (plain["rate_limit"], plain["rate_per"], plain["rate_used"]) == (None, None, None)

    api.client.app[_keys.GAUGES].invalidate()
    response = await api.call("GET", "/metrics", owner=None)
    samples = _samples(await response.text())
    assert samples[("pgqueue_queue_rate_limit", (("queue", "limited"),))] == 10
    assert samples[("pgqueue_queue_rate_used", (("queue", "limited"),))] == 2
    assert ("pgqueue_queue_rate_limit", (("queue", plain["queue"]),)) not in samples
