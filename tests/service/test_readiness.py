"""``/readyz``: ready only when the database answers, its pgqueue schema is at
this package's head revision, and job notifications are being received."""

from __future__ import annotations

import asyncio

import pgqueue
from pgqueue import _migrate

from .conftest import Api


async def _ready(api: Api) -> tuple[int, dict[str, object]]:
    response = await api.call("GET", "/readyz", None)
    return response.status, await response.json()


async def test_ready_when_the_schema_is_at_head(api: Api) -> None:
    for _ in range(50):  # the LISTEN connection comes up just after startup
        status, body = await _ready(api)
        if status == 200:
            break
        await asyncio.sleep(0.1)
    assert (status, body) == (
        200,
        {
            "status": "ready",
            "database": True,
            "listener": True,
            "schema_at_head": True,
            "schema_revision": pgqueue.head_revision(),
        },
    )


async def test_not_ready_while_the_schema_is_behind(api: Api, db_dsn: str) -> None:
    previous = f"{int(pgqueue.head_revision()) - 1:04d}"
    await asyncio.to_thread(_migrate.downgrade, db_dsn, previous)
    status, body = await _ready(api)
    assert status == 503
    assert body["schema_at_head"] is False
    assert body["schema_revision"] == previous
    assert body["database"] is True
    await asyncio.to_thread(_migrate.upgrade, db_dsn)
    status, body = await _ready(api)
    assert body["schema_at_head"] is True
