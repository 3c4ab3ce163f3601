"""The processes of the failover scenarios, each recording what the database
acknowledged to it, so the test can check the promoted standby kept it.

``python -m tests.chaos._failover_proc worker LEDGER [pgqueue worker flags]``
    ``pgqueue worker``, unchanged, except that each completion the database
    acknowledged (``complete_many`` returned its row) is appended to LEDGER as
    ``job_id attempt n`` before the worker goes on.
``python -m tests.chaos._failover_proc client LEDGER FIRST_N STOP_FILE [BULK [PACE]]``
    Enqueues ``recorded`` jobs, BULK (default 1) a statement, PACE seconds
    apart (default 0) (n = FIRST_N,
    FIRST_N + 1, ...), until STOP_FILE exists, appending ``job_id n`` to LEDGER
    for each id an enqueue returned; an unavailable database is waited out and
    the same n tried again. Prints a summary line as JSON at the end.

Both use PGQUEUE_DSN. Lines are written (unbuffered) before the process
moves on, so a line stands for an acknowledgement the process had received.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


def worker(ledger: Path, flags: list[str]) -> int:
    from pgqueue._database import WorkerDatabase
    from pgqueue.cli import main

    # The worker's seam to its database, recording what it acknowledged (the
    # recorded task returns its n, so each result names its job's n).
    complete_many = WorkerDatabase.complete_many
    out = ledger.open("a", buffering=1)

    async def recording(self: WorkerDatabase, results: Any) -> Any:
        applied = await complete_many(self, results)
        for lease, result in results:
            if lease in applied:
                out.write(f"{lease.job_id} {lease.attempt} {result.obj}\n")
        return applied

    WorkerDatabase.complete_many = recording  # type: ignore[method-assign]
    return main(["worker", *flags])


def client(ledger: Path, first_n: int, stop_file: Path, bulk: int, pace: float) -> int:
    import pgqueue
    from tests.chaos import app

    out = ledger.open("a", buffering=1)
    n, acked, unavailable, errors = first_n, 0, 0, []
    while not stop_file.exists():
        try:
            items = [{"n": i, "pause": 0.01} for i in range(n, n + bulk)]
            ids = (
                app.queue.enqueue_many_sync("recorded", items)
                if bulk > 1
                else [app.queue.enqueue_sync("recorded", items[0])]
            )
        except pgqueue.DatabaseUnavailable:
            unavailable += 1
            time.sleep(0.05)
            continue
        except Exception as exc:  # anything else is a defect the test reports
            errors.append(f"{type(exc).__name__}: {exc}"[:300])
            time.sleep(0.05)
            continue
        out.write("".join(f"{job_id} {n + i}\n" for i, job_id in enumerate(ids)))
        acked += len(ids)
        n += bulk
        time.sleep(pace)
    summary = {"acked": acked, "unavailable": unavailable, "errors": errors[:20]}
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    role, ledger_path, *rest = sys.argv[1:]
    if role == "worker":
        sys.exit(worker(Path(ledger_path), rest))
    bulk = int(rest[2]) if len(rest) > 2 else 1
    pace = float(rest[3]) if len(rest) > 3 else 0.0
    sys.exit(client(Path(ledger_path), int(rest[0]), Path(rest[1]), bulk, pace))
