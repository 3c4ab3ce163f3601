"""``GET /api/v1/periodic``: the served app's schedules with their next run
(by the database's clock), for admins only."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from .conftest import Api

SHARED_DATABASE = True


async def test_admins_see_the_schedules_and_their_next_run(api: Api) -> None:
    listing = await api.json("GET", "/api/v1/periodic", "root", admin=True)
    assert listing["now"] is not None
    (item,) = listing["items"]
    assert (item["name"], item["task"], item["queue"], item["cron"], item["timezone"]) == (
        "leap_day_report", "leap_day_report", "api", "0 0 29 2 *", "Europe/Paris",
    )  # fmt: skip
    assert (item["last_tick"], item["last_job_id"]) == (None, None)
    next_tick = datetime.fromisoformat(item["next_tick"])
    now = datetime.fromisoformat(listing["now"])
    assert next_tick > now
    local = next_tick.astimezone(ZoneInfo("Europe/Paris"))
    assert (local.month, local.day, local.hour, local.minute) == (2, 29, 0, 0)


async def test_users_may_not_list_schedules(api: Api) -> None:
    forbidden = await api.call("GET", "/api/v1/periodic", "alice")
    assert forbidden.status == 403
    missing = await api.call("GET", "/api/v1/periodic", None)
    assert missing.status == 401
