"""``/api/v1/queues``: unfinished work per queue; pause and resume (admins)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .. import _keys
from .._auth import Principal
from .._models import (
    QueueCounts,
    QueueListQuery,
    QueueOut,
    QueuePage,
    QueuePath,
    QueueState,
    encode_cursor,
    queue_cursor_name,
)
from .._routes import Reply, Routes, json_reply

routes = Routes("queues")


def queue_out(row: dict[str, Any]) -> QueueOut:
    counts = row["counts"] or {}
    return QueueOut(
        queue=row["queue"],
        paused=row["paused"],
        counts=QueueCounts(**{k: v for k, v in counts.items() if k in QueueCounts.model_fields}),
        oldest_pending_age=row["oldest_pending_age"],
        rate_limit=row.get("rate_limit"),
        rate_per=row.get("rate_per"),
        rate_used=row.get("rate_used"),
    )


@routes.get(
    "/api/v1/queues",
    summary="Queues with their unfinished jobs (the caller's, unless admin) and paused flag",
    replies={200: Reply("queues by name", QueuePage)},
)
async def list_queues(
    request: web.Request, *, principal: Principal, query: QueueListQuery
) -> web.Response:
    after = queue_cursor_name(query.cursor)
    rows = await request.app[_keys.READS].queue_gauges(
        None if principal.admin else principal.owner, after=after, limit=query.limit
    )
    items = [queue_out(r) for r in rows]
    next_cursor = encode_cursor("queue", items[-1].queue) if len(items) == query.limit else None
    return json_reply(QueuePage(items=items, next_cursor=next_cursor))


@routes.post(
    "/api/v1/queues/{name}/pause",
    summary="Stop workers claiming the queue's jobs (running jobs finish)",
    replies={200: Reply("the queue's new state", QueueState)},
    auth="admin",
)
async def pause_queue(
    request: web.Request, *, principal: Principal, path: QueuePath
) -> web.Response:
    await request.app[_keys.QUEUE].pause_queue(path.name)
    request.app[_keys.GAUGES].invalidate()
    return json_reply(QueueState(queue=path.name, paused=True))


@routes.post(
    "/api/v1/queues/{name}/resume",
    summary="Let workers claim the queue's jobs again",
    replies={200: Reply("the queue's new state", QueueState)},
    auth="admin",
)
async def resume_queue(
    request: web.Request, *, principal: Principal, path: QueuePath
) -> web.Response:
    await request.app[_keys.QUEUE].resume_queue(path.name)
    request.app[_keys.GAUGES].invalidate()
    return json_reply(QueueState(queue=path.name, paused=False))
