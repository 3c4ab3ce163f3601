"""``/api/v1/batches``: the caller's batches; read and changed only through the library."""

from __future__ import annotations

from aiohttp import web

import pgqueue

from .. import _keys
from .._auth import Principal
from .._errors import conflict, not_found
from .._models import BatchListQuery, BatchOut, BatchPage, BatchPath, batch_cursor_id, encode_cursor
from .._routes import ErrorOut, Reply, Routes, json_reply

routes = Routes("batches")

NOT_FOUND = Reply("no such batch, or not the caller's", ErrorOut)
CONFLICT = Reply("the batch has finished", ErrorOut)


async def visible_batch(request: web.Request, principal: Principal, batch_id: int) -> pgqueue.Batch:
    """The batch if the caller may see it; 404 alike for missing and foreign batches."""
    batch = await request.app[_keys.QUEUE].get_batch(batch_id)
    if batch is None or not principal.may_see(batch.owner):
        raise not_found(f"batch {batch_id}")
    return batch


@routes.get(
    "/api/v1/batches",
    summary="The caller's batches, newest first",
    replies={200: Reply("newest first", BatchPage)},
)
async def list_batches(
    request: web.Request, *, principal: Principal, query: BatchListQuery
) -> web.Response:
    batches = await request.app[_keys.QUEUE].list_batches(
        status=query.statuses,
        owner=None if principal.admin else principal.owner,
        before_id=batch_cursor_id(query.cursor),
        limit=query.limit,
    )
    last = batches[-1].id if len(batches) == query.limit else None
    return json_reply(
        BatchPage(
            items=[BatchOut.of(b) for b in batches],
            next_cursor=None if last is None else encode_cursor("batch", last),
        )
    )


@routes.get(
    "/api/v1/batches/{id}",
    summary="One batch with its children counted by state",
    replies={200: Reply("the batch", BatchOut), 404: NOT_FOUND},
)
async def get_batch(request: web.Request, *, principal: Principal, path: BatchPath) -> web.Response:
    return json_reply(BatchOut.of(await visible_batch(request, principal, path.id)))


async def _act(
    request: web.Request, principal: Principal, batch_id: int, action: str
) -> web.Response:
    queue = request.app[_keys.QUEUE]
    await visible_batch(request, principal, batch_id)
    method = {
        "pause": queue.pause_batch,
        "resume": queue.resume_batch,
        "cancel": queue.cancel_batch,
    }[action]
    try:
        await method(batch_id)
    except pgqueue.InvalidTransition as exc:
        raise conflict(str(exc)) from None
    return json_reply(BatchOut.of(await visible_batch(request, principal, batch_id)))


ACTION_REPLIES = {200: Reply("the batch", BatchOut), 404: NOT_FOUND, 409: CONFLICT}


@routes.post(
    "/api/v1/batches/{id}/pause",
    summary="Pause a batch: its pending and retrying children are not claimed",
    replies=ACTION_REPLIES,
)
async def pause_batch(
    request: web.Request, *, principal: Principal, path: BatchPath
) -> web.Response:
    return await _act(request, principal, path.id, "pause")


@routes.post(
    "/api/v1/batches/{id}/resume",
    summary="Let a paused batch's children be claimed again",
    replies=ACTION_REPLIES,
)
async def resume_batch(
    request: web.Request, *, principal: Principal, path: BatchPath
) -> web.Response:
    return await _act(request, principal, path.id, "resume")


@routes.post(
    "/api/v1/batches/{id}/cancel",
    summary="Cancel a batch: pending children end cancelled, running ones are stopped",
    replies=ACTION_REPLIES,
)
async def cancel_batch(
    request: web.Request, *, principal: Principal, path: BatchPath
) -> web.Response:
    return await _act(request, principal, path.id, "cancel")
