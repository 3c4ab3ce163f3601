"""``pgqueue demo``: example jobs through a real worker, on the embedded PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import time
from collections.abc import AsyncIterator

from . import _extras, _migrate
from ._queue import Queue
from ._settings import WorkerSettings
from ._status import JobStatus
from ._worker import Worker
from .errors import ConfigurationError


def _describe(dsn: str) -> str:
    """The DSN to print: its password masked, in a URL or in key=value form."""
    masked = re.sub(r"//([^:@/]*):[^@]*@", r"//\1:***@", dsn)
    return re.sub(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", masked)


DEMO_OWNER = "demo"


async def run_demo(
    *,
    dsn: str | None,
    once: bool,
    jobs: int = 12,
    host: str = "127.0.0.1",
    port: int | None = None,
) -> int:
    """Enqueue example jobs, run them through a worker and print them finishing.
    With ``once`` return when they are all done; otherwise keep the worker
    running (Ctrl-C stops it) so more jobs can be enqueued from another shell.
    The status API and dashboard run in the same process on ``host:port``
    (default 8000; with ``once`` only when a port is given)."""
    from . import examples

    queue = examples.queue
    if dsn:
        queue._dsn_given = dsn
    logging.getLogger("pgqueue.worker").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    print("pgqueue demo")
    if port is None and not once:
        try:
            _extras.api()
            port = 8000
        except ConfigurationError as exc:  # the API is optional when not asked for by --port
            print(f"  dashboard: off ({exc})")
    resolved = await asyncio.to_thread(lambda: queue.dsn)
    print(f"  database:  {_describe(resolved)}")
    await asyncio.to_thread(_migrate.upgrade, resolved)
    print(f"  schema:    revision {await asyncio.to_thread(_migrate.current_revision, resolved)}")

    try:
        async with contextlib.AsyncExitStack() as stack:
            if port is not None:
                await stack.enter_async_context(_serve_api(queue, host, port))
            return await _run_jobs(queue, once=once, jobs=jobs)
    finally:
        await queue.close()


@contextlib.asynccontextmanager
async def _serve_api(queue: Queue, host: str, port: int) -> AsyncIterator[None]:
    """The status API for the demo, with the secret from PGQUEUE_API_SECRET or
    a random one for this run."""
    service = _extras.api()
    secret = os.environ.get(service.SECRET_ENV) or secrets.token_urlsafe(32)
    settings = service.Settings(secret=secret)
    async with service.running(queue, settings, host=host, port=port, close_queue=False) as url:
        admin = service.mint_token(secret, "admin", admin=True)
        user = service.mint_token(secret, DEMO_OWNER)
        print(f"  dashboard: {url}/#token={admin}")
        print(f"  API:       {url}/api/v1  (docs/api.md; tokens valid 24 h)")
        print(f"  admin token:       {admin}")
        print(f"  token for {DEMO_OWNER!r}:  {user}")
        print(f'  try:       curl -H "Authorization: Bearer {user}" {url}/api/v1/jobs/active')
        yield


async def _run_jobs(queue: Queue, *, once: bool, jobs: int) -> int:
    from . import examples

    ids: list[int] = []
    resize = max(1, jobs - 4)
    # The resize jobs are one batch (the dashboard follows it as a whole).
    album = await queue.enqueue_batch(
        examples.resize_image,
        [{"image_id": i, "steps": 8} for i in range(1, resize + 1)],
        owner=DEMO_OWNER,
        metadata={"album": "demo"},
    )
    ids += [job.id for job in await queue.batch_jobs(album.id, limit=1000)]
    ids.append(await examples.send_email.options(owner=DEMO_OWNER).enqueue(to="ada@example.com"))
    ids.append(await examples.flaky.options(owner=DEMO_OWNER).enqueue(name="flaky-upload"))
    ids.append(
        await examples.always_fails.options(owner=DEMO_OWNER).enqueue(
            reason="the input file is corrupt"
        )
    )
    ids.append(
        await examples.send_email.options(delay=1.5, owner=DEMO_OWNER).enqueue(
            to="grace@example.com"
        )
    )
    print(
        f"  enqueued:  {len(ids)} jobs on queue {examples.DEMO_QUEUE!r} (ids {ids[0]}..{ids[-1]})"
    )
    print()

    worker = Worker(queue, queues=[examples.DEMO_QUEUE], settings=WorkerSettings(concurrency=4))
    runner = asyncio.create_task(worker.run(until_idle=once))
    seen: dict[int, tuple[str, int]] = {}
    started = time.monotonic()
    try:
        while True:
            done = 0
            for job_id in ids:
                job = await queue.get_job(job_id)
                if job is None:
                    continue
                key = (job.status.value, job.progress // 25)
                if seen.get(job_id) != key:
                    seen[job_id] = key
                    bar = "#" * (job.progress // 10) + "." * (10 - job.progress // 10)
                    detail = ""
                    if job.status is JobStatus.COMPLETED:
                        detail = f"result={job.result}"
                    elif job.error:
                        detail = job.error.strip().splitlines()[-1][:70]
                    print(
                        f"  job {job.id:>5}  {job.task:<13} {job.status.value:<9} "
                        f"[{bar}] {job.progress:>3}%  {detail}"
                    )
                done += job.status.is_terminal
            if done == len(ids):
                break
            if runner.done():
                runner.result()  # surface a worker crash
                break
            await asyncio.sleep(0.2)
        elapsed = time.monotonic() - started
        print()
        print(f"  all {len(ids)} example jobs finished in {elapsed:.1f}s")
        print("  see them with: pgqueue jobs list   ·   pgqueue queues")
        if once:
            worker.stop()
            await runner
            return 0
        print(
            "  the worker keeps running; enqueue more from another shell, e.g.\n"
            "    PGQUEUE_APP=pgqueue.examples:queue .venv/bin/pgqueue enqueue resize_image "
            "--args '{\"image_id\": 42}'\n"
            "  Ctrl-C stops it."
        )
        await runner
        return 0
    finally:
        if not runner.done():
            worker.stop()
            await asyncio.gather(runner, return_exceptions=True)
