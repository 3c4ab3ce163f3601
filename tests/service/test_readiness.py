"""``/readyz``: ready only when the database answers, its pgqueue schema serves
this package (at its head revision, or newer and listing it in
``pgqueue.served_revisions``), and job notifications are being received."""

from __future__ import annotations

import asyncio

import psycopg

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
            "schema_serves_release": True,
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


async def _migrated_ahead(db_dsn: str, serves_us: bool) -> None:
    """The database as a later release's migration leaves it: a revision this
    package does not know, serving this package's head or not."""
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute("UPDATE pgqueue.pgqueue_alembic_version SET version_num = '9001'")
        conn.execute("INSERT INTO pgqueue.served_revisions VALUES ('9001')")
        if not serves_us:
            conn.execute(
                "DELETE FROM pgqueue.served_revisions WHERE revision = %s",
                [pgqueue.head_revision()],
            )


async def test_ready_while_a_newer_schema_still_serves_this_release(api: Api, db_dsn: str) -> None:
    """A rolling deploy migrates first: the previous release stays ready."""
    await _migrated_ahead(db_dsn, serves_us=True)
    for _ in range(50):
        status, body = await _ready(api)
        if status == 200:
            break
        await asyncio.sleep(0.1)
    assert status == 200, body
    assert body["schema_at_head"] is False
    assert body["schema_serves_release"] is True
    assert body["schema_revision"] == "9001"


async def test_not_ready_once_a_newer_schema_no_longer_serves_this_release(
    api: Api, db_dsn: str
) -> None:
    await _migrated_ahead(db_dsn, serves_us=False)
    status, body = await _ready(api)
    assert status == 503
    assert body["schema_serves_release"] is False
    assert body["database"] is True
