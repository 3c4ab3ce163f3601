"""How long creating a batch of many children takes (and pausing and cancelling it).

    .venv/bin/python scripts/batch_create.py --dsn postgresql://postgres@127.0.0.1:5432/test

Creates a scratch database on that server (dropped at the end), migrates it,
and times ``Queue.enqueue_batch`` of ``--children`` no-op jobs ``--runs``
times, then ``pause_batch`` and ``cancel_batch`` of the last batch.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import pgqueue
from pgqueue.bench._run import _scratch as scratch_database


async def run(dsn: str, children: int, runs: int) -> None:
    queue = pgqueue.Queue(dsn)

    @queue.task
    async def child(ctx: pgqueue.JobContext, n: int) -> int:
        return n

    items = [{"n": i} for i in range(children)]
    batch = None
    for number in range(1, runs + 1):
        started = time.perf_counter()
        batch = await queue.enqueue_batch(child, items)
        elapsed = time.perf_counter() - started
        print(
            f"  run {number}: {batch.total:,} children in {elapsed:.2f} s "
            f"({batch.total / elapsed:,.0f} children/s)"
        )
    assert batch is not None
    for action in (queue.pause_batch, queue.cancel_batch):
        started = time.perf_counter()
        await action(batch.id)
        print(f"  {action.__name__} of {batch.total:,}: {time.perf_counter() - started:.2f} s")
    await queue.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", required=True, help="a database on the server to use")
    parser.add_argument("--children", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with scratch_database(args.dsn, "batch") as dsn:
        pgqueue.migrate(dsn)
        print(
            f"enqueue_batch of {args.children:,} children, schema {pgqueue.current_revision(dsn)}"
        )
        asyncio.run(run(dsn, args.children, args.runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
