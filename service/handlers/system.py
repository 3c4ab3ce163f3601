"""Open endpoints for operators and tools: health, readiness, metrics, the
OpenAPI document; and ``whoami`` for the dashboard."""

from __future__ import annotations

import asyncio
import contextlib
import functools

import psycopg
from aiohttp import web

import pgqueue

from .. import _keys, _metrics
from .._auth import Principal
from .._models import Health, Readiness, WhoAmI
from .._routes import Reply, Routes, json_reply

routes = Routes("system")


@functools.cache
def _head_revision() -> str:
    # The first call imports alembic (about half a second): readyz runs it in
    # a thread, so the event loop keeps serving meanwhile.
    return pgqueue.head_revision()


@routes.get(
    "/healthz", summary="The process is up", replies={200: Reply("alive", Health)}, auth="none"
)
async def healthz(request: web.Request) -> web.Response:
    return json_reply(Health(status="ok"))


@routes.get(
    "/readyz",
    summary="The database answers, its schema serves this release, and notifications are received",
    replies={200: Reply("ready", Readiness), 503: Reply("not ready", Readiness)},
    auth="none",
)
async def readyz(request: web.Request) -> web.Response:
    database = False
    revision: str | None = None
    served = False
    head = await asyncio.to_thread(_head_revision)
    with contextlib.suppress(pgqueue.PgQueueError, psycopg.Error, OSError, TimeoutError):
        # A newer schema (migrated first in a rolling deploy) still serves
        # this release if it says so; an older one never does.
        revision, served = await request.app[_keys.QUEUE].schema_status(head, timeout=2)
        database = True
    listener = request.app[_keys.BROADCASTER].connected
    ready = database and listener and served
    body = Readiness(
        status="ready" if ready else "unavailable",
        database=database,
        listener=listener,
        schema_at_head=revision == head,
        schema_serves_release=served,
        schema_revision=revision,
    )
    return json_reply(body, status=200 if ready else 503)


@routes.get(
    "/metrics",
    summary="Prometheus metrics",
    replies={200: Reply("text exposition format 0.0.4", None, "text/plain")},
    auth="none",
)
async def metrics(request: web.Request) -> web.Response:
    app = request.app
    rows = await app[_keys.GAUGES].rows()
    text = _metrics.render(rows, app[_keys.BROADCASTER], app[_keys.QUEUE].queue_names)
    return web.Response(
        text=text,
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Prometheus-Format": "0.0.4"},
    )


async def _openapi(request: web.Request) -> web.Response:
    from .._openapi import document

    return web.json_response(document())


@routes.get(
    "/api/v1/openapi.json",
    summary="This document",
    replies={200: Reply("OpenAPI 3.1", None)},
    auth="none",
)
async def openapi(request: web.Request) -> web.Response:
    return await _openapi(request)


@routes.get(
    "/openapi.json",
    summary="This document (same as /api/v1/openapi.json)",
    replies={200: Reply("OpenAPI 3.1", None)},
    auth="none",
)
async def openapi_root(request: web.Request) -> web.Response:
    return await _openapi(request)


@routes.get(
    "/api/v1/whoami",
    summary="The caller the token names",
    replies={200: Reply("the token's owner and admin flag", WhoAmI)},
)
async def whoami(request: web.Request, *, principal: Principal) -> web.Response:
    return json_reply(WhoAmI(owner=principal.owner, admin=principal.admin))
