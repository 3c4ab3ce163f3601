"""``/api/v1/events``: server-sent events of the caller's job changes.

Events (each with an ``id:`` to resume from):

- ``snapshot``: ``{"jobs": [Job...], "truncated": bool}``, the caller's active
  jobs; sent first on a new stream, and on a reconnect whose ``Last-Event-ID``
  cannot be replayed.
- ``job``: ``{"id", "status", "progress", "queue"}`` (and ``batch_id`` when the
  job has one), one per status or progress change.

An idle stream gets a ``: keepalive`` comment every ``keepalive`` seconds.
"""

from __future__ import annotations

import logging
import re

import psycopg
from aiohttp import web

import pgqueue

from .. import _keys
from .._auth import Principal
from .._errors import dumps
from .._events import StreamClosed
from .._models import EventsQuery, JobOut
from .._routes import Reply, Routes

routes = Routes("events")
log = logging.getLogger("pgqueue.service.events")


# The ids this server sends: "<epoch>-<seq>", a few hex digits and a counter.
_EVENT_ID = re.compile(r"[0-9a-f]{1,32}-[0-9]{1,19}")


def _last_event_id(request: web.Request) -> str | None:
    """The ``Last-Event-ID`` to resume after, or None (a snapshot) when the
    header is missing or is not an id this server could have sent."""
    value = request.headers.get("Last-Event-ID", "").strip()
    return value if _EVENT_ID.fullmatch(value) else None


def _frame(event: str, event_id: str, data: str) -> bytes:
    return f"event: {event}\nid: {event_id}\ndata: {data}\n\n".encode()


@routes.get(
    "/api/v1/events",
    summary="Server-sent events of the caller's job changes",
    replies={200: Reply("an event stream (never ends by itself)", None, "text/event-stream")},
    query_token=True,
    headers={"Last-Event-ID": "resume after this event (sent by EventSource on reconnect)"},
)
async def events(
    request: web.Request, *, principal: Principal, query: EventsQuery
) -> web.StreamResponse:
    app = request.app
    broadcaster = app[_keys.BROADCASTER]
    settings = app[_keys.SETTINGS]
    last_id = _last_event_id(request)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache, no-store",
            "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
        }
    )
    sub, missed = broadcaster.subscribe(principal, last_id)
    try:
        snapshot_id = broadcaster.event_id()
        await response.prepare(request)
        await response.write(b"retry: 2000\n\n")
        if missed is None:
            try:
                jobs = await app[_keys.READS].active_jobs(
                    None if principal.admin else principal.owner,
                    window=settings.active_window,
                    limit=settings.snapshot_limit,
                )
            except (pgqueue.DatabaseUnavailable, psycopg.OperationalError) as exc:
                # The stream has started, so no 503 can be sent now: end it;
                # EventSource reconnects after ``retry`` (a 503 would make
                # it give up for good).
                log.warning("no snapshot for an event stream: %s", exc)
                return response
            body = {
                "jobs": [JobOut.of(j).model_dump(mode="json") for j in jobs],
                "truncated": len(jobs) == settings.snapshot_limit,
            }
            await response.write(_frame("snapshot", snapshot_id, dumps(body)))
        else:
            for event in missed:
                await response.write(
                    _frame("job", broadcaster.event_id(event.seq), dumps(event.data()))
                )
        while True:
            try:
                batch = await sub.next(settings.keepalive)
            except StreamClosed:
                break
            if not batch:
                await response.write(b": keepalive\n\n")
                continue
            chunk = b"".join(
                _frame("job", broadcaster.event_id(e.seq), dumps(e.data())) for e in batch
            )
            await response.write(chunk)
        return response
    except ConnectionError:  # the client went away
        return response
    except Exception:
        if not response.prepared:
            raise
        # The status line is sent, so no error answer can follow: end the
        # stream (EventSource reconnects) instead of writing a second response.
        log.exception("event stream ended by an unexpected error")
        return response
    finally:
        broadcaster.unsubscribe(sub)
