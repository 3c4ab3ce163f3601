# mypy: disable-error-code="untyped-decorator"
# (pgqueue's mypy settings skip procrastinate, so its decorators are untyped to mypy)
"""An example procrastinate app bridged to pgqueue (docs/procrastinate.md shows it in full).

Its worker is procrastinate's own::

    PGQUEUE_DSN=postgresql://... procrastinate --app pgqueue.procrastinate.example.app worker

``pgqueue demo --procrastinate`` installs everything, starts that worker,
defers :func:`defer_demo`'s jobs and follows them through pgqueue.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, NamedTuple

import procrastinate
import psycopg

import pgqueue.procrastinate as bridge

# The database is PGQUEUE_DSN's (empty: libpq's PGHOST, PGDATABASE... defaults).
# attach() adds the bridge's middleware (results, errors, progress) and the
# periodic recovery of jobs whose worker stalled.
app: Any = bridge.attach(
    procrastinate.App(
        connector=procrastinate.PsycopgConnector(conninfo=os.environ.get("PGQUEUE_DSN", ""))
    )
)


# An async task reporting progress: each report reaches the mirror's progress
# and its history (at most one write per 0.5 s; the last one always).
@app.task(name="resize_image", queue="images")
async def resize_image(image_id: int, steps: int = 10) -> dict[str, Any]:
    for step in range(1, steps + 1):
        await asyncio.sleep(0.15)
        bridge.progress(100 * step / steps, f"tile {step}/{steps}")
    return {"image_id": image_id, "thumbnail": f"thumbs/{image_id}.webp"}


# A sync task: procrastinate runs it in a thread, and progress() works the same.
@app.task(name="render_report", queue="reports")
def render_report(month: str, pages: int = 8) -> dict[str, Any]:
    for page in range(1, pages + 1):
        time.sleep(0.2)
        bridge.progress(100 * page / pages, f"page {page}/{pages}")
    return {"month": month, "pages": pages, "url": f"reports/{month}.pdf"}


# Fails on its first attempt; procrastinate's retry strategy runs it again a
# second later, and it succeeds. The mirror goes running → retrying → running
# → completed, with the first attempt's error in its history.
@app.task(
    name="upload", retry=procrastinate.RetryStrategy(max_attempts=2, wait=1), pass_context=True
)
async def upload(context: procrastinate.JobContext, name: str) -> str:
    bridge.progress(40, "connecting")
    await asyncio.sleep(0.3)
    if context.job.attempts == 0:  # procrastinate counts the attempts that ended
        raise ConnectionError(f"{name}: the storage service hung up")
    bridge.progress(100, "uploaded")
    return f"s3://demo-bucket/{name}"


# Fails on every attempt: after its one retry the mirror is dead_letter, with
# the last error.
@app.task(name="import_feed", retry=procrastinate.RetryStrategy(max_attempts=1, wait=1))
def import_feed(url: str) -> None:
    bridge.progress(50, "parsing")
    time.sleep(0.3)
    raise ValueError(f"{url} is not an RSS feed")


class DemoJobs(NamedTuple):
    """The jobs :func:`defer_demo` deferred: pgqueue ids, not procrastinate's."""

    batch_id: int  # alice's album: one resize_image job per image
    job_ids: list[int]  # every job, bob's first, then the album's


async def defer_demo(
    conn: psycopg.AsyncConnection[Any] | None = None, *, images: int = 6
) -> DemoJobs:
    """Defer the demo's jobs for two owners: bob's report, upload and feed
    import, and alice's album of ``images`` images as one pgqueue batch. With
    ``conn``, in that connection's transaction (the caller commits); without
    it, each defer in a transaction of its own on the app's pool (open the app
    first)."""
    ids = [
        await bridge.defer_async(render_report, owner="bob", conn=conn, month="2024-05"),
        await bridge.defer_async(upload, owner="bob", conn=conn, name="report-2024-05.pdf"),
        await bridge.defer_async(
            import_feed, owner="bob", conn=conn, url="https://example.com/news.xml"
        ),
    ]
    album = await bridge.defer_batch_async(
        resize_image,
        [{"image_id": i} for i in range(1, images + 1)],
        owner="alice",
        metadata={"album": "holidays"},
        conn=conn,
    )
    return DemoJobs(album.id, ids + album.job_ids)
