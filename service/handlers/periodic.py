"""``/api/v1/periodic``: the served app's cron schedules and their next runs (admins)."""

from __future__ import annotations

from aiohttp import web

from .. import _keys
from .._auth import Principal
from .._models import PeriodicList, PeriodicOut
from .._routes import Reply, Routes, json_reply

routes = Routes("periodic")


@routes.get(
    "/api/v1/periodic",
    summary="The periodic schedules of the served app (pgqueue serve --app), next runs included",
    replies={200: Reply("by name", PeriodicList)},
    auth="admin",
)
async def list_periodic(request: web.Request, *, principal: Principal) -> web.Response:
    rows = await request.app[_keys.QUEUE].periodic_status()
    now = rows[0]["now"] if rows else None
    items = [PeriodicOut.model_validate({k: v for k, v in r.items() if k != "now"}) for r in rows]
    return json_reply(PeriodicList(items=items, now=now))
