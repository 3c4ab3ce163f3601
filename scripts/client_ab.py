"""The client's enqueue calls of two checkouts of pgqueue, alternated in one run.

    git worktree add /tmp/before <commit>
    .venv/bin/python scripts/client_ab.py --dsn postgresql://postgres@127.0.0.1:5432/test \\
        --before /tmp/before --after . --rounds 10

Creates a scratch database on that server (dropped at the end) and migrates it
with the pgqueue this script runs with (both checkouts must serve that
schema). Each round runs, for each checkout in a process of its own
(``PYTHONPATH`` puts the checkout's ``pgqueue`` first, and its named queries
are read from its own ``sql/queries.sql``, not the installed package's), the
bench's own single and bulk enqueue steps (those of ``pgqueue bench``'s
"enqueue 1" and "bulk" rounds, longer: 2,000 sequential ``Queue.enqueue``
calls of a no-op task after 20 untimed ones, then 20,000 jobs through
``Queue.enqueue_many`` in chunks of 1,000), and empties the tables. The two
checkouts take turns going first, so that neither always runs in the other's
wake (a run that always put one first showed it 6 % faster on bulk, for no
reason in the code). It prints the median microseconds per call (single)
and per job (bulk), and after/before. Shows that a change to the client's
Python path (``Queue``, its seam) did not make enqueueing slower, on a quiet
machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
from pathlib import Path

from pgqueue import _migrate
from pgqueue.bench._run import _scratch as scratch_database


async def _measure(dsn: str, checkout: Path) -> tuple[float, float]:
    # the checkout PYTHONPATH names: its bench measures its own Queue
    from pgqueue import _sql
    from pgqueue.bench._run import _bulk_enqueue, _single_enqueue
    from pgqueue.bench._systems import Pgqueue

    # An editable install maps the package's SQL files to its own checkout.
    _sql.read = lambda filename: (checkout / "sql" / filename).read_text(encoding="utf-8")
    system = Pgqueue()
    client = await system.client(dsn)
    try:
        single = 1e6 / await _single_enqueue(client, 2000)
        bulk = 1e6 / await _bulk_enqueue(client, 20_000)
    finally:
        await client.close()
    system.reset(dsn)
    return single, bulk


def _run_child(checkout: Path, dsn: str) -> tuple[float, float]:
    env = {**os.environ, "PYTHONPATH": str(checkout.resolve())}
    out = subprocess.run(
        [sys.executable, __file__, "--child", dsn, "--checkout", str(checkout.resolve())],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return float(out[0]), float(out[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--dsn")
    parser.add_argument("--before", type=Path)
    parser.add_argument("--after", type=Path)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--checkout", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        single, bulk = asyncio.run(_measure(args.child, args.checkout))
        print(f"{single:.2f} {bulk:.3f}")
        return
    if not (args.dsn and args.before and args.after):
        parser.error("--dsn, --before and --after are required")
    sides = {"before": args.before, "after": args.after}
    figures: dict[str, list[tuple[float, float]]] = {side: [] for side in sides}
    with scratch_database(args.dsn, "client_ab") as dsn:
        _migrate.upgrade(dsn)
        for round_ in range(args.rounds):
            order = list(sides) if round_ % 2 == 0 else list(reversed(sides))
            for side in order:
                figures[side].append(_run_child(sides[side], dsn))
            print(
                f"round {round_ + 1}: "
                + ", ".join(
                    f"{side} {figures[side][-1][0]:.1f} µs, {figures[side][-1][1]:.2f} µs/job"
                    for side in sides
                ),
                file=sys.stderr,
            )
    medians = {
        side: (
            statistics.median(single for single, _ in values),
            statistics.median(bulk for _, bulk in values),
        )
        for side, values in figures.items()
    }
    print(f"{'':8}{'single (µs/call)':>18}{'bulk (µs/job)':>16}")
    for side, (single, bulk) in medians.items():
        print(f"{side:8}{single:>18.1f}{bulk:>16.2f}")
    before, after = medians["before"], medians["after"]
    print(f"{'after/before':8}{after[0] / before[0]:>14.2f}{after[1] / before[1]:>16.2f}")


if __name__ == "__main__":
    main()
