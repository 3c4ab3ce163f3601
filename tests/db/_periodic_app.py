"""An app with periodic tasks, for ``pgqueue periodic list`` tests."""

import pgqueue

queue = pgqueue.Queue()


@queue.periodic("*/5 * * * *", name="reports")
async def report(ctx: pgqueue.JobContext) -> None: ...


@queue.periodic("0 3 * * *", timezone="Europe/Paris", name="nightly", catch_up=1)
def cleanup(ctx: pgqueue.JobContext) -> None: ...
